-- 01_schema: the objects of the contract (README) exist with their columns,
-- signatures and indexes.
BEGIN;
SELECT plan(104);

SELECT has_extension('saga');
SELECT has_schema('saga');
SELECT is((SELECT extrelocatable FROM pg_extension WHERE extname = 'saga'), false, 'saga is not relocatable');
SELECT is((SELECT count(*)::int FROM pg_namespace n
             JOIN pg_depend d ON d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e'
            WHERE n.nspname = 'saga'), 1, 'schema saga is a member of the extension');

-- tables and views
SELECT has_table('saga', 'definitions', 'table saga.definitions');
SELECT has_table('saga', 'sagas', 'table saga.sagas');
SELECT has_table('saga', 'outbox', 'table saga.outbox');
SELECT ok(EXISTS (SELECT FROM pg_class WHERE oid = 'saga.history'::regclass AND relkind IN ('r', 'v', 'p')),
          'saga.history is a table or a view');
SELECT has_view('saga', 'instances', 'view saga.instances');
SELECT has_view('saga', 'step_runs', 'view saga.step_runs');
SELECT has_view('saga', 'incidents', 'view saga.incidents');
SELECT has_view('saga', 'topics', 'view saga.topics');
SELECT has_pk('saga', 'definitions', 'saga.definitions has a primary key');
SELECT has_pk('saga', 'sagas', 'saga.sagas has a primary key');
SELECT has_pk('saga', 'outbox', 'saga.outbox has a primary key');

-- view saga.instances
SELECT has_column('saga', 'instances', c, 'saga.instances.' || c)
  FROM unnest(ARRAY['id', 'name', 'version', 'status', 'correlation_id', 'input',
                    'started_at', 'finished_at']) AS c;
-- view saga.step_runs
SELECT has_column('saga', 'step_runs', c, 'saga.step_runs.' || c)
  FROM unnest(ARRAY['saga_id', 'step', 'status', 'attempts', 'result', 'error']) AS c;
-- view saga.incidents (the brief)
SELECT has_column('saga', 'incidents', c, 'saga.incidents.' || c)
  FROM unnest(ARRAY['saga_id', 'name', 'version', 'correlation_id', 'step', 'error', 'since']) AS c;
-- view saga.topics (README, Monitoring)
SELECT has_column('saga', 'topics', c, 'saga.topics.' || c)
  FROM unnest(ARRAY['topic', 'ready', 'delayed', 'leased', 'oldest_ready_age', 'dead_letters',
                    'last_claim', 'parked']) AS c;
-- table saga.outbox
SELECT has_column('saga', 'outbox', c, 'saga.outbox.' || c)
  FROM unnest(ARRAY['id', 'topic', 'payload', 'headers', 'visible_at']) AS c;
-- table saga.history
SELECT has_column('saga', 'history', c, 'saga.history.' || c)
  FROM unnest(ARRAY['saga_id', 'at', 'event', 'step', 'detail']) AS c;

-- column types users rely on
SELECT col_type_is('saga', 'instances', 'id', 'bigint', 'instances.id is bigint');
SELECT col_type_is('saga', 'instances', 'version', 'integer', 'instances.version is integer');
SELECT col_type_is('saga', 'instances', 'input', 'jsonb', 'instances.input is jsonb');
SELECT col_type_is('saga', 'instances', 'started_at', 'timestamp with time zone', 'instances.started_at is timestamptz');
SELECT col_type_is('saga', 'outbox', 'id', 'bigint', 'outbox.id is bigint');
SELECT col_type_is('saga', 'outbox', 'payload', 'jsonb', 'outbox.payload is jsonb');
SELECT col_type_is('saga', 'outbox', 'headers', 'jsonb', 'outbox.headers is jsonb');
SELECT col_type_is('saga', 'outbox', 'visible_at', 'timestamp with time zone', 'outbox.visible_at is timestamptz');
SELECT col_type_is('saga', 'step_runs', 'result', 'jsonb', 'step_runs.result is jsonb');
SELECT col_type_is('saga', 'history', 'detail', 'jsonb', 'history.detail is jsonb');

-- type saga.task, what claim returns
SELECT has_composite('saga', 'task', 'composite type saga.task');
SELECT results_eq(
    $$SELECT attname::text COLLATE "default", format_type(atttypid, atttypmod)
        FROM pg_attribute
       WHERE attrelid = (SELECT typrelid FROM pg_type WHERE oid = 'saga.task'::regtype)
         AND attnum > 0 AND NOT attisdropped
         AND attname IN ('id', 'topic', 'kind', 'saga_id', 'step', 'attempt', 'lease', 'payload', 'headers')
       ORDER BY attnum$$,
    $$VALUES ('id', 'bigint'), ('topic', 'text'), ('kind', 'text'), ('saga_id', 'bigint'),
             ('step', 'text'), ('attempt', 'integer'), ('lease', 'integer'),
             ('payload', 'jsonb'), ('headers', 'jsonb')$$,
    'saga.task has the documented columns in order, with their types');

-- functions, with their signatures and return types
SELECT has_function('saga', 'define', ARRAY['text', 'jsonb'], 'saga.define(text, jsonb)');
SELECT has_function('saga', 'start', ARRAY['text', 'jsonb', 'text', 'text', 'text'], 'saga.start(text, jsonb, text, text, text)');
SELECT has_function('saga', 'claim', ARRAY['text', 'text', 'integer', 'interval'], 'saga.claim(text, text, integer, interval)');
SELECT has_function('saga', 'complete', ARRAY['bigint', 'jsonb', 'integer'], 'saga.complete(bigint, jsonb, integer)');
SELECT has_function('saga', 'fail', ARRAY['bigint', 'jsonb', 'boolean', 'integer'], 'saga.fail(bigint, jsonb, boolean, integer)');
SELECT has_function('saga', 'heartbeat', ARRAY['bigint', 'integer', 'interval'], 'saga.heartbeat(bigint, integer, interval)');
SELECT has_function('saga', 'cancel', ARRAY['bigint', 'text'], 'saga.cancel(bigint, text)');
SELECT has_function('saga', 'retry', ARRAY['bigint'], 'saga.retry(bigint)');

SELECT function_returns('saga', 'define', ARRAY['text', 'jsonb'], 'integer');
SELECT function_returns('saga', 'start', ARRAY['text', 'jsonb', 'text', 'text', 'text'], 'bigint');
SELECT function_returns('saga', 'claim', ARRAY['text', 'text', 'integer', 'interval'], 'setof saga.task');
SELECT function_returns('saga', 'complete', ARRAY['bigint', 'jsonb', 'integer'], 'boolean');
SELECT function_returns('saga', 'fail', ARRAY['bigint', 'jsonb', 'boolean', 'integer'], 'boolean');
SELECT function_returns('saga', 'heartbeat', ARRAY['bigint', 'integer', 'interval'], 'timestamp with time zone');
SELECT function_returns('saga', 'cancel', ARRAY['bigint', 'text'], 'void');
SELECT function_returns('saga', 'retry', ARRAY['bigint'], 'void');

-- argument names and defaults, as callers use them with named notation
SELECT is(pg_get_function_arguments('saga.start(text, jsonb, text, text, text)'::regprocedure),
          $$name text, input jsonb DEFAULT '{}'::jsonb, correlation_id text DEFAULT NULL::text, idempotency_key text DEFAULT NULL::text, traceparent text DEFAULT NULL::text$$,
          'saga.start arguments and defaults');
SELECT is(pg_get_function_arguments('saga.claim(text, text, integer, interval)'::regprocedure),
          $$topic text, worker text, max_tasks integer DEFAULT 1, lease interval DEFAULT '00:00:30'::interval$$,
          'saga.claim arguments and defaults');
SELECT is(pg_get_function_arguments('saga.complete(bigint, jsonb, integer)'::regprocedure),
          $$task_id bigint, result jsonb DEFAULT '{}'::jsonb, lease integer DEFAULT NULL::integer$$,
          'saga.complete arguments and defaults');
SELECT is(pg_get_function_arguments('saga.fail(bigint, jsonb, boolean, integer)'::regprocedure),
          $$task_id bigint, error jsonb DEFAULT '{}'::jsonb, retryable boolean DEFAULT true, lease integer DEFAULT NULL::integer$$,
          'saga.fail arguments and defaults: retryable by default');
SELECT is(pg_get_function_arguments('saga.heartbeat(bigint, integer, interval)'::regprocedure),
          $$task_id bigint, lease integer, extend interval DEFAULT NULL::interval$$,
          'saga.heartbeat arguments and defaults');
SELECT is(pg_get_function_arguments('saga.cancel(bigint, text)'::regprocedure),
          $$saga_id bigint, reason text DEFAULT NULL::text$$,
          'saga.cancel arguments and defaults');

SELECT volatility_is('saga', 'define', ARRAY['text', 'jsonb'], 'volatile', 'saga.define is volatile');
SELECT isnt_strict('saga', 'define', ARRAY['text', 'jsonb'], 'saga.define is not strict (a NULL argument raises 22004)');
SELECT isnt_strict('saga', 'start', ARRAY['text', 'jsonb', 'text', 'text', 'text'], 'saga.start is not strict (NULL defaults)');
SELECT is((SELECT count(*)::int FROM pg_proc WHERE pronamespace = 'saga'::regnamespace AND proparallel <> 'u'),
          0, 'no saga function is marked parallel safe or restricted');

-- indexes: the claim index matches the poll's ORDER BY (topic, visible_at, id)
SELECT has_index('saga', 'outbox', 'outbox_claim', ARRAY['topic', 'visible_at', 'id'],
                 'outbox_claim on (topic, visible_at, id)');
SELECT has_index('saga', 'history_log', 'history_log_saga_id', ARRAY['saga_id', 'id'], 'history by saga');
SELECT index_is_unique('saga', 'sagas', 'sagas_idempotency_key', 'one saga per (name, idempotency_key)');
SELECT has_index('saga', 'sagas', 'sagas_idempotency_key', ARRAY['name', 'idempotency_key'], 'idempotency index columns');
SELECT index_is_unique('saga', 'definitions', 'definitions_name_version_key', 'one row per (name, version)');

-- the poll of the README is served by outbox_claim without a sort
CREATE FUNCTION pg_temp.plan_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
    l text;
    r text := '';
BEGIN
    FOR l IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
        r := r || l || E'\n';
    END LOOP;
    RETURN r;
END
$f$;
SET LOCAL enable_seqscan = off;
SELECT ok(pg_temp.plan_of($$SELECT id, payload, headers FROM saga.outbox
                             WHERE topic = 'payments' AND visible_at <= now()
                             ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 10$$) ~ 'outbox_claim',
          'the poll uses outbox_claim');
SELECT ok(pg_temp.plan_of($$SELECT id, payload, headers FROM saga.outbox
                             WHERE topic = 'payments' AND visible_at <= now()
                             ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 10$$) !~ 'Sort',
          'the poll needs no sort');
RESET enable_seqscan;

-- every object in schema saga belongs to the extension
SELECT is_empty(
    $$SELECT c.oid::regclass::text FROM pg_class c
       WHERE c.relnamespace = 'saga'::regnamespace
         AND c.relkind IN ('r', 'v', 'S', 'm', 'p')
         AND NOT EXISTS (SELECT FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
      UNION ALL
      SELECT t.oid::regtype::text FROM pg_type t
       WHERE t.typnamespace = 'saga'::regnamespace AND t.typtype = 'c'
         AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
         AND NOT EXISTS (SELECT FROM pg_depend d
                          WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
      UNION ALL
      SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'saga'::regnamespace
         AND NOT EXISTS (SELECT FROM pg_depend d
                          WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')$$,
    'every relation, composite type and function in schema saga is a member of the extension');

-- the step statuses of the contract, as the view names them
SELECT ok(pg_get_viewdef('saga.step_runs'::regclass) ~ 'pending'
          AND pg_get_viewdef('saga.step_runs'::regclass) ~ 'ready'
          AND pg_get_viewdef('saga.step_runs'::regclass) ~ 'running'
          AND pg_get_viewdef('saga.step_runs'::regclass) ~ 'succeeded'
          AND pg_get_viewdef('saga.step_runs'::regclass) ~ 'compensating'
          AND pg_get_viewdef('saga.step_runs'::regclass) ~ 'compensated'
          AND pg_get_viewdef('saga.step_runs'::regclass) ~ 'skipped',
          'the step statuses of the contract are named by saga.step_runs');

-- the roles
SELECT has_role('saga_admin');
SELECT has_role('saga_worker');
SELECT has_role('saga_reader');

-- the GUC of the contract

SELECT * FROM finish();
ROLLBACK;
