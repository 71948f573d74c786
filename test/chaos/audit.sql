-- test/chaos/audit.sql: what the chaos run left behind, judged from the services' own tables
-- (svc.effects, svc.stale_probes), the starter's acknowledged starts (:acks, a file of
-- "n <tab> saga id") and the engine's views.  Run by run.sh after the drain, with every
-- service stopped.  Writes its counts to svc.audit (fatal = a loss or a duplicate: run.sh
-- fails on any) and prints them, then the evidence for every fatal count that is not 0.
\set ON_ERROR_STOP on
\pset footer off

CREATE TABLE svc.acks_raw (n integer, saga_id bigint);
-- server-side COPY (we are superuser; run.sh put the file where the server may read it):
-- psql's \copy would not expand :'acks'
COPY svc.acks_raw FROM :'acks';

-- one row per saga of the run: its order number, status and fate
CREATE TABLE svc.orders AS
SELECT (i.input ->> 'n')::integer AS n, i.id AS saga_id, i.status,
       COALESCE(i.input -> 'fate', '{}') AS fate, i.input ? 'cancel_after_ms' AS cancel_asked
  FROM saga.instances i
 WHERE i.name = 'chaos';

-- the steps that leave an effect (all of them), in definition order
CREATE TABLE svc.steps (step text PRIMARY KEY, ord integer);
INSERT INTO svc.steps VALUES ('reserve', 1), ('charge', 2), ('ship', 3), ('invoice', 4),
                             ('confirm', 5), ('loyalty', 6);

-- what each check found, one row per saga (and step), for the evidence below
CREATE TABLE svc.suspects (check_name text, n integer, saga_id bigint, step text, why text);

-- 1. sagas not terminal: anything but completed, compensated, cancelled.  'failed' (an
--    incident) counts too: no compensation here fails for good (the SQL ones never fail, the
--    services' fail only retryably), so nothing should ever need a person.
INSERT INTO svc.suspects
SELECT 'not_terminal', n, saga_id, NULL, status FROM svc.orders
 WHERE status NOT IN ('completed', 'compensated', 'cancelled');

-- 2. steps whose effect happened twice: more than one application of one (order, step, kind),
--    whether counted by a service that applies in the report's transaction (applied_count 2)
--    or by a leased service that got the task under a different idempotency key
INSERT INTO svc.suspects
SELECT 'twice', e.n, o.saga_id, e.step,
       format('%s %s applied %s times: %s', e.kind, e.step, sum(e.applied_count),
              string_agg(format('%s by %s (key %s, lease %s, attempt %s, x%s)', e.protocol, e.worker,
                                e.idempotency_key, e.lease, e.attempt, e.applied_count), '; '))
  FROM svc.effects e LEFT JOIN svc.orders o USING (n)
 GROUP BY e.n, o.saga_id, e.step, e.kind
HAVING sum(e.applied_count) > 1;

-- 3. effects left standing in a compensated (or cancelled) saga: an action whose effect is
--    there without a compensation, or whose compensation ran before it (and so undid nothing)
INSERT INTO svc.suspects
SELECT 'standing', o.n, o.saga_id, a.step,
       CASE WHEN c.n IS NULL
            THEN format('%s applied by %s (%s, lease %s, attempt %s) at %s; never compensated',
                        a.step, a.worker, a.protocol, a.lease, a.attempt, a.first_at::time)
            ELSE format('%s applied by %s (%s, lease %s, attempt %s) at %s, after its compensation at %s',
                        a.step, a.worker, a.protocol, a.lease, a.attempt, a.first_at::time, c.first_at::time)
       END
  FROM svc.orders o
  JOIN svc.effects a ON a.n = o.n AND a.kind = 'action'
  LEFT JOIN LATERAL (SELECT e.n, min(e.first_at) AS first_at FROM svc.effects e
                      WHERE e.n = a.n AND e.step = a.step AND e.kind = 'compensate'
                      GROUP BY e.n) c ON true
 WHERE o.status IN ('compensated', 'cancelled')
   AND (c.n IS NULL OR c.first_at < a.first_at);

-- 4. stale reports accepted: a report under a lease that had lapsed and been superseded (the
--    task was delivered again, or had finished) that the engine did not refuse
INSERT INTO svc.suspects
SELECT 'stale', o.n, p.saga_id, p.step,
       format('%s %s under lease %s (claimed at attempt %s) after "%s": accepted, returned %s',
              p.kind, p.call, p.lease, p.claimed_attempt, p.waited_for, p.returned)
  FROM svc.stale_probes p LEFT JOIN svc.orders o ON o.saga_id = p.saga_id
 WHERE p.outcome = 'accepted';

-- 5. acknowledged starts that are gone: saga.start returned an id (committed), the saga is
--    not there after the crashes (or is there under another order number)
INSERT INTO svc.suspects
SELECT DISTINCT 'lost_start', a.n, a.saga_id, NULL,
       CASE WHEN o.saga_id IS NULL THEN 'acknowledged, missing' ELSE format('acknowledged as saga %s, found as %s', a.saga_id, o.saga_id) END
  FROM svc.acks_raw a LEFT JOIN svc.orders o ON o.n = a.n
 WHERE o.saga_id IS DISTINCT FROM a.saga_id;

-- 6. completed sagas missing an effect: every step reported success, so every service must
--    have recorded its action
INSERT INTO svc.suspects
SELECT 'completed_missing', o.n, o.saga_id, s.step, format('completed, but no %s effect', s.step)
  FROM svc.orders o CROSS JOIN svc.steps s
 WHERE o.status = 'completed'
   AND NOT EXISTS (SELECT FROM svc.effects e WHERE e.n = o.n AND e.step = s.step AND e.kind = 'action');

-- 7. completed sagas with a compensation: nothing in a completed saga is ever undone
INSERT INTO svc.suspects
SELECT 'completed_compensated', o.n, o.saga_id, e.step, format('completed, but %s was compensated by %s', e.step, e.worker)
  FROM svc.orders o JOIN svc.effects e ON e.n = o.n AND e.kind = 'compensate'
 WHERE o.status = 'completed';

-- 8. completed although a step was declined for good: no service ever completes such a step
INSERT INTO svc.suspects
SELECT 'completed_declined', o.n, o.saga_id, f.key, format('completed, but its fate declines %s', f.key)
  FROM svc.orders o CROSS JOIN LATERAL jsonb_each_text(o.fate) f
 WHERE o.status = 'completed' AND f.value = 'fail';

CREATE TABLE svc.audit (ord integer, name text, label text, value bigint, fatal boolean);
INSERT INTO svc.audit
SELECT c.ord, c.name, c.label,
       (SELECT count(*) FROM svc.suspects s WHERE s.check_name = c.name), true
  FROM (VALUES (1, 'not_terminal', 'sagas not terminal'),
               (2, 'twice', 'steps whose effect happened twice'),
               (3, 'standing', 'effects left standing in a compensated saga'),
               (4, 'stale', 'stale reports accepted'),
               (5, 'lost_start', 'acknowledged starts lost'),
               (6, 'completed_missing', 'effects missing in a completed saga'),
               (7, 'completed_compensated', 'compensations in a completed saga'),
               (8, 'completed_declined', 'completed sagas with a declined step')) c(ord, name, label);

\echo
SELECT count(*) AS "sagas started", (SELECT count(*) FROM svc.acks_raw) AS "starts acknowledged",
       count(*) FILTER (WHERE cancel_asked) AS "cancels asked",
       count(*) FILTER (WHERE fate <> '{}' OR cancel_asked) AS "with a failure or cancel in their fate"
  FROM svc.orders;

\echo 'final status:'
SELECT status, count(*) AS sagas,
       count(*) FILTER (WHERE fate = '{}' AND NOT cancel_asked) AS "of which clean fate",
       count(*) FILTER (WHERE cancel_asked) AS "cancel asked",
       count(*) FILTER (WHERE fate::text ~ '"fail"') AS "a step declines"
  FROM svc.orders GROUP BY status ORDER BY status;

\echo 'why sagas compensated (the failure that started it, from saga.history):'
SELECT COALESCE(h.step || ': ' || COALESCE(h.detail ->> 'reason', h.detail ->> 'message', h.detail::text),
                'cancel requested') AS cause, count(*) AS sagas
  FROM svc.orders o
  JOIN LATERAL (SELECT event, step, detail FROM saga.history x
                 WHERE x.saga_id = o.saga_id AND x.event IN ('failed', 'cancel_requested')
                 ORDER BY x.id LIMIT 1) h ON true
 WHERE o.status IN ('compensated', 'cancelled', 'failed')
 GROUP BY 1 ORDER BY 2 DESC;

\echo 'effects the services recorded:'
SELECT protocol, kind, count(*) AS effects, sum(applied_count) AS applied,
       sum(redeliveries) AS "redeliveries recognised by key"
  FROM svc.effects GROUP BY protocol, kind ORDER BY protocol, kind;

\echo 'stale-report probes (the zombie: a report under a lease that lapsed and was superseded):'
SELECT COALESCE(kind, 'all') AS kind, COALESCE(call, 'all') AS call,
       count(*) FILTER (WHERE outcome <> 'skipped') AS probes,
       count(*) FILTER (WHERE waited_for = 'delivered again') AS "after a redelivery",
       count(*) FILTER (WHERE waited_for = 'finished by another worker') AS "after another's report",
       count(*) FILTER (WHERE outcome = 'refused' AND sqlstate = '55000') AS "refused 55000",
       count(*) FILTER (WHERE outcome = 'refused' AND sqlstate <> '55000') AS "refused otherwise",
       count(*) FILTER (WHERE outcome = 'accepted') AS accepted
  FROM svc.stale_probes WHERE outcome <> 'skipped' GROUP BY GROUPING SETS ((kind, call), ())
 ORDER BY kind NULLS LAST, call;
\echo 'tasks the zombie left alone (the engine ended them while its lease was the last one out: not stale):'
SELECT count(*) AS skipped FROM svc.stale_probes WHERE outcome = 'skipped';

SELECT sqlstate, message, count(*) FROM svc.stale_probes
 WHERE outcome = 'refused' AND sqlstate <> '55000' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10;

\echo 'left over (informational):'
SELECT (SELECT count(*) FROM saga.outbox) AS "tasks in the outbox",
       (SELECT count(*) FROM saga.incidents) AS incidents,
       (SELECT count(*) FROM saga.history WHERE event = 'lease_lapsed') AS "leases lapsed",
       (SELECT count(*) FROM saga.history
         WHERE (event = 'withdrawn' AND detail ->> 'outcome' LIKE 'lease lapsed%')
            OR (event = 'failed' AND detail ? 'in_doubt')) AS "compensated in doubt",
       (SELECT count(*) FROM saga.history WHERE event = 'late_report') AS "late reports",
       (SELECT count(*) FROM saga.history WHERE event = 'failed' AND detail ->> 'reason' = 'timeout') AS "timeouts";

\echo '=== counts ==='
SELECT label AS "check", value AS count FROM svc.audit ORDER BY ord;

-- the evidence: for each check that found something, its first sagas with their step runs,
-- history and effects
SELECT count(*) > 0 AS any_suspect FROM svc.suspects \gset
\if :any_suspect
\echo '=== evidence ==='
SELECT check_name, n, saga_id, step, why FROM (
    SELECT s.*, row_number() OVER (PARTITION BY check_name ORDER BY saga_id, step) AS k FROM svc.suspects s) x
 WHERE k <= 12 ORDER BY check_name, saga_id, step;

-- (a stale report that changed something, "returned t", first)
CREATE TABLE svc.shown AS
SELECT DISTINCT saga_id FROM (
    SELECT saga_id, row_number() OVER (PARTITION BY check_name
                                       ORDER BY why LIKE '%returned t%' DESC, saga_id) AS k
      FROM svc.suspects WHERE saga_id IS NOT NULL) x
 WHERE k <= 4;
\echo 'their step runs:'
SELECT r.saga_id, r.step, r.status, r.attempts, r.result, r.error
  FROM saga.step_runs r JOIN svc.shown USING (saga_id) ORDER BY r.saga_id, r.step_index;
\echo 'their history:'
SELECT h.saga_id, to_char(h.at, 'HH24:MI:SS.MS') AS at, h.event, h.step, h.actor, h.detail
  FROM saga.history h JOIN svc.shown USING (saga_id) ORDER BY h.saga_id, h.id;
\echo 'their effects:'
SELECT o.saga_id, e.step, e.kind, e.protocol, e.worker, e.lease, e.attempt, e.applied_count,
       e.redeliveries, to_char(e.first_at, 'HH24:MI:SS.MS') AS first_at, e.idempotency_key
  FROM svc.effects e JOIN svc.orders o USING (n) JOIN svc.shown s ON s.saga_id = o.saga_id
 ORDER BY o.saga_id, e.first_at;
\echo 'their stale probes:'
SELECT p.saga_id, p.task_id, p.step, p.kind, p.lease, p.claimed_attempt, p.call, p.waited_for,
       p.last_seen, p.step_before, p.outcome, p.returned, p.sqlstate, to_char(p.at, 'HH24:MI:SS.MS') AS at
  FROM svc.stale_probes p JOIN svc.shown USING (saga_id) ORDER BY p.saga_id, p.id;
\endif
