--
-- 98_rows: the engine writes its own rows directly (src/rows.c), not through
-- SQL statements.  What must still hold: a column it does not know refuses
-- the write rather than being guessed, a column of another type likewise,
-- the mapping follows ALTER TABLE, and UPDATE OF triggers fire as they
-- would for an UPDATE statement setting those columns.
--
SELECT saga.define('rows_demo', '{"steps": [{"name": "a", "topic": "rows_t"}]}') AS version;

-- a column with a default that the library cannot fill: 0A000, nothing written
ALTER TABLE saga.outbox ADD COLUMN extra integer NOT NULL DEFAULT 7;
SELECT saga_test.err($$SELECT saga.start('rows_demo', '{}')$$);
SELECT count(*) AS rows_t_tasks FROM saga.outbox WHERE topic = 'rows_t';
-- dropped, it is forgotten: the next write maps the table afresh
ALTER TABLE saga.outbox DROP COLUMN extra;
SELECT saga.start('rows_demo', '{}') > 0 AS started;
SELECT count(*) AS rows_t_tasks FROM saga.outbox WHERE topic = 'rows_t';

-- a nullable column without a default is left NULL
ALTER TABLE saga.history_log ADD COLUMN note text;
SELECT saga.start('rows_demo', '{}') > 0 AS started;
SELECT count(*) FILTER (WHERE note IS NULL) AS null_notes, count(*) AS logs
  FROM saga.history_log WHERE saga_id IN (SELECT saga_id FROM saga.outbox WHERE topic = 'rows_t');
ALTER TABLE saga.history_log DROP COLUMN note;

-- a known column of another type: 42804
ALTER TABLE saga.outbox ALTER COLUMN poll_lock TYPE integer USING poll_lock::integer;
SELECT saga_test.err($$SELECT saga.start('rows_demo', '{}')$$);
ALTER TABLE saga.outbox ALTER COLUMN poll_lock TYPE boolean USING poll_lock::boolean;
SELECT saga.start('rows_demo', '{}') > 0 AS started;

-- UPDATE OF triggers see the columns a claim sets (lease_owner), not those it leaves
CREATE FUNCTION saga_test.seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE '% % on task of step %', TG_NAME, TG_OP, NEW.step;
    RETURN NULL;
END $$;
CREATE TRIGGER rows_leased AFTER UPDATE OF lease_owner ON saga.outbox
    FOR EACH ROW WHEN (NEW.topic = 'rows_t') EXECUTE FUNCTION saga_test.seen();
CREATE TRIGGER rows_poll_lock AFTER UPDATE OF poll_lock ON saga.outbox
    FOR EACH ROW WHEN (NEW.topic = 'rows_t') EXECUTE FUNCTION saga_test.seen();
SELECT t.step, t.attempt, t.lease FROM saga.claim('rows_t', 'w', 1, '30 s') t;
DROP TRIGGER rows_leased ON saga.outbox;
DROP TRIGGER rows_poll_lock ON saga.outbox;
DROP FUNCTION saga_test.seen();

-- what a claim wrote: the lease, and its history event
SELECT lease_owner, deliveries, lease_length, visible_at > now() AS leased
  FROM saga.outbox WHERE topic = 'rows_t' AND lease_owner IS NOT NULL;
SELECT h.event, h.step, h.detail - 'worker' AS detail, h.detail ->> 'worker' AS worker
  FROM saga.history h
 WHERE h.saga_id = (SELECT saga_id FROM saga.outbox WHERE topic = 'rows_t' AND lease_owner IS NOT NULL)
 ORDER BY h.id;
