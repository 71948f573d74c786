--
-- 93_bridges: orchestration meets choreography.  A saga definition
-- publishes events ("publish" on a step and at the top level), an await step
-- succeeds when its event is published, and a start_saga subscription starts
-- a saga from each event.  Every error path.
--

-- define: the new keys are checked like the others, and nothing is stored
SELECT saga_test.define_err('{"steps": [{"name": "a", "await": "Paid", "topic": "t"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "await": "Paid", "sql": "pg_catalog.abs"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "await": "Paid", "retry": {"max_attempts": 2}}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "await": "Paid", "async": true}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "await": "no such type!"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "await": 7}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "t", "publish": "9lives"}]}');
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "t", "publish": ["Paid"]}]}');
SELECT saga_test.define_err('{"publish": "Done", "steps": [{"name": "a", "topic": "t"}]}');
SELECT saga_test.define_err('{"publish": {}, "steps": [{"name": "a", "topic": "t"}]}');
SELECT saga_test.define_err('{"publish": {"failed": "Oops"}, "steps": [{"name": "a", "topic": "t"}]}');
SELECT saga_test.define_err('{"publish": {"completed": "Bad Name"}, "steps": [{"name": "a", "topic": "t"}]}');

-- the order saga of the contract: charge, wait for the warehouse, notify
SELECT saga.define('br_order', $doc$
{"publish": {"completed": "OrderConfirmed", "compensated": "OrderCancelled", "cancelled": "OrderWithdrawn"},
 "steps": [
   {"name": "charge", "topic": "br_pay", "publish": "PaymentCaptured", "compensate": {"topic": "br_pay"}},
   {"name": "wait_ship", "await": "Shipped", "timeout": "1 hour"},
   {"name": "notify", "topic": "br_note"}]}
$doc$) AS v;
SELECT saga.subscribe('PaymentCaptured', 'br_audit');
SELECT saga.subscribe('OrderConfirmed', 'br_audit');
SELECT saga.subscribe('OrderCancelled', 'br_audit');
SELECT saga.subscribe('OrderWithdrawn', 'br_audit');

-- an await step matches by correlation id: without one there is nothing to match
SELECT saga_test.err($$SELECT saga.start('br_order', '{"order": 0}')$$);

-- published before the saga started: not the saga's event
SELECT saga.publish('Shipped', '{"tracking": "old"}', correlation_id => 'br-1') AS old_ship \gset
SELECT pg_sleep(0.01);
SELECT saga.start('br_order', '{"order": 1}', correlation_id => 'br-1') AS s1 \gset
-- a step's "publish": its result is the payload, in the transaction of the success
BEGIN;
SELECT saga.complete(saga_test.task(:s1, 'charge'), '{"payment": "p-1"}');
SELECT type, payload, correlation_id, causation_id, hops, deliveries,
       substr(traceparent, 1, 35) = substr((SELECT traceparent FROM saga.instances WHERE id = :s1), 1, 35) AS same_trace
  FROM saga.events WHERE type = 'PaymentCaptured' AND correlation_id = 'br-1';
ROLLBACK;
SELECT count(*) AS rolled_back FROM saga.events WHERE type = 'PaymentCaptured';
SELECT saga.complete(saga_test.task(:s1, 'charge'), '{"payment": "p-1"}');
-- the await step waits in the outbox: never visible, never claimable, no service may report it
SELECT topic, kind, step, awaits, visible_at, timeout_at > now() AS has_timeout,
       headers ->> 'correlation_id' AS correlation_id
  FROM saga.outbox WHERE id = saga_test.task(:s1, 'wait_ship');
SELECT step, status FROM saga.step_runs WHERE saga_id = :s1 ORDER BY step_index;
SELECT count(*) AS in_topics FROM saga.topics WHERE topic = 'saga await';
SELECT saga_test.err(format('SELECT saga.complete(%s, %L)', saga_test.task(:s1, 'wait_ship'), '{}'));
SELECT saga_test.err(format('SELECT saga.fail(%s, %L)', saga_test.task(:s1, 'wait_ship'), '{}'));
SELECT count(*) AS claimable FROM saga.claim('br_pay', 'w', 10, '1 minute');
-- another correlation id, or a rolled-back publish: still waiting
SELECT saga.publish('Shipped', '{"tracking": "other"}', correlation_id => 'br-2') IS NOT NULL AS other;
BEGIN;
SELECT saga.publish('Shipped', '{"tracking": "undone"}', correlation_id => 'br-1') IS NOT NULL AS undone;
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :s1 AND step = 'wait_ship';
ROLLBACK;
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :s1 AND step = 'wait_ship';
-- the event: the step succeeds with its payload, and the saga moves on
SELECT saga.publish('Shipped', '{"tracking": "T-1"}', correlation_id => 'br-1') AS ship1 \gset
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :s1 ORDER BY step_index;
SELECT event, step, detail = jsonb_build_object('event_id', :ship1) AS by_the_event
  FROM saga.history WHERE saga_id = :s1 AND step = 'wait_ship' ORDER BY at, event;
SELECT count(*) AS await_rows FROM saga.outbox WHERE awaits IS NOT NULL AND saga_id = :s1;
-- the top-level "publish": the saga's outcome, as it completes
SELECT saga.complete(saga_test.task(:s1, 'notify'), '{"sent": true}');
SELECT type, payload - 'saga_id' AS payload, (payload ->> 'saga_id')::bigint = :s1 AS saga_id,
       correlation_id, causation_id, hops
  FROM saga.events WHERE type = 'OrderConfirmed';
SELECT topic, payload ->> 'status' AS status FROM saga.outbox
 WHERE event_id = (SELECT id FROM saga.events WHERE type = 'OrderConfirmed');

-- published after the saga started, before the step was ready: found when it becomes ready
SELECT saga.start('br_order', '{"order": 3}', correlation_id => 'br-3') AS s3 \gset
SELECT saga.publish('Shipped', '{"tracking": "early"}', correlation_id => 'br-3') AS early \gset
SELECT saga.complete(saga_test.task(:s3, 'charge'), '{"payment": "p-3"}');
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :s3 ORDER BY step_index;
SELECT detail = jsonb_build_object('event_id', :early) AS by_the_early_event
  FROM saga.history WHERE saga_id = :s3 AND step = 'wait_ship' AND event = 'succeeded';

-- one event ends every step waiting for it: two sagas of one correlation id
SELECT saga.start('br_order', '{"order": 4}', correlation_id => 'br-4') AS s4a \gset
SELECT saga.start('br_order', '{"order": 5}', correlation_id => 'br-4') AS s4b \gset
SELECT saga.complete(saga_test.task(:s4a, 'charge'), '{}') AND saga.complete(saga_test.task(:s4b, 'charge'), '{}') AS both_charged;
SELECT saga.publish('Shipped', '{"tracking": "both"}', correlation_id => 'br-4') IS NOT NULL AS shipped;
SELECT saga_id = :s4a AS first, status, result FROM saga.step_runs
 WHERE saga_id IN (:s4a, :s4b) AND step = 'wait_ship' ORDER BY saga_id;

-- a timeout fails an await step like any step: the saga compensates and says so
SELECT saga.start('br_order', '{"order": 6}', correlation_id => 'br-6') AS s6 \gset
SELECT saga.complete(saga_test.task(:s6, 'charge'), '{"payment": "p-6"}');
UPDATE saga.outbox SET timeout_at = now() - interval '1 second' WHERE id = saga_test.task(:s6, 'wait_ship');
SELECT (saga.tick() ->> 'timeouts')::int >= 1 AS timed_out;
SELECT status FROM saga.instances WHERE id = :s6;
SELECT step, status FROM saga.step_runs WHERE saga_id = :s6 ORDER BY step_index;
SELECT saga.complete(saga_test.task(:s6, 'charge', true), '{"refunded": true}');
SELECT status FROM saga.instances WHERE id = :s6;
SELECT type, payload ->> 'status' AS status, payload -> 'errors' ? 'wait_ship' AS says_why
  FROM saga.events WHERE type = 'OrderCancelled' AND correlation_id = 'br-6';
-- the event after the timeout changes nothing
SELECT saga.publish('Shipped', '{"tracking": "late"}', correlation_id => 'br-6') IS NOT NULL AS late;
SELECT step, status FROM saga.step_runs WHERE saga_id = :s6 ORDER BY step_index;

-- cancelled while waiting: the await row is withdrawn, "cancelled" is published
SELECT saga.start('br_order', '{"order": 7}', correlation_id => 'br-7') AS s7 \gset
SELECT saga.complete(saga_test.task(:s7, 'charge'), '{"payment": "p-7"}');
SELECT saga.cancel(:s7, 'customer changed their mind');
SELECT count(*) AS await_rows FROM saga.outbox WHERE id = saga_test.task(:s7, 'wait_ship');
SELECT saga.complete(saga_test.task(:s7, 'charge', true), '{}');
SELECT type, payload ->> 'status' AS status, payload ->> 'reason' AS reason
  FROM saga.events WHERE correlation_id = 'br-7' AND type = 'OrderWithdrawn';

-- start_saga: the subscription's options are checked
SELECT saga.define_choreography('br_choreo', '{"start": "BrA", "participants": {"br_p": {"on": ["BrA"], "emits": ["BrB"]}}, "completed": ["BrB"]}') AS c;
SELECT saga_test.err($$SELECT saga.subscribe('OrderPlaced', 'br_start', '{"start_saga": "nope"}')$$);
SELECT saga_test.err($$SELECT saga.subscribe('OrderPlaced', 'br_start', '{"start_saga": "br_choreo"}')$$);
SELECT saga_test.err($$SELECT saga.subscribe('OrderPlaced', 'br_start', '{"start_saga": 1}')$$);
SELECT saga_test.err($$SELECT saga.subscribe('OrderPlaced', 'br_start', '{"start_saga": "br_order", "retry": {"max_attempts": 2}}')$$);
SELECT count(*) AS none_stored FROM saga.subscriptions WHERE topic = 'br_start';
SELECT saga.subscribe('OrderPlaced', 'br_start', '{"start_saga": "br_order", "filter": "$.amount > 10"}') AS sub_start \gset

-- each event starts a saga in the publishing transaction: input the payload,
-- correlation and trace the event's, the event id as idempotency key
BEGIN;
SELECT saga.publish('OrderPlaced', '{"amount": 50}', correlation_id => 'br-8') AS e8 \gset
SELECT name, status, input, correlation_id, event_id = :e8 AS by_the_event,
       idempotency_key = 'event:' || :e8 AS key,
       substr(traceparent, 1, 35) = substr((SELECT traceparent FROM saga.events WHERE id = :e8), 1, 35) AS same_trace
  FROM saga.instances WHERE correlation_id = 'br-8';
SELECT deliveries FROM saga.events WHERE id = :e8;
SELECT count(*) AS deliveries_in_outbox FROM saga.outbox WHERE event_id = :e8;
ROLLBACK;
SELECT count(*) AS rolled_back FROM saga.instances WHERE correlation_id = 'br-8';
-- the filter applies
SELECT saga.publish('OrderPlaced', '{"amount": 5}', correlation_id => 'br-9') IS NOT NULL AS small;
SELECT count(*) AS not_started FROM saga.instances WHERE correlation_id = 'br-9';
SELECT clock_timestamp() AS before_e8 \gset
SELECT saga.publish('OrderPlaced', '{"amount": 50}', correlation_id => 'br-8') AS e8 \gset
SELECT id AS s8 FROM saga.instances WHERE event_id = :e8 \gset
-- a replay of the event finds its saga: never a second one
SELECT saga.replay('OrderPlaced', 'br_start', :'before_e8') AS replayed;
SELECT count(*) AS sagas FROM saga.instances WHERE correlation_id = 'br-8';
-- the events it publishes have the starting event as their cause: hops count on
SELECT saga.complete(saga_test.task(:s8, 'charge'), '{"payment": "p-8"}');
SELECT type, causation_id = :e8 AS caused_by_start, hops FROM saga.events
 WHERE correlation_id = 'br-8' ORDER BY id;

-- an event loop through sagas ends at the hop limit: a saga started by BrPing publishes BrPing
CREATE FUNCTION saga_test.br_echo(p jsonb) RETURNS jsonb LANGUAGE sql SET search_path = pg_catalog, pg_temp AS 'SELECT p';
SELECT saga.define('br_ping', '{"publish": {"completed": "BrPing"}, "steps": [{"name": "echo", "sql": "saga_test.br_echo"}]}') AS v;
SELECT saga.subscribe('BrPing', 'br_pinger', '{"start_saga": "br_ping"}') IS NOT NULL AS sub;
SET saga.max_hops = 3;
SELECT saga.publish('BrPing', '{"n": 0}', correlation_id => 'br-ping') IS NOT NULL AS pinged;
RESET saga.max_hops;
SELECT hops, deliveries FROM saga.events WHERE correlation_id = 'br-ping' ORDER BY id;
SELECT count(*) AS sagas, count(*) FILTER (WHERE status = 'completed') AS completed
  FROM saga.instances WHERE correlation_id = 'br-ping';
-- past the hop limit an event ends no await step either
SET saga.max_hops = 0;
SELECT saga.start('br_order', '{"order": 10}', correlation_id => 'br-10') AS s10 \gset
SELECT saga.complete(saga_test.task(:s10, 'charge'), '{}');
SELECT saga.publish('Nudge', '{}', correlation_id => 'br-10') AS nudge \gset
SELECT saga.publish('Shipped', '{"n": 1}', causation_id => :nudge) AS e10 \gset
RESET saga.max_hops;
SELECT hops, deliveries FROM saga.events WHERE id = :e10;
SELECT step, status FROM saga.step_runs WHERE saga_id = :s10 AND step = 'wait_ship';

-- the keys of event-started sagas are reserved: nobody can take an event's saga in advance
SELECT saga_test.err($$SELECT saga.start('br_order', '{}', correlation_id => 'br-11', idempotency_key => 'event:999999')$$);

-- a definition that publishes does so as its definer, who must be allowed to publish
CREATE ROLE regress_br_admin IN ROLE saga_admin;
CREATE ROLE regress_br_admin2 IN ROLE saga_admin;
SET ROLE regress_br_admin;
SELECT saga_test.define_err('{"steps": [{"name": "a", "topic": "t", "publish": "BrForged"}]}', 'br_forge');
SELECT saga_test.define_err('{"publish": {"completed": "BrForged"}, "steps": [{"name": "a", "topic": "t"}]}', 'br_forge');
-- awaiting needs no such right
SELECT saga.define('br_awaits', '{"steps": [{"name": "w", "await": "BrAnything"}]}') AS v;
RESET ROLE;
-- and only the definer's members may have events start its sagas
SET ROLE regress_br_admin2;
SELECT saga_test.err($$SELECT saga.subscribe('BrAnything', 'br_hijack', '{"start_saga": "br_awaits"}')$$);
RESET ROLE;
SET ROLE regress_br_admin;
SELECT saga.subscribe('BrAnything', 'br_own', '{"start_saga": "br_awaits"}') IS NOT NULL AS own;
SELECT saga.unsubscribe('BrAnything', 'br_own');
RESET ROLE;

-- a loop that widens at every level (two definitions, each publishing the
-- event that starts both) stops at the cascade limit, not after 2^hops sagas
CREATE FUNCTION saga_test.br_noop(p jsonb) RETURNS jsonb LANGUAGE sql SET search_path = pg_catalog, pg_temp AS 'SELECT ''{}''::jsonb';
SELECT saga.define('br_fan_a', '{"publish": {"completed": "BrFan"}, "steps": [{"name": "a", "sql": "saga_test.br_noop"}]}') AS a,
       saga.define('br_fan_b', '{"publish": {"completed": "BrFan"}, "steps": [{"name": "b", "sql": "saga_test.br_noop"}]}') AS b;
SELECT saga.subscribe('BrFan', 'br_fan_a', '{"start_saga": "br_fan_a"}') IS NOT NULL AS sa,
       saga.subscribe('BrFan', 'br_fan_b', '{"start_saga": "br_fan_b"}') IS NOT NULL AS sb;
SELECT saga_test.err($$SELECT saga.publish('BrFan', '{}', correlation_id => 'br-fan')$$);
SELECT count(*) AS sagas, (SELECT count(*) FROM saga.events WHERE correlation_id = 'br-fan') AS events
  FROM saga.instances WHERE correlation_id = 'br-fan';
-- the same loop, narrow: one publish stops at the hop limit as before
SELECT saga.unsubscribe('BrFan', 'br_fan_b');
SET saga.max_hops = 5;
SELECT saga.publish('BrFan', '{}', correlation_id => 'br-fan') IS NOT NULL AS published;
RESET saga.max_hops;
SELECT count(*) AS sagas FROM saga.instances WHERE correlation_id = 'br-fan';

-- a start_saga subscription whose definition was deleted (no saga used it):
-- the publisher does not fail; the subscription records why, as for a filter
SELECT saga.define('br_gone', '{"steps": [{"name": "a", "topic": "t"}]}') AS v;
SELECT saga.subscribe('BrGone', 'br_gone_start', '{"start_saga": "br_gone"}') AS gone_sub \gset
DELETE FROM saga.definitions WHERE name = 'br_gone';
SELECT saga.publish('BrGone', '{}', correlation_id => 'br-gone') AS gone_event \gset
SELECT error FROM saga.filter_errors WHERE subscription_id = :gone_sub AND event_id = :gone_event;
SELECT count(*) AS sagas FROM saga.instances WHERE correlation_id = 'br-gone';
