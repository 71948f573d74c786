--
-- 40_claim: the leased claim.  saga.claim commits a lease; reports carry the
-- lease number (the delivery count) as a fencing token.
--
SELECT saga.define('c_flow', $${"steps": [
  {"name": "a", "topic": "c_a"},
  {"name": "b", "topic": "c_b"}
]}$$);
SELECT saga.start('c_flow', '{"n": 1}', correlation_id => 'c-1') AS s1 \gset
SELECT saga.start('c_flow', '{"n": 2}', correlation_id => 'c-2') AS s2 \gset
SELECT saga.start('c_flow', '{"n": 3}', correlation_id => 'c-3') AS s3 \gset

-- nothing on an unknown topic
SELECT count(*) AS claimed FROM saga.claim('c_nothing', 'w1');

-- two of three tasks, oldest first
SELECT id = saga_test.task_id(saga_id, 0) AS documented_id, saga_id = :s1 AS is_s1,
       topic, kind, step, attempt, lease, payload,
       headers - 'saga_id' - 'traceparent' - 'idempotency_key' AS headers,
       lease_expires_at > now() + interval '59 minutes' AND lease_expires_at <= clock_timestamp() + interval '1 hour' AS lease_one_hour
  FROM saga.claim('c_a', 'w1', 2, '1 hour') ORDER BY id;

-- a lease moves visible_at forward and counts a delivery
SELECT saga_id = :s3 AS is_s3, deliveries, lease_owner, attempt,
       visible_at > now() + interval '59 minutes' AS leased
  FROM saga.outbox WHERE topic = 'c_a' ORDER BY saga_id;
SELECT saga_id = :s1 AS is_s1, step, status, attempts FROM saga.step_runs
 WHERE saga_id IN (:s1, :s3) AND step = 'a' ORDER BY saga_id;

-- the leased tasks are not handed out again; the third is (default: one task, 30 s)
SELECT saga_id = :s3 AS is_s3, lease,
       lease_expires_at > now() + interval '29 seconds' AND lease_expires_at <= clock_timestamp() + interval '30 seconds' AS lease_30s
  FROM saga.claim('c_a', 'w2');
SELECT count(*) AS claimed FROM saga.claim('c_a', 'w2', 10);
-- a transactional poll does not see leased tasks either
SELECT count(*) AS visible FROM saga.outbox WHERE topic = 'c_a' AND visible_at <= now();

-- complete under the lease
SELECT saga.complete(saga_test.task_id(:s1, 0), '{"ok": 1}', lease => 1) AS recorded;
-- the same report again: a no-op
SELECT saga.complete(saga_test.task_id(:s1, 0), '{"ok": 1}', lease => 1) AS recorded;
-- conflicting repeats
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => 1)', saga_test.task_id(:s1, 0), '{"ok": 2}'));
SELECT saga_test.err(format('SELECT saga.fail(%s, %L, lease => 1)', saga_test.task_id(:s1, 0), '{}'));
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :s1 ORDER BY step_index;
-- the next step is on its own topic
SELECT saga_id = :s1 AS is_s1, step, lease, payload FROM saga.claim('c_b', 'w1', 5, '1 hour');

-- heartbeat: extend by a given interval, or by the lease's own length
SELECT saga.heartbeat(saga_test.task_id(:s2, 0), 1, '2 hours') AS hb \gset
SELECT :'hb'::timestamptz > now() + interval '119 minutes' AND :'hb'::timestamptz <= clock_timestamp() + interval '2 hours' AS extended_2h;
SELECT visible_at = :'hb'::timestamptz AS visible_at_is_expiry FROM saga.outbox WHERE id = saga_test.task_id(:s2, 0);
SELECT saga.heartbeat(saga_test.task_id(:s2, 0), 1) AS hb \gset
SELECT :'hb'::timestamptz > now() + interval '59 minutes' AND :'hb'::timestamptz <= clock_timestamp() + interval '1 hour' AS extended_1h;
SELECT deliveries, attempt FROM saga.outbox WHERE id = saga_test.task_id(:s2, 0);
-- heartbeat errors: wrong lease, finished task, unknown task
SELECT saga_test.err(format('SELECT saga.heartbeat(%s, 2)', saga_test.task_id(:s2, 0)));
SELECT saga_test.err(format('SELECT saga.heartbeat(%s, 1)', saga_test.task_id(:s1, 0)));
SELECT saga_test.outcome('SELECT saga.heartbeat(0, 1)') AS unknown_task;
SELECT saga_test.outcome(format('SELECT saga.heartbeat(%s, 1)', saga_test.task_id(:s3 + 100000, 0))) AS unknown_task;

--
-- A lapsed lease: the task is visible again at once, the next claim is a new
-- delivery and a new attempt; the old lease is lost.
--
SELECT saga.start('c_flow', '{"n": 4}') AS s4 \gset
SELECT lease, attempt FROM saga.claim('c_a', 'w1', 1, '10 milliseconds');
SELECT pg_sleep(0.1);
SELECT saga_id = :s4 AS is_s4, lease, attempt, headers -> 'attempt' AS attempt_header
  FROM saga.claim('c_a', 'w2', 1, '1 hour');
SELECT deliveries, attempt, lease_owner FROM saga.outbox WHERE id = saga_test.task_id(:s4, 0);
SELECT step, status, attempts FROM saga.step_runs WHERE saga_id = :s4 AND step = 'a';
-- reports and heartbeats under the lost lease: 55000
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => 1)', saga_test.task_id(:s4, 0), '{}'));
SELECT saga_test.err(format('SELECT saga.fail(%s, %L, lease => 1)', saga_test.task_id(:s4, 0), '{}'));
SELECT saga_test.err(format('SELECT saga.heartbeat(%s, 1)', saga_test.task_id(:s4, 0)));
-- a lease number never handed out
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => 3)', saga_test.task_id(:s4, 0), '{}'));
SELECT step, status FROM saga.step_runs WHERE saga_id = :s4 AND step = 'a';
-- the current lease completes
SELECT saga.complete(saga_test.task_id(:s4, 0), '{"by": "w2"}', lease => 2) AS recorded;
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :s4 ORDER BY step_index;
-- the stale lease's reports stay refused once the task has finished, even
-- one identical to the recorded outcome: lease 1 never reported
SELECT saga_test.outcome(format('SELECT saga.complete(%s, %L, lease => 1)', saga_test.task_id(:s4, 0), '{"by": "w2"}')) AS stale_identical;
SELECT saga_test.outcome(format('SELECT saga.complete(%s, %L, lease => 1)', saga_test.task_id(:s4, 0), '{"by": "w1"}')) AS stale_different;
-- the winner's repeat is a no-op
SELECT saga.complete(saga_test.task_id(:s4, 0), '{"by": "w2"}', lease => 2) AS recorded;

-- a lapsed lease counts as an attempt: after max_attempts lapses the step fails
SELECT saga.define('c_lapse', '{"steps": [{"name": "a", "topic": "c_lapse", "retry": {"max_attempts": 2}}]}');
SELECT saga.start('c_lapse') AS s5 \gset
SELECT lease, attempt FROM saga.claim('c_lapse', 'w1', 1, '1 hour');
SELECT saga_test.time_passes(saga_test.task_id(:s5, 0));
SELECT lease, attempt FROM saga.claim('c_lapse', 'w1', 1, '1 hour');
SELECT saga_test.time_passes(saga_test.task_id(:s5, 0));
SELECT lease, attempt FROM saga.claim('c_lapse', 'w1', 1, '1 hour');
SELECT step, status, attempts FROM saga.step_runs WHERE saga_id = :s5;
SELECT status FROM saga.instances WHERE id = :s5;

-- claim arguments
SELECT saga_test.err($$SELECT * FROM saga.claim('c_a', 'w1', 0)$$);
SELECT saga_test.err($$SELECT * FROM saga.claim('c_a', 'w1', -1)$$);
SELECT saga_test.err($$SELECT * FROM saga.claim('c_a', 'w1', 1, '0 seconds')$$);
SELECT saga_test.err($$SELECT * FROM saga.claim('c_a', 'w1', 1, '-1 minute')$$);
SELECT saga_test.err($$SELECT saga.heartbeat(0, 1, '-1 minute')$$);

-- complete the rest under their leases
SELECT saga.complete(saga_test.task_id(:s2, 0), '{"ok": 2}', lease => 1) AS recorded;
SELECT saga.complete(saga_test.task_id(:s3, 0), '{"ok": 3}', lease => 1) AS recorded;
SELECT saga_id = :s1 AS is_s1, lease FROM saga.claim('c_b', 'w1', 5, '1 hour') ORDER BY id;
SELECT saga_id = :s1 AS is_s1, saga.complete(id, '{}', lease => deliveries) AS recorded
  FROM saga.outbox WHERE topic = 'c_b' ORDER BY id;
SELECT id = :s1 AS is_s1, status FROM saga.instances WHERE name = 'c_flow' ORDER BY id;
SELECT count(*) AS tasks_left FROM saga.outbox WHERE topic IN ('c_a', 'c_b');

--
-- saga.release: a service shutting down hands its task back, visible at
-- once, without spending an attempt; the lease numbers go on
--
SELECT saga.define('cl_rel', '{"steps": [{"name": "work", "topic": "cl_rel", "retry": {"max_attempts": 2}}]}');
SELECT saga.start('cl_rel') AS r1 \gset
SELECT id AS r1_task, lease AS r1_lease, attempt FROM saga.claim('cl_rel', 'shutting-down', 1, '1 hour') \gset
SELECT saga.release(:r1_task, :r1_lease) AS released;
SELECT saga.release(:r1_task, :r1_lease) AS released_again;
SELECT attempt, lease_owner, visible_at <= now() AS visible FROM saga.outbox WHERE id = :r1_task;
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => %s)', :r1_task, '{}', :r1_lease));
SELECT saga_test.err(format('SELECT saga.release(%s, %s)', :r1_task, :r1_lease + 1));
SELECT saga_test.err('SELECT saga.release(1, 1)');
SELECT saga_test.err(format('SELECT saga.release(%s, 0)', :r1_task));
SELECT saga_test.err('SELECT saga.release(NULL, 1)');
SELECT id = :r1_task AS same_task, lease AS r1_lease2, attempt FROM saga.claim('cl_rel', 'next', 1, '1 hour') \gset
SELECT :'same_task' AS same_task, :r1_lease2 AS lease, :attempt AS attempt_not_spent;
-- a lease that lapsed and is taken by claim (not by the worker) is in the history too
UPDATE saga.outbox SET visible_at = now() - interval '1 second' WHERE id = :r1_task;
SELECT lease AS r1_lease3, attempt FROM saga.claim('cl_rel', 'third', 1, '1 hour') \gset
SELECT :attempt AS attempt;
SELECT event, detail - 'lease_seconds' AS detail FROM saga.history WHERE saga_id = :r1 ORDER BY id;
SELECT saga.complete(:r1_task, '{}', lease => :r1_lease3) AS completed;

--
-- heartbeat delivers cancellation: NULL, and the lease is not extended,
-- once the task's saga stopped running
--
SELECT saga.define('cl_hb', '{"steps": [{"name": "long", "topic": "cl_hb", "compensate": {"topic": "cl_hb_undo"}}]}');
SELECT saga.start('cl_hb') AS h1 \gset
SELECT id AS h1_task, lease AS h1_lease FROM saga.claim('cl_hb', 'w', 1, '1 hour') \gset
SELECT saga.heartbeat(:h1_task, :h1_lease) IS NOT NULL AS keep_working;
SELECT saga.cancel(:h1, 'the customer changed their mind');
SELECT visible_at AS h1_until FROM saga.outbox WHERE id = :h1_task \gset
SELECT saga.heartbeat(:h1_task, :h1_lease) IS NULL AS stop_working;
SELECT visible_at = :'h1_until' AS not_extended FROM saga.outbox WHERE id = :h1_task;
-- the service stops and says so: the step failed, nothing of it to undo
SELECT saga.fail(:h1_task, '{"stopped": "cancelled"}', false, :h1_lease) AS recorded;
SELECT step, status FROM saga.step_runs WHERE saga_id = :h1;

-- a lease that lapsed (even before the lapse is processed) is not released:
-- its attempt counts
SELECT saga.start('cl_rel') AS r2 \gset
SELECT id AS r2_task, lease AS r2_lease FROM saga.claim('cl_rel', 'slow', 1, '1 hour') \gset
UPDATE saga.outbox SET visible_at = now() - interval '1 second' WHERE id = :r2_task;
SELECT saga.release(:r2_task, :r2_lease) AS released;
SELECT attempt FROM saga.claim('cl_rel', 'next', 1, '1 hour');

-- one claim finds a task past its timeout and a sibling of the same saga: the timeout fails the
-- saga first, and the sibling, no longer wanted, is settled instead of handed out
SELECT saga.define('cl_sib', '{"steps": [
  {"name": "slow", "topic": "cl_sib", "timeout": "1 hour"},
  {"name": "quick", "topic": "cl_sib", "after": [], "timeout": "1 hour"}]}') AS version;
SELECT saga.start('cl_sib') AS s1 \gset
UPDATE saga.outbox SET timeout_at = now() - interval '1 second'
 WHERE id = saga_test.task(:s1, 'slow');
SELECT count(*) AS handed_out FROM saga.claim('cl_sib', 'w', 10, '1 hour');
SELECT status FROM saga.instances WHERE id = :s1;
SELECT step, status FROM saga.step_runs WHERE saga_id = :s1 ORDER BY step;
SELECT count(*) AS left_in_outbox FROM saga.outbox WHERE saga_id = :s1;
