--
-- 80_views: the columns of the views, the history table, the outbox and the
-- task type, and what the views show for one saga.
--
SELECT table_name, column_name, data_type
  FROM information_schema.columns
 WHERE table_schema = 'saga'
   AND table_name IN ('instances', 'step_runs', 'incidents', 'history', 'outbox')
 ORDER BY table_name COLLATE "C", ordinal_position;

SELECT attname, format_type(atttypid, atttypmod) AS type
  FROM pg_attribute
 WHERE attrelid = (SELECT typrelid FROM pg_type WHERE oid = 'saga.task'::regtype) AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;

-- one saga through the views
SELECT saga.define('v_flow', $${"steps": [
  {"name": "pay", "topic": "v_a", "compensate": {"topic": "v_a"}},
  {"name": "pack", "topic": "v_b", "after": []},
  {"name": "ship", "topic": "v_a", "after": ["pay", "pack"]}
]}$$);
SELECT saga.start('v_flow', '{"order_id": 42}', correlation_id => 'order-42-v', idempotency_key => 'v-1') AS v \gset
SELECT saga.complete(saga_test.task(:v, 'pay'), '{"payment_id": "p_42"}');
SELECT step, lease FROM saga.claim('v_b', 'w1', 1, '1 hour');
SELECT saga.fail(saga_test.task(:v, 'pack'), '{"reason": "jam"}', lease => 1);

SELECT name, version, status, correlation_id, input, started_at <= now() AS started,
       finished_at, updated_at >= started_at AS updated, idempotency_key, cancel_reason
  FROM saga.instances WHERE id = :v;
SELECT step, status, attempts, result, error, step_index, withdrawn,
       task_id = saga_test.task(:v, step) AS documented_task_id, visible_at > now() AS later
  FROM saga.step_runs WHERE saga_id = :v ORDER BY step_index;

-- "where is order 42 and why": one query
SELECT i.name, i.status, r.step, r.status AS step_status, r.attempts, r.error
  FROM saga.instances i JOIN saga.step_runs r ON r.saga_id = i.id
 WHERE i.correlation_id = 'order-42-v'
 ORDER BY r.step_index;

-- the history: every transition, with time and actor
SELECT event, step, at <= clock_timestamp() AS at_ok, actor IS NOT NULL AS has_actor
  FROM saga.history WHERE saga_id = :v ORDER BY id;
SELECT count(*) AS out_of_order
  FROM (SELECT at < lag(at) OVER (ORDER BY id) AS back FROM saga.history WHERE saga_id = :v) h
 WHERE back;

-- step_runs of a step with an outbox row point at that row
SELECT count(*) AS dangling
  FROM saga.step_runs r LEFT JOIN saga.outbox o ON o.id = r.task_id
 WHERE r.task_id IS NOT NULL AND o.id IS NULL;
-- and every outbox row of a saga is some step's task
SELECT count(*) AS orphans
  FROM saga.outbox o
 WHERE o.saga_id IS NOT NULL
   AND NOT EXISTS (SELECT FROM saga.step_runs r WHERE r.task_id = o.id);

-- the views of finished sagas: incidents only lists failed ones
SELECT count(*) AS incidents_not_failed
  FROM saga.incidents c JOIN saga.instances i ON i.id = c.saga_id
 WHERE i.status <> 'failed';
