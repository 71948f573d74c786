--
-- 91_events: saga.publish, subscriptions, deliveries through the worker
-- protocol, dead letters, saga.redeliver and saga.replay; every error path.
--

-- nobody listening: recorded, 0 deliveries, never an error
SELECT saga.publish('ev.nobody', '{"n": 1}') AS e0 \gset
SELECT type, payload, correlation_id = id::text AS own_correlation, causation_id, hops,
       deliveries, late, publisher = current_user AS by_me,
       traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-01$' AS traced
  FROM saga.events WHERE id = :e0;

-- subscriptions: one per (event_type, topic); again updates the options
SELECT saga.subscribe('OrderPlaced', 'ev_pay') AS sub_pay \gset
SELECT saga.subscribe('OrderPlaced', 'ev_mail', '{"retry": {"max_attempts": 2, "initial_delay": "1 hour"}}') AS sub_mail \gset
SELECT saga.subscribe('ev.mail', 'ev_mail2', '{"retry": {"max_attempts": 2, "initial_delay": "1 hour"}}') IS NOT NULL AS mail2;
SELECT saga.subscribe('OrderPlaced', 'ev_big', '{"filter": "$.amount > 100"}') AS sub_big \gset
SELECT saga.subscribe('OrderPlaced', 'ev_pay', '{"retry": {"max_attempts": 5}}') = :sub_pay AS same_id;
SELECT event_type, topic, options, choreography, created_at <= updated_at AS times
  FROM saga.subscriptions WHERE event_type = 'OrderPlaced' ORDER BY id;

-- fan-out in the publisher's transaction: one delivery per matching subscription
BEGIN;
SELECT saga.publish('OrderPlaced', '{"order": 1, "amount": 50}', correlation_id => 'ord-1', key => 'cust-9') AS e1 \gset
SELECT deliveries FROM saga.events WHERE id = :e1;
SELECT topic, kind, saga_id, step, attempt, max_attempts, payload,
       headers - 'traceparent' - 'event_id' - 'idempotency_key' AS headers,
       headers ->> 'idempotency_key' = :e1 || ':' || subscription_id AS ikey,
       (headers ->> 'event_id')::bigint = :e1 AS event_header,
       headers ->> 'traceparent' = (SELECT traceparent FROM saga.events WHERE id = :e1) AS trace,
       id < 0 AS negative_id, event_id = :e1 AS event_id
  FROM saga.outbox WHERE event_id = :e1 ORDER BY topic;
ROLLBACK;
-- rolled back: no event, no delivery
SELECT count(*) AS events FROM saga.events WHERE id = :e1;
SELECT count(*) AS deliveries FROM saga.outbox WHERE event_id = :e1;

SELECT saga.publish('OrderPlaced', '{"order": 2, "amount": 150}', correlation_id => 'ord-2') AS e2 \gset
SELECT topic FROM saga.outbox WHERE event_id = :e2 ORDER BY topic;

-- the same idempotency key for the same type returns the first event; nothing twice
SELECT saga.publish('OrderPlaced', '{"order": 3}', idempotency_key => 'k-3') AS e3 \gset
SELECT saga.publish('OrderPlaced', '{"order": 3, "again": true}', idempotency_key => 'k-3') = :e3 AS same_event;
SELECT count(*) AS deliveries_of_e3 FROM saga.outbox WHERE event_id = :e3;
SELECT deliveries FROM saga.events WHERE id = :e3;
-- ... but not across types
SELECT saga.publish('ev.other', '{}', idempotency_key => 'k-3') <> :e3 AS other_type_new;

-- causation: correlation inherited, same trace, new span, hops + 1
SELECT saga.publish('PaymentCharged', '{"p": 1}', causation_id => :e2) AS e4 \gset
SELECT c.correlation_id, c.causation_id = :e2 AS caused, c.hops,
       substr(c.traceparent, 4, 32) = substr(p.traceparent, 4, 32) AS same_trace,
       substr(c.traceparent, 37, 16) <> substr(p.traceparent, 37, 16) AS new_span
  FROM saga.events c, saga.events p WHERE c.id = :e4 AND p.id = :e2;
-- an explicit traceparent is the parent
SELECT saga.publish('ev.traced', '{}',
       traceparent => '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01') AS et \gset
SELECT substr(traceparent, 1, 36) AS trace_prefix,
       substr(traceparent, 37, 16) <> 'b7ad6b7169203331' AS new_span
  FROM saga.events WHERE id = :et;

-- the worker protocol serves deliveries: claim, heartbeat, complete
SELECT id AS d_pay, lease AS d_pay_lease, kind, saga_id, step, payload
  FROM saga.claim('ev_pay', 'w1', 1, '1 minute') \gset
SELECT :d_pay < 0 AS delivery, :'kind' AS kind, :'payload' AS payload;
SELECT saga.heartbeat(:d_pay, :d_pay_lease, '2 minutes') > now() + interval '1 minute' AS extended;
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => %s)', :d_pay, '{}', :d_pay_lease + 1));
SELECT saga.complete(:d_pay, '{"ok": true}', lease => :d_pay_lease) AS completed;
SELECT count(*) AS left_outbox FROM saga.outbox WHERE id = :d_pay;
-- a repeat is a no-op
SELECT saga.complete(:d_pay, '{"ok": true}', lease => :d_pay_lease) AS repeat;
SELECT saga_test.err(format('SELECT saga.heartbeat(%s, %s)', :d_pay, :d_pay_lease));
-- never handed out
SELECT saga_test.err('SELECT saga.complete(-999999999)');
SELECT saga_test.err('SELECT saga.heartbeat(-999999999, 1)');

-- the transactional poll, and a retryable failure with the subscription's backoff
SELECT saga.publish('ev.mail', '{"to": "a@example.com"}') AS em \gset
BEGIN;
SELECT id AS d_mail FROM saga.outbox
 WHERE topic = 'ev_mail2' AND visible_at <= now() ORDER BY visible_at, id
   FOR UPDATE SKIP LOCKED LIMIT 1 \gset
SELECT saga.fail(:d_mail, '{"smtp": "down"}') AS failed;
COMMIT;
SELECT attempt, visible_at > now() + interval '29 minutes' AS backing_off, error,
       headers ->> 'attempt' AS header_attempt
  FROM saga.outbox WHERE id = :d_mail;
-- the same failure again is a repeat; a report without lease on a task not visible is refused
SELECT saga.fail(:d_mail, '{"smtp": "down"}') AS repeat;
SELECT saga_test.err(format('SELECT saga.complete(%s)', :d_mail));
-- its last attempt fails: a dead letter
UPDATE saga.outbox SET visible_at = now() WHERE id = :d_mail;
SELECT id = :d_mail AS same_task, lease AS d_mail_lease, attempt FROM saga.claim('ev_mail2', 'w2', 1, '1 minute') \gset
SELECT :'same_task' AS same_task, :attempt AS attempt;
SELECT saga.fail(:d_mail, '{"smtp": "still down"}', lease => :d_mail_lease) AS failed;
SELECT count(*) AS in_outbox FROM saga.outbox WHERE id = :d_mail;
SELECT topic, event_id = :em AS event, payload, attempts, error, dead_at IS NOT NULL AS dead,
       headers ->> 'event_type' AS type
  FROM saga.dead_letters WHERE id = :d_mail;
-- the report that buried it, again: a repeat; another report is refused
SELECT saga.fail(:d_mail, '{"smtp": "still down"}', lease => :d_mail_lease) AS repeat;
SELECT saga_test.err(format('SELECT saga.fail(%s, %L, lease => %s)', :d_mail, '{"x": 1}', :d_mail_lease));
SELECT saga_test.err(format('SELECT saga.complete(%s)', :d_mail));
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => %s)', :d_mail, '{}', :d_mail_lease + 1));
SELECT saga_test.err(format('SELECT saga.heartbeat(%s, %s)', :d_mail, :d_mail_lease));

-- redeliver: visible again, fresh attempts, the old lease fenced
SELECT saga.redeliver(:d_mail);
SELECT count(*) AS dead FROM saga.dead_letters WHERE id = :d_mail;
SELECT attempt, deliveries = :d_mail_lease AS lease_kept, visible_at <= now() AS visible
  FROM saga.outbox WHERE id = :d_mail;
SELECT saga_test.err(format('SELECT saga.complete(%s, %L, lease => %s)', :d_mail, '{}', :d_mail_lease));
SELECT id = :d_mail AS same_task, lease > :d_mail_lease AS next_lease, lease AS d_mail_lease2
  FROM saga.claim('ev_mail2', 'w3', 1, '1 minute') \gset
SELECT :'same_task' AS same_task, :'next_lease' AS next_lease;
SELECT saga.complete(:d_mail, '{}', lease => :d_mail_lease2) AS completed;
SELECT saga_test.err('SELECT saga.redeliver(-999999999)');

-- a non-retryable failure buries at once; a late success under its lease resolves it
SELECT id AS d_big, lease AS d_big_lease FROM saga.claim('ev_big', 'w4', 1, '1 minute') \gset
SELECT saga.fail(:d_big, '{"bad": true}', retryable => false, lease => :d_big_lease) AS failed;
SELECT count(*) AS dead FROM saga.dead_letters WHERE id = :d_big;
SELECT saga.complete(:d_big, '{}', lease => :d_big_lease) AS late_success;
SELECT count(*) AS dead FROM saga.dead_letters WHERE id = :d_big;

-- a lease that lapsed with no attempt left: a dead letter, at claim
SELECT saga.subscribe('ev.lapse', 'ev_lapse', '{"retry": {"max_attempts": 1}}') IS NOT NULL AS subscribed;
SELECT saga.publish('ev.lapse', '{}') AS e5 \gset
SELECT id AS d_lapse FROM saga.claim('ev_lapse', 'w5', 1, '1 minute') \gset
UPDATE saga.outbox SET visible_at = now() - interval '1 second' WHERE id = :d_lapse;
SELECT count(*) AS handed_out FROM saga.claim('ev_lapse', 'w6', 1, '1 minute');
SELECT error FROM saga.dead_letters WHERE id = :d_lapse;

-- filters: lax jsonpath; false or null skip; an error skips and is counted, never raised
SELECT saga.subscribe('ev.filtered', 'ev_f_true', '{"filter": "$.n > 1"}') IS NOT NULL AS s1,
       saga.subscribe('ev.filtered', 'ev_f_null', '{"filter": "$.missing == 1"}') IS NOT NULL AS s2,
       saga.subscribe('ev.filtered', 'ev_f_err', '{"filter": "$.n"}') IS NOT NULL AS s3,
       saga.subscribe('ev.filtered', 'ev_f_none', '{}') IS NOT NULL AS s4;
SELECT saga.publish('ev.filtered', '{"n": 2}') AS e6 \gset
SELECT topic FROM saga.outbox WHERE event_id = :e6 ORDER BY topic;
SELECT deliveries FROM saga.events WHERE id = :e6;
SELECT s.topic, f.error, f.event_id = :e6 AS event
  FROM saga.filter_errors f JOIN saga.subscriptions s ON s.id = f.subscription_id
 WHERE s.event_type = 'ev.filtered' ORDER BY s.topic;
-- a filter's error is kept bounded (1 kB), however long the message it raised
SELECT saga.subscribe('ev.dt', 'ev_dt', '{"filter": "$.d.datetime()"}') IS NOT NULL AS subscribed;
SELECT saga.publish('ev.dt', jsonb_build_object('d', repeat('x', 5000))) AS edt \gset
SELECT length(error) < 1200 AS bounded, error LIKE '%[truncated: % bytes in all] (SQLSTATE 22031)' AS marked
  FROM saga.filter_errors WHERE event_id = :edt;
-- a filter that takes longer than saga.filter_timeout skips the delivery, with that reason
SET saga.filter_timeout = '20ms';
SELECT saga.subscribe('ev.slow', 'ev_slow',
       jsonb_build_object('filter', 'exists($' || repeat('[0,0,0,0]', 30) || ' ? (@ == "zz"))')) IS NOT NULL AS subscribed;
SELECT saga.subscribe('ev.slow', 'ev_fast') IS NOT NULL AS subscribed;
SELECT saga.publish('ev.slow', '[1]') AS eslow \gset
SELECT topic FROM saga.outbox WHERE event_id = :eslow;
SELECT error FROM saga.filter_errors WHERE event_id = :eslow;
RESET saga.filter_timeout;

-- a subscription committed after an event does not get it; replay does
SELECT saga.publish('ev.history', '{"seq": 1}') AS h1 \gset
SELECT saga.publish('ev.history', '{"seq": 2}') AS h2 \gset
SELECT saga.subscribe('ev.history', 'ev_late') IS NOT NULL AS subscribed;
SELECT count(*) AS got FROM saga.outbox WHERE topic = 'ev_late';
SELECT saga.replay('ev.history', 'ev_late', now() - interval '1 hour') AS replayed;
SELECT payload, headers ->> 'replay' AS replay,
       headers ->> 'idempotency_key' LIKE '%:replay:%' AS own_key
  FROM saga.outbox WHERE topic = 'ev_late' ORDER BY id DESC;
-- a replay changes no event, hop or flow
SELECT id = :h1 AS first, hops, deliveries FROM saga.events WHERE id IN (:h1, :h2) ORDER BY id;
SELECT saga.replay('ev.history', 'ev_late', now() + interval '1 hour', now() + interval '2 hours') AS none;
-- replay_from at subscribe: the retained events since then, once
SELECT saga.subscribe('ev.history', 'ev_catch_up', format('{"replay_from": "%s"}', now() - interval '1 hour')::jsonb) IS NOT NULL AS subscribed;
SELECT payload, headers ->> 'replay' AS replay FROM saga.outbox WHERE topic = 'ev_catch_up' ORDER BY id DESC;

-- unsubscribe: no new deliveries; the pending ones drain
SELECT saga.unsubscribe('ev.history', 'ev_late');
SELECT saga.publish('ev.history', '{"seq": 3}') AS h3 \gset
SELECT topic FROM saga.outbox WHERE event_id = :h3 ORDER BY topic;
SELECT count(*) AS pending_kept FROM saga.outbox WHERE topic = 'ev_late';

-- hop limit: past saga.max_hops nothing is delivered, the publisher does not fail
SET saga.max_hops = 2;
SELECT saga.subscribe('ev.loop', 'ev_loop') IS NOT NULL AS subscribed;
SELECT saga.publish('ev.loop', '{}') AS l0 \gset
SELECT saga.publish('ev.loop', '{}', causation_id => :l0) AS l1 \gset
SELECT saga.publish('ev.loop', '{}', causation_id => :l1) AS l2 \gset
SELECT saga.publish('ev.loop', '{}', causation_id => :l2) AS l3 \gset
SELECT hops, deliveries FROM saga.events WHERE id IN (:l0, :l1, :l2, :l3) ORDER BY id;
RESET saga.max_hops;

--
-- Errors: each with its SQLSTATE, and nothing changed.
--
SELECT count(*) AS events_before FROM saga.events \gset
SELECT saga_test.err('SELECT saga.publish(NULL, ''{}'')');
SELECT saga_test.err('SELECT saga.publish(''Ok'', NULL)');
SELECT saga_test.err('SELECT saga.publish(''1bad'', ''{}'')');
SELECT saga_test.err('SELECT saga.publish(''bad-type'', ''{}'')');
SELECT saga_test.err(format('SELECT saga.publish(%L, ''{}'')', repeat('A', 64)));
SELECT saga_test.err(format('SELECT saga.publish(''Ok'', ''{}'', correlation_id => %L)', repeat('c', 256)));
SELECT saga_test.err('SELECT saga.publish(''Ok'', ''{}'', correlation_id => '''')');
SELECT saga_test.err('SELECT saga.publish(''Ok'', ''{}'', key => '''')');
SELECT saga_test.err(format('SELECT saga.publish(''Ok'', ''{}'', idempotency_key => %L)', repeat('k', 256)));
SELECT saga_test.err('SELECT saga.publish(''Ok'', ''{}'', causation_id => -5)');
SELECT saga_test.err(format('SELECT saga.publish(''Ok'', ''{}'', causation_id => %s, correlation_id => ''other'')', :e2));
SELECT saga_test.err('SELECT saga.publish(''Ok'', ''{}'', traceparent => ''00-xyz'')');
SELECT saga_test.err(format('SELECT saga.publish(''Ok'', ''{}'', traceparent => %L)', repeat('0', 56)));
SET saga.max_payload_size = 1024;
SELECT saga_test.err(format('SELECT saga.publish(''Ok'', %L)', jsonb_build_object('x', repeat('x', 2000))));
RESET saga.max_payload_size;
SELECT count(*) = :events_before AS nothing_recorded FROM saga.events;

SELECT count(*) AS subs_before FROM saga.subscriptions \gset
SELECT saga_test.err('SELECT saga.subscribe(NULL, ''t'')');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', NULL)');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''t'', NULL)');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''Bad Topic'')');
SELECT saga_test.err(format('SELECT saga.subscribe(''Ev'', %L)', repeat('t', 49)));
SELECT saga_test.err('SELECT saga.subscribe(''-Ev'', ''t'')');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''t'', ''[]'')');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''t'', ''{"bogus": 1}'')');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''t'', ''{"filter": "$.a ==="}'')');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''t'', ''{"filter": 5}'')');
SELECT saga_test.err(format('SELECT saga.subscribe(''Ev'', ''t'', %L)', jsonb_build_object('filter', '$.a == "' || repeat('a', 5000) || '"')));
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''t'', ''{"retry": {"max_attempts": 0}}'')');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''t'', ''{"retry": {"initial_delay": "soon"}}'')');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''t'', ''{"retry": {"initial_delay": "100 years"}}'')');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''t'', ''{"replay_from": "yesterday-ish"}'')');
SELECT saga_test.err('SELECT saga.subscribe(''Ev'', ''t'', ''{"replay_from": "infinity"}'')');
SELECT count(*) = :subs_before AS nothing_stored FROM saga.subscriptions;

SELECT saga_test.err('SELECT saga.unsubscribe(''Nope'', ''t'')');
SELECT saga_test.err('SELECT saga.unsubscribe(NULL, ''t'')');
SELECT saga_test.err('SELECT saga.replay(''Nope'', ''t'', now() - interval ''1 day'')');
SELECT saga_test.err('SELECT saga.replay(''ev.history'', ''ev_catch_up'', ''2026-01-02 00:00+00'', ''2026-01-01 00:00+00'')');
SELECT saga_test.err('SELECT saga.replay(''ev.history'', ''ev_catch_up'', NULL)');
SELECT saga_test.err('SELECT saga.redeliver(NULL)');

-- replay_from is kept as ISO 8601 in UTC: what subscribe accepted under one
-- DateStyle reads the same under any other
SET DateStyle = 'ISO, DMY';
SET TimeZone = 'Asia/Kolkata';
SELECT saga.subscribe('ev.dmy', 'ev_dmy', '{"replay_from": "30/11/2026 10:00"}') IS NOT NULL AS subscribed;
RESET DateStyle;
RESET TimeZone;
SELECT options FROM saga.subscriptions WHERE event_type = 'ev.dmy';
SELECT saga.publish('ev.dmy', '{}') IS NOT NULL AS published;

-- a redelivery reads the subscription's retry as publish does (2.0 is 2)
SELECT saga.subscribe('ev.ma', 'ev_ma', '{"retry": {"max_attempts": 2.0}}') IS NOT NULL AS subscribed;
SELECT saga.publish('ev.ma', '{}') IS NOT NULL AS published;
SELECT id AS d_ma, lease AS d_ma_lease FROM saga.claim('ev_ma', 'w', 1, '1 minute') \gset
SELECT saga.fail(:d_ma, '{"e": 1}', false, :d_ma_lease) AS buried;
SELECT saga.redeliver(:d_ma);
SELECT attempt, max_attempts FROM saga.outbox WHERE id = :d_ma;

-- the smallest bigint is no task (not a repeat)
SELECT saga_test.err('SELECT saga.complete(-9223372036854775808)');

-- a subscription is its owner's: another saga_admin may not change, remove or replay into it
CREATE ROLE regress_sub_a IN ROLE saga_admin;
CREATE ROLE regress_sub_b IN ROLE saga_admin;
SET ROLE regress_sub_a;
SELECT saga.subscribe('ev.owned', 'ev_owned') IS NOT NULL AS subscribed;
SET ROLE regress_sub_b;
SELECT saga_test.err('SELECT saga.subscribe(''ev.owned'', ''ev_owned'', ''{"filter": "false"}'')');
SELECT saga_test.err('SELECT saga.unsubscribe(''ev.owned'', ''ev_owned'')');
SELECT saga_test.err('SELECT saga.replay(''ev.owned'', ''ev_owned'', ''-infinity'')');
SET ROLE regress_sub_a;
SELECT saga.subscribe('ev.owned', 'ev_owned', '{"retry": {"max_attempts": 4}}') IS NOT NULL AS own_update;
SELECT saga.unsubscribe('ev.owned', 'ev_owned');
RESET ROLE;
DROP ROLE regress_sub_a, regress_sub_b;

-- leave OrderPlaced to 92_choreography
SELECT saga.unsubscribe('OrderPlaced', topic) FROM (VALUES ('ev_pay'), ('ev_mail'), ('ev_big')) t(topic);
SELECT count(*) AS left FROM saga.subscriptions WHERE event_type = 'OrderPlaced';
