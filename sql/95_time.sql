--
-- 95_time: the time-based work, one round at a time with saga.tick(): step
-- timeouts, lapsed leases, saga deadlines, wake-up notifications for delayed
-- work, retention of finished sagas; and incidents for compensations that
-- keep failing.
--
-- The regression database is not in saga.databases, so no background worker
-- acts here: only saga.tick() does, in the caller's transaction.  Time passes
-- by moving timestamps into the past (timeout_at, visible_at, deadline_at,
-- finished_at), never by sleeping.
--
-- tick() counts everything in the database, and earlier files leave work
-- behind: a first tick takes whatever of it is due.  Its notified_topics
-- count also covers their delayed retries, which fall due while this file
-- runs, so saga_test.tick() leaves that count out; notifications are checked
-- with the listener instead, on this file's channels only.
--
CREATE ROLE regress_saga_time_admin IN ROLE saga_admin;
CREATE ROLE regress_saga_time_worker IN ROLE saga_worker;
CREATE ROLE regress_saga_time_reader IN ROLE saga_reader;
CREATE ROLE regress_saga_time_nobody;
SET ROLE regress_saga_time_admin;
SELECT saga.tick() IS NOT NULL AS earlier_work_done;
RESET ROLE;

CREATE FUNCTION saga_test.tick() RETURNS jsonb
LANGUAGE sql AS $$ SELECT saga.tick() - 'notified_topics' $$;

-- A delay (a retry's backoff, a lease) ends now.  saga_test.time_passes()
-- sets visible_at to a second before the statement's start, which may be
-- before the previous round: tick announces only what became visible since
-- its previous round, so the notification tests move visible_at to the clock
-- time instead, which is always after the previous round.
CREATE FUNCTION saga_test.delay_ends(task bigint) RETURNS void
LANGUAGE sql AS $$
    UPDATE saga.outbox SET visible_at = clock_timestamp() WHERE id = task
$$;

-- the counts, and that nothing is due now
SELECT key FROM jsonb_object_keys(saga.tick()) AS key ORDER BY key COLLATE "C";
SELECT saga_test.tick();

-- only saga_admin may run a round
SET ROLE regress_saga_time_admin;
SELECT saga_test.tick();
SET ROLE regress_saga_time_worker;
SELECT saga_test.err('SELECT saga.tick()');
SET ROLE regress_saga_time_reader;
SELECT saga_test.err('SELECT saga.tick()');
SET ROLE regress_saga_time_nobody;
SELECT saga_test.err('SELECT saga.tick()');
RESET ROLE;
DROP ROLE regress_saga_time_admin, regress_saga_time_worker, regress_saga_time_reader,
          regress_saga_time_nobody;
SELECT has_function_privilege('saga_admin', 'saga.tick()', 'EXECUTE') AS admin,
       has_function_privilege('saga_worker', 'saga.tick()', 'EXECUTE') AS worker,
       has_function_privilege('saga_reader', 'saga.tick()', 'EXECUTE') AS reader,
       has_function_privilege('public', 'saga.tick()', 'EXECUTE') AS public;

--
-- Step timeouts: from dispatch; when one passes the step fails with
-- {"reason": "timeout"} and the saga compensates in the same transaction.
--
SELECT saga.define('tm_flow', $${"steps": [
  {"name": "a", "topic": "tm_a", "compensate": {"topic": "tm_undo"}},
  {"name": "b", "topic": "tm_b", "timeout": "1 hour", "compensate": {"topic": "tm_undo"},
   "retry": {"initial_delay": "10 minutes", "jitter": false}},
  {"name": "c", "topic": "tm_c"}
]}$$);
SELECT saga.start('tm_flow', '{"n": 1}') AS t1 \gset
SELECT timeout_at IS NULL AS no_timeout FROM saga.outbox WHERE id = saga_test.task(:t1, 'a');
SELECT saga.complete(saga_test.task(:t1, 'a'), '{"a": 1}') AS recorded;
SELECT timeout_at - created_at AS timeout, timeout_at > now() AS ahead
  FROM saga.outbox WHERE id = saga_test.task(:t1, 'b');
-- not yet
SELECT saga_test.tick();
SELECT step, status FROM saga.step_runs WHERE saga_id = :t1 ORDER BY step_index;

-- the timeout passes; a round in a transaction that rolls back changes nothing
UPDATE saga.outbox SET timeout_at = now() - interval '1 second' WHERE id = saga_test.task(:t1, 'b');
BEGIN;
SELECT saga_test.tick();
ROLLBACK;
SELECT step, status FROM saga.step_runs WHERE saga_id = :t1 ORDER BY step_index;
SELECT saga_test.tick();
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :t1 ORDER BY step_index;
SELECT status FROM saga.instances WHERE id = :t1;
SELECT topic, kind, step FROM saga.outbox WHERE saga_id = :t1;
-- history: the round's work is the worker's, whoever calls saga.tick()
SELECT event, step, detail, CASE WHEN actor = current_user THEN '(caller)' ELSE actor END AS actor
  FROM saga.history WHERE saga_id = :t1 ORDER BY id;
-- once is enough
SELECT saga_test.tick();
-- the worker's report comes too late
SELECT saga_test.err(format('SELECT saga.complete(%s, %L)', saga_test.task(:t1, 'b'), '{"b": 1}'));
SELECT saga.complete(saga_test.task(:t1, 'a', true), '{"undone": true}') AS recorded;
SELECT status FROM saga.instances WHERE id = :t1;

-- a leased step times out all the same.  Its delivery may have acted without
-- saying so: the outcome is unknown, so the step is compensated (in doubt)
-- like a withdrawn delivered sibling, and the saga cannot end compensated
-- while it stands.  A late report under that lease is recorded, and a late
-- success's result reaches the compensation.
SELECT saga.start('tm_flow', '{"n": 2}') AS t2 \gset
SELECT saga.complete(saga_test.task(:t2, 'a'), '{"a": 2}') AS recorded;
SELECT step, lease FROM saga.claim('tm_b', 'w1', 1, '1 day');
UPDATE saga.outbox SET timeout_at = now() - interval '1 second' WHERE id = saga_test.task(:t2, 'b');
SELECT saga_test.tick();
SELECT step, status, error FROM saga.step_runs WHERE saga_id = :t2 ORDER BY step_index;
SELECT kind, step, payload -> 'results' AS results FROM saga.outbox WHERE saga_id = :t2;
SELECT saga_test.outcome(format('SELECT saga.complete(%s, %L, lease => 2)', saga_test.task(:t2, 'b'), '{"b": 2}')) AS stale_lease;
SELECT saga_test.outcome(format('SELECT saga.complete(%s, %L, lease => 1)', saga_test.task(:t2, 'b'), '{"b": 2}')) AS late_complete;
SELECT saga_test.outcome(format('SELECT saga.complete(%s, %L, lease => 1)', saga_test.task(:t2, 'b'), '{"b": 2}')) AS repeated;
SELECT saga_test.outcome(format('SELECT saga.heartbeat(%s, 1)', saga_test.task(:t2, 'b'))) AS late_heartbeat;
SELECT event, step, detail FROM saga.history WHERE saga_id = :t2 AND event IN ('failed', 'late_report') ORDER BY id;
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :t2 ORDER BY step_index;
-- b's compensation (which now has b's result), then a's; only then is the
-- saga compensated
SELECT kind, step, payload -> 'results' AS results FROM saga.outbox WHERE saga_id = :t2;
SELECT saga.complete(saga_test.task(:t2, 'b', true), '{"undone": "b"}') AS recorded;
SELECT status FROM saga.instances WHERE id = :t2;
SELECT kind, step, payload -> 'results' AS results FROM saga.outbox WHERE saga_id = :t2;
SELECT saga.complete(saga_test.task(:t2, 'a', true), '{"undone": "a"}') AS recorded;
SELECT status FROM saga.instances WHERE id = :t2;

-- a late failure is recorded too; b's compensation, dispatched when the step
-- timed out, goes on (compensations tolerate an action that did not happen)
SELECT saga.start('tm_flow', '{"n": 22}') AS t22 \gset
SELECT saga.complete(saga_test.task(:t22, 'a'), '{"a": 22}') AS recorded;
SELECT step, lease FROM saga.claim('tm_b', 'w1', 1, '1 day');
UPDATE saga.outbox SET timeout_at = now() - interval '1 second' WHERE id = saga_test.task(:t22, 'b');
SELECT saga_test.tick();
SELECT saga.fail(saga_test.task(:t22, 'b'), '{"reason": "never started"}', lease => 1) AS late_failure;
SELECT saga.fail(saga_test.task(:t22, 'b'), '{"reason": "never started"}', lease => 1) AS repeated;
SELECT step, status, error FROM saga.step_runs WHERE saga_id = :t22 ORDER BY step_index;

-- a step waiting out the delay of a reported failure has no delivery out:
-- its timeout fails it plainly (nothing in doubt, no late report to wait
-- for): a report under the old lease finds the task finished
SELECT saga.start('tm_flow', '{"n": 24}') AS t24 \gset
SELECT saga.complete(saga_test.task(:t24, 'a'), '{"a": 24}') AS recorded;
SELECT id AS t24_b, lease AS t24_lease FROM saga.claim('tm_b', 'w1', 1, '1 minute') \gset
SELECT saga.fail(:t24_b, '{"why": "busy"}', lease => :t24_lease) AS recorded;
UPDATE saga.outbox SET timeout_at = now() - interval '1 second' WHERE id = :t24_b;
SELECT saga_test.tick();
SELECT step, status, error FROM saga.step_runs WHERE saga_id = :t24 ORDER BY step_index;
SELECT saga_test.outcome(format('SELECT saga.fail(%s, %L, lease => %s)', :t24_b, '{"why": "busy"}', :t24_lease)) AS repeated;
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => 0)', :t24_b, '{}'));

-- past the pivot nothing is in doubt or withdrawn, and a step is retried
-- until it succeeds: an SQL step too, by the background worker (or
-- saga.tick()), from a task no service can claim, after the step's backoff;
-- its leased sibling times out as a plain failure and is retried forward
CREATE TABLE saga_test.flag (ok boolean);
INSERT INTO saga_test.flag VALUES (false);
CREATE FUNCTION saga_test.flaky(p jsonb) RETURNS jsonb LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT (SELECT ok FROM saga_test.flag) THEN
        RAISE EXCEPTION 'flaky is down';
    END IF;
    RETURN '{"flaky": "up"}';
END
$$;
SELECT saga.define('tm_piv', $${"steps": [
  {"name": "p", "topic": "tm_pp", "pivot": true, "after": []},
  {"name": "b", "topic": "tm_pb2", "after": [], "timeout": "1 hour", "retry": {"max_attempts": 1},
   "compensate": {"topic": "tm_pundo"}},
  {"name": "a", "sql": "saga_test.flaky", "after": ["p"],
   "retry": {"initial_delay": "1 hour", "jitter": false}, "compensate": {"sql": "saga_test.flaky"}},
  {"name": "c", "topic": "tm_pc", "after": ["b", "a"]}
]}$$);
SELECT saga.start('tm_piv') AS pv \gset
SELECT id AS pv_b FROM saga.claim('tm_pb2', 'w1', 1, '1 hour') \gset
SELECT saga.complete(saga_test.task(:pv, 'p'), '{"p": 1}') AS recorded;
SELECT status FROM saga.instances WHERE id = :pv;
SELECT step, status, attempts, error ->> 'message' AS error FROM saga.step_runs WHERE saga_id = :pv ORDER BY step_index;
SELECT topic, attempt, visible_at > now() + interval '59 minutes' AS after_its_backoff
  FROM saga.outbox WHERE id = saga_test.task(:pv, 'a');
SELECT event, step, detail - 'error' AS detail FROM saga.history WHERE saga_id = :pv AND event = 'retry_scheduled';
-- no service can claim or report it
SELECT saga_test.err('SELECT saga.claim(''saga sql'', ''w1'')');
SELECT saga_test.err(format('SELECT saga.complete(%s, %L)', saga_test.task(:pv, 'a'), '{"faked": true}'));
UPDATE saga.outbox SET timeout_at = now() - interval '1 second' WHERE id = :pv_b;
SELECT saga_test.tick();
-- due, still failing: the next retry waits again
UPDATE saga.outbox SET visible_at = now() WHERE id = saga_test.task(:pv, 'a');
SELECT saga.tick() -> 'sql_retries' AS sql_retries;
SELECT step, status, attempts FROM saga.step_runs WHERE saga_id = :pv ORDER BY step_index;
-- the cause is fixed: the next retry goes through and the saga goes on
UPDATE saga_test.flag SET ok = true;
UPDATE saga.outbox SET visible_at = now() WHERE id = saga_test.task(:pv, 'a');
SELECT saga.tick() -> 'sql_retries' AS sql_retries;
SELECT step, status FROM saga.step_runs WHERE saga_id = :pv ORDER BY step_index;
UPDATE saga.outbox SET visible_at = now() WHERE id = :pv_b;
SELECT count(saga.complete(id, '{"b": 1}', lease => lease)) AS b_done FROM saga.claim('tm_pb2', 'w1', 1, '1 hour');
SELECT count(saga.complete(id, '{"c": 1}', lease => lease)) AS c_done FROM saga.claim('tm_pc', 'w1', 1, '1 hour');
SELECT status FROM saga.instances WHERE id = :pv;
SELECT count(*) AS incidents FROM saga.incidents WHERE saga_id = :pv;

-- a lease never outlasts the step's timeout: claim and heartbeat cap it
SELECT saga.start('tm_flow', '{"n": 23}') AS t23 \gset
SELECT saga.complete(saga_test.task(:t23, 'a'), '{"a": 23}') AS recorded;
SELECT id AS t23_b, lease AS t23_lease, lease_expires_at AS t23_until FROM saga.claim('tm_b', 'w1', 1, '1 day') \gset
SELECT :'t23_until'::timestamptz = timeout_at AS capped_at_timeout, timeout_at < now() + interval '1 day' AS shorter
  FROM saga.outbox WHERE id = :t23_b;
SELECT saga.heartbeat(:t23_b, :t23_lease, '1 day') = timeout_at AS heartbeat_capped FROM saga.outbox WHERE id = :t23_b;
SELECT saga.complete(:t23_b, '{"b": 23}', lease => :t23_lease) AS recorded;

-- a step waiting for its retry times out too: the timeout spans all attempts
SELECT saga.start('tm_flow', '{"n": 3}') AS t3 \gset
SELECT saga.complete(saga_test.task(:t3, 'a'), '{"a": 3}') AS recorded;
SELECT saga.fail(saga_test.task(:t3, 'b'), '{"reason": "busy"}') AS recorded;
SELECT attempt, visible_at > now() AS waiting FROM saga.outbox WHERE id = saga_test.task(:t3, 'b');
UPDATE saga.outbox SET timeout_at = now() - interval '1 second' WHERE id = saga_test.task(:t3, 'b');
SELECT saga_test.tick();
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :t3 ORDER BY step_index;
SELECT status FROM saga.instances WHERE id = :t3;

-- after the pivot nothing is compensated: a timeout is retried forward, and
-- the step can still be delivered and finish
SELECT saga.define('tm_pivot', $${"steps": [
  {"name": "a", "topic": "tm_a", "pivot": true},
  {"name": "b", "topic": "tm_pb", "timeout": "1 hour"}
]}$$);
SELECT saga.start('tm_pivot') AS t4 \gset
SELECT saga.complete(saga_test.task(:t4, 'a'), '{"a": 4}') AS recorded;
UPDATE saga.outbox SET timeout_at = now() - interval '1 second' WHERE id = saga_test.task(:t4, 'b');
SELECT saga_test.tick();
SELECT step, status, error FROM saga.step_runs WHERE saga_id = :t4 ORDER BY step_index;
SELECT status FROM saga.instances WHERE id = :t4;
SELECT event, step FROM saga.history WHERE saga_id = :t4 ORDER BY id;
-- the timeout was handled: the next round finds nothing
SELECT saga_test.tick();
SELECT saga_test.time_passes(saga_test.task(:t4, 'b'));
SELECT step, kind, lease AS pb_lease FROM saga.claim('tm_pb', 'w1', 1, '1 hour') \gset
-- without the lease, a report on a task under another's live lease is refused
SELECT saga_test.outcome(format('SELECT saga.complete(%s, %L)', saga_test.task(:t4, 'b'), '{"b": 4}')) AS complete;
SELECT saga_test.outcome(format('SELECT saga.complete(%s, %L, lease => %s)', saga_test.task(:t4, 'b'), '{"b": 4}', :pb_lease)) AS complete;
SELECT status FROM saga.instances WHERE id = :t4;

--
-- Lapsed leases: a lease that ends without a report was an attempt; the
-- lease is cleared and the task can be claimed again at once.  On the last
-- attempt the step fails and the saga compensates.
--
SELECT saga.define('ls_flow', $${"steps": [
  {"name": "a", "topic": "ls_a", "compensate": {"topic": "ls_undo"}},
  {"name": "b", "topic": "ls_b", "retry": {"max_attempts": 2}}
]}$$);
SELECT saga.start('ls_flow') AS l1 \gset
SELECT saga.complete(saga_test.task(:l1, 'a'), '{"a": 1}') AS recorded;
SELECT step, lease, attempt FROM saga.claim('ls_b', 'w1', 1, '1 hour');
-- a lease that has not ended is left alone
SELECT saga_test.tick();
SELECT attempt, deliveries, lease_owner FROM saga.outbox WHERE id = saga_test.task(:l1, 'b');
-- it ends
SELECT saga_test.time_passes(saga_test.task(:l1, 'b'));
SELECT saga_test.tick();
SELECT attempt, deliveries, lease_owner, headers -> 'attempt' AS attempt_header, visible_at <= now() AS visible
  FROM saga.outbox WHERE id = saga_test.task(:l1, 'b');
SELECT step, status, attempts FROM saga.step_runs WHERE saga_id = :l1 ORDER BY step_index;
SELECT saga_test.tick();
-- the lapsed lease is gone: no heartbeat, no report under it
SELECT saga_test.outcome(format('SELECT saga.heartbeat(%s, 1)', saga_test.task(:l1, 'b'))) AS heartbeat;
SELECT saga_test.outcome(format('SELECT saga.complete(%s, %L, lease => 1)', saga_test.task(:l1, 'b'), '{}')) AS complete;
-- the second (last) attempt
SELECT step, lease, attempt FROM saga.claim('ls_b', 'w2', 1, '1 hour');
SELECT saga_test.time_passes(saga_test.task(:l1, 'b'));
SELECT saga_test.tick();
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :l1 ORDER BY step_index;
SELECT status FROM saga.instances WHERE id = :l1;
SELECT event, step, detail FROM saga.history WHERE saga_id = :l1 ORDER BY id;
-- a compensation's lease lapses too, as often as it may: compensations retry
SELECT step, kind, lease, attempt FROM saga.claim('ls_undo', 'w3', 1, '1 hour');
SELECT saga_test.time_passes(saga_test.task(:l1, 'a', true));
SELECT saga_test.tick();
SELECT kind, attempt, lease_owner FROM saga.outbox WHERE saga_id = :l1;
SELECT step, kind, lease, attempt FROM saga.claim('ls_undo', 'w3', 1, '1 hour');
SELECT saga.complete(saga_test.task(:l1, 'a', true), '{"undone": true}', lease => 2) AS recorded;
SELECT status FROM saga.instances WHERE id = :l1;

--
-- Deadlines: when a saga's "deadline" passes it compensates; past its pivot
-- the event is recorded and the saga moves on.
--
SELECT saga.define('dl_flow', $${"deadline": "1 hour", "steps": [
  {"name": "a", "topic": "dl_a", "compensate": {"topic": "dl_undo"}},
  {"name": "b", "topic": "dl_b"}
]}$$);
SELECT saga.define('dl_pivot', $${"deadline": "1 hour", "steps": [
  {"name": "a", "topic": "dl_a", "pivot": true},
  {"name": "b", "topic": "dl_b"}
]}$$);
SELECT saga.start('dl_flow', '{"n": 1}') AS d1 \gset
SELECT deadline_at - started_at BETWEEN interval '1 hour' AND interval '1 hour 1 second' AS in_an_hour
  FROM saga.sagas WHERE id = :d1;
SELECT saga_test.tick();
SELECT saga.complete(saga_test.task(:d1, 'a'), '{"a": 1}') AS recorded;
UPDATE saga.sagas SET deadline_at = now() - interval '1 second' WHERE id = :d1;
SELECT saga_test.tick();
SELECT status, deadline_at IS NULL AS deadline_cleared FROM saga.sagas WHERE id = :d1;
SELECT step, status FROM saga.step_runs WHERE saga_id = :d1 ORDER BY step_index;
SELECT topic, kind, step FROM saga.outbox WHERE saga_id = :d1;
SELECT event, step, detail, CASE WHEN actor = current_user THEN '(caller)' ELSE actor END AS actor
  FROM saga.history WHERE saga_id = :d1 ORDER BY id;
SELECT saga_test.tick();
SELECT saga.complete(saga_test.task(:d1, 'a', true), '{"undone": true}') AS recorded;
SELECT status FROM saga.instances WHERE id = :d1;

-- a deadline (or a cancel) while b is leased: b may be acting, so it is in
-- doubt until its report or the lapse of its lease; either way the saga is
-- not compensated before b is (dl_flow's b has nothing to undo: at once)
SELECT saga.define('dl_undo_b', $${"deadline": "1 hour", "steps": [
  {"name": "a", "topic": "dl_a", "compensate": {"topic": "dl_undo"}},
  {"name": "b", "topic": "dl_b2", "compensate": {"topic": "dl_undo"}}
]}$$);
SELECT saga.start('dl_undo_b', '{"n": 5}') AS d5 \gset
SELECT saga.start('dl_undo_b', '{"n": 6}') AS d6 \gset
SELECT count(saga.complete(id, '{"a": 1}', lease => lease)) AS a_done FROM saga.claim('dl_a', 'w', 10, '1 hour');
SELECT count(*) AS b_leased FROM saga.claim('dl_b2', 'w', 10, '1 hour');
UPDATE saga.sagas SET deadline_at = now() - interval '1 second' WHERE id = :d5;
SELECT saga_test.tick();
SELECT saga.cancel(:d6, 'while b is out');
SELECT saga_id = :d5 AS is_d5, step, status FROM saga.step_runs WHERE saga_id IN (:d5, :d6) ORDER BY saga_id, step_index;
-- d5: b's late success is recorded and b is compensated, then a
SELECT saga.complete(saga_test.task(:d5, 'b'), '{"b": 5}', lease => 1) AS late;
SELECT step, kind FROM saga.outbox WHERE saga_id = :d5;
-- d6: no report; the lease lapses, b is compensated in doubt, then a
SELECT saga_test.time_passes(saga_test.task(:d6, 'b'));
SELECT saga_test.tick();
SELECT step, kind FROM saga.outbox WHERE saga_id = :d6;
SELECT event, step, detail FROM saga.history WHERE saga_id = :d6 AND event = 'withdrawn' ORDER BY id;
-- its late report under that lease is still recorded, and reaches b's compensation
SELECT saga.complete(saga_test.task(:d6, 'b'), '{"b": 6}', lease => 1) AS late;
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => 2)', saga_test.task(:d6, 'b'), '{"b": 6}'));
SELECT step, kind, payload -> 'results' -> 'b' AS b_result FROM saga.outbox WHERE saga_id = :d6;
-- (a late success after b's compensation ran is recorded and is an incident:
-- that compensation did not know the result; see d7 below)
-- both end only once b and a are undone
SELECT count(saga.complete(id, '{"undone": true}', lease => lease)) AS b_undone FROM saga.claim('dl_undo', 'w', 10, '1 hour');
SELECT id = :d5 AS is_d5, status FROM saga.instances WHERE id IN (:d5, :d6) ORDER BY id;
SELECT count(saga.complete(id, '{"undone": true}', lease => lease)) AS a_undone FROM saga.claim('dl_undo', 'w', 10, '1 hour');
SELECT id = :d5 AS is_d5, status FROM saga.instances WHERE id IN (:d5, :d6) ORDER BY id;

-- d7: b's lease lapses, b is compensated in doubt and the compensation runs;
-- then b's late success arrives: recorded, and the saga is an incident
SELECT saga.start('dl_undo_b', '{"n": 7}') AS d7 \gset
SELECT count(saga.complete(id, '{"a": 7}', lease => lease)) AS a_done FROM saga.claim('dl_a', 'w', 10, '1 hour');
SELECT count(*) AS b_leased FROM saga.claim('dl_b2', 'w', 10, '1 hour');
SELECT saga.cancel(:d7, 'b is slow');
SELECT saga_test.time_passes(saga_test.task(:d7, 'b'));
SELECT saga_test.tick();
SELECT count(saga.complete(id, '{"undone": true}', lease => lease)) AS b_undone FROM saga.claim('dl_undo', 'w', 10, '1 hour');
SELECT saga.complete(saga_test.task(:d7, 'b'), '{"b": 7}', lease => 1) AS late;
SELECT step, error FROM saga.incidents WHERE saga_id = :d7;
SELECT count(saga.complete(id, '{"undone": true}', lease => lease)) AS a_undone FROM saga.claim('dl_undo', 'w', 10, '1 hour');
SELECT status FROM saga.instances WHERE id = :d7;

-- a saga that finishes in time has no deadline left
SELECT saga.start('dl_flow', '{"n": 2}') AS d2 \gset
SELECT saga.complete(saga_test.task(:d2, 'a'), '{"a": 2}') AS recorded;
SELECT saga.complete(saga_test.task(:d2, 'b'), '{"b": 2}') AS recorded;
SELECT status, deadline_at IS NULL AS deadline_cleared FROM saga.sagas WHERE id = :d2;

-- a saga already compensating when its deadline passes: only the event
SELECT saga.start('dl_flow', '{"n": 3}') AS d3 \gset
SELECT saga.complete(saga_test.task(:d3, 'a'), '{"a": 3}') AS recorded;
SELECT saga.fail(saga_test.task(:d3, 'b'), '{"reason": "no"}', retryable => false) AS recorded;
SELECT status, deadline_at IS NOT NULL AS deadline_pending FROM saga.sagas WHERE id = :d3;
UPDATE saga.sagas SET deadline_at = now() - interval '1 second' WHERE id = :d3;
SELECT saga_test.tick();
SELECT status, deadline_at IS NULL AS deadline_cleared FROM saga.sagas WHERE id = :d3;
SELECT event, step, detail FROM saga.history WHERE saga_id = :d3 AND event = 'deadline_passed';
SELECT saga_test.tick();
SELECT count(*) FILTER (WHERE kind = 'compensate') AS compensations FROM saga.outbox WHERE saga_id = :d3;
SELECT count(*) FILTER (WHERE event = 'compensation_dispatched') AS dispatched,
       count(*) FILTER (WHERE event = 'compensating') AS compensating
  FROM saga.history WHERE saga_id = :d3;

-- past the pivot: the event only
SELECT saga.start('dl_pivot') AS d4 \gset
SELECT saga.complete(saga_test.task(:d4, 'a'), '{"a": 4}') AS recorded;
UPDATE saga.sagas SET deadline_at = now() - interval '1 second' WHERE id = :d4;
SELECT saga_test.tick();
SELECT status, deadline_at IS NULL AS deadline_cleared FROM saga.sagas WHERE id = :d4;
SELECT step, status FROM saga.step_runs WHERE saga_id = :d4 ORDER BY step_index;
SELECT event, step, detail FROM saga.history WHERE saga_id = :d4 ORDER BY id;
SELECT saga_test.tick();
SELECT saga.complete(saga_test.task(:d4, 'b'), '{"b": 4}') AS recorded;
SELECT status FROM saga.instances WHERE id = :d4;

--
-- Retention: finished sagas older than saga.retention (default 7 days) go,
-- with their history; failed ones stay until retried, running ones stay.
-- saga.retention is set in postgresql.conf (a reload applies it), not per
-- session.
--
SHOW saga.retention;
SELECT saga_test.err($$SET saga.retention = '1 hour'$$);
CREATE FUNCTION saga_test.rt_undo(p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF p -> 'input' ->> 'undo' = 'breaks' THEN
        RAISE 'cannot undo';
    END IF;
    RETURN '{}';
END
$$;
SELECT saga.define('rt_flow', $${"steps": [
  {"name": "a", "topic": "rt_a", "compensate": {"sql": "saga_test.rt_undo"}},
  {"name": "b", "topic": "rt_b"}
]}$$);
-- completed, compensated, cancelled, failed, running, and a recent one
SELECT saga.start('rt_flow', '{"k": "completed"}') AS r1 \gset
SELECT saga.complete(saga_test.task(:r1, 'a')) AS recorded;
SELECT saga.complete(saga_test.task(:r1, 'b')) AS recorded;
SELECT saga.start('rt_flow', '{"k": "compensated"}') AS r2 \gset
SELECT saga.complete(saga_test.task(:r2, 'a')) AS recorded;
SELECT saga.fail(saga_test.task(:r2, 'b'), '{}', false) AS recorded;
SELECT saga.start('rt_flow', '{"k": "cancelled"}') AS r3 \gset
SELECT saga.cancel(:r3);
SELECT saga.start('rt_flow', '{"k": "failed", "undo": "breaks"}') AS r4 \gset
SELECT saga.complete(saga_test.task(:r4, 'a')) AS recorded;
SELECT saga.fail(saga_test.task(:r4, 'b'), '{}', false) AS recorded;
SELECT saga.start('rt_flow', '{"k": "running"}') AS r5 \gset
SELECT saga.start('rt_flow', '{"k": "recent"}') AS r6 \gset
SELECT saga.complete(saga_test.task(:r6, 'a')) AS recorded;
SELECT saga.complete(saga_test.task(:r6, 'b')) AS recorded;
SELECT input ->> 'k' AS k, status, finished_at IS NOT NULL AS finished
  FROM saga.instances WHERE name = 'rt_flow' ORDER BY id;
-- time passes: eight days for all but the recent one, which finished six days ago
UPDATE saga.sagas SET finished_at = finished_at - interval '8 days', started_at = started_at - interval '8 days'
 WHERE id IN (:r1, :r2, :r3, :r4, :r5);
UPDATE saga.sagas SET finished_at = finished_at - interval '6 days' WHERE id = :r6;
SELECT s.input ->> 'k' AS k, count(h.id) > 0 AS has_history
  FROM saga.sagas s LEFT JOIN saga.history h ON h.saga_id = s.id
 WHERE s.name = 'rt_flow' GROUP BY s.id ORDER BY s.id;
SELECT saga_test.tick();
SELECT input ->> 'k' AS k, status FROM saga.instances WHERE name = 'rt_flow' ORDER BY id;
SELECT count(*) AS history_of_purged FROM saga.history WHERE saga_id IN (:r1, :r2, :r3);
SELECT count(*) > 0 AS history_kept FROM saga.history WHERE saga_id = :r4;
SELECT saga_id = :r4 AS failed_saga FROM saga.incidents WHERE name = 'rt_flow';
SELECT saga_test.tick();

--
-- Incidents: a compensation that keeps failing retryably is retried for
-- ever; after saga.compensation_incident_after attempts (default 5) the
-- saga is listed in saga.incidents while it stays compensating, and the
-- incident clears when the compensation succeeds.
--
SHOW saga.compensation_incident_after;
SELECT saga.define('in_flow', $${"steps": [
  {"name": "pay", "topic": "in_pay", "compensate": {"topic": "in_refund"}},
  {"name": "ship", "topic": "in_ship"}
]}$$);
SELECT saga.start('in_flow', correlation_id => 'order-95') AS i1 \gset
SELECT saga.complete(saga_test.task(:i1, 'pay'), '{"payment": "p95"}') AS recorded;
SELECT saga.fail(saga_test.task(:i1, 'ship'), '{"reason": "no stock"}', retryable => false) AS recorded;
SELECT saga_test.task(:i1, 'pay', true) AS refund \gset
-- four failures: no incident yet
SELECT lease, attempt FROM saga.claim('in_refund', 'w1', 1, '1 minute');
SELECT saga.fail(:refund, '{"reason": "psp 1"}', lease => 1) AS recorded;
SELECT saga_test.time_passes(:refund);
SELECT lease, attempt FROM saga.claim('in_refund', 'w1', 1, '1 minute');
SELECT saga.fail(:refund, '{"reason": "psp 2"}', lease => 2) AS recorded;
SELECT saga_test.time_passes(:refund);
SELECT lease, attempt FROM saga.claim('in_refund', 'w1', 1, '1 minute');
SELECT saga.fail(:refund, '{"reason": "psp 3"}', lease => 3) AS recorded;
SELECT saga_test.time_passes(:refund);
SELECT lease, attempt FROM saga.claim('in_refund', 'w1', 1, '1 minute');
SELECT saga.fail(:refund, '{"reason": "psp 4"}', lease => 4) AS recorded;
SELECT count(*) AS incidents FROM saga.incidents WHERE saga_id = :i1;
-- the fifth
SELECT saga_test.time_passes(:refund);
SELECT lease, attempt FROM saga.claim('in_refund', 'w1', 1, '1 minute');
SELECT saga.fail(:refund, '{"reason": "psp 5"}', lease => 5) AS recorded;
SELECT name, version, correlation_id, step, error, status, attempts, since IS NOT NULL AS has_since
  FROM saga.incidents WHERE saga_id = :i1;
SELECT status FROM saga.instances WHERE id = :i1;
SELECT step, status, attempts, error FROM saga.step_runs WHERE saga_id = :i1 ORDER BY step_index;
-- a sixth failure: still one incident, about the attempt that raised it
SELECT saga_test.time_passes(:refund);
SELECT lease, attempt FROM saga.claim('in_refund', 'w1', 1, '1 minute');
SELECT saga.fail(:refund, '{"reason": "psp 6"}', lease => 6) AS recorded;
SELECT step, error, status, attempts FROM saga.incidents WHERE saga_id = :i1;
-- rounds leave it alone
SELECT saga_test.tick();
SELECT count(*) AS incidents FROM saga.incidents WHERE saga_id = :i1;
-- the refund goes through: the incident clears
SELECT saga_test.time_passes(:refund);
SELECT lease, attempt FROM saga.claim('in_refund', 'w1', 1, '1 minute');
SELECT saga.complete(:refund, '{"refunded": true}', lease => 7) AS recorded;
SELECT count(*) AS incidents FROM saga.incidents WHERE saga_id = :i1;
SELECT status FROM saga.instances WHERE id = :i1;
SELECT event, step, detail -> 'attempt' AS attempt, detail -> 'attempts' AS attempts
  FROM saga.history WHERE saga_id = :i1 AND event IN ('incident', 'compensation_retry_scheduled', 'compensated')
 ORDER BY id;

--
-- Wake-ups: a delayed retry, or a task whose lease lapsed, becomes visible
-- without anyone writing it; the next round NOTIFYs saga_<topic> for it.
--
SELECT saga.define('nt_flow', $${"steps": [
  {"name": "a", "topic": "nt_r",
   "retry": {"max_attempts": 5, "initial_delay": "1 hour", "max_delay": "1 hour", "jitter": false}}
]}$$);
SELECT saga_test.listen('saga_nt_r');
SELECT saga_test.notifications();
SELECT saga.start('nt_flow') AS n1 \gset
SELECT saga_test.task(:n1, 'a') AS nt \gset
SELECT saga_test.notifications();
SELECT lease FROM saga.claim('nt_r', 'w1', 1, '1 hour');
SELECT saga.fail(:nt, '{"reason": "later"}', lease => 1) AS recorded;
SELECT saga_test.notifications();
-- the delay has not passed: a round says nothing
SELECT saga_test.tick();
SELECT saga_test.notifications();
-- it passes: the next round announces the task, once
SELECT saga_test.delay_ends(:nt);
SELECT saga_test.notifications();
SELECT (saga.tick() ->> 'notified_topics')::int >= 1 AS notified_some;
SELECT saga_test.notifications();
SELECT saga_test.tick();
SELECT saga_test.notifications();
-- a lease that lapses: the round makes the task claimable and says so
SELECT lease, attempt FROM saga.claim('nt_r', 'w1', 1, '1 hour');
SELECT saga_test.tick();
SELECT saga_test.notifications();
SELECT saga_test.delay_ends(:nt);
SELECT saga_test.tick();
SELECT saga_test.notifications();
SELECT lease, attempt FROM saga.claim('nt_r', 'w1', 1, '1 hour');
SELECT saga.complete(:nt, '{}', lease => 3) AS recorded;
SELECT status FROM saga.instances WHERE id = :n1;
SELECT saga_test.notifications();
