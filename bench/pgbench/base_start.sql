-- baseline start: the saga row, its first outbox row and a history row
WITH s AS (INSERT INTO base.saga (state, input, updated_at) VALUES (0, '{"n": 1}', now()) RETURNING id),
     o AS (INSERT INTO base.outbox (saga_id, step, topic, payload)
           SELECT id, 0, 'st', '{"input": {"n": 1}, "step": 0}' FROM s),
     h AS (INSERT INTO base.history (saga_id, at, event, step) SELECT id, now(), 'started', 0 FROM s)
SELECT id FROM s;
