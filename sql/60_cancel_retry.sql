--
-- 60_cancel_retry: cancel, the pivot step, and compensations that fail for
-- good (saga 'failed', saga.incidents, saga.retry).
--
SELECT saga.define('x_flow', $${"steps": [
  {"name": "book", "topic": "x_a", "compensate": {"topic": "x_a"}},
  {"name": "pay", "topic": "x_b", "compensate": {"topic": "x_b"}},
  {"name": "send", "topic": "x_c"}
]}$$);

--
-- Cancel.
--
-- a running saga with one step done and the next delivered
SELECT saga.start('x_flow', '{"k": 1}') AS c1 \gset
SELECT saga.complete(saga_test.task(:c1, 'book'), '{"booking": "b_1"}');
SELECT step, lease FROM saga.claim('x_b', 'w1', 1, '1 hour');
SELECT saga.cancel(:c1, 'customer changed their mind');
SELECT status, cancel_reason, finished_at IS NULL AS unfinished FROM saga.instances WHERE id = :c1;
SELECT step, status, withdrawn FROM saga.step_runs WHERE saga_id = :c1 ORDER BY step_index;
-- the leased task stays under its lease, awaiting its report
SELECT kind, step FROM saga.outbox WHERE saga_id = :c1 ORDER BY id;
-- cancelling again, while it compensates: refused
SELECT saga_test.err(format('SELECT saga.cancel(%s)', :c1));
-- the late report of the delivered step, then both compensations
SELECT saga.complete(saga_test.task(:c1, 'pay'), '{"payment": "p_1"}', lease => 1) AS recorded;
SELECT kind, step FROM saga.outbox WHERE saga_id = :c1 ORDER BY id;
SELECT saga.complete(saga_test.task(:c1, 'pay', true));
SELECT kind, step FROM saga.outbox WHERE saga_id = :c1 ORDER BY id;
SELECT saga.complete(saga_test.task(:c1, 'book', true));
-- it ends cancelled, not compensated
SELECT status, cancel_reason, finished_at IS NOT NULL AS finished FROM saga.instances WHERE id = :c1;
SELECT step, status FROM saga.step_runs WHERE saga_id = :c1 ORDER BY step_index;
SELECT event, step FROM saga.history WHERE saga_id = :c1 ORDER BY id;
SELECT saga_test.err(format('SELECT saga.cancel(%s)', :c1));

-- a saga with nothing done and nothing delivered: cancelled at once
SELECT saga.start('x_flow', '{"k": 2}') AS c2 \gset
SELECT saga.cancel(:c2);
SELECT status, cancel_reason, finished_at IS NOT NULL AS finished FROM saga.instances WHERE id = :c2;
SELECT step, status FROM saga.step_runs WHERE saga_id = :c2 ORDER BY step_index;
SELECT count(*) AS tasks_left FROM saga.outbox WHERE saga_id = :c2;

-- a completed saga cannot be cancelled
SELECT saga.start('x_flow', '{"k": 3}') AS c3 \gset
SELECT saga.complete(saga_test.task(:c3, 'book'));
SELECT saga.complete(saga_test.task(:c3, 'pay'));
SELECT saga.complete(saga_test.task(:c3, 'send'));
SELECT status FROM saga.instances WHERE id = :c3;
SELECT saga_test.err(format('SELECT saga.cancel(%s, %L)', :c3, 'too late'));
SELECT status, cancel_reason FROM saga.instances WHERE id = :c3;

-- nor a compensated one; an unknown saga is unknown
SELECT saga.start('x_flow', '{"k": 4}') AS c4 \gset
SELECT saga.fail(saga_test.task(:c4, 'book'), '{}', retryable => false);
SELECT status FROM saga.instances WHERE id = :c4;
SELECT saga_test.err(format('SELECT saga.cancel(%s)', :c4));
SELECT saga_test.err('SELECT saga.cancel(0)');
SELECT saga_test.err('SELECT saga.cancel(NULL)');

-- a report for a step of a cancelled saga that was never delivered: refused,
-- the saga stays cancelled
SELECT saga_test.outcome(format('SELECT saga.complete(%s, %L)', saga_test.task(:c2, 'book'), '{"late": true}'))
       IN ('error 42704', 'error 55000') AS refused;
SELECT status, finished_at IS NOT NULL AS finished FROM saga.instances WHERE id = :c2;
SELECT step, status FROM saga.step_runs WHERE saga_id = :c2 ORDER BY step_index;
SELECT count(*) AS tasks_left FROM saga.outbox WHERE saga_id = :c2;

--
-- Pivot: once it succeeds, failures are retried forward, nothing is
-- compensated, cancel is refused.
--
SELECT saga.define('x_pivot', $${"steps": [
  {"name": "reserve", "topic": "x_p", "compensate": {"topic": "x_p"}},
  {"name": "charge", "topic": "x_p", "pivot": true, "compensate": {"topic": "x_p"}},
  {"name": "ship", "topic": "x_p", "retry": {"max_attempts": 2}, "compensate": {"topic": "x_p"}}
]}$$);
-- before the pivot succeeds, a failure compensates as usual
SELECT saga.start('x_pivot') AS p1 \gset
SELECT saga.complete(saga_test.task(:p1, 'reserve'), '{"r": 1}');
SELECT saga.fail(saga_test.task(:p1, 'charge'), '{"reason": "declined"}', retryable => false);
SELECT status FROM saga.instances WHERE id = :p1;
SELECT kind, step FROM saga.outbox WHERE saga_id = :p1;
SELECT saga.complete(saga_test.task(:p1, 'reserve', true));
SELECT status FROM saga.instances WHERE id = :p1;
-- and cancel is allowed
SELECT saga.start('x_pivot') AS p2 \gset
SELECT saga.complete(saga_test.task(:p2, 'reserve'), '{"r": 2}');
SELECT saga.cancel(:p2, 'before the pivot');
SELECT kind, step FROM saga.outbox WHERE saga_id = :p2;
SELECT saga.complete(saga_test.task(:p2, 'reserve', true));
SELECT status FROM saga.instances WHERE id = :p2;

-- after the pivot
SELECT saga.start('x_pivot') AS p3 \gset
SELECT saga.complete(saga_test.task(:p3, 'reserve'), '{"r": 3}');
SELECT saga.complete(saga_test.task(:p3, 'charge'), '{"c": 3}');
SELECT saga_test.err(format('SELECT saga.cancel(%s)', :p3));
-- a non-retryable failure is retried forward
SELECT saga.fail(saga_test.task(:p3, 'ship'), '{"reason": "carrier down"}', retryable => false) AS recorded;
SELECT status FROM saga.instances WHERE id = :p3;
SELECT kind, step, attempt FROM saga.outbox WHERE saga_id = :p3;
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :p3 ORDER BY step_index;
-- so are failures beyond max_attempts
SELECT saga_test.time_passes(saga_test.task(:p3, 'ship'));
SELECT saga.fail(saga_test.task(:p3, 'ship'), '{"reason": "carrier down 2"}') AS recorded;
SELECT saga_test.time_passes(saga_test.task(:p3, 'ship'));
SELECT saga.fail(saga_test.task(:p3, 'ship'), '{"reason": "carrier down 3"}') AS recorded;
SELECT status FROM saga.instances WHERE id = :p3;
SELECT kind, step, attempt FROM saga.outbox WHERE saga_id = :p3;
SELECT saga_test.err(format('SELECT saga.cancel(%s)', :p3));
SELECT saga_test.time_passes(saga_test.task(:p3, 'ship'));
SELECT saga.complete(saga_test.task(:p3, 'ship'), '{"s": 3}');
SELECT status FROM saga.instances WHERE id = :p3;
SELECT step, status FROM saga.step_runs WHERE saga_id = :p3 ORDER BY step_index;

--
-- A compensation that fails non-retryably: the saga is 'failed' and an
-- incident; saga.retry resumes it.  (Topics of their own, so that nothing
-- above can be in the way of the claims.)
--
SELECT saga.define('x_inc', $${"steps": [
  {"name": "book", "topic": "x_ia", "compensate": {"topic": "x_ia"}},
  {"name": "pay", "topic": "x_ib", "compensate": {"topic": "x_ib"}},
  {"name": "send", "topic": "x_ic"}
]}$$);
SELECT saga.start('x_inc', '{"k": 5}', correlation_id => 'corr-5') AS f \gset
SELECT saga.complete(saga_test.task(:f, 'book'), '{"booking": "b_5"}');
SELECT saga.fail(saga_test.task(:f, 'pay'), '{"reason": "declined"}', retryable => false);
SELECT kind, step FROM saga.outbox WHERE saga_id = :f;
SELECT saga_test.err(format('SELECT saga.retry(%s)', :f));
SELECT saga.fail(saga_test.task(:f, 'book', true), '{"reason": "hotel api gone"}', retryable => false) AS recorded;
SELECT status, finished_at IS NULL AS unfinished FROM saga.instances WHERE id = :f;
SELECT saga_id = :f AS is_f, name, version, correlation_id, step, error, since <= now() AS since_ok
  FROM saga.incidents;
SELECT step, status, error FROM saga.step_runs WHERE saga_id = :f ORDER BY step_index;
SELECT count(*) FILTER (WHERE visible_at < 'infinity') AS tasks_left, count(*) FILTER (WHERE visible_at = 'infinity') AS parked FROM saga.outbox WHERE saga_id = :f;
-- a failed saga can be neither cancelled nor reported on again
SELECT saga_test.err(format('SELECT saga.cancel(%s)', :f));
SELECT saga.fail(saga_test.task(:f, 'book', true), '{"reason": "hotel api gone"}', retryable => false) AS recorded;
-- a person fixes the cause and retries
SELECT saga.retry(:f);
SELECT status, finished_at IS NULL AS unfinished FROM saga.instances WHERE id = :f;
SELECT count(*) AS incidents FROM saga.incidents WHERE saga_id = :f;
SELECT kind, step, visible_at <= now() AS visible FROM saga.outbox WHERE saga_id = :f;
SELECT saga_id = :f AS is_f, kind, step, lease FROM saga.claim('x_ia', 'w1', 1, '1 minute');
SELECT saga.complete(saga_test.task(:f, 'book', true), '{"cancelled": "b_5"}', lease => deliveries) AS recorded
  FROM saga.outbox WHERE id = saga_test.task(:f, 'book', true);
SELECT status, finished_at IS NOT NULL AS finished FROM saga.instances WHERE id = :f;
SELECT step, status FROM saga.step_runs WHERE saga_id = :f ORDER BY step_index;
SELECT event, step FROM saga.history WHERE saga_id = :f ORDER BY id;

-- lease numbers are fencing tokens across a retry: the worker that failed the
-- compensation under lease 1 repeats its report after saga.retry and a new
-- claim; it must not fail the saga again under the new delivery
SELECT saga.start('x_inc', '{"k": 7}') AS h \gset
SELECT saga.complete(saga_test.task(:h, 'book'), '{"booking": "b_7"}');
SELECT saga.fail(saga_test.task(:h, 'pay'), '{"reason": "declined"}', retryable => false);
SELECT saga_id = :h AS is_h, kind, step, lease FROM saga.claim('x_ia', 'old_worker', 1, '1 hour');
SELECT saga.fail(saga_test.task(:h, 'book', true), '{"reason": "gone"}', retryable => false, lease => 1) AS recorded;
SELECT status FROM saga.instances WHERE id = :h;
SELECT saga.retry(:h);
SELECT saga_id = :h AS is_h, kind, step, lease > 1 AS fresh_lease FROM saga.claim('x_ia', 'new_worker', 1, '1 hour');
SELECT saga_test.outcome(format('SELECT saga.fail(%s, %L, false, 1)', saga_test.task(:h, 'book', true), '{"reason": "gone"}')) AS stale_report;
SELECT status FROM saga.instances WHERE id = :h;
SELECT saga.complete(saga_test.task(:h, 'book', true), '{"cancelled": "b_7"}', lease => deliveries) AS recorded
  FROM saga.outbox WHERE id = saga_test.task(:h, 'book', true);
SELECT status FROM saga.instances WHERE id = :h;

-- retry of a saga that is not failed, or unknown
SELECT saga_test.err(format('SELECT saga.retry(%s)', :f));
SELECT saga_test.err(format('SELECT saga.retry(%s)', :c3));
SELECT saga_test.err('SELECT saga.retry(0)');
SELECT saga_test.err('SELECT saga.retry(NULL)') AS null_saga_id;

-- an incident of a cancelled saga: retry resumes it and it still ends cancelled
SELECT saga.start('x_inc', '{"k": 6}') AS g \gset
SELECT saga.complete(saga_test.task(:g, 'book'), '{"booking": "b_6"}');
SELECT saga.cancel(:g, 'no longer needed');
SELECT saga.fail(saga_test.task(:g, 'book', true), '{"reason": "gone"}', retryable => false);
SELECT status FROM saga.instances WHERE id = :g;
SELECT saga.retry(:g);
SELECT saga.complete(saga_test.task(:g, 'book', true));
SELECT status, cancel_reason FROM saga.instances WHERE id = :g;

-- a pivot reported after a cancel: the saga stays on its way back (no "pivoted"), the pivot is
-- undone like any step, and with no compensation of its own it is an incident; retry and cancel
-- still work on it afterwards
SELECT saga.define('x_piv', '{"steps": [
  {"name": "a", "topic": "x_piv", "compensate": {"topic": "x_piv"}},
  {"name": "c", "topic": "x_piv", "pivot": true},
  {"name": "d", "topic": "x_piv"}]}') AS version;
SELECT saga.start('x_piv', '{}') AS p \gset
SELECT saga.complete(id, '{}', lease => lease) FROM saga.claim('x_piv', 'w', 1, '1 hour');
SELECT step, lease FROM saga.claim('x_piv', 'w', 1, '1 hour');
SELECT saga.cancel(:p, 'changed my mind');
SELECT saga.complete(saga_test.task(:p, 'c'), '{"charged": true}', lease => 1) AS recorded;
SELECT status, pivoted, step_status, incident -> 'error' ->> 'reason' AS incident
  FROM saga.sagas WHERE id = :p;
SELECT event, step FROM saga.history WHERE saga_id = :p ORDER BY id;
SELECT saga.fail(id, '{"reason": "gone"}', retryable => false, lease => lease)
  FROM saga.claim('x_piv', 'w', 1, '1 hour');
SELECT status FROM saga.instances WHERE id = :p;
SELECT saga.retry(:p);
SELECT saga.complete(id, '{}', lease => lease) FROM saga.claim('x_piv', 'w', 1, '1 hour');
SELECT status, pivoted, step_status FROM saga.sagas WHERE id = :p;
