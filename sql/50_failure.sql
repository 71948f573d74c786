--
-- 50_failure: retries with backoff, steps that fail for good, and the
-- compensation that follows in the same transaction: a chain compensates one
-- step at a time in reverse, parallel branches concurrently; in-flight
-- siblings are withdrawn.
--

--
-- Retryable failures wait for the backoff: 1 h, 2 h, then capped at 3 h.
--
SELECT saga.define('f_retry', $${"steps": [{"name": "a", "topic": "f_r",
  "retry": {"max_attempts": 4, "initial_delay": "1 hour", "backoff": 2,
            "max_delay": "3 hours", "jitter": false}}]}$$);
SELECT saga.start('f_retry') AS r \gset
SELECT saga_test.task_id(:r, 0) AS rt \gset

SELECT lease, attempt FROM saga.claim('f_r', 'w1', 1, '1 minute');
BEGIN;
SELECT saga.fail(:rt, '{"reason": "busy 1"}', lease => 1) AS recorded;
SELECT attempt, lease_owner,
       visible_at >= now() + interval '1 hour' AND visible_at <= clock_timestamp() + interval '1 hour' AS waits_1h
  FROM saga.outbox WHERE id = :rt;
COMMIT;
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :r;
SELECT status FROM saga.instances WHERE id = :r;
-- the same report again is a no-op; a completion under that lease conflicts
SELECT saga.fail(:rt, '{"reason": "busy 1"}', lease => 1) AS recorded;
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => 1)', :rt, '{}'));
SELECT saga_test.err(format('SELECT saga.fail(%s, %L, lease => 1)', :rt, '{"reason": "other"}'));
-- not visible before the delay
SELECT count(*) AS claimed FROM saga.claim('f_r', 'w1');

SELECT saga_test.time_passes(:rt);
SELECT lease, attempt, headers -> 'attempt' AS attempt_header FROM saga.claim('f_r', 'w1', 1, '1 minute');
BEGIN;
SELECT saga.fail(:rt, '{"reason": "busy 2"}', lease => 2) AS recorded;
SELECT attempt,
       visible_at >= now() + interval '2 hours' AND visible_at <= clock_timestamp() + interval '2 hours' AS waits_2h
  FROM saga.outbox WHERE id = :rt;
COMMIT;

SELECT saga_test.time_passes(:rt);
SELECT lease, attempt FROM saga.claim('f_r', 'w1', 1, '1 minute');
BEGIN;
SELECT saga.fail(:rt, '{"reason": "busy 3"}', lease => 3) AS recorded;
SELECT attempt,
       visible_at >= now() + interval '3 hours' AND visible_at <= clock_timestamp() + interval '3 hours' AS waits_3h_capped
  FROM saga.outbox WHERE id = :rt;
COMMIT;
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :r;

-- the last attempt fails: the step fails, nothing to compensate, the saga is compensated
SELECT saga_test.time_passes(:rt);
SELECT lease, attempt FROM saga.claim('f_r', 'w1', 1, '1 minute');
SELECT saga.fail(:rt, '{"reason": "busy 4"}', lease => 4) AS recorded;
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :r;
SELECT status, finished_at IS NOT NULL AS finished FROM saga.instances WHERE id = :r;
SELECT count(*) AS tasks_left FROM saga.outbox WHERE saga_id = :r;
SELECT saga.fail(:rt, '{"reason": "busy 4"}', lease => 4) AS recorded;
SELECT event, step FROM saga.history WHERE saga_id = :r ORDER BY id;

-- jitter spreads a delay between half and all of its value
SELECT saga.define('f_jitter', $${"steps": [{"name": "a", "topic": "f_j",
  "retry": {"initial_delay": "1 hour", "max_delay": "1 hour", "jitter": true}}]}$$);
SELECT saga.start('f_jitter') AS j \gset
BEGIN;
SELECT saga.fail(saga_test.task_id(:j, 0), '{}') AS recorded;
SELECT visible_at >= now() + interval '30 minutes' AND visible_at <= clock_timestamp() + interval '1 hour' AS between_half_and_all
  FROM saga.outbox WHERE saga_id = :j;
COMMIT;

-- the default policy: 3 attempts, 1 second, jittered
SELECT saga.define('f_default', '{"steps": [{"name": "a", "topic": "f_d"}]}');
SELECT saga.start('f_default') AS d \gset
BEGIN;
SELECT saga.fail(saga_test.task_id(:d, 0), '{"n": 1}') AS recorded;
SELECT attempt, visible_at >= now() + interval '0.5 seconds' AND visible_at <= clock_timestamp() + interval '1 second' AS waits_up_to_1s
  FROM saga.outbox WHERE saga_id = :d;
COMMIT;
SELECT saga_test.time_passes(saga_test.task_id(:d, 0));
SELECT saga.fail(saga_test.task_id(:d, 0), '{"n": 2}') AS recorded;
SELECT attempt FROM saga.outbox WHERE saga_id = :d;
SELECT saga_test.time_passes(saga_test.task_id(:d, 0));
SELECT saga.fail(saga_test.task_id(:d, 0), '{"n": 3}') AS recorded;
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :d;
SELECT status FROM saga.instances WHERE id = :d;

-- a first step that fails for good: nothing succeeded, nothing to undo
SELECT saga.define('f_first', '{"steps": [{"name": "a", "topic": "f_f", "compensate": {"topic": "f_f"}}, {"name": "b", "topic": "f_f"}]}');
SELECT saga.start('f_first') AS ff \gset
SELECT saga.fail(saga_test.task_id(:ff, 0), '{"reason": "no"}', retryable => false) AS recorded;
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :ff ORDER BY step_index;
SELECT status, finished_at IS NOT NULL AS finished FROM saga.instances WHERE id = :ff;
SELECT count(*) AS tasks_left FROM saga.outbox WHERE saga_id = :ff;

--
-- A chain compensates in reverse, one step at a time.
--
SELECT saga.define('f_chain', $${"steps": [
  {"name": "pay", "topic": "f_pay", "compensate": {"topic": "f_pay"}},
  {"name": "reserve", "topic": "f_inv", "compensate": {"topic": "f_inv"}},
  {"name": "label", "topic": "f_ship"},
  {"name": "mail", "topic": "f_mail"}
]}$$);
SELECT saga.start('f_chain', '{"order_id": 7}', correlation_id => 'order-7') AS c \gset
SELECT saga.complete(saga_test.task(:c, 'pay'), '{"payment_id": "p_7"}');
SELECT saga.complete(saga_test.task(:c, 'reserve'), '{"reservation": "r_7"}');
SELECT saga.complete(saga_test.task(:c, 'label'), '{"label": "l_7"}');

-- the failure and the first compensation are one transaction
BEGIN;
SELECT saga.fail(saga_test.task(:c, 'mail'), '{"reason": "smtp down"}', retryable => false) AS recorded;
SELECT status FROM saga.instances WHERE id = :c;
SELECT id = saga_test.task(:c, 'reserve', true) AS documented_id, topic, kind, step, attempt, payload,
       headers - 'saga_id' - 'traceparent' - 'idempotency_key' AS headers
  FROM saga.outbox WHERE saga_id = :c;
COMMIT;
SELECT step, status, attempts, result, error FROM saga.step_runs WHERE saga_id = :c ORDER BY step_index;
-- a repeat of that report is a no-op; a conflicting one is refused
SELECT saga.fail(saga_test.task(:c, 'mail'), '{"reason": "smtp down"}', retryable => false) AS recorded;
SELECT saga_test.err(format('SELECT saga.complete(%s)', saga_test.task(:c, 'mail')));

-- the compensation is claimed like any task
SELECT kind, step, lease, attempt, payload -> 'results' -> 'reserve' AS undo
  FROM saga.claim('f_inv', 'w1', 5, '1 minute');
SELECT saga.complete(saga_test.task(:c, 'reserve', true), '{"released": true}', lease => 1) AS recorded;
SELECT saga.complete(saga_test.task(:c, 'reserve', true), '{"released": true}', lease => 1) AS recorded;
-- then the first step's
SELECT id = saga_test.task(:c, 'pay', true) AS documented_id, topic, kind, step, payload -> 'results' -> 'pay' AS undo
  FROM saga.outbox WHERE saga_id = :c;
SELECT step, status FROM saga.step_runs WHERE saga_id = :c ORDER BY step_index;
SELECT status FROM saga.instances WHERE id = :c;

-- a compensation's retryable failures are retried beyond max_attempts
SELECT saga.fail(saga_test.task(:c, 'pay', true), '{"reason": "psp 1"}') AS recorded;
SELECT saga_test.time_passes(saga_test.task(:c, 'pay', true));
SELECT saga.fail(saga_test.task(:c, 'pay', true), '{"reason": "psp 2"}') AS recorded;
SELECT saga_test.time_passes(saga_test.task(:c, 'pay', true));
SELECT saga.fail(saga_test.task(:c, 'pay', true), '{"reason": "psp 3"}') AS recorded;
SELECT saga_test.time_passes(saga_test.task(:c, 'pay', true));
SELECT saga.fail(saga_test.task(:c, 'pay', true), '{"reason": "psp 4"}') AS recorded;
SELECT kind, attempt, visible_at > now() AS delayed FROM saga.outbox WHERE saga_id = :c;
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :c AND step = 'pay';
SELECT status FROM saga.instances WHERE id = :c;
SELECT saga_test.time_passes(saga_test.task(:c, 'pay', true));
SELECT kind, step, lease, attempt FROM saga.claim('f_pay', 'w1');
SELECT saga.complete(saga_test.task(:c, 'pay', true), '{"refunded": true}', lease => 1) AS recorded;

SELECT status, finished_at IS NOT NULL AS finished FROM saga.instances WHERE id = :c;
SELECT step, status, result, error FROM saga.step_runs WHERE saga_id = :c ORDER BY step_index;
SELECT count(*) AS tasks_left FROM saga.outbox WHERE saga_id = :c;
SELECT event, step FROM saga.history WHERE saga_id = :c ORDER BY id;

--
-- Parallel branches compensate concurrently; their common root afterwards.
--
SELECT saga.define('f_par', $${"steps": [
  {"name": "root", "topic": "f_p", "compensate": {"topic": "f_p"}},
  {"name": "left", "topic": "f_p", "after": ["root"], "compensate": {"topic": "f_p"}},
  {"name": "right", "topic": "f_p", "after": ["root"], "compensate": {"topic": "f_p"}},
  {"name": "nocomp", "topic": "f_p", "after": ["root"]},
  {"name": "join", "topic": "f_pj", "after": ["left", "right", "nocomp"]}
]}$$);
SELECT saga.start('f_par') AS p \gset
SELECT saga.complete(saga_test.task(:p, 'root'), '{"r": 1}');
SELECT step FROM saga.outbox WHERE saga_id = :p ORDER BY id;
SELECT saga.complete(saga_test.task(:p, 'left'), '{"l": 1}');
SELECT saga.complete(saga_test.task(:p, 'right'), '{"r": 2}');
SELECT saga.complete(saga_test.task(:p, 'nocomp'), '{"n": 3}');
SELECT step FROM saga.outbox WHERE saga_id = :p ORDER BY id;
SELECT saga.fail(saga_test.task(:p, 'join'), '{"reason": "x"}', retryable => false);
-- both branches at once
SELECT kind, step FROM saga.outbox WHERE saga_id = :p ORDER BY id;
SELECT step, status FROM saga.step_runs WHERE saga_id = :p ORDER BY step_index;
SELECT saga.complete(saga_test.task(:p, 'right', true));
SELECT kind, step FROM saga.outbox WHERE saga_id = :p ORDER BY id;
SELECT saga.complete(saga_test.task(:p, 'left', true));
SELECT kind, step FROM saga.outbox WHERE saga_id = :p ORDER BY id;
SELECT saga.complete(saga_test.task(:p, 'root', true));
SELECT status FROM saga.instances WHERE id = :p;
SELECT step, status FROM saga.step_runs WHERE saga_id = :p ORDER BY step_index;

--
-- In-flight siblings are withdrawn: an undelivered task is deleted and its
-- step skipped; a leased one stays in the outbox under its lease and awaits
-- its late report (or the lapse of the lease).
--
SELECT saga.define('f_sib', $${"steps": [
  {"name": "a", "topic": "f_sa", "after": [], "compensate": {"topic": "f_sa"}},
  {"name": "b", "topic": "f_sb", "after": [], "compensate": {"topic": "f_sb"}},
  {"name": "c", "topic": "f_sc", "after": []},
  {"name": "e", "topic": "f_se", "after": []},
  {"name": "d", "topic": "f_sd", "after": ["a", "b", "c", "e"]}
]}$$);
SELECT saga.start('f_sib') AS w \gset
SELECT saga.complete(saga_test.task(:w, 'a'), '{"a": 1}');
SELECT saga_id = :w AS is_w, step, lease FROM saga.claim('f_sb', 'w1', 1, '1 hour');
SELECT saga.fail(saga_test.task(:w, 'e'), '{"reason": "e broke"}', retryable => false);
SELECT status FROM saga.instances WHERE id = :w;
SELECT step, status, withdrawn FROM saga.step_runs WHERE saga_id = :w ORDER BY step_index;
SELECT kind, step FROM saga.outbox WHERE saga_id = :w ORDER BY id;
-- a report for the deleted task is refused (it was never delivered), and
-- changes nothing
SELECT saga_test.outcome(format('SELECT saga.complete(%s)', saga_test.task(:w, 'c')))
       IN ('error 42704', 'error 55000') AS refused;
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :w AND step = 'c';
-- a's compensation does not finish the saga while b is in doubt
SELECT saga.complete(saga_test.task(:w, 'a', true));
SELECT status FROM saga.instances WHERE id = :w;
-- b's late success is recorded, then compensated
SELECT saga.complete(saga_test.task(:w, 'b'), '{"b": 1}', lease => 1) AS recorded;
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :w AND step = 'b';
SELECT kind, step, payload -> 'results' -> 'b' AS undo FROM saga.outbox WHERE saga_id = :w ORDER BY id;
SELECT saga.complete(saga_test.task(:w, 'b', true));
SELECT status FROM saga.instances WHERE id = :w;
SELECT step, status, withdrawn FROM saga.step_runs WHERE saga_id = :w ORDER BY step_index;

-- the same, with a late failure of the withdrawn sibling: nothing to undo for it
SELECT saga.start('f_sib') AS w2 \gset
SELECT saga.complete(saga_test.task(:w2, 'a'), '{"a": 2}');
SELECT saga_id = :w2 AS is_w2, step, lease FROM saga.claim('f_sb', 'w1', 1, '1 hour');
SELECT saga.fail(saga_test.task(:w2, 'e'), '{"reason": "e broke"}', retryable => false);
SELECT saga.complete(saga_test.task(:w2, 'a', true));
SELECT status FROM saga.instances WHERE id = :w2;
SELECT saga.fail(saga_test.task(:w2, 'b'), '{"reason": "b broke too"}', lease => 1) AS recorded;
SELECT step, status, error FROM saga.step_runs WHERE saga_id = :w2 ORDER BY step_index;
SELECT status FROM saga.instances WHERE id = :w2;
SELECT count(*) AS tasks_left FROM saga.outbox WHERE saga_id = :w2;
