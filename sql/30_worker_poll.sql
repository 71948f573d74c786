--
-- 30_worker_poll: the transactional poll.  A service locks outbox rows with
-- FOR UPDATE SKIP LOCKED in its own transaction and reports with
-- saga.complete / saga.fail in that same transaction; its row lock is the
-- lease.
--
SELECT saga.define('w_chain', $${"steps": [
  {"name": "pay", "topic": "w_a"},
  {"name": "pack", "topic": "w_b"},
  {"name": "ship", "topic": "w_a"}
]}$$);
SELECT saga.start('w_chain', '{"order_id": 1}') AS s1 \gset
SELECT saga.start('w_chain', '{"order_id": 2}') AS s2 \gset

-- the poll the README shows: both first steps, oldest first
BEGIN;
SELECT saga_id = :s1 AS is_s1, step, payload, headers ->> 'kind' AS kind, headers -> 'attempt' AS attempt
  FROM saga.outbox
 WHERE topic = 'w_a' AND visible_at <= now()
 ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 10;
-- do the work, report in the same transaction
SELECT saga.complete(id, jsonb_build_object('payment_id', 'p_' || (payload -> 'input' ->> 'order_id')))
  FROM (SELECT id, payload FROM saga.outbox
         WHERE topic = 'w_a' AND visible_at <= now()
         ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 10) t;
COMMIT;

-- the next steps are in the outbox, with the results so far in their payload
SELECT saga_id = :s1 AS is_s1, topic, step, kind, attempt, payload,
       id = saga_test.task_id(saga_id, 1) AS documented_id
  FROM saga.outbox WHERE saga_id IN (:s1, :s2) ORDER BY saga_id;
SELECT step, status, attempts, result, error FROM saga.step_runs WHERE saga_id = :s1 ORDER BY step_index;

-- a rolled-back poll changes nothing
BEGIN;
SELECT saga.complete(id, '{"box": "b_1"}')
  FROM (SELECT id FROM saga.outbox WHERE topic = 'w_b' AND saga_id = :s1 AND visible_at <= now()
         FOR UPDATE SKIP LOCKED) t;
ROLLBACK;
SELECT step, status FROM saga.step_runs WHERE saga_id = :s1 ORDER BY step_index;

-- a repeated identical report is a no-op, answered false
SELECT saga.complete(saga_test.task_id(:s1, 0), '{"payment_id": "p_1"}') AS recorded;
-- a different result, or a failure, for a step already completed: refused
SELECT saga_test.err(format('SELECT saga.complete(%s, %L)', saga_test.task_id(:s1, 0), '{"payment_id": "p_other"}'));
SELECT saga_test.err(format('SELECT saga.complete(%s)', saga_test.task_id(:s1, 0)));
SELECT saga_test.err(format('SELECT saga.fail(%s, %L)', saga_test.task_id(:s1, 0), '{"reason": "late"}'));
SELECT saga_test.err(format('SELECT saga.fail(%s, %L, false)', saga_test.task_id(:s1, 0), '{"reason": "late"}'));
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :s1 AND step = 'pay';

-- unknown tasks
SELECT saga_test.err('SELECT saga.complete(0)');
SELECT saga_test.err('SELECT saga.fail(-1)');
SELECT saga_test.err(format('SELECT saga.complete(%s)', saga_test.task_id(:s2 + 100000, 0)));
-- a step index the saga does not have
SELECT saga_test.err(format('SELECT saga.complete(%s)', saga_test.task_id(:s1, 9)));
-- a step that has not been dispatched yet
SELECT saga_test.err(format('SELECT saga.complete(%s)', saga_test.task(:s1, 'ship')));
-- a compensation that was never enqueued
SELECT saga_test.err(format('SELECT saga.complete(%s)', saga_test.task(:s1, 'pay', true)));
SELECT step, status FROM saga.step_runs WHERE saga_id = :s1 ORDER BY step_index;

-- run the sagas to their end
BEGIN;
SELECT saga.complete(id, jsonb_build_object('box', 'b_' || (payload -> 'input' ->> 'order_id')))
  FROM (SELECT id, payload FROM saga.outbox WHERE topic = 'w_b' AND visible_at <= now()
         ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 10) t;
COMMIT;
SELECT saga_id = :s1 AS is_s1, step, payload FROM saga.outbox WHERE saga_id IN (:s1, :s2) ORDER BY saga_id;
BEGIN;
SELECT saga.complete(id, '{"tracking": "t_1"}')
  FROM (SELECT id FROM saga.outbox WHERE topic = 'w_a' AND visible_at <= now()
         ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 10) t;
COMMIT;

SELECT id = :s1 AS is_s1, status, finished_at IS NOT NULL AS finished, finished_at >= started_at AS ordered
  FROM saga.instances WHERE id IN (:s1, :s2) ORDER BY id;
SELECT saga_id = :s1 AS is_s1, step, status, attempts, result FROM saga.step_runs
 WHERE saga_id IN (:s1, :s2) ORDER BY saga_id, step_index;
SELECT count(*) AS tasks_left FROM saga.outbox WHERE saga_id IN (:s1, :s2);
SELECT event, step FROM saga.history WHERE saga_id = :s1 ORDER BY id;

-- reports on a finished saga: a repeat is still a no-op, anything else refused
SELECT saga.complete(saga_test.task(:s1, 'ship'), '{"tracking": "t_1"}') AS recorded;
SELECT saga_test.err(format('SELECT saga.fail(%s, %L, false)', saga_test.task(:s1, 'ship'), '{}'));
SELECT status FROM saga.instances WHERE id = :s1;

-- saga.fail in a transactional poll: the default is retryable, the task
-- stays in the outbox for a later attempt
SELECT saga.start('w_chain', '{"order_id": 3}') AS s3 \gset
BEGIN;
SELECT saga.fail(id, '{"reason": "card declined"}')
  FROM (SELECT id FROM saga.outbox WHERE topic = 'w_a' AND saga_id = :s3 FOR UPDATE SKIP LOCKED) t;
SELECT step, attempt, deliveries, visible_at > now() AS delayed FROM saga.outbox WHERE saga_id = :s3;
COMMIT;
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :s3 ORDER BY step_index;
SELECT status FROM saga.instances WHERE id = :s3;
-- the task is not visible to the poll until its delay has passed
SELECT count(*) AS visible FROM saga.outbox WHERE saga_id = :s3 AND visible_at <= now();
