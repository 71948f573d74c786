--
-- 20_start: saga.start creates an instance of the latest version, dispatches
-- the steps that have no predecessors (one outbox row each), and honours
-- idempotency keys and trace context.
--
SELECT saga.define('s_one', '{"steps": [{"name": "only", "topic": "s_t"}]}');

SELECT saga.start('s_one', '{"order_id": 42, "amount": 99.5}', correlation_id => 'order-42') AS s1 \gset

SELECT name, version, status, correlation_id, input,
       started_at <= now() AS started, finished_at IS NULL AS unfinished,
       idempotency_key, cancel_reason,
       traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' AS traceparent_generated
  FROM saga.instances WHERE id = :s1;

-- one outbox row, the task id derived from saga and step
SELECT id = saga_test.task_id(:s1, 0) AS documented_id,
       topic, kind, step, attempt, deliveries, lease_owner, payload,
       visible_at <= now() AS visible
  FROM saga.outbox WHERE saga_id = :s1;

-- its headers
SELECT headers - 'saga_id' - 'traceparent' - 'idempotency_key' AS headers,
       headers ->> 'saga_id' = :'s1' AS saga_id_header,
       headers ->> 'traceparent' ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' AS traceparent_header,
       split_part(headers ->> 'traceparent', '-', 2)
         = split_part((SELECT traceparent FROM saga.instances WHERE id = :s1), '-', 2) AS same_trace,
       replace(headers ->> 'idempotency_key', :'s1', '<saga_id>') AS idempotency_key
  FROM saga.outbox WHERE saga_id = :s1;

SELECT step, status, attempts, result, error, step_index, withdrawn,
       task_id = saga_test.task_id(:s1, 0) AS documented_task_id
  FROM saga.step_runs WHERE saga_id = :s1;

-- history records the start and the dispatch
SELECT event, step FROM saga.history WHERE saga_id = :s1 ORDER BY id;
SELECT count(*) > 0 AS history_has_actor FROM saga.history WHERE saga_id = :s1 AND actor IS NOT NULL;

-- defaults: input {}, no correlation id
SELECT saga.start('s_one') AS s2 \gset
SELECT input, correlation_id FROM saga.instances WHERE id = :s2;
SELECT payload, headers -> 'correlation_id' AS correlation_id FROM saga.outbox WHERE saga_id = :s2;
SELECT :s2 > :s1 AS ids_grow;

-- a W3C traceparent given by the caller: the trace id is kept
SELECT saga.start('s_one', traceparent => '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01') AS s3 \gset
SELECT split_part(traceparent, '-', 2) AS trace_id FROM saga.instances WHERE id = :s3;
SELECT split_part(headers ->> 'traceparent', '-', 2) AS trace_id,
       headers ->> 'traceparent' ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' AS well_formed
  FROM saga.outbox WHERE saga_id = :s3;

--
-- Errors; nothing is started.
--
SELECT count(*) AS n FROM saga.sagas \gset
SELECT saga_test.err($$SELECT saga.start('no_such_saga')$$);
SELECT saga_test.err($$SELECT saga.start(NULL)$$);
SELECT saga_test.err($$SELECT saga.start('s_one', traceparent => 'nonsense')$$);
SELECT saga_test.err($$SELECT saga.start('s_one', traceparent => '')$$);
SELECT saga_test.err($$SELECT saga.start('s_one', traceparent => '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7')$$);
SELECT saga_test.err($$SELECT saga.start('s_one', traceparent => '00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01')$$);
SELECT saga_test.err($$SELECT saga.start('s_one', traceparent => '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01')$$);
SELECT saga_test.err($$SELECT saga.start('s_one', traceparent => '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1')$$);
SELECT saga_test.err($$SELECT saga.start('s_one', traceparent => '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00')$$);
SELECT saga_test.err($$SELECT saga.start('s_one', traceparent => '00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01')$$);
-- documents above saga.max_payload_size
SET saga.max_payload_size = 1024;
SELECT saga_test.err(format('SELECT saga.start(%L, %L)', 's_one', jsonb_build_object('blob', repeat('x', 2000))));
RESET saga.max_payload_size;
SELECT count(*) = :n AS nothing_started FROM saga.sagas;

--
-- Idempotency keys: one saga per (name, key).
--
SELECT saga.start('s_one', '{"order_id": 1}', idempotency_key => 'order-1') AS k1 \gset
SELECT saga.start('s_one', '{"order_id": 1}', idempotency_key => 'order-1') = :k1 AS same_saga;
-- the first start wins, whatever the input of a repeat
SELECT saga.start('s_one', '{"order_id": 999}', idempotency_key => 'order-1') = :k1 AS same_saga;
SELECT input, idempotency_key FROM saga.instances WHERE id = :k1;
SELECT count(*) AS tasks FROM saga.outbox WHERE saga_id = :k1;
-- another key: another saga
SELECT saga.start('s_one', '{"order_id": 2}', idempotency_key => 'order-2') <> :k1 AS new_saga;
-- a key belongs to a definition name
SELECT saga.define('s_two', '{"steps": [{"name": "only", "topic": "s_t"}]}');
SELECT saga.start('s_two', '{}', idempotency_key => 'order-1') <> :k1 AS new_saga;
SELECT name, count(*) FROM saga.instances WHERE idempotency_key = 'order-1' GROUP BY name ORDER BY name COLLATE "C";
-- still the same saga once it has finished
SELECT saga.complete(saga_test.task_id(:k1, 0));
SELECT status FROM saga.instances WHERE id = :k1;
SELECT saga.start('s_one', '{"order_id": 1}', idempotency_key => 'order-1') = :k1 AS same_saga;

--
-- Several first steps are dispatched at once; a join waits.
--
SELECT saga.define('s_fan', $${"steps": [
  {"name": "a", "topic": "s_fa"},
  {"name": "b", "topic": "s_fb", "after": []},
  {"name": "c", "topic": "s_fa", "after": ["a", "b"]}
]}$$);
SELECT saga.start('s_fan', '{"x": 1}') AS f \gset
SELECT id = saga_test.task_id(:f, step_index) AS documented_id, o.topic, o.step, o.kind, o.payload
  FROM saga.outbox o JOIN saga.step_runs r ON r.task_id = o.id
 WHERE o.saga_id = :f ORDER BY o.id;
SELECT step, status, attempts, task_id IS NOT NULL AS has_task FROM saga.step_runs WHERE saga_id = :f ORDER BY step_index;

--
-- Running instances keep the version they started with.
--
SELECT saga.define('s_ver', '{"steps": [{"name": "first", "topic": "s_v"}, {"name": "second", "topic": "s_v"}]}');
SELECT saga.start('s_ver') AS v1 \gset
SELECT saga.define('s_ver', '{"steps": [{"name": "first", "topic": "s_v"}, {"name": "other", "topic": "s_v"}]}');
SELECT saga.start('s_ver') AS v2 \gset
SELECT id = :v1 AS is_v1, version FROM saga.instances WHERE id IN (:v1, :v2) ORDER BY id;
SELECT saga.complete(saga_test.task_id(:v1, 0), '{"done": 1}');
SELECT saga.complete(saga_test.task_id(:v2, 0), '{"done": 2}');
SELECT saga_id = :v1 AS is_v1, step, payload FROM saga.outbox WHERE saga_id IN (:v1, :v2) ORDER BY saga_id;
SELECT saga_id = :v1 AS is_v1, step, status FROM saga.step_runs WHERE saga_id IN (:v1, :v2) ORDER BY saga_id, step_index;
