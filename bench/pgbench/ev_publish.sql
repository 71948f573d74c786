-- saga.publish, one event per transaction: -D etype=... -D corr=... (a correlation id of no flow)
BEGIN;
SELECT saga.publish(:etype, '{"n": 1}', :corr);
COMMIT;
