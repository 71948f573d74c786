-- the commit ceiling: one one-row INSERT per transaction (autocommit)
INSERT INTO base.ceiling VALUES (1, now());
