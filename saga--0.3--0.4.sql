/* saga--0.3--0.4.sql: bridges between orchestration and choreography, diagrams, topics */

\echo Use "ALTER EXTENSION saga UPDATE TO '0.4'" to load this file. \quit

/*
 * Bridges between orchestration and choreography.
 *
 * An await step waits as an outbox row on the internal topic 'saga await'
 * (not a valid topic name, so no service can claim it; visible_at is
 * infinity, so no poller sees it), with the event type it awaits in
 * awaits.  saga.publish finds the waiting steps of an awaited type and
 * correlation id through outbox_await; the index holds await rows only.
 */
ALTER TABLE saga.outbox ADD COLUMN awaits text;
CREATE INDEX outbox_await ON saga.outbox (awaits, (headers OPERATOR(pg_catalog.->>) 'correlation_id'))
    WHERE awaits IS NOT NULL;
COMMENT ON COLUMN saga.outbox.awaits IS
'an await step''s row (topic ''saga await'', never visible, never claimable): the event type it waits for; NULL for every other task';

-- the event that started a saga through a start_saga subscription: the cause of the events it publishes
ALTER TABLE saga.sagas ADD COLUMN event_id bigint;
COMMENT ON COLUMN saga.sagas.event_id IS
'the event whose start_saga subscription started the saga (NULL otherwise): the causation_id of the events the saga publishes, so their hops count on';

CREATE OR REPLACE VIEW saga.instances AS
SELECT s.id, s.name, s.version, s.status, s.correlation_id, s.input,
       s.started_at, s.finished_at, s.updated_at, s.idempotency_key,
       s.traceparent, s.cancel_reason, s.event_id
  FROM saga.sagas s;
COMMENT ON VIEW saga.instances IS 'one row per saga; event_id: the event that started it through a start_saga subscription';

COMMENT ON FUNCTION saga.define(text, jsonb) IS
'saga.define(name, definition) -> integer: validate and store a saga definition, returning its version (1, 2, ...; an identical document returns the current version and stores nothing). name matches ^[a-z][a-z0-9_]{0,62}$; definition is an object with "steps" (1 to 512), an optional "deadline" and an optional "publish" ({"completed", "compensated", "cancelled"}: the event type published when the saga ends so), at most saga.max_payload_size bytes; a step has a "topic", an "sql" function or an "await" event type, and may "publish" an event type when it succeeds (payload: its result); intervals are positive and at most 3650 days. SQL steps run as the calling role. Errors: 22004 null argument, 22001 name over 63 bytes, 42602 bad name, topic or event type, 22023 bad document (also "retry", "topic" or "sql" on an await step), 22008 interval out of range, 42710 duplicate step, 42704 unknown step in "after", 42P17 cycle, 42883 missing function, 42809 not a plain function, 42804 function not returning jsonb, 42P13 a function whose own search_path does not end in pg_temp, 42501 the caller lacks USAGE on its schema or EXECUTE, or the name''s latest version belongs to a role the caller is not a member of, 54000 too large, 0A000 "async". Granted to saga_admin.';

COMMENT ON FUNCTION saga.start(text, jsonb, text, text, text) IS
'saga.start(name, input jsonb, correlation_id, idempotency_key, traceparent) -> bigint: start a saga of the latest version of a definition and return its id; steps without predecessors are dispatched (SQL steps run, await steps find an event already published) in the caller''s transaction. correlation_id and idempotency_key are at most 255 bytes, traceparent is W3C (55 bytes), input at most saga.max_payload_size bytes. The same name and idempotency_key return the first saga. Errors: 22004 null name or input, or no correlation_id for a definition with await steps, 22001 argument too long, 22023 empty argument or bad traceparent, 42704 unknown definition, 54000 input too large. Granted to saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.subscribe(text, text, jsonb) IS
'saga.subscribe(event_type, topic, options jsonb) -> bigint: deliver every later event of event_type to topic (subscribing again updates options); returns the subscription id. options: retry (as for steps; default 3 attempts), filter (a jsonpath predicate on the payload, lax mode, at most 4096 bytes and saga.filter_timeout per event: false or null skip the delivery, an error skips it and is recorded in saga.filter_errors), replay_from (timestamptz: also deliver the retained events published since then), start_saga (a saga definition''s name: instead of a delivery, each event starts that saga in the publishing transaction, input the payload, correlation id and trace the event''s, idempotency key ''event:<event id>'', so a replayed event finds its saga rather than starting another; not with retry). Errors: 22004 null argument, 22001 too long, 22023 bad event type or options, 42602 bad topic, 42601 a filter that does not parse, 42704 start_saga names no saga definition, 42809 start_saga names a choreography, 22008 interval out of range, 54000 filter too long or 1000 subscriptions of the type already, 42501 the subscription belongs to a role the caller is not a member of. Granted to saga_admin.';


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
 * The engine's internal topics are not a service's and are left out: SQL
 * steps awaiting the worker's retry (saga sql, SAGA_SQL_RETRY_TOPIC) and
 * await steps waiting for their event (saga await, SAGA_AWAIT_TOPIC).
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
     WHERE t.topic OPERATOR(pg_catalog.<>) 'saga sql' AND t.topic OPERATOR(pg_catalog.<>) 'saga await'
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
'the backlog of every topic with a task in saga.outbox or a dead letter (the engine''s internal topics, of SQL steps awaiting a retry and of await steps, left out), as of now(): ready, delayed, leased and parked tasks, the age of the oldest ready one, dead letters, and the start of the newest lease';
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
