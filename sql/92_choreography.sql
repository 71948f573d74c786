--
-- 92_choreography: saga.define_choreography (every validation rule, with its
-- SQLSTATE, JSON path and nothing stored), versions, the shared namespace,
-- and flows: statuses, waiting_on, late events, the hop limit, deadlines,
-- incidents.  Ends with the order example of the contract, both ways.
--

CREATE TABLE saga_test.order_doc (doc jsonb);
INSERT INTO saga_test.order_doc VALUES ('{
  "start": "OrderPlaced",
  "participants": {
    "payments":      {"on": ["OrderPlaced"], "emits": ["PaymentCharged"], "fails": ["PaymentDeclined"],
                      "compensation": {"on": ["StockUnavailable", "OrderTimedOut"], "emits": "PaymentRefunded"}},
    "inventory":     {"on": ["PaymentCharged"], "emits": ["StockReserved"], "fails": ["StockUnavailable"],
                      "compensation": {"on": ["OrderTimedOut"], "emits": "StockReleased"}},
    "notifications": {"on": ["StockReserved"], "emits": ["CustomerNotified"]}
  },
  "completed": ["CustomerNotified"],
  "deadline": {"after": "10 minutes", "publish": "OrderTimedOut"},
  "max_hops": 20
}');

-- a broken document: err() of define_choreography('bad', doc); nothing stored
CREATE FUNCTION saga_test.bad(doc jsonb) RETURNS text LANGUAGE sql AS $$
  SELECT saga_test.err(format('SELECT saga.define_choreography(%L, %L)', 'bad', doc))
$$;
-- the order document with one change at a path
CREATE FUNCTION saga_test.order_with(path text[], value jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_set(doc, path, value) FROM saga_test.order_doc
$$;
CREATE FUNCTION saga_test.order_without(path text[]) RETURNS jsonb LANGUAGE sql AS $$
  SELECT doc #- path FROM saga_test.order_doc
$$;

-- structure: 22023 (and 22004, 22001, 42602, 54000 for the arguments)
SELECT saga_test.err('SELECT saga.define_choreography(NULL, ''{}'')');
SELECT saga_test.err('SELECT saga.define_choreography(''x'', NULL)');
SELECT saga_test.err(format('SELECT saga.define_choreography(%L, ''{}'')', repeat('x', 64)));
SELECT saga_test.err('SELECT saga.define_choreography(''Bad Name'', ''{}'')');
SELECT saga_test.bad('[]');
SELECT saga_test.bad('{}');
SELECT saga_test.bad(saga_test.order_with('{bogus}', '1'));
SELECT saga_test.bad(saga_test.order_with('{start}', '5'));
SELECT saga_test.bad(saga_test.order_with('{start}', '"no-dashes"'));
SELECT saga_test.bad(saga_test.order_with('{participants}', '{}'));
SELECT saga_test.bad(saga_test.order_with('{participants}', '[]'));
SELECT saga_test.bad(saga_test.order_with('{participants,Payments}', '{"on": ["OrderPlaced"]}'));
SELECT saga_test.bad(saga_test.order_with('{participants,payments,bogus}', 'true'));
SELECT saga_test.bad(saga_test.order_without('{participants,notifications,on}'));
SELECT saga_test.bad(saga_test.order_with('{participants,notifications,on}', '[]'));
SELECT saga_test.bad(saga_test.order_with('{participants,notifications,on}', '["StockReserved", "StockReserved"]'));
SELECT saga_test.bad(saga_test.order_with('{participants,notifications,emits}', '"CustomerNotified"'));
SELECT saga_test.bad(saga_test.order_with('{participants,inventory,compensation}', '{"on": ["OrderTimedOut"]}'));
SELECT saga_test.bad(saga_test.order_with('{participants,inventory,compensation}', '{"emits": "StockReleased"}'));
SELECT saga_test.bad(saga_test.order_with('{participants,inventory,compensation,emits}', '["StockReleased"]'));
SELECT saga_test.bad(saga_test.order_without('{completed}'));
SELECT saga_test.bad(saga_test.order_with('{completed}', '[]'));
SELECT saga_test.bad(saga_test.order_with('{deadline}', '"10 minutes"'));
SELECT saga_test.bad(saga_test.order_with('{deadline}', '{"publish": "OrderTimedOut"}'));
SELECT saga_test.bad(saga_test.order_with('{deadline,after}', '"soon"'));
SELECT saga_test.bad(saga_test.order_with('{deadline,after}', '"100 years"'));
SELECT saga_test.bad(saga_test.order_with('{deadline,after}', '"-5 minutes"'));
SELECT saga_test.bad(saga_test.order_with('{deadline,when}', '"now"'));
SELECT saga_test.bad(saga_test.order_with('{max_hops}', '0'));
SELECT saga_test.bad(saga_test.order_with('{max_hops}', '2.5'));
SELECT saga_test.bad(saga_test.order_with('{max_hops}', '"20"'));

-- a cycle: 42P17, the cycle itself in DETAIL
SELECT saga_test.bad('{"start": "A",
  "participants": {"p": {"on": ["A", "C"], "emits": ["B"]}, "q": {"on": ["B"], "emits": ["C", "Done"]}},
  "completed": ["Done"]}');
SELECT saga_test.bad(saga_test.order_with('{participants,notifications,emits}', '["CustomerNotified", "OrderPlaced"]'));

-- the other graph rules: 22023, the rule, the events or participants, the path
-- the start event is consumed
SELECT saga_test.bad('{"start": "Begin", "participants": {"p": {"on": ["X"], "emits": ["Done"]}},
  "completed": ["Done"]}');
-- every consumed event is the start, the deadline event, or published by someone
SELECT saga_test.bad(saga_test.order_with('{participants,notifications,on}', '["StockReserved", "Ghost"]'));
-- every emitted event is consumed or completed
SELECT saga_test.bad(saga_test.order_with('{participants,notifications,emits}', '["CustomerNotified", "Unheard"]'));
-- every participant can act (given the rules above and no cycle, that
-- always holds), and a completed event is reachable
SELECT saga_test.bad('{"start": "A", "participants": {"p": {"on": ["A"], "emits": ["B"]},
  "q": {"on": ["B"], "emits": ["Done"]}, "r": {"on": ["Never"], "emits": ["Done"]}}, "completed": ["Done"]}');
SELECT saga_test.bad('{"start": "A", "participants": {"p": {"on": ["A"], "emits": ["B"]}, "q": {"on": ["B"], "fails": ["F"]}},
  "completed": ["Nope"]}');
-- who acted before a failing participant compensates on its failure
SELECT saga_test.bad(saga_test.order_with('{participants,payments,compensation,on}', '["OrderTimedOut"]'));
-- the deadline event is in every compensation.on
SELECT saga_test.bad(saga_test.order_with('{participants,inventory,compensation,on}', '["StockUnavailable"]'));
SELECT count(*) AS stored FROM saga.choreographies WHERE name = 'bad';
SELECT count(*) AS subscriptions FROM saga.subscriptions WHERE choreography = 'bad';

-- the order example is valid: version 1, with one subscription per consumed event
SELECT saga.define_choreography('order_flow', doc) AS version FROM saga_test.order_doc;
SELECT event_type, topic, options FROM saga.subscriptions WHERE choreography = 'order_flow'
 ORDER BY topic, event_type;
-- the same document again: the same version, nothing stored
SELECT saga.define_choreography('order_flow', doc) AS version FROM saga_test.order_doc;
SELECT count(*) AS versions FROM saga.choreographies WHERE name = 'order_flow';
-- a different one: the next version
SELECT saga.define_choreography('order_flow', saga_test.order_with('{max_hops}', '10')) AS version;
SELECT saga.define_choreography('order_flow', doc) AS version FROM saga_test.order_doc;
-- one namespace with saga definitions, both ways
SELECT saga.define('ch_saga', '{"steps": [{"name": "a", "topic": "ch_a"}]}') AS saga_version;
SELECT saga_test.err(format('SELECT saga.define_choreography(%L, %L)', 'ch_saga', doc)) FROM saga_test.order_doc;
SELECT saga_test.err('SELECT saga.define(''order_flow'', ''{"steps": [{"name": "a", "topic": "ch_a"}]}'')');
SELECT saga_test.err('SELECT saga.start(''order_flow'')');
-- a version is immutable; one that flows use cannot be deleted
SELECT saga_test.err('UPDATE saga.choreographies SET definition = ''{}'' WHERE name = ''order_flow''');

--
-- Flows
--
-- a service's reaction, as a participant does it: complete the delivery and
-- publish the answer, in one transaction
CREATE FUNCTION saga_test.react(topic text, corr text, answer text, payload jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    d record;
    e bigint;
BEGIN
    SELECT * INTO d FROM saga.outbox o WHERE o.topic = react.topic AND visible_at <= now()
       AND o.headers ->> 'correlation_id' = corr
     ORDER BY visible_at, id LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'nothing for % to handle', topic;
    END IF;
    PERFORM saga.complete(d.id);
    SELECT saga.publish(answer, payload, causation_id => (d.headers ->> 'event_id')::bigint) INTO e;
    RETURN e;
END
$$;
CREATE VIEW saga_test.flow AS
SELECT correlation_id, version, status, waiting_on, finished_at IS NOT NULL AS finished
  FROM saga.flows;

-- success: running, waiting on each participant in turn, completed
SELECT saga.publish('OrderPlaced', '{"order_id": 1}', correlation_id => 'order-1') AS o1 \gset
SELECT * FROM saga_test.flow WHERE correlation_id = 'order-1';
-- a new subscriber, added mid-run: the producer changes nothing, it gets every later event
SELECT saga.subscribe('StockReserved', 'analytics') IS NOT NULL AS subscribed;
SELECT saga_test.react('payments', 'order-1', 'PaymentCharged') IS NOT NULL AS charged;
SELECT * FROM saga_test.flow WHERE correlation_id = 'order-1';
SELECT saga_test.react('inventory', 'order-1', 'StockReserved') IS NOT NULL AS reserved;
SELECT topic FROM saga.outbox WHERE headers ->> 'correlation_id' = 'order-1' ORDER BY topic;
SELECT saga_test.react('notifications', 'order-1', 'CustomerNotified') IS NOT NULL AS notified;
SELECT * FROM saga_test.flow WHERE correlation_id = 'order-1';
SELECT type, hops, deliveries, late FROM saga.events WHERE correlation_id = 'order-1' ORDER BY id;
-- an event after the end is recorded as late and does not reopen it
SELECT saga.publish('StockReleased', '{}', correlation_id => 'order-1') IS NOT NULL AS published;
SELECT type, late FROM saga.events WHERE correlation_id = 'order-1' ORDER BY id DESC LIMIT 1;
SELECT status FROM saga.flows WHERE correlation_id = 'order-1';
-- a second start event of the same correlation id: still one flow
SELECT saga.publish('OrderPlaced', '{"again": true}', correlation_id => 'order-1') IS NOT NULL AS published;
SELECT count(*) AS flows FROM saga.flows WHERE correlation_id = 'order-1';

-- failure: StockUnavailable, payments compensates, the flow ends compensated
SELECT saga.publish('OrderPlaced', '{"order_id": 2}', correlation_id => 'order-2') AS o2 \gset
SELECT saga_test.react('payments', 'order-2', 'PaymentCharged') IS NOT NULL AS charged;
SELECT saga_test.react('inventory', 'order-2', 'StockUnavailable') IS NOT NULL AS no_stock;
SELECT * FROM saga_test.flow WHERE correlation_id = 'order-2';
SELECT topic, headers ->> 'event_type' AS event FROM saga.outbox
 WHERE headers ->> 'correlation_id' = 'order-2' ORDER BY topic;
SELECT saga_test.react('payments', 'order-2', 'PaymentRefunded') IS NOT NULL AS refunded;
SELECT * FROM saga_test.flow WHERE correlation_id = 'order-2';
SELECT count(*) AS analytics_got FROM saga.outbox
 WHERE topic = 'analytics' AND headers ->> 'correlation_id' = 'order-2';

-- a failure before anyone acted compensates nothing: compensated at once
SELECT saga.publish('OrderPlaced', '{}', correlation_id => 'order-3') IS NOT NULL AS placed;
SELECT saga_test.react('payments', 'order-3', 'PaymentDeclined') IS NOT NULL AS declined;
SELECT * FROM saga_test.flow WHERE correlation_id = 'order-3';

-- the deadline: saga.tick() publishes the declared event once, with the flow's last event as cause
SELECT saga.publish('OrderPlaced', '{}', correlation_id => 'order-4') IS NOT NULL AS placed;
SELECT saga_test.react('payments', 'order-4', 'PaymentCharged') AS charged4 \gset
SELECT deadline_at - started_at AS deadline FROM saga.flows WHERE correlation_id = 'order-4';
UPDATE saga.flows SET deadline_at = now() - interval '1 second' WHERE correlation_id = 'order-4';
SELECT saga.tick() -> 'flow_deadlines' AS fired;
SELECT saga.tick() -> 'flow_deadlines' AS fired_again;
SELECT type, causation_id = :charged4 AS caused, payload, hops
  FROM saga.events WHERE correlation_id = 'order-4' AND type = 'OrderTimedOut';
SELECT * FROM saga_test.flow WHERE correlation_id = 'order-4';
SELECT topic FROM saga.outbox WHERE headers ->> 'event_type' = 'OrderTimedOut' ORDER BY topic;
-- the deadline fires only while running: a finished flow has none
SELECT count(*) AS deadlines_left FROM saga.flows
 WHERE correlation_id IN ('order-1', 'order-2', 'order-3', 'order-4') AND deadline_at IS NOT NULL;

-- a deadline with nothing to publish: the flow is stuck, an incident
SELECT saga.define_choreography('quiet_flow', '{"start": "QuietStart",
  "participants": {"worker": {"on": ["QuietStart"], "emits": ["QuietDone"]}},
  "completed": ["QuietDone"], "deadline": {"after": "1 hour"}}') AS version;
SELECT saga.publish('QuietStart', '{}', correlation_id => 'quiet-1') IS NOT NULL AS started;
UPDATE saga.flows SET deadline_at = now() - interval '1 second' WHERE correlation_id = 'quiet-1';
SELECT saga.tick() -> 'flow_deadlines' AS fired;
SELECT * FROM saga_test.flow WHERE correlation_id = 'quiet-1';
SELECT kind, saga_id, name, correlation_id, status, detail - 'since' AS detail, since IS NOT NULL AS since
  FROM saga.incidents WHERE flow_id IS NOT NULL ORDER BY flow_id;

-- the hop limit of the flow's choreography: recorded, not delivered, the flow loops
SELECT saga.define_choreography('ping_flow', '{"start": "Ping",
  "participants": {"ponger": {"on": ["Ping"], "emits": ["Pong"]}, "closer": {"on": ["Pong"], "emits": ["Closed"]}},
  "completed": ["Closed"], "max_hops": 2}') AS version;
SELECT saga.publish('Ping', '{}', correlation_id => 'ping-1') AS p0 \gset
SELECT saga.publish('Echo', '{}', causation_id => :p0) AS p1 \gset
SELECT saga.publish('Echo', '{}', causation_id => :p1) AS p2 \gset
SELECT saga.publish('Echo', '{}', causation_id => :p2) AS p3 \gset
SELECT type, hops, deliveries FROM saga.events WHERE correlation_id = 'ping-1' ORDER BY id;
SELECT * FROM saga_test.flow WHERE correlation_id = 'ping-1';
SELECT kind, correlation_id, detail ->> 'reason' AS reason, detail ->> 'hops' AS hops,
       detail ->> 'max_hops' AS max_hops
  FROM saga.incidents WHERE kind = 'looping_flow';

-- another choreography of the same correlation id cannot lower a flow's
-- limit for the flow's own events: the limit of the flows that know the
-- event's type applies (the largest of all flows' for an event none knows)
SELECT saga.define_choreography('ping_cap', '{"start": "Ping2",
  "participants": {"capper": {"on": ["Ping2"], "emits": ["Capped"]}}, "completed": ["Capped"], "max_hops": 1}') AS version;
SELECT saga.define_choreography('ping_long', '{"start": "Ping2",
  "participants": {"a": {"on": ["Ping2"], "emits": ["Hop1"]}, "b": {"on": ["Hop1"], "emits": ["Hop2"]},
                   "c": {"on": ["Hop2"], "emits": ["Hop3"]}}, "completed": ["Hop3"], "max_hops": 5}') AS version;
SELECT saga.publish('Ping2', '{}', correlation_id => 'ping-2') AS q0 \gset
SELECT saga.publish('Hop1', '{}', causation_id => :q0) AS q1 \gset
SELECT saga.publish('Hop2', '{}', causation_id => :q1) AS q2 \gset
SELECT saga.publish('Stray', '{}', causation_id => :q2) AS q3 \gset
SELECT type, hops, deliveries FROM saga.events WHERE correlation_id = 'ping-2' ORDER BY id;
SELECT choreography, status FROM saga.flows WHERE correlation_id = 'ping-2' ORDER BY choreography;

-- ... and a choreography whose own limit an event passes loops alone: a flow
-- of a larger limit sharing the correlation id is not marked looping
SELECT saga.define_choreography('hop_a', '{"start": "HaStart",
  "participants": {"ha": {"on": ["HaStart"], "emits": ["HaDone"]}}, "completed": ["HaDone"], "max_hops": 50}') AS version;
SELECT saga.define_choreography('hop_b', '{"start": "HbStart",
  "participants": {"hb": {"on": ["HbStart"], "emits": ["HbMid"]}, "hb2": {"on": ["HbMid"], "emits": ["HbDone"]}},
  "completed": ["HbDone"], "max_hops": 1}') AS version;
SELECT saga.publish('HaStart', '{}', correlation_id => 'k1') AS k0 \gset
SELECT saga.publish('HbStart', '{}', causation_id => :k0) AS k1 \gset
SELECT saga.publish('HbMid', '{}', causation_id => :k1) AS k2 \gset
SELECT choreography, status FROM saga.flows WHERE correlation_id = 'k1' ORDER BY choreography;

-- a choreography version that flows use cannot be deleted; one that none uses can
SELECT saga_test.err('DELETE FROM saga.choreographies WHERE name = ''ping_flow''');
SELECT saga.define_choreography('unused_flow', '{"start": "U1",
  "participants": {"u": {"on": ["U1"], "emits": ["U2"]}}, "completed": ["U2"]}') AS version;
DELETE FROM saga.choreographies WHERE name = 'unused_flow';
