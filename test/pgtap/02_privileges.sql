-- 02_privileges: nothing for PUBLIC, each role exactly what it needs,
-- SECURITY DEFINER only with a pinned search_path, a COMMENT on everything.
BEGIN;
SELECT plan(53);

-- PUBLIC
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'saga'::regnamespace
         AND (p.proacl IS NULL
              OR EXISTS (SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0))$$,
    'no function in schema saga is executable by PUBLIC');
SELECT is_empty(
    $$SELECT c.oid::regclass::text FROM pg_class c
       WHERE c.relnamespace = 'saga'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'm', 'p')
         AND (c.relacl IS NULL
              OR EXISTS (SELECT FROM aclexplode(c.relacl) a WHERE a.grantee = 0))$$,
    'no table, view or sequence in schema saga is accessible to PUBLIC');
SELECT is_empty(
    $$SELECT a.attrelid::regclass::text || '.' || a.attname FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
       WHERE c.relnamespace = 'saga'::regnamespace AND a.attacl IS NOT NULL
         AND EXISTS (SELECT FROM aclexplode(a.attacl) x WHERE x.grantee = 0)$$,
    'no column in schema saga is accessible to PUBLIC');
SELECT is_empty(
    $$SELECT nspname::text FROM pg_namespace
       WHERE nspname = 'saga' AND nspacl IS NOT NULL
         AND EXISTS (SELECT FROM aclexplode(nspacl) a WHERE a.grantee = 0)$$,
    'PUBLIC has no privilege on schema saga');

-- the roles exist and cannot log in
SELECT has_role('saga_admin');
SELECT has_role('saga_worker');
SELECT has_role('saga_reader');
SELECT is((SELECT count(*)::int FROM pg_roles
            WHERE rolname IN ('saga_admin', 'saga_worker', 'saga_reader') AND (rolcanlogin OR rolsuper)),
          0, 'the saga roles are NOLOGIN and not superusers');
SELECT schema_privs_are('saga', 'saga_admin', ARRAY['USAGE'], 'saga_admin may use schema saga');
SELECT schema_privs_are('saga', 'saga_worker', ARRAY['USAGE'], 'saga_worker may use schema saga');
SELECT schema_privs_are('saga', 'saga_reader', ARRAY['USAGE'], 'saga_reader may use schema saga');

-- saga_worker: claim, complete, fail, heartbeat, start; not define, cancel, retry
SELECT function_privs_are('saga', 'claim', ARRAY['text', 'text', 'integer', 'interval'], 'saga_worker', ARRAY['EXECUTE']);
SELECT function_privs_are('saga', 'complete', ARRAY['bigint', 'jsonb', 'integer'], 'saga_worker', ARRAY['EXECUTE']);
SELECT function_privs_are('saga', 'fail', ARRAY['bigint', 'jsonb', 'boolean', 'integer'], 'saga_worker', ARRAY['EXECUTE']);
SELECT function_privs_are('saga', 'heartbeat', ARRAY['bigint', 'integer', 'interval'], 'saga_worker', ARRAY['EXECUTE']);
SELECT function_privs_are('saga', 'start', ARRAY['text', 'jsonb', 'text', 'text', 'text'], 'saga_worker', ARRAY['EXECUTE']);
SELECT function_privs_are('saga', 'define', ARRAY['text', 'jsonb'], 'saga_worker', ARRAY[]::name[]);
SELECT function_privs_are('saga', 'cancel', ARRAY['bigint', 'text'], 'saga_worker', ARRAY[]::name[]);
SELECT function_privs_are('saga', 'retry', ARRAY['bigint'], 'saga_worker', ARRAY[]::name[]);

-- saga_admin: define, cancel, retry, start; not the worker protocol
SELECT function_privs_are('saga', 'define', ARRAY['text', 'jsonb'], 'saga_admin', ARRAY['EXECUTE']);
SELECT function_privs_are('saga', 'cancel', ARRAY['bigint', 'text'], 'saga_admin', ARRAY['EXECUTE']);
SELECT function_privs_are('saga', 'retry', ARRAY['bigint'], 'saga_admin', ARRAY['EXECUTE']);
SELECT function_privs_are('saga', 'start', ARRAY['text', 'jsonb', 'text', 'text', 'text'], 'saga_admin', ARRAY['EXECUTE']);
SELECT function_privs_are('saga', 'claim', ARRAY['text', 'text', 'integer', 'interval'], 'saga_admin', ARRAY[]::name[]);
SELECT function_privs_are('saga', 'complete', ARRAY['bigint', 'jsonb', 'integer'], 'saga_admin', ARRAY[]::name[]);

-- saga_reader: no function that changes anything (worker_status, topic_backlog
-- behind saga.topics, and the diagrams only read)
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'saga'::regnamespace
         AND p.oid NOT IN ('saga.worker_status()'::regprocedure, 'saga.topic_backlog()'::regprocedure)
         AND p.proname !~ '^(diagram|diagram_[a-z_]+|flow_diagram|timeline)$'
         AND has_function_privilege('saga_reader', p.oid, 'EXECUTE')$$,
    'saga_reader may execute no saga function but saga.worker_status(), saga.topic_backlog() and the diagrams');

-- tables and views
SELECT table_privs_are('saga', 'instances', 'saga_reader', ARRAY['SELECT']);
SELECT table_privs_are('saga', 'step_runs', 'saga_reader', ARRAY['SELECT']);
SELECT table_privs_are('saga', 'incidents', 'saga_reader', ARRAY['SELECT']);
SELECT table_privs_are('saga', 'history', 'saga_reader', ARRAY['SELECT']);
SELECT table_privs_are('saga', 'sagas', 'saga_reader', ARRAY[]::name[]);
SELECT table_privs_are('saga', 'outbox', 'saga_worker', ARRAY['SELECT']);
SELECT column_privs_are('saga', 'outbox', 'poll_lock', 'saga_worker', ARRAY['SELECT', 'UPDATE'],
                        'saga_worker may lock outbox rows (UPDATE of poll_lock, which nothing reads)');
SELECT column_privs_are('saga', 'outbox', 'visible_at', 'saga_worker', ARRAY['SELECT'],
                        'saga_worker may not move visible_at (hide tasks, end leases)');
SELECT column_privs_are('saga', 'outbox', 'payload', 'saga_worker', ARRAY['SELECT'],
                        'saga_worker may not change a payload');
SELECT table_privs_are('saga', 'sagas', 'saga_worker', ARRAY[]::name[]);
SELECT table_privs_are('saga', 'definitions', 'saga_worker', ARRAY['SELECT']);
SELECT table_privs_are('saga', 'sagas', 'saga_admin', ARRAY[]::name[]);
SELECT is_empty(
    $$SELECT c.oid::regclass::text || ' ' || r FROM pg_class c,
             unnest(ARRAY['saga_admin', 'saga_worker', 'saga_reader']) r
       WHERE c.relnamespace = 'saga'::regnamespace AND c.relkind IN ('r', 'v', 'p')
         AND (has_table_privilege(r, c.oid, 'INSERT') OR has_table_privilege(r, c.oid, 'DELETE')
              OR has_table_privilege(r, c.oid, 'TRUNCATE'))$$,
    'no saga role may insert, delete or truncate anything directly');

-- in practice
SET LOCAL ROLE saga_worker;
SELECT throws_ok($$SELECT saga.define('pgtap_priv', '{"steps": [{"name": "a", "topic": "t"}]}')$$,
                 '42501', NULL, 'saga_worker cannot define');
SELECT throws_ok('SELECT saga.cancel(0)', '42501', NULL, 'saga_worker cannot cancel');
SELECT lives_ok($$SELECT * FROM saga.claim('pgtap_nothing', 'w')$$, 'saga_worker can claim');
SELECT throws_ok('SELECT count(*) FROM saga.sagas', '42501', NULL, 'saga_worker cannot read saga.sagas');
RESET ROLE;
SET LOCAL ROLE saga_reader;
SELECT lives_ok('SELECT count(*) FROM saga.instances', 'saga_reader can read saga.instances');
SELECT lives_ok('SELECT count(*) FROM saga.step_runs', 'saga_reader can read saga.step_runs');
SELECT throws_ok($$SELECT saga.start('x')$$, '42501', NULL, 'saga_reader cannot start');
SELECT throws_ok($$SELECT * FROM saga.claim('t', 'w')$$, '42501', NULL, 'saga_reader cannot claim');
RESET ROLE;

-- SECURITY DEFINER only with a pinned search_path; none of the C functions needs it
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'saga'::regnamespace AND p.prosecdef
         AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c
                          WHERE c LIKE 'search\_path=pg\_catalog%')$$,
    'every SECURITY DEFINER function pins search_path to pg_catalog first');
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'saga'::regnamespace
         AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search\_path=%')$$,
    'every saga function pins its search_path');

-- comments
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'saga'::regnamespace
         AND coalesce(obj_description(p.oid, 'pg_proc'), '') = ''$$,
    'every saga function has a COMMENT');
SELECT is_empty(
    $$SELECT c.oid::regclass::text FROM pg_class c
       WHERE c.relnamespace = 'saga'::regnamespace AND c.relkind IN ('r', 'v', 'p')
         AND coalesce(obj_description(c.oid, 'pg_class'), '') = ''$$,
    'every saga table and view has a COMMENT');
SELECT isnt(obj_description('saga.task'::regtype, 'pg_type'), NULL, 'type saga.task has a COMMENT');
SELECT isnt(obj_description('saga'::regnamespace, 'pg_namespace'), NULL, 'schema saga has a COMMENT');

SELECT * FROM finish();
ROLLBACK;
