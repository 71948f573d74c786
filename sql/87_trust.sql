--
-- 87_trust: user code is a guest.  An SQL step runs as its definer, in a
-- sandbox whose settings never escape; definitions name only functions
-- their definer may run; fencing holds for lease-less reports; every
-- interval and text argument is bounded; a transition is never lost to a
-- re-entrant call; a definition's role and rows cannot vanish under its
-- sagas.  Every refusal is checked for its SQLSTATE and for storing nothing.
--
CREATE ROLE regress_trust_admin IN ROLE saga_admin;
CREATE ROLE regress_trust_worker IN ROLE saga_worker;
CREATE SCHEMA t_app AUTHORIZATION regress_trust_admin;
GRANT USAGE ON SCHEMA t_app TO PUBLIC;
CREATE SCHEMA t_private;    -- the admin has no USAGE here
CREATE FUNCTION t_private.step(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
GRANT EXECUTE ON FUNCTION t_private.step(jsonb) TO PUBLIC;
CREATE SCHEMA t_shared;     -- USAGE and EXECUTE for now, taken away later
GRANT USAGE ON SCHEMA t_shared TO PUBLIC;
CREATE FUNCTION t_shared.step(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"shared": true}'::jsonb $$;

SET ROLE regress_trust_admin;
-- a step that tries to leave settings behind, and reports what it saw
CREATE FUNCTION t_app.poison(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('search_path', 't_app, pg_catalog', false);
    PERFORM pg_catalog.set_config('work_mem', '7MB', false);
    RETURN pg_catalog.jsonb_build_object('user', current_user,
                                         'search_path', pg_catalog.current_setting('search_path'));
END
$$;
-- a step that tries to become somebody else, or to make a temporary object
CREATE FUNCTION t_app.set_role(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'SET ROLE NONE';
    RETURN '{}';
END
$$;
CREATE FUNCTION t_app.temp_table(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'CREATE TEMP TABLE t_trap (x int)';
    RETURN '{}';
END
$$;
-- a step that cancels its own saga (found by its correlation id)
CREATE FUNCTION t_app.cancel_self(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM saga.cancel((SELECT i.id FROM saga.instances i
                          WHERE i.correlation_id OPERATOR(pg_catalog.=) (p -> 'input' ->> 'me')),
                        'from inside');
    RETURN '{}';
END
$$;
-- a step that starts another saga
CREATE FUNCTION t_app.start_other(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RETURN pg_catalog.jsonb_build_object('started', saga.start('t_plain', '{}'));
END
$$;
CREATE FUNCTION t_app.agg_sfunc(s jsonb, p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT p $$;
CREATE AGGREGATE t_app.agg(jsonb) (SFUNC = t_app.agg_sfunc, STYPE = jsonb);
CREATE FUNCTION t_app.srf(p jsonb) RETURNS SETOF jsonb LANGUAGE sql AS $$ SELECT p $$;
CREATE PROCEDURE t_app.proc(p jsonb) LANGUAGE sql AS $$ SELECT 1 $$;

SELECT saga.define('t_plain', '{"steps": [{"name": "a", "topic": "t_t"}]}');
SELECT saga.define('t_poison', $${"steps": [
  {"name": "poison", "sql": "t_app.poison", "compensate": {"sql": "t_app.poison"}},
  {"name": "next", "topic": "t_t"}]}$$);
SELECT saga.define('t_guests', $${"steps": [
  {"name": "set_role", "sql": "t_app.set_role"}]}$$);
SELECT saga.define('t_temp', $${"steps": [
  {"name": "temp_table", "sql": "t_app.temp_table"}]}$$);
SELECT saga.define('t_self', $${"steps": [
  {"name": "work", "topic": "t_t", "compensate": {"topic": "t_t"}},
  {"name": "cancel_self", "sql": "t_app.cancel_self"},
  {"name": "last", "topic": "t_t"}]}$$);
SELECT saga.define('t_shared', '{"steps": [{"name": "shared", "sql": "t_shared.step"}]}');
SELECT saga.define('t_nested', $${"steps": [
  {"name": "work", "topic": "t_t"},
  {"name": "start_other", "sql": "t_app.start_other"}]}$$);

-- functions the definer may not or cannot run as a step: nothing stored
SELECT saga_test.define_err($${"steps": [{"name": "a", "sql": "t_private.step"}]}$$);
SELECT saga_test.define_err($${"steps": [{"name": "a", "sql": "pg_temp.step"}]}$$);
SELECT saga_test.define_err($${"steps": [{"name": "a", "sql": "pg_temp_3.step"}]}$$);
SELECT saga_test.define_err($${"steps": [{"name": "a", "sql": "t_app.agg"}]}$$);
SELECT saga_test.define_err($${"steps": [{"name": "a", "sql": "t_app.srf"}]}$$);
SELECT saga_test.define_err($${"steps": [{"name": "a", "sql": "t_app.proc"}]}$$);
SELECT saga_test.define_err($${"steps": [{"name": "a", "topic": "t_t", "compensate": {"sql": "t_private.step"}}]}$$);
RESET ROLE;

-- a temporary function of the caller's own session is no step either
CREATE FUNCTION pg_temp.step(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT p $$;
SELECT saga_test.define_err($${"steps": [{"name": "a", "sql": "pg_temp.step"}]}$$);

--
-- The sandbox: as the definer, search_path = pg_catalog, pg_temp, and
-- nothing it sets survives it.
--
SET ROLE regress_trust_worker;
SET search_path = public, pg_catalog;
SET work_mem = '4MB';
SELECT saga.start('t_poison', '{}', correlation_id => 't-poison') AS poisoned \gset
SELECT current_user, current_setting('search_path') AS search_path, current_setting('work_mem') AS work_mem;
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :poisoned ORDER BY step_index;
-- the compensation runs in the sandbox too (here, in saga.cancel)
RESET ROLE;
SELECT saga.cancel(:poisoned, 'sandbox test');
SELECT current_user, current_setting('search_path') AS search_path, current_setting('work_mem') AS work_mem;
SELECT status FROM saga.instances WHERE id = :poisoned;
RESET search_path;
RESET work_mem;

-- a step may not change role nor create temporary objects: it fails
SELECT saga.start('t_guests') AS g \gset
SELECT step, status, error ->> 'sqlstate' AS sqlstate, error ->> 'message' AS message
  FROM saga.step_runs WHERE saga_id = :g;
SELECT saga.start('t_temp') AS g \gset
SELECT step, status, error ->> 'sqlstate' AS sqlstate, error ->> 'message' AS message
  FROM saga.step_runs WHERE saga_id = :g;

-- USAGE and EXECUTE are checked again when the step runs
SELECT saga.start('t_shared') AS g \gset
SELECT step, status, result, error ->> 'sqlstate' AS sqlstate FROM saga.step_runs WHERE saga_id = :g;
REVOKE USAGE ON SCHEMA t_shared FROM PUBLIC;
SELECT saga.start('t_shared') AS g \gset
SELECT step, status, error ->> 'sqlstate' AS sqlstate, error ->> 'message' AS message
  FROM saga.step_runs WHERE saga_id = :g;
GRANT USAGE ON SCHEMA t_shared TO PUBLIC;
REVOKE EXECUTE ON FUNCTION t_shared.step(jsonb) FROM PUBLIC;
SELECT saga.start('t_shared') AS g \gset
SELECT step, status, error ->> 'sqlstate' AS sqlstate, error ->> 'message' AS message
  FROM saga.step_runs WHERE saga_id = :g;

--
-- The actor is the role that called the entry point, also when an SQL step
-- of another role calls the engine in turn.
--
SET ROLE regress_trust_worker;
SELECT saga.start('t_nested') AS n \gset
SELECT id AS n_task FROM saga.outbox WHERE saga_id = :n \gset
BEGIN;
SELECT id FROM saga.outbox WHERE id = :n_task FOR UPDATE SKIP LOCKED;
SELECT saga.complete(:n_task, '{}');
COMMIT;
RESET ROLE;
SELECT (result ->> 'started')::bigint AS other FROM saga.step_runs WHERE saga_id = :n AND step = 'start_other' \gset
SELECT DISTINCT actor FROM saga.history WHERE saga_id IN (:n, :other) ORDER BY 1;

--
-- A step that calls the engine for its own saga is refused, and the
-- refusal is not lost: the step fails and the saga compensates.
--
SELECT saga.start('t_self', '{"me": "t-self"}', correlation_id => 't-self') AS me \gset
SELECT id AS me_task, deliveries AS me_lease FROM saga.outbox WHERE saga_id = :me \gset
SELECT saga.complete(:me_task, '{}');
SELECT step, status, error ->> 'sqlstate' AS sqlstate, error ->> 'message' AS message
  FROM saga.step_runs WHERE saga_id = :me ORDER BY step_index;
SELECT status FROM saga.instances WHERE id = :me;
SELECT kind, step FROM saga.outbox WHERE saga_id = :me;

--
-- Fencing: without a lease, the caller's row lock is the lease, and a task
-- under another worker's live lease is refused; nothing changes.
--
SELECT saga.start('t_plain') AS f \gset
SELECT id AS f_task, lease AS f_lease FROM saga.claim('t_t', 'fence-1', 1, '1 hour') \gset
SELECT saga_test.err(format('SELECT saga.complete(%s, %L)', :f_task, '{}'));
SELECT saga_test.err(format('SELECT saga.fail(%s, %L, false)', :f_task, '{}'));
SELECT deliveries, lease_owner FROM saga.outbox WHERE id = :f_task;
SELECT saga.complete(:f_task, '{}', lease => :f_lease);

-- a lease lapses and a transactional poll settles the task: the old lease
-- is refused from then on, for an action and for a compensation alike (it
-- cannot pass for a repeat of the poll's report)
SELECT saga.define('t_zombie', '{"steps": [{"name": "a", "topic": "t_z", "compensate": {"topic": "t_zu"}}, {"name": "b", "topic": "t_z2"}]}');
SELECT saga.start('t_zombie') AS z \gset
SELECT id AS z_task, lease AS z_lease FROM saga.claim('t_z', 'zombie', 1, '1 hour') \gset
SELECT saga_test.time_passes(:z_task);
BEGIN;
SELECT count(*) AS polled FROM (SELECT id FROM saga.outbox WHERE id = :z_task AND visible_at <= now() FOR UPDATE SKIP LOCKED) t;
SELECT saga.complete(:z_task, '{"by": "poller"}') AS poller;
COMMIT;
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => %s)', :z_task, '{"by": "poller"}', :z_lease));
SELECT saga.cancel(:z, 'zombie test');
SELECT id AS zu_task, lease AS zu_lease FROM saga.claim('t_zu', 'zombie', 1, '1 hour') \gset
SELECT saga_test.time_passes(:zu_task);
BEGIN;
SELECT count(*) AS polled FROM (SELECT id FROM saga.outbox WHERE id = :zu_task AND visible_at <= now() FOR UPDATE SKIP LOCKED) t;
SELECT saga.complete(:zu_task, '{"undone": "poller"}') AS poller;
COMMIT;
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => %s)', :zu_task, '{"zombie": true}', :zu_lease));
SELECT saga_test.err(format('SELECT saga.complete(%s, %L)', :zu_task, '{"undone": "poller"}'));
SELECT status FROM saga.instances WHERE id = :z;

-- the transactional poll's lock needs UPDATE on a column nothing reads
SET ROLE regress_trust_worker;
SELECT saga.start('t_plain') AS p \gset
BEGIN;
SELECT count(*) AS locked FROM (SELECT id FROM saga.outbox WHERE saga_id = :p FOR UPDATE SKIP LOCKED) t;
ROLLBACK;
SELECT saga_test.err(format($$UPDATE saga.outbox SET visible_at = 'infinity' WHERE saga_id = %s$$, :p));
SELECT saga_test.err(format($$UPDATE saga.outbox SET lease_owner = NULL WHERE saga_id = %s$$, :p));
SELECT saga_test.err(format($$UPDATE saga.outbox SET poll_lock = true WHERE saga_id = %s$$, :p));
RESET ROLE;

--
-- Intervals: at most 3650 days, checked without overflow; nothing stored.
--
SELECT saga_test.define_err($${"steps": [{"name": "a", "topic": "t_t", "retry": {"initial_delay": "296510 years"}}]}$$);
SELECT saga_test.define_err($${"steps": [{"name": "a", "topic": "t_t", "retry": {"max_delay": "3651 days"}}]}$$);
SELECT saga_test.define_err($${"steps": [{"name": "a", "topic": "t_t", "timeout": "178000000 years"}]}$$);
SELECT saga_test.define_err($${"steps": [{"name": "a", "topic": "t_t", "timeout": "2147483647 days 2147483647 hours"}]}$$);
SELECT saga_test.define_err($${"deadline": "11 years", "steps": [{"name": "a", "topic": "t_t"}]}$$);
SELECT saga_test.define_err($${"deadline": "-1 days", "steps": [{"name": "a", "topic": "t_t"}]}$$);
SELECT saga.define('t_long', $${"deadline": "3650 days", "steps": [{"name": "a", "topic": "t_long", "timeout": "10 years"}]}$$);
SELECT saga.start('t_long') AS l \gset
SELECT deadline_at - started_at AS deadline FROM saga.sagas WHERE id = :l;
SELECT saga_test.err($$SELECT * FROM saga.claim('t_long', 'w', 1, '3651 days')$$);
SELECT saga_test.err($$SELECT * FROM saga.claim('t_long', 'w', 1, '178000000 years')$$);
SELECT id AS l_task, lease AS l_lease FROM saga.claim('t_long', 'w', 1, '1 minute') \gset
SELECT saga_test.err(format($$SELECT saga.heartbeat(%s, %s, '3651 days')$$, :l_task, :l_lease));
SELECT saga_test.err(format($$SELECT saga.heartbeat(%s, %s, '-1 minute')$$, :l_task, :l_lease));
SELECT count(*) AS readable FROM saga.outbox;
-- a stored interval means the same in every session, whatever its IntervalStyle
SET IntervalStyle = sql_standard;
SELECT saga.define('t_style', $${"steps": [{"name": "a", "topic": "t_style", "timeout": "-1 day 25 hours"}]}$$);
SELECT saga.start('t_style') AS st \gset
SELECT timeout_at - created_at AS timeout FROM saga.outbox WHERE saga_id = :st;
RESET IntervalStyle;

--
-- Text arguments: bounded up front, the error names the argument.
--
SELECT count(*) AS sagas_before FROM saga.sagas \gset
SELECT saga_test.err(format('SELECT saga.start(%L)', repeat('s', 64)));
SELECT saga_test.err(format('SELECT saga.start(%L, %L, correlation_id => %L)', 't_plain', '{}', repeat('c', 256)));
SELECT saga_test.err(format('SELECT saga.start(%L, %L, idempotency_key => %L)', 't_plain', '{}', repeat('k', 6000)));
SELECT saga_test.err(format('SELECT saga.start(%L, %L, traceparent => %L)', 't_plain', '{}', repeat('0', 100000)));
SELECT count(*) = :sagas_before AS nothing_started FROM saga.sagas;
SELECT saga.start('t_plain', '{}', correlation_id => repeat('c', 255), idempotency_key => repeat('k', 255)) > 0 AS at_the_limit;
SELECT saga_test.err(format('SELECT saga.cancel(%s, %L)', :l, repeat('r', 1025)));
SELECT status, cancel_reason FROM saga.instances WHERE id = :l;
SELECT saga_test.err(format('SELECT * FROM saga.claim(%L, %L)', 't_t', repeat('w', 256)));
SELECT saga_test.err(format('SELECT * FROM saga.claim(%L, %L)', repeat('t', 49), 'w'));
SELECT saga_test.err(format('SELECT saga.define(%L, %L)', repeat('d', 64), '{"steps": [{"name": "a", "topic": "t_t"}]}'));

--
-- The definer's role: gone, its steps refuse to run (42704), clearly.
--
CREATE ROLE regress_trust_gone IN ROLE saga_admin;
GRANT CREATE ON SCHEMA t_app TO regress_trust_gone;
SET ROLE regress_trust_gone;
CREATE FUNCTION t_app.gone_step(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"ran": true}'::jsonb $$;
SELECT saga.define('t_gone', $${"steps": [{"name": "a", "sql": "t_app.gone_step"}]}$$);
RESET ROLE;
SELECT owner FROM saga.definitions WHERE name = 't_gone';
REASSIGN OWNED BY regress_trust_gone TO regress_trust_admin;
DROP OWNED BY regress_trust_gone;
DROP ROLE regress_trust_gone;
SELECT saga.start('t_gone') AS gone \gset
SELECT step, status, error ->> 'sqlstate' AS sqlstate, error ->> 'message' AS message
  FROM saga.step_runs WHERE saga_id = :gone;
-- as after a restore where the role does not exist: the row loads, the
-- other definitions are untouched, and only this one refuses to run
INSERT INTO saga.definitions (name, version, definition, step_names, owner)
VALUES ('t_restored', 1, '{"steps": [{"name": "a", "sql": "t_app.poison"}]}', '{a}', 'regress_trust_nobody');
SELECT saga.start('t_restored') AS restored \gset
SELECT step, status, error ->> 'sqlstate' AS sqlstate FROM saga.step_runs WHERE saga_id = :restored;

--
-- Definitions that sagas use cannot be deleted, changed or truncated.
--
SELECT saga_test.err($$DELETE FROM saga.definitions WHERE name = 't_plain'$$);
SELECT saga_test.err($$UPDATE saga.definitions SET definition = '{}' WHERE name = 't_plain'$$);
SELECT saga_test.err('TRUNCATE saga.definitions');
SELECT saga.define('t_unused', '{"steps": [{"name": "a", "topic": "t_t"}]}');
SELECT saga.define('t_unused', '{"steps": [{"name": "b", "topic": "t_t"}]}');
SELECT saga.start('t_unused') AS unused \gset
SELECT step FROM saga.outbox WHERE saga_id = :unused;
SELECT saga.cancel(:unused);
-- once version 2 is gone (no saga refers to it: the cancelled one is purged
-- here by hand), saga.start uses version 1 again, in this backend too
DELETE FROM saga.sagas WHERE id = :unused;
DELETE FROM saga.definitions WHERE name = 't_unused' AND version = 2;
SELECT saga.start('t_unused') AS unused \gset
SELECT step FROM saga.outbox WHERE saga_id = :unused;
SELECT saga.cancel(:unused);
DELETE FROM saga.sagas WHERE id = :unused;
DELETE FROM saga.definitions WHERE name = 't_unused';
SELECT count(*) AS t_definitions FROM saga.definitions WHERE name LIKE 't\_%';

--
-- What a guest raises is bounded; a cancel or timeout is not the step's
-- failure: it aborts the caller's statement, and nothing is compensated.
--
SET ROLE regress_trust_admin;
CREATE FUNCTION t_app.loud(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', pg_catalog.repeat('E', 100000) USING DETAIL = pg_catalog.repeat('D', 100000);
END
$$;
CREATE FUNCTION t_app.slow(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_sleep(5);
    RETURN '{}';
END
$$;
SELECT saga.define('t_loud', '{"steps": [{"name": "a", "sql": "t_app.loud"}]}');
SELECT saga.define('t_slow', '{"steps": [{"name": "a", "sql": "t_app.slow"}]}');
RESET ROLE;
SET ROLE regress_trust_admin;
-- a guest may RAISE any SQLSTATE: one the server did not raise is the step's
CREATE FUNCTION t_app.fake_serialization(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pretending to be a serialization failure' USING ERRCODE = '40001';
END
$$;
-- what the sandbox gives a guest, whatever the caller set
CREATE FUNCTION t_app.settings(p jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT pg_catalog.jsonb_build_object('lock_timeout', pg_catalog.current_setting('lock_timeout'),
                                         'search_path', pg_catalog.current_setting('search_path'))
$$;
SELECT saga.define('t_fake', '{"steps": [{"name": "a", "sql": "t_app.fake_serialization"}]}');
SELECT saga.define('t_settings', '{"steps": [{"name": "a", "sql": "t_app.settings"}]}');
RESET ROLE;
SELECT saga.start('t_fake') AS fake \gset
SELECT status, error ->> 'sqlstate' AS sqlstate FROM saga.step_runs WHERE saga_id = :fake;
SET lock_timeout = '300ms';
SELECT saga.start('t_settings') AS settings \gset
RESET lock_timeout;
SELECT result FROM saga.step_runs WHERE saga_id = :settings;
SELECT saga.start('t_loud') AS loud \gset
SELECT status, length(error ->> 'message') AS message_bytes, length(error ->> 'detail') AS detail_bytes
  FROM saga.step_runs WHERE saga_id = :loud;
SELECT count(*) AS sagas_before FROM saga.sagas \gset
SET statement_timeout = '100ms';
DO $$
BEGIN
    PERFORM saga.start('t_slow');
    RAISE NOTICE 'no error';
EXCEPTION WHEN query_canceled THEN
    RAISE NOTICE 'the caller''s statement was cancelled (%)', SQLSTATE;
END
$$;
RESET statement_timeout;
SELECT count(*) = :sagas_before AS nothing_started FROM saga.sagas;

--
-- A step function with a search_path of its own must list pg_temp last, or
-- a caller's temporary table could capture its names: refused at define,
-- and at run if the function changed since.
--
SET ROLE regress_trust_admin;
CREATE FUNCTION t_app.pathy(p jsonb) RETURNS jsonb LANGUAGE sql
    SET search_path = t_app AS $$ SELECT '{}'::jsonb $$;
SELECT saga_test.define_err($${"steps": [{"name": "a", "sql": "t_app.pathy"}]}$$);
ALTER FUNCTION t_app.pathy(jsonb) SET search_path = pg_temp, t_app;
SELECT saga_test.define_err($${"steps": [{"name": "a", "sql": "t_app.pathy"}]}$$);
ALTER FUNCTION t_app.pathy(jsonb) SET search_path = pg_temp, t_app, pg_temp;
SELECT saga_test.define_err($${"steps": [{"name": "a", "sql": "t_app.pathy"}]}$$);
ALTER FUNCTION t_app.pathy(jsonb) SET search_path = t_app, pg_temp;
SELECT saga.define('t_pathy', '{"steps": [{"name": "a", "sql": "t_app.pathy"}]}');
ALTER FUNCTION t_app.pathy(jsonb) SET search_path = t_app;
RESET ROLE;
SELECT saga.start('t_pathy') AS pathy \gset
SELECT status, error ->> 'sqlstate' AS sqlstate FROM saga.step_runs WHERE saga_id = :pathy;

--
-- A saga's name belongs to the role that defined it: another admin cannot
-- put its own steps behind it; a member of the owning role can.
--
CREATE ROLE regress_trust_rival IN ROLE saga_admin;
CREATE ROLE regress_trust_colleague IN ROLE regress_trust_admin;
SET ROLE regress_trust_rival;
SELECT saga_test.err($$SELECT saga.define('t_plain', '{"steps": [{"name": "a", "topic": "t_stolen"}]}')$$);
RESET ROLE;
SET ROLE regress_trust_colleague;
SELECT saga.define('t_plain', '{"steps": [{"name": "a", "topic": "t_t"}, {"name": "b", "topic": "t_t"}]}');
RESET ROLE;
SELECT version, owner FROM saga.definitions WHERE name = 't_plain' ORDER BY version;

--
-- A lease is the bounded duration it was checked as, whatever signs its
-- fields mix; a lease-less report on a task that is waiting out a retry
-- delay (not visible to any poller) is refused and changes nothing.
--
SELECT saga.start('t_long') AS ml \gset
SELECT lease_expires_at BETWEEN now() + interval '59 minutes' AND now() + interval '61 minutes' AS one_hour
  FROM saga.claim('t_long', 'w', 1, '-1 month 30 days 1 hour');
SELECT saga.start('t_plain') AS bo \gset
SELECT id AS bo_task, lease AS bo_lease FROM saga.claim('t_t', 'w', 1, '1 hour') \gset
SELECT saga.fail(:bo_task, '{"try": 1}', lease => :bo_lease);
SELECT saga_test.err(format('SELECT saga.fail(%s, %L)', :bo_task, '{"try": 2}'));
SELECT saga.fail(:bo_task, '{"try": 1}') AS repeat_recorded;
-- the same error, but for good, is not a repeat
SELECT saga_test.err(format('SELECT saga.fail(%s, %L, false)', :bo_task, '{"try": 1}'));
SELECT attempt FROM saga.outbox WHERE id = :bo_task;

--
-- An error a step catches from a nested call leaves nothing behind: the
-- saga it was about can be changed by the step's next call.
--
SET ROLE regress_trust_admin;
CREATE FUNCTION t_app.catcher(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    other bigint := (p -> 'input' ->> 'other')::bigint;
BEGIN
    BEGIN
        PERFORM saga.retry(other);      -- not failed: 55000
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        NULL;
    END;
    PERFORM saga.cancel(other, 'by a step');
    RETURN '{}';
END
$$;
SELECT saga.define('t_catcher', '{"steps": [{"name": "a", "sql": "t_app.catcher"}]}');
RESET ROLE;
SELECT saga.start('t_plain') AS victim \gset
SELECT saga.start('t_catcher', jsonb_build_object('other', :victim)) AS catcher \gset
SELECT status FROM saga.step_runs WHERE saga_id = :catcher;
SELECT status, cancel_reason FROM saga.instances WHERE id = :victim;

--
-- Numbers and intervals out of range: the path, not the value.
--
SELECT saga_test.define_err($${"steps": [{"name": "a", "topic": "t_t", "retry": {"max_attempts": 1e400}}]}$$);
SELECT saga_test.define_err($${"steps": [{"name": "a", "topic": "t_t", "timeout": "1000000000 years"}]}$$);
SELECT saga_test.define_err(format('{"steps": [{"name": "a", "topic": "t_t", "timeout": "%s"}]}', repeat('x', 1000)));
SELECT saga_test.define_err(format('{"steps": [{"name": "a", "sql": "t_app.%s"}]}', repeat('x', 1000)));
SELECT saga_test.define_err(format('{"steps": [{"name": "a", "topic": "t_t", "after": ["%s"]}]}', repeat('x', 1000)));

DROP SCHEMA t_app CASCADE;
DROP SCHEMA t_private CASCADE;
DROP SCHEMA t_shared CASCADE;
DROP ROLE regress_trust_colleague, regress_trust_rival;
DROP ROLE regress_trust_admin, regress_trust_worker;
