--
-- 97_topics: saga.topics, the backlog per topic: ready, delayed (a retry's
-- backoff), leased, a lapsed lease, parked, the oldest ready task's age,
-- dead letters and the newest lease; the internal topic of SQL steps left
-- out; who may read it.  Earlier files leave tasks behind: this one looks
-- at its own topics (tp_*) only, and at sums over all of them.
--
CREATE VIEW saga_test.tp AS
SELECT topic, ready, delayed, leased, parked,
       oldest_ready_age IS NOT NULL AS has_age, dead_letters,
       last_claim IS NOT NULL AS has_claim
  FROM saga.topics WHERE topic LIKE 'tp\_%' ORDER BY topic COLLATE "C";

-- the columns, in order
SELECT attname, format_type(atttypid, atttypmod) AS type
  FROM pg_attribute WHERE attrelid = 'saga.topics'::regclass AND attnum > 0 ORDER BY attnum;

SELECT saga.define('tp_flow', $${"steps": [
  {"name": "a", "topic": "tp_a", "compensate": {"topic": "tp_undo"},
   "retry": {"max_attempts": 5, "initial_delay": "1 hour", "jitter": false}},
  {"name": "b", "topic": "tp_b", "retry": {"max_attempts": 1}}
]}$$);

-- nothing yet
SELECT * FROM saga_test.tp;

-- three tasks written: ready, each statement its own transaction (a task is
-- visible from the clock time it was written)
SELECT saga.start('tp_flow', '{"n": 1}') AS s1 \gset
SELECT saga.start('tp_flow', '{"n": 2}') AS s2 \gset
SELECT saga.start('tp_flow', '{"n": 3}') AS s3 \gset
SELECT * FROM saga_test.tp;
-- the age of the oldest ready task, to the microsecond
SELECT t.oldest_ready_age = now() - (SELECT min(visible_at) FROM saga.outbox
                                      WHERE topic = 'tp_a' AND visible_at <= now()) AS exact_age,
       t.oldest_ready_age >= interval '0' AND t.oldest_ready_age < interval '1 minute' AS young
  FROM saga.topics t WHERE t.topic = 'tp_a';

-- a claim: leased, and last_claim is when its lease began
SELECT clock_timestamp() AS before_claim \gset
SELECT id AS t1, lease AS t1_lease FROM saga.claim('tp_a', 'w1', 1, '1 hour') \gset
SELECT * FROM saga_test.tp;
SELECT last_claim >= :'before_claim' AND last_claim <= now() AS claim_time
  FROM saga.topics WHERE topic = 'tp_a';

-- a retryable failure: delayed for the step's backoff (an hour)
SELECT id AS t2, lease AS t2_lease FROM saga.claim('tp_a', 'w1', 1, '1 hour') \gset
SELECT saga.fail(:t2, '{"try": "again"}', lease => :t2_lease) AS failed;
SELECT * FROM saga_test.tp;

-- a lease that lapsed, not yet taken back by the worker: ready again (the
-- next claim counts the attempt), no longer leased; its lease still counts
-- for last_claim
SELECT id AS t3, lease AS t3_lease FROM saga.claim('tp_a', 'w2', 1, '1 hour') \gset
SELECT leased FROM saga.topics WHERE topic = 'tp_a';
SELECT saga_test.time_passes(:t3);
SELECT lease_owner IS NOT NULL AS still_owned FROM saga.outbox WHERE id = :t3;
SELECT * FROM saga_test.tp;
SELECT t.oldest_ready_age = now() - (SELECT visible_at FROM saga.outbox WHERE id = :t3) AS lapsed_is_oldest
  FROM saga.topics t WHERE t.topic = 'tp_a';

-- only delayed: no age
SELECT saga.complete(:t1, '{}', lease => :t1_lease) AS completed;
SELECT id = saga_test.task(:s3, 'a') AS lapsed_one, saga.complete(id, '{}', lease => lease) AS completed
  FROM saga.claim('tp_a', 'w2', 1, '1 hour');
SELECT * FROM saga_test.tp;

-- a compensation that fails for good is parked (and an incident), not delayed
SELECT id = saga_test.task(:s1, 'b') AS first_b, saga.complete(id, '{}', lease => lease) AS completed
  FROM saga.claim('tp_b', 'w1', 1, '1 hour');
SELECT id AS b3, lease AS b3_lease FROM saga.claim('tp_b', 'w1', 1, '1 hour') \gset
SELECT :b3 = saga_test.task(:s3, 'b') AS third_b;
SELECT saga.fail(:b3, '{"no": "stock"}', retryable => false, lease => :b3_lease) AS failed;
SELECT status FROM saga.instances WHERE id = :s3;
SELECT * FROM saga_test.tp;
SELECT id AS u3, lease AS u3_lease FROM saga.claim('tp_undo', 'w1', 1, '1 hour') \gset
SELECT saga.fail(:u3, '{"refund": "refused"}', retryable => false, lease => :u3_lease) AS failed;
SELECT status FROM saga.instances WHERE id = :s3;
SELECT count(*) AS incidents FROM saga.incidents WHERE saga_id = :s3;
SELECT visible_at = 'infinity' AS parked_forever FROM saga.outbox WHERE id = :u3;
SELECT * FROM saga_test.tp;

-- dead letters: a delivery that failed for good leaves the outbox; its
-- topic stays listed while it has dead letters, also with nothing else
SELECT saga.subscribe('tp.Happened', 'tp_ev', '{"retry": {"max_attempts": 1}}') IS NOT NULL AS subscribed;
SELECT saga.publish('tp.Happened', '{"n": 1}') IS NOT NULL AS published;
SELECT id AS d1, lease AS d1_lease FROM saga.claim('tp_ev', 'w1', 1, '1 hour') \gset
SELECT saga.fail(:d1, '{"bad": "payload"}', retryable => false, lease => :d1_lease) AS failed;
SELECT count(*) AS dead FROM saga.dead_letters WHERE topic = 'tp_ev';
SELECT * FROM saga_test.tp WHERE topic = 'tp_ev';
SELECT saga.publish('tp.Happened', '{"n": 2}') IS NOT NULL AS published;
SELECT * FROM saga_test.tp WHERE topic = 'tp_ev';
-- a redelivery takes it back into the outbox
SELECT saga.redeliver(:d1);
SELECT * FROM saga_test.tp WHERE topic = 'tp_ev';
SELECT count(saga.complete(id, '{}', lease => lease)) AS completed FROM saga.claim('tp_ev', 'w1', 10, '1 hour');
-- nothing left on the topic: no row
SELECT * FROM saga_test.tp WHERE topic = 'tp_ev';

-- SQL steps past the pivot awaiting the worker's retry are on an internal
-- topic, which is nobody's backlog
CREATE FUNCTION saga_test.tp_down(p jsonb) RETURNS jsonb LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'tp_down is down';
END
$$;
SELECT saga.define('tp_piv', $${"steps": [
  {"name": "p", "topic": "tp_pivot", "pivot": true},
  {"name": "s", "sql": "saga_test.tp_down", "retry": {"initial_delay": "1 hour", "jitter": false}}
]}$$);
SELECT saga.start('tp_piv') AS pv \gset
SELECT saga.complete(saga_test.task(:pv, 'p'), '{}') AS completed;
SELECT topic, visible_at > now() AS delayed FROM saga.outbox WHERE id = saga_test.task(:pv, 's');
SELECT count(*) AS internal_listed FROM saga.topics WHERE topic = 'saga sql';

-- every task of the outbox is in one state of one listed topic, and every
-- dead letter is counted
SELECT (SELECT sum(ready + delayed + leased + parked) FROM saga.topics)
       = (SELECT count(*) FROM saga.outbox WHERE topic NOT IN ('saga sql', 'saga await')) AS all_tasks,
       (SELECT sum(dead_letters) FROM saga.topics) = (SELECT count(*) FROM saga.dead_letters) AS all_dead,
       (SELECT sum(ready) FROM saga.topics)
       = (SELECT count(*) FROM saga.outbox WHERE topic <> 'saga sql' AND visible_at <= now()) AS all_ready,
       (SELECT sum(leased) FROM saga.topics)
       = (SELECT count(*) FROM saga.outbox WHERE lease_owner IS NOT NULL AND visible_at > now()) AS all_leased;

-- who may read it: the three roles, nobody else
CREATE ROLE regress_tp_reader IN ROLE saga_reader;
CREATE ROLE regress_tp_worker IN ROLE saga_worker;
CREATE ROLE regress_tp_admin IN ROLE saga_admin;
CREATE ROLE regress_tp_nobody;
SET ROLE regress_tp_reader;
SELECT topic, ready, delayed, leased, parked, oldest_ready_age, dead_letters, last_claim
  FROM saga.topics WHERE topic = 'tp_a';
RESET ROLE;
SET ROLE regress_tp_worker;
SELECT count(*) > 0 AS sees_topics FROM saga.topics;
RESET ROLE;
SET ROLE regress_tp_admin;
SELECT count(*) > 0 AS sees_topics FROM saga.topics;
RESET ROLE;
SET ROLE regress_tp_nobody;
SELECT saga_test.err('SELECT count(*) FROM saga.topics');
SELECT saga_test.err('SELECT count(*) FROM saga.topic_backlog()');
RESET ROLE;
SELECT relacl FROM pg_class WHERE oid = 'saga.topics'::regclass;
SELECT obj_description('saga.topics'::regclass, 'pg_class') IS NOT NULL AS commented,
       (SELECT count(*) FROM pg_attribute
         WHERE attrelid = 'saga.topics'::regclass AND attnum > 0
           AND col_description(attrelid, attnum) IS NULL) AS uncommented_columns;
DROP ROLE regress_tp_reader, regress_tp_worker, regress_tp_admin, regress_tp_nobody;
DROP VIEW saga_test.tp;
