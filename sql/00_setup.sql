--
-- 00_setup: install the extension and the test helpers every later file uses.
-- All files of this suite run in one database, in name order.
--
CREATE EXTENSION saga;

SELECT extversion, extrelocatable, extnamespace::regnamespace AS extnamespace
  FROM pg_extension WHERE extname = 'saga';
SELECT current_setting('shared_preload_libraries') AS preloaded;
SHOW saga.max_payload_size;

-- the objects that belong to the extension
SELECT pg_describe_object(classid, objid, objsubid) AS object
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'saga')
   AND deptype = 'e'
 ORDER BY pg_describe_object(classid, objid, objsubid) COLLATE "C";

SELECT rolname, rolcanlogin, rolsuper
  FROM pg_roles WHERE rolname IN ('saga_admin', 'saga_worker', 'saga_reader')
 ORDER BY rolname COLLATE "C";

-- the schema is a member of the extension: DROP EXTENSION takes it along,
-- the cluster-wide roles stay, and a second CREATE EXTENSION finds them
DROP EXTENSION saga;
SELECT count(*) AS saga_schemas FROM pg_namespace WHERE nspname = 'saga';
SELECT count(*) AS saga_roles FROM pg_roles WHERE rolname LIKE 'saga\_%';
CREATE EXTENSION saga;
SELECT count(*) AS saga_schemas FROM pg_namespace WHERE nspname = 'saga';

-- a schema other than pg_catalog cannot be asked for
CREATE SCHEMA elsewhere;
DROP EXTENSION saga;
CREATE EXTENSION saga SCHEMA elsewhere;
CREATE EXTENSION saga;
DROP SCHEMA elsewhere;

--
-- Helpers.
--
-- dblink gives the notification tests a second session that LISTENs.
CREATE EXTENSION dblink;
CREATE SCHEMA saga_test;
-- 85_roles calls the helpers under other roles
GRANT USAGE ON SCHEMA saga_test TO PUBLIC;

-- Run a statement; return its error as "SQLSTATE: message | detail | hint".
-- Saga and task ids in the text become <id>: they depend on how many sagas
-- earlier tests started.
CREATE FUNCTION saga_test.err(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    st  text;
    msg text;
    det text;
    hnt text;
BEGIN
    EXECUTE stmt;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
    RETURN regexp_replace(
        st || ': ' || msg
        || CASE WHEN det <> '' THEN ' | ' || det ELSE '' END
        || CASE WHEN hnt <> '' THEN ' | hint: ' || hnt ELSE '' END,
        '\m(task|saga) -?[0-9]+', '\1 <id>', 'g');
END
$$;

-- Run a statement that returns one value: "returned <value>" or
-- "error <SQLSTATE>".
CREATE FUNCTION saga_test.outcome(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v text;
BEGIN
    EXECUTE stmt INTO v;
    RETURN 'returned ' || coalesce(v, 'NULL');
EXCEPTION WHEN OTHERS THEN
    RETURN 'error ' || SQLSTATE;
END
$$;

-- Run saga.define(name, doc) expecting an error; also say whether the
-- number of stored definitions changed.
CREATE FUNCTION saga_test.define_err(doc text, name text DEFAULT 'd_bad') RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    before bigint;
    result text;
BEGIN
    SELECT count(*) INTO before FROM saga.definitions;
    result := saga_test.err(format('SELECT saga.define(%L, %L::jsonb)', name, doc));
    RETURN result || CASE WHEN (SELECT count(*) FROM saga.definitions) = before
                          THEN ' [nothing stored]' ELSE ' [STORED]' END;
END
$$;

-- The documented task id: saga_id << 10 | step_index << 1 | compensation.
CREATE FUNCTION saga_test.task_id(saga bigint, step_index int, compensation bool DEFAULT false)
RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (saga << 10) | (step_index << 1) | (CASE WHEN compensation THEN 1 ELSE 0 END)
$$;

-- The task id of a named step of a saga (from its definition).
CREATE FUNCTION saga_test.task(saga bigint, step text, compensation bool DEFAULT false)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT saga_test.task_id(saga, array_position(d.step_names, step) - 1, compensation)
      FROM saga.sagas s JOIN saga.definitions d ON d.id = s.definition_id
     WHERE s.id = saga
$$;

-- Let time pass for one task: what a lapsed lease or an elapsed retry delay
-- does to it (saga_worker may update visible_at: the transactional poll).
CREATE FUNCTION saga_test.time_passes(task bigint) RETURNS void
LANGUAGE sql AS $$
    UPDATE saga.outbox SET visible_at = now() - interval '1 second' WHERE id = task
$$;

-- A second session, through dblink, LISTENs on the given channels.
CREATE FUNCTION saga_test.listen(VARIADIC channels text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    c text;
BEGIN
    IF NOT 'saga_test_listener' = ANY (coalesce(dblink_get_connections(), '{}')) THEN
        PERFORM dblink_connect('saga_test_listener',
            format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
                   split_part(current_setting('unix_socket_directories'), ',', 1)));
        PERFORM dblink_exec('saga_test_listener', 'LISTEN saga_test_flush');
    END IF;
    FOREACH c IN ARRAY channels LOOP
        PERFORM dblink_exec('saga_test_listener', format('LISTEN %I', c));
    END LOOP;
END
$$;

-- The channels notified since the last call, one entry per notification,
-- sorted (the order within a transaction is the engine's business).  The
-- listener commits a NOTIFY of its own first: that makes it read the whole
-- queue, so everything committed before this call is there and nothing can
-- arrive late.
CREATE FUNCTION saga_test.notifications() RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    r text[];
BEGIN
    PERFORM dblink_exec('saga_test_listener', 'NOTIFY saga_test_flush');
    SELECT coalesce(array_agg(n.notify_name ORDER BY n.notify_name COLLATE "C"), '{}') INTO r
      FROM dblink_get_notify('saga_test_listener')
           WITH ORDINALITY AS n(notify_name, be_pid, extra, ord)
     WHERE n.notify_name <> 'saga_test_flush';
    RETURN r;
END
$$;

-- self-test of the helpers
SELECT saga_test.err('SELECT 1/0');
SELECT saga_test.err('SELECT 1');
SELECT saga_test.err($q$DO $do$ BEGIN RAISE 'task 42 of saga 7' USING DETAIL = 'saga -1', HINT = 'h'; END $do$$q$);
SELECT saga_test.outcome('SELECT 1/0'), saga_test.outcome('SELECT 2'), saga_test.outcome('SELECT NULL');
SELECT saga_test.task_id(5, 0), saga_test.task_id(5, 3), saga_test.task_id(5, 3, true);
SELECT saga_test.listen('saga_test_a', 'saga_test_b');
SELECT saga_test.notifications();
NOTIFY saga_test_a;
BEGIN;
NOTIFY saga_test_b;
NOTIFY saga_test_a, 'x';
COMMIT;
SELECT saga_test.notifications();
SELECT saga_test.notifications();

-- this database has no background worker (saga.databases names postgres):
-- CREATE EXTENSION said so, and saga.worker_status() tells
SELECT served, preloaded, listed, worker_pid IS NULL AS no_worker FROM saga.worker_status();
