--
-- 01_upgrade: 0.1 as it landed, updated to 0.2, 0.3 and 0.4 with its data,
-- is the same extension as a fresh 0.4: same objects, columns, grants,
-- options, comments.
--
DROP EXTENSION saga;
CREATE EXTENSION saga VERSION '0.1';
SELECT extversion FROM pg_extension WHERE extname = 'saga';

-- data written under 0.1 (by this library: it reads and writes either): a
-- saga in flight, and one compensating whose compensation was leased
CREATE ROLE regress_upgrade_admin IN ROLE saga_admin;
SET ROLE regress_upgrade_admin;
SELECT saga.define('u_flow', '{"steps": [{"name": "a", "topic": "u_t"}]}');
SELECT saga.define('u_comp', '{"steps": [{"name": "a", "topic": "u_c", "compensate": {"topic": "u_undo"}}, {"name": "b", "topic": "u_c"}]}');
SELECT saga.start('u_flow', '{"n": 1}') > 0 AS started;
SELECT saga.start('u_comp', '{"n": 2}') AS u_comp \gset
RESET ROLE;
SELECT count(saga.complete(id, '{"a": 2}', lease => lease)) AS a_done FROM saga.claim('u_c', 'w', 1, '1 minute');
SELECT saga.cancel(:u_comp, 'before the upgrade');
SELECT id AS u_undo, lease AS u_undo_lease FROM saga.claim('u_undo', 'w', 1, '1 minute') \gset
SELECT pg_typeof(owner) AS owner_type, owner::text FROM saga.definitions ORDER BY name;

ALTER EXTENSION saga UPDATE TO '0.2';
SELECT extversion FROM pg_extension WHERE extname = 'saga';
-- the definer is now kept by name, and the data is all there
SELECT pg_typeof(owner) AS owner_type, owner, version FROM saga.definitions ORDER BY name;
SELECT name, status, input FROM saga.instances ORDER BY name;
SELECT step, status FROM saga.step_runs ORDER BY saga_id, step_index;
SELECT topic, step, poll_lock FROM saga.outbox ORDER BY id;
-- the saga in flight under 0.1 finishes under 0.2
SELECT count(*) FILTER (WHERE saga.complete(id, '{"done": true}', lease => lease)) AS completed
  FROM saga.claim('u_t', 'upgrade-worker', 10, '1 minute');
SELECT saga.complete(:u_undo, '{"undone": true}', lease => :u_undo_lease) AS compensated;
-- the compensation's lease is fenced from now on, as 0.2 does
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => %s)', :u_undo, '{}', :u_undo_lease + 1));
SELECT name, status, finished_at IS NOT NULL AS finished FROM saga.instances ORDER BY name;

-- 0.2 to 0.3: choreography, next to the sagas that stay
ALTER EXTENSION saga UPDATE TO '0.3';
SELECT extversion FROM pg_extension WHERE extname = 'saga';
SELECT name, status FROM saga.instances ORDER BY name;
SELECT saga.subscribe('UpgradeDone', 'u_t') > 0 AS subscribed;
SELECT saga.publish('UpgradeDone', '{"ok": true}') > 0 AS published;
SELECT topic, kind, payload FROM saga.outbox WHERE kind = 'event';

-- 0.3 to 0.4: bridges, diagrams and topics
ALTER EXTENSION saga UPDATE TO '0.4';
SELECT extversion FROM pg_extension WHERE extname = 'saga';

-- a catalogue of everything the extension owns, to compare both ways (by
-- name, so that the view outlives the extension)
CREATE VIEW saga_test.extension_shape AS
    SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
           || coalesce(' acl ' || a.attacl::text, '')
           || coalesce(' comment ' || col_description(c.oid, a.attnum), '') AS item
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
      LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
     WHERE c.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = 'saga') AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '')
           || ' ' || coalesce(array_to_string(c.reloptions, ','), '')
           || coalesce(' comment ' || obj_description(c.oid, 'pg_class'), '')
      FROM pg_class c WHERE c.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = 'saga')
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid)
      FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
     WHERE c.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = 'saga')
    UNION ALL
    SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
      FROM pg_class c WHERE c.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = 'saga') AND c.relkind = 'v'
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure || ' ' || pg_get_function_result(p.oid)
           || ' strict ' || p.proisstrict || ' ' || p.provolatile::text || p.proparallel::text
           || ' secdef ' || p.prosecdef || ' config ' || coalesce(p.proconfig::text, '')
           || ' acl ' || coalesce(p.proacl::text, '')
           || coalesce(' comment ' || obj_description(p.oid, 'pg_proc'), '')
      FROM pg_proc p WHERE p.pronamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = 'saga')
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid)
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
     WHERE c.relnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = 'saga') AND NOT t.tgisinternal
    UNION ALL
    SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = 'saga')
    UNION ALL
    SELECT 'type ' || t.typname || coalesce(' comment ' || obj_description(t.oid, 'pg_type'), '')
      FROM pg_type t WHERE t.typnamespace = (SELECT n.oid FROM pg_namespace n WHERE n.nspname = 'saga') AND t.typtype = 'c'
         AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
    UNION ALL
    SELECT 'schema ' || nspname || ' ' || coalesce(nspacl::text, '')
      FROM pg_namespace WHERE nspname = 'saga'
    UNION ALL
    SELECT 'config dump ' || cfg::regclass::text
      FROM pg_extension, unnest(extconfig) cfg WHERE extname = 'saga'
    UNION ALL
    SELECT 'member ' || pg_describe_object(classid, objid, objsubid)
      FROM pg_depend
     WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
       AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'saga');
CREATE TABLE saga_test.shape_upgraded AS SELECT * FROM saga_test.extension_shape;
SELECT count(*) > 100 AS catalogued FROM saga_test.shape_upgraded;

DROP EXTENSION saga;
DROP ROLE regress_upgrade_admin;
CREATE EXTENSION saga;
CREATE TABLE saga_test.shape_fresh AS SELECT * FROM saga_test.extension_shape;

-- nothing only one of them has
SELECT side, item FROM (
  SELECT 'only after the update' AS side, item FROM
    (SELECT item FROM saga_test.shape_upgraded EXCEPT ALL SELECT item FROM saga_test.shape_fresh) x
  UNION ALL
  SELECT 'only when fresh', item FROM
    (SELECT item FROM saga_test.shape_fresh EXCEPT ALL SELECT item FROM saga_test.shape_upgraded) y
) d ORDER BY side, item COLLATE "C";
DROP TABLE saga_test.shape_upgraded, saga_test.shape_fresh;
DROP VIEW saga_test.extension_shape;

-- a saga role that somebody created first, with attributes of its own, is
-- refused; one with members is named with them
DROP EXTENSION saga;
ALTER ROLE saga_reader CREATEDB;
CREATE EXTENSION saga;
SELECT count(*) AS saga_schemas FROM pg_namespace WHERE nspname = 'saga';
ALTER ROLE saga_reader NOCREATEDB;
CREATE ROLE regress_early_member IN ROLE saga_worker;
CREATE EXTENSION saga;
DROP ROLE regress_early_member;
