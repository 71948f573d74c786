--
-- 85_roles: the three roles at work.  The functions do their table work
-- themselves, so a role needs EXECUTE and nothing more; SQL steps run as the
-- role that defined the saga.
--
CREATE ROLE regress_saga_admin IN ROLE saga_admin;
CREATE ROLE regress_saga_worker IN ROLE saga_worker;
CREATE ROLE regress_saga_reader IN ROLE saga_reader;
CREATE ROLE regress_saga_nobody;

-- an SQL step owned by the admin, writing a table only the admin may write
CREATE SCHEMA r_app AUTHORIZATION regress_saga_admin;
GRANT USAGE ON SCHEMA r_app TO PUBLIC;
SET ROLE regress_saga_admin;
CREATE TABLE r_app.log (who text, what text);
CREATE FUNCTION r_app.note(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO r_app.log VALUES (current_user, p -> 'results' -> 'work' ->> 'done');
    RETURN jsonb_build_object('ran_as', current_user);
END
$$;
REVOKE ALL ON FUNCTION r_app.note(jsonb) FROM PUBLIC;
SELECT saga.define('r_flow', $${"steps": [
  {"name": "work", "topic": "r_t", "compensate": {"topic": "r_t"}},
  {"name": "note", "sql": "r_app.note"},
  {"name": "last", "topic": "r_t"}
]}$$);
SELECT owner FROM saga.definitions WHERE name = 'r_flow';
SELECT saga.start('r_flow', '{"by": "admin"}') > 0 AS started;
-- an admin does not work tasks
SELECT saga_test.err($$SELECT * FROM saga.claim('r_t', 'admin')$$);
RESET ROLE;

-- a worker starts, claims, completes; the SQL step runs as the admin
SET ROLE regress_saga_worker;
SELECT saga.start('r_flow', '{"by": "worker"}') AS w \gset
SELECT step, lease, payload -> 'input' AS input FROM saga.claim('r_t', 'w1', 10, '1 minute') ORDER BY id;
SELECT saga.heartbeat(id, deliveries) > now() AS extended FROM saga.outbox WHERE topic = 'r_t' ORDER BY id;
SELECT saga.complete(id, '{"done": "yes"}', lease => deliveries) AS recorded
  FROM saga.outbox WHERE topic = 'r_t' ORDER BY id;
SELECT step, result FROM saga.step_runs WHERE saga_id = :w ORDER BY step_index;
-- the transactional poll: lock, then fail
BEGIN;
SELECT saga.fail(id, '{"reason": "worker says no"}', retryable => false) AS recorded
  FROM (SELECT id FROM saga.outbox WHERE topic = 'r_t' AND saga_id = :w
         FOR UPDATE SKIP LOCKED) t;
COMMIT;
SELECT kind, step FROM saga.outbox WHERE saga_id = :w;
-- the worker may not define, cancel, retry, nor touch the tables
SELECT saga_test.err($$SELECT saga.define('r_other', '{"steps": [{"name": "a", "topic": "r_t"}]}')$$);
SELECT saga_test.err(format('SELECT saga.cancel(%s)', :w));
SELECT saga_test.err(format('SELECT saga.retry(%s)', :w));
SELECT saga_test.err('DELETE FROM saga.outbox');
SELECT saga_test.err($$UPDATE saga.outbox SET payload = '{}'$$);
SELECT saga_test.err($$UPDATE saga.sagas SET status = 'completed'$$);
SELECT saga_test.err('SELECT count(*) FROM saga.sagas');
RESET ROLE;
SELECT who, what FROM r_app.log ORDER BY who COLLATE "C", what COLLATE "C";
-- history names who acted
SELECT event, step, actor FROM saga.history WHERE saga_id = :w ORDER BY id;

-- the admin cancels, retries
SET ROLE regress_saga_admin;
SELECT saga.start('r_flow', '{"by": "admin again"}') AS a \gset
SELECT saga.cancel(:a, 'admin');
SELECT status FROM saga.instances WHERE id = :a;
RESET ROLE;

-- a reader reads the views and calls nothing
SET ROLE regress_saga_reader;
SELECT count(*) > 0 AS sees_instances FROM saga.instances;
SELECT count(*) > 0 AS sees_step_runs FROM saga.step_runs;
SELECT count(*) >= 0 AS sees_incidents FROM saga.incidents;
SELECT count(*) > 0 AS sees_history FROM saga.history;
SELECT count(*) > 0 AS sees_outbox FROM saga.outbox;
SELECT saga_test.err($$SELECT saga.start('r_flow')$$);
SELECT saga_test.err($$SELECT * FROM saga.claim('r_t', 'reader')$$);
SELECT saga_test.err('SELECT saga.complete(0)');
RESET ROLE;

-- a role without saga roles sees and calls nothing
SET ROLE regress_saga_nobody;
SELECT saga_test.err('SELECT count(*) FROM saga.instances');
SELECT saga_test.err($$SELECT saga.start('r_flow')$$);
SELECT saga_test.err('SELECT saga.heartbeat(0, 1)');
RESET ROLE;

-- clean up the roles (their objects first)
DROP SCHEMA r_app CASCADE;
DROP ROLE regress_saga_admin, regress_saga_worker, regress_saga_reader, regress_saga_nobody;
