-- 03_state_machine: the saga state machine, step by step, in one rolled-back
-- transaction.  Reports are made without a lease (the caller's transaction is
-- the lease).  now() is frozen here; the engine writes visible_at from the
-- clock, so "visible" below means visible_at <= clock_timestamp().
BEGIN;
SELECT plan(70);

-- task id of a named step: saga_id << 10 | step_index << 1 | compensation
CREATE FUNCTION pg_temp.t(saga bigint, step text, comp bool DEFAULT false) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT (saga << 10) | ((array_position(d.step_names, step) - 1) << 1) | (CASE WHEN comp THEN 1 ELSE 0 END)
      FROM saga.sagas s JOIN saga.definitions d ON d.id = s.definition_id WHERE s.id = saga
$$;
CREATE FUNCTION pg_temp.status(saga bigint) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT status FROM saga.instances WHERE id = saga
$$;
CREATE FUNCTION pg_temp.step_status(saga bigint, s text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT status FROM saga.step_runs WHERE saga_id = saga AND step = s
$$;
CREATE FUNCTION pg_temp.tasks(saga bigint) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(string_agg(kind || ':' || step, ' ' ORDER BY kind, step), '')
      FROM saga.outbox WHERE saga_id = saga
$$;

SELECT saga.define('tap_chain', $${"steps": [
  {"name": "a", "topic": "tap_t", "compensate": {"topic": "tap_t"}},
  {"name": "b", "topic": "tap_t", "compensate": {"topic": "tap_t"}},
  {"name": "c", "topic": "tap_t", "compensate": {"topic": "tap_t"}}
]}$$);

--
-- A chain that succeeds.
--
SELECT saga.start('tap_chain', '{"n": 1}') AS s1 \gset
SELECT is(pg_temp.status(:s1), 'running', 'a new saga is running');
SELECT is(pg_temp.tasks(:s1), 'action:a', 'only the first step is dispatched');
SELECT results_eq(format('SELECT step, status FROM saga.step_runs WHERE saga_id = %s ORDER BY step_index', :s1),
                  $$VALUES ('a', 'ready'), ('b', 'pending'), ('c', 'pending')$$,
                  'step states after start');
SELECT is(saga.complete(pg_temp.t(:s1, 'a'), '{"ra": 1}'), true, 'complete a');
SELECT is(pg_temp.tasks(:s1), 'action:b', 'b is dispatched after a');
SELECT is((SELECT payload FROM saga.outbox WHERE id = pg_temp.t(:s1, 'b')),
          '{"input": {"n": 1}, "results": {"a": {"ra": 1}}}'::jsonb, 'b sees the input and a''s result');
SELECT is(saga.complete(pg_temp.t(:s1, 'b'), '{"rb": 2}'), true, 'complete b');
SELECT is(saga.complete(pg_temp.t(:s1, 'c'), '{"rc": 3}'), true, 'complete c');
SELECT is(pg_temp.status(:s1), 'completed', 'the chain ends completed');
SELECT ok((SELECT finished_at IS NOT NULL FROM saga.instances WHERE id = :s1), 'finished_at is set');
SELECT is(pg_temp.tasks(:s1), '', 'no task left');
SELECT results_eq(format('SELECT step, status, result FROM saga.step_runs WHERE saga_id = %s ORDER BY step_index', :s1),
                  $$VALUES ('a', 'succeeded', '{"ra": 1}'::jsonb), ('b', 'succeeded', '{"rb": 2}'), ('c', 'succeeded', '{"rc": 3}')$$,
                  'every step succeeded with its result');

--
-- Repeated reports.
--
SELECT is(saga.complete(pg_temp.t(:s1, 'a'), '{"ra": 1}'), false, 'a repeated identical complete is a no-op');
SELECT throws_ok(format($$SELECT saga.complete(%s, '{"ra": 9}')$$, pg_temp.t(:s1, 'a')), '55000', NULL,
                 'a complete with another result is refused');
SELECT throws_ok(format($$SELECT saga.fail(%s, '{}')$$, pg_temp.t(:s1, 'a')), '55000', NULL,
                 'a fail after complete is refused');
SELECT throws_ok('SELECT saga.complete(1)', '42704', NULL, 'an unknown task is unknown');
SELECT throws_ok($$SELECT saga.start('tap_nothing')$$, '42704', NULL, 'an unknown saga name is unknown');

--
-- A failure compensates the chain in reverse, one step at a time.
--
SELECT saga.start('tap_chain', '{"n": 2}') AS s2 \gset
SELECT saga.complete(pg_temp.t(:s2, 'a'), '{"ra": 1}');
SELECT saga.complete(pg_temp.t(:s2, 'b'), '{"rb": 2}');
SELECT is(saga.fail(pg_temp.t(:s2, 'c'), '{"why": "x"}', retryable => false), true, 'c fails for good');
SELECT is(pg_temp.status(:s2), 'compensating', 'the saga compensates');
SELECT is(pg_temp.step_status(:s2, 'c'), 'failed', 'c is failed');
SELECT is(pg_temp.tasks(:s2), 'compensate:b', 'b is compensated first');
SELECT is(pg_temp.step_status(:s2, 'b'), 'compensating', 'b is compensating');
SELECT is(pg_temp.step_status(:s2, 'a'), 'succeeded', 'a waits');
SELECT is((SELECT payload -> 'results' FROM saga.outbox WHERE id = pg_temp.t(:s2, 'b', true)),
          '{"a": {"ra": 1}, "b": {"rb": 2}}'::jsonb, 'the compensation finds the results to undo');
SELECT is((SELECT headers ->> 'kind' FROM saga.outbox WHERE id = pg_temp.t(:s2, 'b', true)),
          'compensate', 'its kind header is compensate');
SELECT is(saga.complete(pg_temp.t(:s2, 'b', true)), true, 'b compensated');
SELECT is(pg_temp.tasks(:s2), 'compensate:a', 'then a');
SELECT is(saga.complete(pg_temp.t(:s2, 'a', true)), true, 'a compensated');
SELECT is(pg_temp.status(:s2), 'compensated', 'the saga ends compensated');
SELECT results_eq(format('SELECT step, status FROM saga.step_runs WHERE saga_id = %s ORDER BY step_index', :s2),
                  $$VALUES ('a', 'compensated'), ('b', 'compensated'), ('c', 'failed')$$,
                  'final step states');
SELECT throws_ok(format('SELECT saga.cancel(%s)', :s2), '55000', NULL, 'a compensated saga cannot be cancelled');
SELECT throws_ok(format('SELECT saga.retry(%s)', :s2), '55000', NULL, 'a compensated saga cannot be retried');

--
-- Retryable failure: the attempt count grows, the task waits, then fails for good.
--
SELECT saga.define('tap_retry', $${"steps": [{"name": "a", "topic": "tap_t",
  "retry": {"max_attempts": 2, "initial_delay": "1 hour", "max_delay": "1 hour", "jitter": false}}]}$$);
SELECT saga.start('tap_retry') AS s3 \gset
SELECT is(saga.fail(pg_temp.t(:s3, 'a'), '{"n": 1}'), true, 'a retryable failure');
SELECT is((SELECT attempt FROM saga.outbox WHERE saga_id = :s3), 2, 'attempt 2');
SELECT ok((SELECT visible_at >= clock_timestamp() + interval '59 minutes' FROM saga.outbox WHERE saga_id = :s3),
          'the task waits for the backoff');
SELECT is(pg_temp.status(:s3), 'running', 'the saga still runs');
SELECT is(saga.fail(pg_temp.t(:s3, 'a'), '{"n": 1}'), false, 'the same failure again is a no-op');
SELECT throws_ok(format('SELECT saga.fail(%s, %L)', pg_temp.t(:s3, 'a'), '{"n": 2}'), '55000', NULL,
                 'a different report while the task waits out its delay is refused');
UPDATE saga.outbox SET visible_at = clock_timestamp() WHERE saga_id = :s3;
SELECT is(saga.fail(pg_temp.t(:s3, 'a'), '{"n": 2}'), true, 'the second attempt fails');
SELECT is(pg_temp.step_status(:s3, 'a'), 'failed', 'attempts exhausted: the step failed');
SELECT is(pg_temp.status(:s3), 'compensated', 'nothing to compensate: compensated');

--
-- Parallel branches compensate concurrently, the root after both.
--
SELECT saga.define('tap_par', $${"steps": [
  {"name": "root", "topic": "tap_t", "compensate": {"topic": "tap_t"}},
  {"name": "x", "topic": "tap_t", "after": ["root"], "compensate": {"topic": "tap_t"}},
  {"name": "y", "topic": "tap_t", "after": ["root"], "compensate": {"topic": "tap_t"}},
  {"name": "j", "topic": "tap_t", "after": ["x", "y"]}
]}$$);
SELECT saga.start('tap_par') AS s4 \gset
SELECT saga.complete(pg_temp.t(:s4, 'root'));
SELECT is(pg_temp.tasks(:s4), 'action:x action:y', 'x and y run in parallel');
SELECT saga.complete(pg_temp.t(:s4, 'x'));
SELECT is(pg_temp.tasks(:s4), 'action:y', 'the join waits for y');
SELECT saga.complete(pg_temp.t(:s4, 'y'));
SELECT is(pg_temp.tasks(:s4), 'action:j', 'then the join');
SELECT saga.fail(pg_temp.t(:s4, 'j'), '{}', retryable => false);
SELECT is(pg_temp.tasks(:s4), 'compensate:x compensate:y', 'both branches compensate at once');
SELECT saga.complete(pg_temp.t(:s4, 'y', true));
SELECT is(pg_temp.tasks(:s4), 'compensate:x', 'root waits for x');
SELECT saga.complete(pg_temp.t(:s4, 'x', true));
SELECT is(pg_temp.tasks(:s4), 'compensate:root', 'then root');
SELECT saga.complete(pg_temp.t(:s4, 'root', true));
SELECT is(pg_temp.status(:s4), 'compensated', 'compensated');

--
-- Pivot.
--
SELECT saga.define('tap_pivot', $${"steps": [
  {"name": "a", "topic": "tap_t", "compensate": {"topic": "tap_t"}},
  {"name": "p", "topic": "tap_t", "pivot": true},
  {"name": "z", "topic": "tap_t", "retry": {"max_attempts": 1}}
]}$$);
SELECT saga.start('tap_pivot') AS s5 \gset
SELECT saga.complete(pg_temp.t(:s5, 'a'));
SELECT saga.complete(pg_temp.t(:s5, 'p'));
SELECT throws_ok(format('SELECT saga.cancel(%s)', :s5), '55000', NULL, 'cancel after the pivot is refused');
SELECT is(saga.fail(pg_temp.t(:s5, 'z'), '{}', retryable => false), true, 'z fails after the pivot');
SELECT is(pg_temp.status(:s5), 'running', 'the saga keeps running');
SELECT is(pg_temp.tasks(:s5), 'action:z', 'z is retried forward');
SELECT is((SELECT attempt FROM saga.outbox WHERE saga_id = :s5), 2, 'as attempt 2 (beyond max_attempts 1)');
SELECT is(pg_temp.step_status(:s5, 'a'), 'succeeded', 'nothing is compensated');
UPDATE saga.outbox SET visible_at = clock_timestamp() WHERE saga_id = :s5;   -- its delay is over
SELECT is(saga.complete(pg_temp.t(:s5, 'z')), true, 'z succeeds eventually');
SELECT is(pg_temp.status(:s5), 'completed', 'the saga completes');

--
-- Cancel.
--
SELECT saga.start('tap_chain', '{"n": 6}') AS s6 \gset
SELECT saga.complete(pg_temp.t(:s6, 'a'), '{"ra": 6}');
SELECT lives_ok(format($$SELECT saga.cancel(%s, 'test')$$, :s6), 'cancel a running saga');
SELECT is(pg_temp.status(:s6), 'compensating', 'it compensates');
SELECT is(pg_temp.step_status(:s6, 'b'), 'skipped', 'the undelivered next step is skipped');
SELECT is(pg_temp.tasks(:s6), 'compensate:a', 'a is compensated');
SELECT throws_ok(format('SELECT saga.cancel(%s)', :s6), '55000', NULL, 'a compensating saga cannot be cancelled');
SELECT saga.complete(pg_temp.t(:s6, 'a', true));
SELECT is(pg_temp.status(:s6), 'cancelled', 'it ends cancelled');
SELECT throws_ok(format($$SELECT saga.complete(%s, '{"late": true}')$$, pg_temp.t(:s6, 'b')), NULL::char(5), NULL,
                 'a report for the withdrawn, never delivered step is refused');
SELECT is(pg_temp.status(:s6) || '/' || pg_temp.step_status(:s6, 'b') || '/' || pg_temp.tasks(:s6), 'cancelled/skipped/',
          'and changes nothing');
SELECT throws_ok('SELECT saga.cancel(0)', '42704', NULL, 'an unknown saga cannot be cancelled');

--
-- A compensation failing for good: failed, an incident, retry resumes.
--
SELECT saga.start('tap_chain', '{"n": 7}') AS s7 \gset
SELECT saga.complete(pg_temp.t(:s7, 'a'));
SELECT saga.fail(pg_temp.t(:s7, 'b'), '{}', retryable => false);
SELECT saga.fail(pg_temp.t(:s7, 'a', true), '{"why": "down"}', retryable => false);
SELECT is(pg_temp.status(:s7), 'failed', 'the saga is failed');
SELECT results_eq(format('SELECT step, error FROM saga.incidents WHERE saga_id = %s', :s7),
                  $$VALUES ('a', '{"why": "down"}'::jsonb)$$, 'an incident names the step and the error');
SELECT lives_ok(format('SELECT saga.retry(%s)', :s7), 'retry');
SELECT is(pg_temp.tasks(:s7), 'compensate:a', 'the compensation is enqueued again');
SELECT saga.complete(pg_temp.t(:s7, 'a', true));
SELECT is(pg_temp.status(:s7), 'compensated', 'and the saga is compensated');

SELECT * FROM finish();
ROLLBACK;
