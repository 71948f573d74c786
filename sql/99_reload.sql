--
-- 99_reload: the saga.* settings are PGC_SIGHUP: set in postgresql.conf
-- (here with ALTER SYSTEM), a reload applies them to every session, the
-- saga launcher and workers included.  This file runs last and resets what
-- it changes.
--
-- saga_test.reload() reloads, then waits until a new connection sees the
-- value (at most a minute): by then the postmaster has read the file and
-- signalled every process, so this session applies it before its next
-- statement.
CREATE FUNCTION saga_test.reload(setting text, expected text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v    text;
    conn text := format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
                        split_part(current_setting('unix_socket_directories'), ',', 1));
BEGIN
    PERFORM pg_reload_conf();
    FOR i IN 1..1200 LOOP
        PERFORM dblink_connect('saga_test_reload', conn);
        -- the library defines the settings (already loaded where preloaded)
        PERFORM dblink_exec('saga_test_reload', $q$LOAD 'saga'$q$);
        SELECT s INTO v FROM dblink('saga_test_reload', format('SHOW %s', setting)) AS t(s text);
        PERFORM dblink_disconnect('saga_test_reload');
        IF v = expected THEN
            RETURN v;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN 'still ' || v;
END
$$;

SELECT saga.define('rl_flow', $${"steps": [
  {"name": "a", "topic": "rl_a", "compensate": {"topic": "rl_undo"}},
  {"name": "b", "topic": "rl_b", "timeout": "1 hour"}
]}$$);

--
-- saga.retention: how long finished sagas are kept (seconds; -1: forever)
--
SHOW saga.retention;
ALTER SYSTEM SET saga.retention = '1h';
SELECT saga_test.reload('saga.retention', '1h');
SHOW saga.retention;
-- whatever earlier files finished long enough ago goes first
SELECT saga.tick() IS NOT NULL AS earlier_work_done;
SELECT saga.start('rl_flow', '{"age": "2 hours"}') AS s1 \gset
SELECT saga.start('rl_flow', '{"age": "30 minutes"}') AS s2 \gset
SELECT saga.complete(saga_test.task(:s1, 'a')) AS recorded;
SELECT saga.complete(saga_test.task(:s1, 'b')) AS recorded;
SELECT saga.complete(saga_test.task(:s2, 'a')) AS recorded;
SELECT saga.complete(saga_test.task(:s2, 'b')) AS recorded;
UPDATE saga.sagas SET finished_at = now() - interval '2 hours' WHERE id = :s1;
UPDATE saga.sagas SET finished_at = now() - interval '30 minutes' WHERE id = :s2;
SELECT saga.tick() - 'notified_topics' AS tick;
SELECT input ->> 'age' AS age, status FROM saga.instances WHERE name = 'rl_flow' ORDER BY id;
SELECT count(*) AS history_of_purged FROM saga.history WHERE saga_id = :s1;

-- -1 keeps everything
ALTER SYSTEM SET saga.retention = -1;
SELECT saga_test.reload('saga.retention', '-1');
UPDATE saga.sagas SET finished_at = now() - interval '300 days' WHERE id = :s2;
SELECT saga.tick() - 'notified_topics' AS tick;
SELECT input ->> 'age' AS age, status FROM saga.instances WHERE name = 'rl_flow' ORDER BY id;

-- back to the default: seven days
ALTER SYSTEM RESET saga.retention;
SELECT saga_test.reload('saga.retention', '7d');
SELECT saga.tick() - 'notified_topics' AS tick;
SELECT count(*) AS rl_sagas FROM saga.sagas WHERE name = 'rl_flow';

--
-- saga.batch_size: rows each unit handles per round
--
ALTER SYSTEM SET saga.batch_size = 2;
SELECT saga_test.reload('saga.batch_size', '2');
SELECT saga.start('rl_flow', jsonb_build_object('n', n)) > 0 AS started FROM generate_series(1, 3) AS n;
SELECT saga.complete(saga_test.task(id, 'a')) AS recorded
  FROM saga.sagas WHERE name = 'rl_flow' AND status = 'running' ORDER BY id;
UPDATE saga.outbox SET timeout_at = now() - interval '1 second'
 WHERE saga_id IN (SELECT id FROM saga.sagas WHERE name = 'rl_flow') AND step = 'b';
SELECT saga.tick() - 'notified_topics' AS tick;
SELECT saga.tick() - 'notified_topics' AS tick;
SELECT saga.tick() - 'notified_topics' AS tick;
SELECT status, count(*) FROM saga.instances WHERE name = 'rl_flow' GROUP BY status;
ALTER SYSTEM RESET saga.batch_size;
SELECT saga_test.reload('saga.batch_size', '500');

--
-- saga.compensation_incident_after: failures of a compensation before it is
-- listed in saga.incidents
--
ALTER SYSTEM SET saga.compensation_incident_after = 2;
SELECT saga_test.reload('saga.compensation_incident_after', '2');
SELECT min(id) AS c FROM saga.sagas WHERE name = 'rl_flow' AND status = 'compensating' \gset
SELECT saga_test.task(:c, 'a', true) AS undo \gset
SELECT saga.fail(:undo, '{"reason": "undo 1"}') AS recorded;
SELECT count(*) AS incidents FROM saga.incidents WHERE saga_id = :c;
SELECT saga_test.time_passes(:undo);
SELECT saga.fail(:undo, '{"reason": "undo 2"}') AS recorded;
SELECT step, error, status, attempts FROM saga.incidents WHERE saga_id = :c;
ALTER SYSTEM RESET saga.compensation_incident_after;
SELECT saga_test.reload('saga.compensation_incident_after', '5');
SELECT saga_test.time_passes(:undo);
SELECT saga.complete(:undo) AS recorded;
SELECT count(*) AS incidents FROM saga.incidents WHERE saga_id = :c;

-- the launcher and the workers took every reload
SELECT backend_type, count(*) FROM pg_stat_activity
 WHERE backend_type IN ('saga launcher', 'saga worker') GROUP BY backend_type ORDER BY backend_type;
