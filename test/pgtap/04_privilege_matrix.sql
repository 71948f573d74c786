-- 04_privilege_matrix: every function, table, view and sequence of the
-- extension, with what each role (and PUBLIC) may do with it, as one list.
-- A grant or revoke anywhere is a visible change to this file.
BEGIN;
SELECT plan(4);

CREATE TEMP VIEW privilege_matrix AS
WITH roles(r) AS (VALUES ('saga_admin'), ('saga_worker'), ('saga_reader'), ('public')),
objs AS (
    SELECT 'function' AS kind, p.oid::regprocedure::text AS obj, p.oid, NULL::name AS col
      FROM pg_proc p WHERE p.pronamespace = 'saga'::regnamespace
    UNION ALL
    SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'S' THEN 'sequence' END,
           c.oid::regclass::text, c.oid, NULL
      FROM pg_class c WHERE c.relnamespace = 'saga'::regnamespace AND c.relkind IN ('r', 'v', 'S')
    UNION ALL
    SELECT 'column', c.oid::regclass::text || '.' || a.attname, c.oid, a.attname
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
     WHERE c.relnamespace = 'saga'::regnamespace AND a.attacl IS NOT NULL
),
privs AS (
    SELECT o.kind, o.obj, roles.r,
           array_to_string(ARRAY(
               SELECT p FROM unnest(CASE o.kind
                   WHEN 'function' THEN ARRAY['EXECUTE']
                   WHEN 'sequence' THEN ARRAY['USAGE', 'SELECT', 'UPDATE']
                   WHEN 'column' THEN ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']
                   ELSE ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'] END) p
                WHERE CASE o.kind
                   WHEN 'function' THEN has_function_privilege(roles.r, o.oid, p)
                   WHEN 'sequence' THEN has_sequence_privilege(roles.r, o.oid, p)
                   -- a column's own grant, not one it inherits from the table
                   WHEN 'column' THEN has_column_privilege(roles.r, o.oid, o.col, p)
                                      AND NOT has_table_privilege(roles.r, o.oid, p)
                   ELSE has_table_privilege(roles.r, o.oid, p) END), ',') AS may
      FROM objs o CROSS JOIN roles
)
SELECT kind, obj, r AS role, may FROM privs WHERE may <> '';

SELECT set_eq(
    'SELECT kind, obj, role, may FROM privilege_matrix',
    $$VALUES
      ('function', 'saga.cancel(bigint,text)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.define(text,jsonb)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.retry(bigint)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.tick()', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.start(text,jsonb,text,text,text)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.start(text,jsonb,text,text,text)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.claim(text,text,integer,interval)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.complete(bigint,jsonb,integer)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.fail(bigint,jsonb,boolean,integer)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.heartbeat(bigint,integer,interval)', 'saga_worker', 'EXECUTE'),
      ('table', 'saga.outbox', 'saga_admin', 'SELECT'),
      ('table', 'saga.outbox', 'saga_worker', 'SELECT'),
      ('table', 'saga.outbox', 'saga_reader', 'SELECT'),
      ('column', 'saga.outbox.poll_lock', 'saga_worker', 'UPDATE'),
      ('table', 'saga.definitions', 'saga_admin', 'SELECT'),
      ('table', 'saga.definitions', 'saga_worker', 'SELECT'),
      ('table', 'saga.definitions', 'saga_reader', 'SELECT'),
      ('view', 'saga.instances', 'saga_admin', 'SELECT'),
      ('view', 'saga.instances', 'saga_worker', 'SELECT'),
      ('view', 'saga.instances', 'saga_reader', 'SELECT'),
      ('view', 'saga.step_runs', 'saga_admin', 'SELECT'),
      ('view', 'saga.step_runs', 'saga_worker', 'SELECT'),
      ('view', 'saga.step_runs', 'saga_reader', 'SELECT'),
      ('view', 'saga.incidents', 'saga_admin', 'SELECT'),
      ('view', 'saga.incidents', 'saga_worker', 'SELECT'),
      ('view', 'saga.incidents', 'saga_reader', 'SELECT'),
      ('view', 'saga.history', 'saga_admin', 'SELECT'),
      ('view', 'saga.history', 'saga_worker', 'SELECT'),
      ('view', 'saga.history', 'saga_reader', 'SELECT'),
      ('function', 'saga.publish(text,jsonb,text,bigint,text,text,text)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.subscribe(text,text,jsonb)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.release(bigint,integer)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.worker_status()', 'saga_reader', 'EXECUTE'),
      ('function', 'saga.worker_status()', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.worker_status()', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.unsubscribe(text,text)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.redeliver(bigint)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.replay(text,text,timestamp with time zone,timestamp with time zone)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.define_choreography(text,jsonb)', 'saga_admin', 'EXECUTE'),
      ('table', 'saga.events', 'saga_admin', 'SELECT'),
      ('table', 'saga.events', 'saga_worker', 'SELECT'),
      ('table', 'saga.events', 'saga_reader', 'SELECT'),
      ('table', 'saga.subscriptions', 'saga_admin', 'SELECT'),
      ('table', 'saga.subscriptions', 'saga_worker', 'SELECT'),
      ('table', 'saga.subscriptions', 'saga_reader', 'SELECT'),
      ('table', 'saga.filter_errors', 'saga_admin', 'SELECT'),
      ('table', 'saga.filter_errors', 'saga_worker', 'SELECT'),
      ('table', 'saga.filter_errors', 'saga_reader', 'SELECT'),
      ('table', 'saga.dead_letters', 'saga_admin', 'SELECT'),
      ('table', 'saga.dead_letters', 'saga_worker', 'SELECT'),
      ('table', 'saga.dead_letters', 'saga_reader', 'SELECT'),
      ('table', 'saga.choreographies', 'saga_admin', 'SELECT'),
      ('table', 'saga.choreographies', 'saga_worker', 'SELECT'),
      ('table', 'saga.choreographies', 'saga_reader', 'SELECT'),
      ('table', 'saga.flows', 'saga_admin', 'SELECT'),
      ('table', 'saga.flows', 'saga_worker', 'SELECT'),
      ('table', 'saga.flows', 'saga_reader', 'SELECT'),
      ('view', 'saga.topics', 'saga_admin', 'SELECT'),
      ('view', 'saga.topics', 'saga_worker', 'SELECT'),
      ('view', 'saga.topics', 'saga_reader', 'SELECT'),
      ('function', 'saga.topic_backlog()', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.topic_backlog()', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.topic_backlog()', 'saga_reader', 'EXECUTE'),
      ('function', 'saga.diagram_escape(text,text)', 'saga_reader', 'EXECUTE'),
      ('function', 'saga.diagram_escape(text,text)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.diagram_escape(text,text)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.diagram_render(jsonb,text)', 'saga_reader', 'EXECUTE'),
      ('function', 'saga.diagram_render(jsonb,text)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.diagram_render(jsonb,text)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.diagram_saga_graph(jsonb,text[],jsonb)', 'saga_reader', 'EXECUTE'),
      ('function', 'saga.diagram_saga_graph(jsonb,text[],jsonb)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.diagram_saga_graph(jsonb,text[],jsonb)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.diagram_choreography_graph(jsonb,text[])', 'saga_reader', 'EXECUTE'),
      ('function', 'saga.diagram_choreography_graph(jsonb,text[])', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.diagram_choreography_graph(jsonb,text[])', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.diagram(text,text,integer)', 'saga_reader', 'EXECUTE'),
      ('function', 'saga.diagram(text,text,integer)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.diagram(text,text,integer)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.diagram(bigint,text)', 'saga_reader', 'EXECUTE'),
      ('function', 'saga.diagram(bigint,text)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.diagram(bigint,text)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.flow_diagram(text)', 'saga_reader', 'EXECUTE'),
      ('function', 'saga.flow_diagram(text)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.flow_diagram(text)', 'saga_worker', 'EXECUTE'),
      ('function', 'saga.timeline(bigint)', 'saga_reader', 'EXECUTE'),
      ('function', 'saga.timeline(bigint)', 'saga_admin', 'EXECUTE'),
      ('function', 'saga.timeline(bigint)', 'saga_worker', 'EXECUTE')$$,
    'the privilege matrix: exactly these grants, nothing for PUBLIC');

-- the objects the matrix covers are all there is: a new object shows up
SELECT set_eq(
    $$SELECT kind, count(*)::int FROM (
        SELECT 'function' AS kind FROM pg_proc WHERE pronamespace = 'saga'::regnamespace
        UNION ALL
        SELECT CASE relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'S' THEN 'sequence'
                            WHEN 'i' THEN 'index' WHEN 'c' THEN 'type' ELSE relkind::text END
          FROM pg_class WHERE relnamespace = 'saga'::regnamespace) o GROUP BY kind$$,
    $$VALUES ('function', 28), ('table', 10), ('view', 5), ('sequence', 8), ('index', 31), ('type', 1)$$,
    'the extension has 28 functions, 10 tables, 5 views, 8 sequences, 31 indexes and 1 type');

-- the trigger function is executable by nobody but its owner
SELECT is_empty(
    $$SELECT r FROM unnest(ARRAY['saga_admin', 'saga_worker', 'saga_reader', 'public']) r
       WHERE has_function_privilege(r, 'saga.definitions_guard()', 'EXECUTE')$$,
    'no role may call saga.definitions_guard() directly');

-- the schema: USAGE for the three roles, nothing else
SELECT set_eq(
    $$SELECT r, has_schema_privilege(r, 'saga', 'USAGE') AS usage, has_schema_privilege(r, 'saga', 'CREATE') AS create_
        FROM unnest(ARRAY['saga_admin', 'saga_worker', 'saga_reader', 'public']) r$$,
    $$VALUES ('saga_admin', true, false), ('saga_worker', true, false),
             ('saga_reader', true, false), ('public', false, false)$$,
    'schema saga: USAGE for the saga roles, CREATE for none, nothing for PUBLIC');

SELECT * FROM finish();
ROLLBACK;
