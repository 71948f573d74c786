-- PgQ producer: one event per transaction
BEGIN;
SELECT pgq.insert_event('bq', 'step', '{"n": 1}');
COMMIT;
