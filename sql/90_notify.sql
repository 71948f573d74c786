--
-- 90_notify: NOTIFY saga_<topic> when a task becomes visible, at most one
-- per topic per transaction; nothing for tasks that are not visible yet.
-- A second session (dblink) listens; saga_test.notifications() lists what
-- it received since the last call.
--
SELECT saga.define('n_one', '{"steps": [{"name": "a", "topic": "n_a"}, {"name": "b", "topic": "n_b"}]}');
SELECT saga.define('n_fan', $${"steps": [
  {"name": "a", "topic": "n_a"},
  {"name": "a2", "topic": "n_a", "after": []},
  {"name": "b", "topic": "n_b", "after": []}
]}$$);
SELECT saga.define('n_retry', $${"steps": [
  {"name": "a", "topic": "n_r", "compensate": {"topic": "n_c"}},
  {"name": "b", "topic": "n_r", "retry": {"initial_delay": "1 hour", "max_delay": "1 hour"}}
]}$$);
SELECT saga.define('n_sql', '{"steps": [{"name": "a", "sql": "d_fn.ok"}]}');

SELECT saga_test.listen('saga_n_a', 'saga_n_b', 'saga_n_r', 'saga_n_c');
SELECT saga_test.notifications();

-- start: the first step's topic
SELECT saga.start('n_one') AS s1 \gset
SELECT saga_test.notifications();

-- two tasks on one topic in one transaction: one notification for it
SELECT saga.start('n_fan') AS s2 \gset
SELECT saga_test.notifications();

-- several sagas started in one transaction: still one per topic
BEGIN;
SELECT saga.start('n_one') > 0 AS started;
SELECT saga.start('n_one') > 0 AS started;
SELECT saga.start('n_fan') > 0 AS started;
COMMIT;
SELECT saga_test.notifications();

-- a rolled-back start notifies nobody
BEGIN;
SELECT saga.start('n_one') > 0 AS started;
ROLLBACK;
SELECT saga_test.notifications();

-- a saga of SQL steps has no tasks
SELECT saga.start('n_sql') > 0 AS started;
SELECT saga_test.notifications();

-- a claim makes nothing visible
SELECT count(*) AS claimed FROM saga.claim('n_a', 'w1', 100, '1 hour');
SELECT saga_test.notifications();

-- a completion makes the next step visible
SELECT saga.complete(saga_test.task(:s1, 'a'), '{}', lease => 1);
SELECT saga_test.notifications();
-- a repeat of it does nothing
SELECT saga.complete(saga_test.task(:s1, 'a'), '{}', lease => 1);
SELECT saga_test.notifications();

-- a retryable failure waits: no notification now
SELECT saga.start('n_retry') AS r \gset
SELECT saga_test.notifications();
SELECT saga.complete(saga_test.task(:r, 'a'), '{"a": 1}');
SELECT saga_test.notifications();
SELECT saga.fail(saga_test.task(:r, 'b'), '{"reason": "later"}');
SELECT saga_test.notifications();
SELECT visible_at > now() + interval '29 minutes' AS delayed FROM saga.outbox WHERE saga_id = :r;

-- a failure for good makes the compensation visible (reported on the next
-- delivery: a poller reports only what it found visible)
SELECT saga_test.time_passes(saga_test.task(:r, 'b'));
SELECT saga.fail(saga_test.task(:r, 'b'), '{"reason": "never"}', retryable => false);
SELECT saga_test.notifications();
-- its retryable failure waits again
SELECT saga.fail(saga_test.task(:r, 'a', true), '{"reason": "later"}');
SELECT saga_test.notifications();
-- a non-retryable one makes an incident, nothing visible
SELECT saga_test.time_passes(saga_test.task(:r, 'a', true));
SELECT saga_test.notifications();
SELECT saga.fail(saga_test.task(:r, 'a', true), '{"reason": "broken"}', retryable => false);
SELECT saga_test.notifications();
-- saga.retry makes the compensation visible again
SELECT saga.retry(:r);
SELECT saga_test.notifications();
SELECT saga.complete(saga_test.task(:r, 'a', true));
SELECT saga_test.notifications();
SELECT status FROM saga.instances WHERE id = :r;

-- cancel makes compensations visible
SELECT saga.start('n_retry') AS r2 \gset
SELECT saga.complete(saga_test.task(:r2, 'a'), '{"a": 2}');
SELECT saga_test.notifications();
SELECT saga.cancel(:r2);
SELECT saga_test.notifications();
