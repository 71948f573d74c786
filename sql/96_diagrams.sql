--
-- 96_diagrams: saga.diagram (a definition or a choreography by name; one
-- saga by id), saga.flow_diagram and saga.timeline.  The expected output is
-- the diagrams themselves: read them.  test/scripts/diagrams.sh renders the
-- same kinds of text with the real Mermaid and Graphviz.
--
\pset format unaligned
\pset tuples_only on

CREATE SCHEMA dg;
CREATE FUNCTION dg.charge(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"payment_id": 7}'::jsonb $$;
CREATE FUNCTION dg.refund(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
-- a schema and a function whose names try every trick on a diagram
CREATE SCHEMA "dg ""q"" -->[x]{y}(z)%%;#`<b>&ü";
CREATE FUNCTION "dg ""q"" -->[x]{y}(z)%%;#`<b>&ü"."f--> ""end"" %%|a|" (p jsonb) RETURNS jsonb
    LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;

-- a linear saga: topic steps, an SQL compensation, a pivot, retry, timeout, deadline
SELECT saga.define('dg_linear', '{"steps": [
  {"name": "charge_payment", "topic": "dg_payments", "compensate": {"topic": "dg_payments"},
   "timeout": "30 seconds", "retry": {"max_attempts": 5}},
  {"name": "reserve_inventory", "topic": "dg_inventory", "compensate": {"sql": "dg.refund"}},
  {"name": "ship", "topic": "dg_shipping", "pivot": true},
  {"name": "notify_customer", "topic": "dg_notifications"}], "deadline": "1 hour"}') IS NOT NULL AS defined;
SELECT saga.diagram('dg_linear');
SELECT saga.diagram('dg_linear', 'dot');

-- fan-out and join, an SQL step (and an async one), a step that starts at once
SELECT saga.define('dg_fan', '{"steps": [
  {"name": "a", "sql": "dg.charge", "compensate": {"sql": "dg.refund"}},
  {"name": "b", "topic": "dg_b", "after": ["a"], "compensate": {"topic": "dg_b"}},
  {"name": "c", "topic": "dg_c", "after": ["a"]},
  {"name": "d", "topic": "dg_d", "after": ["b", "c"], "pivot": true},
  {"name": "e", "topic": "dg_e", "after": []}]}') IS NOT NULL AS defined;
SELECT saga.diagram('dg_fan', format => 'mermaid');
SELECT saga.diagram('dg_fan', 'dot');

-- adversarial: the SQL function's quoted name is drawn as written, escaped
SELECT saga.define('dg_evil', $${"steps": [
  {"name": "end", "sql": "\"dg \"\"q\"\" -->[x]{y}(z)%%;#`<b>&ü\".\"f--> \"\"end\"\" %%|a|\"",
   "compensate": {"sql": "\"dg \"\"q\"\" -->[x]{y}(z)%%;#`<b>&ü\".\"f--> \"\"end\"\" %%|a|\""}},
  {"name": "subgraph", "topic": "dg_graph"}]}$$) IS NOT NULL AS defined;
SELECT saga.diagram('dg_evil');
SELECT saga.diagram('dg_evil', 'dot');
-- the escaping on its own, and for the gantt
SELECT saga.diagram_escape(E'a"b#c;d%%e`f<g>&h[i]{j}(k)|l\'m=n-->o--p x\ny\u2028zü', 'mermaid');
SELECT saga.diagram_escape(E'a"b\\c\nd\\N', 'dot');
SELECT saga.diagram_escape('a: b, c', 'gantt');

-- 0.4 documents (top-level and step "publish", await steps): saga.define
-- takes them once the engine does; until then the graph is drawn from the
-- document directly
SELECT saga.diagram_render(saga.diagram_saga_graph('{"steps": [
  {"name": "charge", "topic": "dg_payments", "publish": "PaymentCaptured", "compensate": {"topic": "dg_payments"}},
  {"name": "wait_payment", "await": "PaymentConfirmed", "timeout": "1 hour"},
  {"name": "ship", "topic": "dg_shipping", "pivot": true, "publish": "OrderShipped"}],
  "publish": {"completed": "OrderConfirmed", "compensated": "OrderCancelled", "cancelled": "OrderCancelled"},
  "deadline": "2 hours"}', ARRAY['dg_await v1']), 'mermaid');

-- a choreography: participants, events, fails, compensations, the deadline
SELECT saga.define_choreography('dg_orders', '{
  "start": "DgOrderPlaced",
  "participants": {
    "dg_pay":    {"on": ["DgOrderPlaced"], "emits": ["DgPaymentCharged"], "fails": ["DgPaymentDeclined"],
                  "compensation": {"on": ["DgStockUnavailable", "DgOrderTimedOut"], "emits": "DgPaymentRefunded"}},
    "dg_stock":  {"on": ["DgPaymentCharged"], "emits": ["DgStockReserved"], "fails": ["DgStockUnavailable"],
                  "compensation": {"on": ["DgOrderTimedOut"], "emits": "DgStockReleased"}},
    "dg_notify": {"on": ["DgStockReserved"], "emits": ["DgCustomerNotified"]}
  },
  "completed": ["DgCustomerNotified"],
  "deadline": {"after": "10 minutes", "publish": "DgOrderTimedOut"},
  "max_hops": 3
}') AS version;
SELECT saga.diagram('dg_orders');
SELECT saga.diagram('dg_orders', 'dot');
-- a deadline with nothing to publish: stuck
SELECT saga.define_choreography('dg_quiet', '{"start": "DgQuietStart",
  "participants": {"dg_quiet_a": {"on": ["DgQuietStart"], "emits": ["DgQuietDone"]}},
  "completed": ["DgQuietDone"], "deadline": {"after": "1 minute"}}') AS version;
SELECT saga.diagram('dg_quiet');

-- one saga mid-run: succeeded, ready, pending; its correlation id escaped
SELECT saga.start('dg_linear', '{}', correlation_id => 'ord "1" --> %% #<b>;') AS s1 \gset
SELECT saga.complete(saga_test.task(:s1, 'charge_payment'), '{"payment_id": "p1"}');
SELECT saga.diagram(:s1);
-- the same, compensated: a failure with an error that tries every trick
SELECT saga.start('dg_linear', '{}') AS s2 \gset
SELECT saga.complete(saga_test.task(:s2, 'charge_payment'), '{}');
SELECT saga.fail(saga_test.task(:s2, 'reserve_inventory'),
                 '{"reason": "out of \"stock\" --> <none> %% #1;\n[x]"}', retryable => false);
SELECT saga.complete(saga_test.task(:s2, 'charge_payment', true), '{}');
SELECT status FROM saga.instances WHERE id = :s2;
SELECT saga.diagram(:s2);
SELECT saga.diagram(:s2, 'dot');
-- compensating, with a step running under a lease
SELECT saga.start('dg_fan', '{}') AS s3 \gset
SELECT count(*) AS claimed FROM saga.claim('dg_b', 'w1');
SELECT saga.fail(saga_test.task(:s3, 'c'), '{}', retryable => false);
SELECT saga.diagram(:s3);

-- timelines: times are data (Unix ms), masked here; each span ends after it starts
SELECT regexp_replace(saga.timeline(:s2), '[0-9]{13}', 'T', 'g');
SELECT regexp_replace(saga.timeline(:s3), '[0-9]{13}', 'T', 'g');
SELECT bool_and(m[1]::bigint <= m[2]::bigint) AS ordered, count(*) AS spans
  FROM regexp_matches(saga.timeline(:s2) || saga.timeline(:s3), '([0-9]{13}), ([0-9]{13})', 'g') AS m;

-- versions: the latest by default, or the one asked for
SELECT saga.define('dg_linear', '{"steps": [{"name": "only", "topic": "dg_payments"}]}') AS version;
SELECT saga.diagram('dg_linear') ~ 'only' AS latest, saga.diagram('dg_linear', version => 1) ~ 'ship' AS first;
-- a saga is drawn with its own version
SELECT saga.diagram(:s1) ~ 'ship' AS own_version;

-- a flow: done deliveries, a dead letter, a pending one, an event nobody
-- consumes, a late event after the flow completed
SELECT saga.publish('DgOrderPlaced', '{}', correlation_id => 'flow "1" --> %%') AS f1 \gset
SELECT saga.complete(id) FROM saga.outbox WHERE event_id = :f1;
SELECT saga.publish('DgPaymentCharged', '{}', causation_id => :f1) AS f2 \gset
SELECT saga.fail(id, '{}', retryable => false) FROM saga.outbox WHERE event_id = :f2;
SELECT saga.publish('DgStockReserved', '{}', causation_id => :f2) AS f3 \gset
SELECT saga.publish('DgCustomerNotified', '{}', causation_id => :f3) AS f4 \gset
SELECT saga.publish('DgStockReserved', '{}', causation_id => :f2) AS f5 \gset
SELECT type, deliveries, late FROM saga.events WHERE correlation_id = 'flow "1" --> %%' ORDER BY id;
SELECT saga.flow_diagram('flow "1" --> %%');

-- past the hop limit (max_hops 1): recorded with 0 deliveries, the flow
-- looping; an event of a type no participant emits comes from its role
SELECT saga.define_choreography('dg_loop', '{"start": "DgLoopA",
  "participants": {"dg_loop_b": {"on": ["DgLoopA"], "emits": ["DgLoopB"]},
                   "dg_loop_c": {"on": ["DgLoopB"], "emits": ["DgLoopC"]}},
  "completed": ["DgLoopC"], "max_hops": 1}') AS version;
CREATE ROLE "regress_dg ""r"" -->%%" IN ROLE saga_worker;
SELECT saga.publish('DgLoopA', '{}', correlation_id => 'dg-loop-1') AS l1 \gset
SELECT saga.publish('DgLoopB', '{}', causation_id => :l1) AS l2 \gset
SELECT saga.publish('DgLoopC', '{}', causation_id => :l2) AS l3 \gset
SET ROLE "regress_dg ""r"" -->%%";
SELECT saga.publish('DgAudit', '{}', causation_id => :l3) AS l4 \gset
RESET ROLE;
SELECT type, hops, deliveries FROM saga.events WHERE correlation_id = 'dg-loop-1' ORDER BY id;
SELECT status FROM saga.flows WHERE correlation_id = 'dg-loop-1';
SELECT saga.flow_diagram('dg-loop-1');
DROP ROLE "regress_dg ""r"" -->%%";
-- a stuck flow
SELECT saga.publish('DgQuietStart', '{}', correlation_id => 'dg-quiet-1') AS q1 \gset
UPDATE saga.flows SET deadline_at = now() - interval '1 second' WHERE correlation_id = 'dg-quiet-1';
SELECT saga.tick() -> 'flow_deadlines' AS fired;
SELECT saga.flow_diagram('dg-quiet-1');

-- the reader role draws everything; others than the saga roles nothing
CREATE ROLE regress_dg_reader IN ROLE saga_reader;
CREATE ROLE regress_dg_nobody;
GRANT USAGE ON SCHEMA saga TO regress_dg_nobody;
SET ROLE regress_dg_reader;
SELECT length(saga.diagram('dg_orders')) > 0 AS choreography, length(saga.diagram(:s2, 'dot')) > 0 AS saga,
       length(saga.flow_diagram('dg-loop-1')) > 0 AS flow, length(saga.timeline(:s2)) > 0 AS timeline;
SET ROLE regress_dg_nobody;
SELECT saga_test.err('SELECT saga.diagram(''dg_orders'')');
SELECT saga_test.err('SELECT saga.timeline(1)');
RESET ROLE;
REVOKE USAGE ON SCHEMA saga FROM regress_dg_nobody;

-- every error
SELECT saga_test.err('SELECT saga.diagram(NULL)');
SELECT saga_test.err('SELECT saga.diagram(''dg_linear'', NULL)');
SELECT saga_test.err('SELECT saga.diagram(''dg_linear'', ''svg'')');
SELECT saga_test.err('SELECT saga.diagram(''dg_nope'')');
SELECT saga_test.err('SELECT saga.diagram(''dg_linear'', version => 9)');
SELECT saga_test.err('SELECT saga.diagram(''dg_orders'', version => 0)');
SELECT saga_test.err('SELECT saga.diagram(NULL::bigint)');
SELECT saga_test.err('SELECT saga.diagram(' || :s2 || ', NULL)');
SELECT saga_test.err('SELECT saga.diagram(' || :s2 || ', ''Mermaid'')');
SELECT saga_test.err('SELECT saga.diagram(-1::bigint)');
SELECT saga_test.err('SELECT saga.flow_diagram(NULL)');
SELECT saga_test.err('SELECT saga.flow_diagram(''no such flow'')');
SELECT saga_test.err('SELECT saga.timeline(NULL)');
SELECT saga_test.err('SELECT saga.timeline(-1)');

DROP ROLE regress_dg_reader, regress_dg_nobody;

-- the bridges drawn from a stored definition: an await step, a step's
-- "publish" and the outcome events
SELECT saga.define('dg_bridge', '{"publish": {"completed": "DgConfirmed", "compensated": "DgCancelled"},
  "steps": [{"name": "charge", "topic": "dg_pay", "publish": "DgCaptured", "compensate": {"topic": "dg_pay"}},
            {"name": "wait_ship", "await": "DgShipped", "timeout": "1 hour"},
            {"name": "notify", "topic": "dg_note"}]}') AS v;
SELECT saga.diagram('dg_bridge');
SELECT saga.diagram('dg_bridge', 'dot');
SELECT saga.start('dg_bridge', '{}', correlation_id => 'dg-br') AS dgb \gset
SELECT saga.complete((:dgb << 10), '{"payment": 1}');
SELECT saga.diagram(:dgb);

-- a flow through a saga: an event that starts one (start_saga subscription), the
-- event that ends its await step, the one its step publishes (from its role, as
-- any event nobody in a choreography emits) and one nothing receives; saga ids masked
SELECT saga.subscribe('DgOrderIn', 'dg_starter', '{"start_saga": "dg_bridge"}') IS NOT NULL AS subscribed;
SELECT saga.publish('DgOrderIn', '{}', correlation_id => 'dg-br-2') AS b1 \gset
SELECT id AS dgb2 FROM saga.instances WHERE event_id = :b1 \gset
SELECT saga.complete((:dgb2 << 10), '{"payment": 2}');
SELECT saga.publish('DgShipped', '{}', correlation_id => 'dg-br-2') IS NOT NULL AS shipped;
SELECT saga.publish('DgNobody', '{}', correlation_id => 'dg-br-2') IS NOT NULL AS unheard;
SELECT type, deliveries, hops FROM saga.events WHERE correlation_id = 'dg-br-2' ORDER BY id;
SELECT regexp_replace(saga.flow_diagram('dg-br-2'), 'saga [0-9]+', 'saga N', 'g');

-- the cap: the largest legal definition, 512 steps each after all the previous
-- ones, with a compensation (130,816 "after" edges and as many compensations),
-- is drawn with its first 500 edges and a last node counting the rest
SELECT saga.define('dg_all', jsonb_build_object('steps', (
  SELECT jsonb_agg(jsonb_build_object('name', 's' || i, 'topic', 'bt',
           'compensate', jsonb_build_object('topic', 'bt'),
           'after', (SELECT COALESCE(jsonb_agg('s' || j ORDER BY j), '[]')
                       FROM generate_series(0, i - 1) j)) ORDER BY i)
    FROM generate_series(0, 511) i))) AS v;
SELECT f, length(d) < 100000 AS bounded,
       (SELECT count(*) FROM regexp_matches(d, ' --?> ', 'g')) AS edges,
       (regexp_split_to_array(rtrim(d, E'\n'), E'\n'))[
           array_length(regexp_split_to_array(rtrim(d, E'\n'), E'\n'), 1) - CASE f WHEN 'dot' THEN 1 ELSE 0 END] AS note
  FROM (VALUES ('mermaid'), ('dot')) AS x(f), LATERAL (SELECT saga.diagram('dg_all', x.f) AS d) y;
