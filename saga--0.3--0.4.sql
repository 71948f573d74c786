/* saga--0.3--0.4.sql: bridges between orchestration and choreography, diagrams, topics */

\echo Use "ALTER EXTENSION saga UPDATE TO '0.4'" to load this file. \quit


/* Topics: the outbox's backlog per topic, for people and for monitoring */

/*
 * One row per topic with a task in the outbox or a dead letter.  A task is
 * in one of four states, by visible_at and lease_owner, as of now() (the
 * statement's transaction start, as the poll's "visible_at <= now()"):
 *   ready    visible_at <= now(): what a poll or saga.claim takes next;
 *            also a task whose lease lapsed unreported (the next claim
 *            counts that attempt) and one withdrawn in doubt (the next claim
 *            settles it)
 *   leased   lease_owner set and visible_at > now(): under a live lease
 *            (a lease moves visible_at to its end)
 *   parked   visible_at = 'infinity': a compensation that failed for good,
 *            waiting for saga.retry (it is in saga.incidents)
 *   delayed  the rest: visible_at in the future, not leased: a retry's
 *            backoff
 * The outbox keeps no record of a lease once it ended (nor does the
 * transactional poll leave one, and event deliveries have no history), so
 * last_claim is the start of the newest lease still on a task of the topic:
 * visible_at - lease_length, which a heartbeat without "extend" renews and a
 * step's timeout caps; never later than now().
 *
 * The internal topic of SQL steps awaiting the worker's retry (saga sql,
 * SAGA_SQL_RETRY_TOPIC) is not a service's and is left out.
 *
 * Cost: the topics are found by skipping through the indexes on (topic,
 * ...) of the outbox and the dead letters, one probe per topic, and each
 * count is a range of outbox_claim (topic, visible_at, id), read
 * index-only where the visibility map allows; leases come from the partial
 * index outbox_leased.  No sort or hash over the whole outbox.  The planner
 * cannot know how few topics there are and prices the per-topic counts high
 * enough to JIT-compile them, which took longer (200 ms) than the query
 * (100 ms with a million tasks): the query is a function with jit off, and
 * the view reads it.
 */
CREATE FUNCTION saga.topic_backlog(OUT topic text, OUT ready bigint, OUT delayed bigint,
                                   OUT leased bigint, OUT parked bigint,
                                   OUT oldest_ready_age interval, OUT dead_letters bigint,
                                   OUT last_claim timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE PARALLEL UNSAFE ROWS 20
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $topics$
    WITH RECURSIVE outbox_topics(topic) AS (
        SELECT pg_catalog.min(o.topic) FROM saga.outbox o
        UNION ALL
        SELECT (SELECT pg_catalog.min(o.topic) FROM saga.outbox o
                 WHERE o.topic OPERATOR(pg_catalog.>) t.topic)
          FROM outbox_topics t
         WHERE t.topic IS NOT NULL
    ), dead_topics(topic) AS (
        SELECT pg_catalog.min(d.topic) FROM saga.dead_letters d
        UNION ALL
        SELECT (SELECT pg_catalog.min(d.topic) FROM saga.dead_letters d
                 WHERE d.topic OPERATOR(pg_catalog.>) t.topic)
          FROM dead_topics t
         WHERE t.topic IS NOT NULL
    ), topics AS (
        SELECT topic FROM outbox_topics WHERE topic IS NOT NULL
        UNION
        SELECT topic FROM dead_topics WHERE topic IS NOT NULL
    ), leases AS (
        SELECT o.topic,
               pg_catalog.count(*) FILTER (WHERE o.visible_at OPERATOR(pg_catalog.>) pg_catalog.now()) AS leased,
               pg_catalog.max(o.visible_at OPERATOR(pg_catalog.-) o.lease_length) AS last_claim
          FROM saga.outbox o
         WHERE o.lease_owner IS NOT NULL
         GROUP BY o.topic
    )
    SELECT t.topic,
           r.ready,
           l.later OPERATOR(pg_catalog.-) COALESCE(s.leased, 0) AS delayed,
           COALESCE(s.leased, 0) AS leased,
           l.parked,
           pg_catalog.now() OPERATOR(pg_catalog.-) r.oldest AS oldest_ready_age,
           d.dead_letters,
           -- LEAST would turn no lease into now()
           CASE WHEN s.last_claim OPERATOR(pg_catalog.>) pg_catalog.now() THEN pg_catalog.now()
                ELSE s.last_claim END AS last_claim
      FROM topics t
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) AS ready, pg_catalog.min(o.visible_at) AS oldest
             FROM saga.outbox o
            WHERE o.topic OPERATOR(pg_catalog.=) t.topic
              AND o.visible_at OPERATOR(pg_catalog.<=) pg_catalog.now()) r
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) FILTER (WHERE o.visible_at OPERATOR(pg_catalog.<>) 'infinity') AS later,
                  pg_catalog.count(*) FILTER (WHERE o.visible_at OPERATOR(pg_catalog.=) 'infinity') AS parked
             FROM saga.outbox o
            WHERE o.topic OPERATOR(pg_catalog.=) t.topic
              AND o.visible_at OPERATOR(pg_catalog.>) pg_catalog.now()) l
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) AS dead_letters
             FROM saga.dead_letters d
            WHERE d.topic OPERATOR(pg_catalog.=) t.topic) d
      LEFT JOIN leases s ON s.topic OPERATOR(pg_catalog.=) t.topic
     WHERE t.topic OPERATOR(pg_catalog.<>) 'saga sql'
$topics$;

CREATE VIEW saga.topics AS
SELECT b.topic, b.ready, b.delayed, b.leased, b.parked, b.oldest_ready_age, b.dead_letters,
       b.last_claim
  FROM saga.topic_backlog() b;

/*
 * The function reads the outbox and the dead letters as its caller, which
 * saga_reader, saga_admin and saga_worker may; the view hides no rows from
 * anyone, so security_barrier would protect nothing.
 */
REVOKE ALL ON saga.topics FROM PUBLIC;
REVOKE ALL ON FUNCTION saga.topic_backlog() FROM PUBLIC;
GRANT SELECT ON saga.topics TO saga_reader, saga_admin, saga_worker;
GRANT EXECUTE ON FUNCTION saga.topic_backlog() TO saga_reader, saga_admin, saga_worker;

COMMENT ON VIEW saga.topics IS
'the backlog of every topic with a task in saga.outbox or a dead letter (the internal topic of SQL steps awaiting a retry left out), as of now(): ready, delayed, leased and parked tasks, the age of the oldest ready one, dead letters, and the start of the newest lease';
COMMENT ON FUNCTION saga.topic_backlog() IS
'saga.topic_backlog() -> setof (topic, ready, delayed, leased, parked, oldest_ready_age, dead_letters, last_claim): what saga.topics shows, computed with jit off. Granted to saga_reader, saga_admin and saga_worker.';
COMMENT ON COLUMN saga.topics.topic IS 'the topic';
COMMENT ON COLUMN saga.topics.ready IS
'tasks visible now (visible_at <= now()): what a poll or saga.claim takes next, including tasks whose lease lapsed unreported';
COMMENT ON COLUMN saga.topics.delayed IS
'tasks visible later and not leased: waiting for a retry''s backoff';
COMMENT ON COLUMN saga.topics.leased IS
'tasks under a lease of saga.claim that has not expired';
COMMENT ON COLUMN saga.topics.parked IS
'compensations that failed for good, out of sight until saga.retry (see saga.incidents)';
COMMENT ON COLUMN saga.topics.oldest_ready_age IS
'now() minus the visible_at of the oldest ready task: how long it has waited; NULL when none is ready';
COMMENT ON COLUMN saga.topics.dead_letters IS
'rows of saga.dead_letters on the topic: event deliveries that failed for good';
COMMENT ON COLUMN saga.topics.last_claim IS
'when the newest lease still on a task of the topic began (or a heartbeat without extend renewed it), from visible_at - lease_length; NULL when no task of the topic is leased: ended leases and the transactional poll leave no record';
