-- test/diagrams/corpus.sql: what test/scripts/diagrams.sh draws.  Definitions,
-- choreographies, sagas and flows, adversarial names included; it ends by
-- writing every diagram (both formats where there are two) to table
-- diagram_cases (name, kind, text, expect: strings the rendered SVG must show).
\set ON_ERROR_STOP 1
SET client_min_messages = error;
CREATE EXTENSION saga;
CREATE SCHEMA dg;
CREATE FUNCTION dg.charge(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"payment_id": 7}'::jsonb $$;
CREATE FUNCTION dg.refund(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
CREATE SCHEMA "dg ""q"" -->[x]{y}(z)%%;#`<b>&ü";
CREATE FUNCTION "dg ""q"" -->[x]{y}(z)%%;#`<b>&ü"."f--> ""end"" %%|a|" (p jsonb) RETURNS jsonb
    LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;

SELECT saga.define('linear', '{"steps": [
  {"name": "charge_payment", "topic": "payments", "compensate": {"topic": "payments"},
   "timeout": "30 seconds", "retry": {"max_attempts": 5}},
  {"name": "reserve_inventory", "topic": "inventory", "compensate": {"sql": "dg.refund"}},
  {"name": "ship", "topic": "shipping", "pivot": true},
  {"name": "notify_customer", "topic": "notifications"}], "deadline": "1 hour"}');
SELECT saga.define('fan', '{"steps": [
  {"name": "a", "sql": "dg.charge", "compensate": {"sql": "dg.refund"}},
  {"name": "b", "topic": "tb", "after": ["a"], "compensate": {"topic": "tb"}},
  {"name": "c", "topic": "tc", "after": ["a"]},
  {"name": "d", "topic": "td", "after": ["b", "c"], "pivot": true},
  {"name": "e", "topic": "te", "after": []}]}');
SELECT saga.define('evil', $${"steps": [
  {"name": "end", "sql": "\"dg \"\"q\"\" -->[x]{y}(z)%%;#`<b>&ü\".\"f--> \"\"end\"\" %%|a|\"",
   "compensate": {"sql": "\"dg \"\"q\"\" -->[x]{y}(z)%%;#`<b>&ü\".\"f--> \"\"end\"\" %%|a|\""}},
  {"name": "subgraph", "topic": "graph", "after": ["end"]},
  {"name": "class", "topic": "style", "after": ["end"]},
  {"name": "click", "topic": "linkstyle", "after": ["subgraph", "class"]}]}$$);
SELECT saga.define_choreography('orders', '{
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
  "max_hops": 3
}');
SELECT saga.define_choreography('quiet', '{"start": "QuietStart",
  "participants": {"quiet_a": {"on": ["QuietStart"], "emits": ["QuietDone"]}},
  "completed": ["QuietDone"], "deadline": {"after": "1 minute"}}');

-- sagas: mid-run, compensated (an adversarial error), compensating
SELECT saga.start('linear', '{}', correlation_id => 'ord "1" --> %% #<b>; end') AS s1 \gset
SELECT saga.complete((:s1::bigint << 10), '{}');
SELECT saga.start('linear', '{}') AS s2 \gset
SELECT saga.complete((:s2::bigint << 10), '{}');
SELECT saga.fail((:s2::bigint << 10) | 2, '{"reason": "out of \"stock\" --> <none> %% #1;\n[x] ü"}', retryable => false);
SELECT saga.complete((:s2::bigint << 10) | 1, '{}');
SELECT saga.start('fan', '{}') AS s3 \gset
SELECT count(*) FROM saga.claim('tb', 'w1');
SELECT saga.fail((:s3::bigint << 10) | 4, '{}', retryable => false);
SELECT saga.start('evil', '{}', correlation_id => E'évil "x"\n--> %%{init}%% `y`') AS s4 \gset

-- flows: done, dead letter, pending, undelivered, late; past the hop limit; a weird role
SELECT saga.publish('OrderPlaced', '{}', correlation_id => 'flow "1" --> %% #;') AS f1 \gset
SELECT saga.complete(id) FROM saga.outbox WHERE event_id = :f1;
SELECT saga.publish('PaymentCharged', '{}', causation_id => :f1) AS f2 \gset
SELECT saga.fail(id, '{}', retryable => false) FROM saga.outbox WHERE event_id = :f2;
SELECT saga.publish('StockReserved', '{}', causation_id => :f2) AS f3 \gset
SELECT saga.publish('CustomerNotified', '{}', causation_id => :f3) AS f4 \gset
SELECT saga.publish('StockReserved', '{}', causation_id => :f2) AS f5 \gset
SELECT saga.publish('OrderTimedOut', '{}', causation_id => :f5) AS f6 \gset
CREATE ROLE "rôle ""r"" -->%% end;" IN ROLE saga_worker;
SET ROLE "rôle ""r"" -->%% end;";
SELECT saga.publish('Audit.Note', '{}', causation_id => :f6);
RESET ROLE;
SELECT saga.publish('QuietStart', '{}', correlation_id => 'quiet-1');
UPDATE saga.flows SET deadline_at = now() - interval '1 second' WHERE correlation_id = 'quiet-1';
SELECT saga.tick();

CREATE TABLE diagram_cases (n serial, name text, kind text, text text, expect text[]);
INSERT INTO diagram_cases (name, kind, text, expect)
SELECT d || '.' || f, CASE f WHEN 'dot' THEN 'dot' ELSE 'mermaid' END, saga.diagram(d, f),
       CASE d WHEN 'evil' THEN ARRAY['"dg ""q"" -->[x]{y}(z)%%;#`<b>&ü"."f--> ""end"" %%|a|"', 'subgraph', 'end']
              WHEN 'orders' THEN ARRAY['PaymentDeclined', 'deadline after 10 minutes', 'then publish OrderTimedOut']
              ELSE ARRAY['charge_payment', 'a'] END
  FROM unnest(ARRAY['linear', 'fan', 'evil', 'orders', 'quiet']) WITH ORDINALITY AS x(d, o),
       unnest(ARRAY['mermaid', 'dot']) WITH ORDINALITY AS y(f, p)
 ORDER BY x.o, y.p;
UPDATE diagram_cases SET expect = ARRAY['c', 'd'] WHERE name LIKE 'fan.%';
UPDATE diagram_cases SET expect = ARRAY['QuietDone', 'then stuck'] WHERE name LIKE 'quiet.%';
INSERT INTO diagram_cases (name, kind, text, expect)
SELECT 'saga ' || s || '.' || f, CASE f WHEN 'dot' THEN 'dot' ELSE 'mermaid' END, saga.diagram(s, f),
       CASE s WHEN :s1 THEN ARRAY['correlation ord "1" --> %% #<b>; end']
              -- Mermaid shows the backslash-n of the JSON text as a line break
              WHEN :s2 THEN ARRAY['out of \"stock\" --> <none> %% #1;', '[x] ü']
              WHEN :s4 THEN ARRAY['correlation évil "x" --> %%{init}%% `y`']
              ELSE ARRAY['compensating'] END
  FROM unnest(ARRAY[:s1, :s2, :s3, :s4]::bigint[]) AS s, unnest(ARRAY['mermaid', 'dot']) WITH ORDINALITY AS y(f, p)
 ORDER BY s, p;
INSERT INTO diagram_cases (name, kind, text, expect)
SELECT 'timeline ' || s, 'mermaid', saga.timeline(s), ARRAY['charge_payment']
  FROM unnest(ARRAY[:s1, :s2]::bigint[]) AS s ORDER BY s;
INSERT INTO diagram_cases (name, kind, text, expect)
SELECT 'timeline ' || :s3, 'mermaid', saga.timeline(:s3), ARRAY['c failed'];
INSERT INTO diagram_cases (name, kind, text, expect)
VALUES ('flow 1', 'mermaid', saga.flow_diagram('flow "1" --> %% #;'),
        ARRAY['flow flow "1" --> %% #;', 'rôle "r" -->%% end;', '5. StockReserved (late, pending)',
              'CustomerNotified: not delivered']),
       ('flow quiet-1', 'mermaid', saga.flow_diagram('quiet-1'), ARRAY['flow quiet v1: stuck']);
-- the 0.4 keys (publish, await) from a stored definition, and one saga of it waiting
SELECT saga.define('await_def', '{"steps": [
  {"name": "charge", "topic": "payments", "publish": "PaymentCaptured", "compensate": {"topic": "payments"}},
  {"name": "wait_payment", "await": "PaymentConfirmed", "timeout": "1 hour"},
  {"name": "ship", "topic": "shipping", "pivot": true, "publish": "OrderShipped"}],
  "publish": {"completed": "OrderConfirmed", "compensated": "OrderCancelled", "cancelled": "OrderCancelled"},
  "deadline": "2 hours"}');
SELECT saga.start('await_def', '{}', correlation_id => 'await-1') AS s5 \gset
SELECT saga.complete((:s5::bigint << 10), '{}');
INSERT INTO diagram_cases (name, kind, text, expect)
SELECT 'await+publish.' || f, CASE f WHEN 'dot' THEN 'dot' ELSE 'mermaid' END,
       saga.diagram('await_def', f), ARRAY['PaymentConfirmed', 'OrderCancelled', 'on failure', 'on cancel']
  FROM unnest(ARRAY['mermaid', 'dot']) WITH ORDINALITY AS y(f, p) ORDER BY p;
INSERT INTO diagram_cases (name, kind, text, expect)
VALUES ('await saga', 'mermaid', saga.diagram(:s5), ARRAY['PaymentConfirmed', 'ready, attempt 1']);
-- a flow through a saga: an event starts it (a start_saga subscription), another ends its
-- await step, one nothing receives
SELECT saga.subscribe('OrderSubmitted', 'await_starter', '{"start_saga": "await_def"}');
SELECT saga.publish('OrderSubmitted', '{}', correlation_id => 'bridge "1" --> %%') AS b1 \gset
SELECT id AS s6 FROM saga.instances WHERE event_id = :b1 \gset
SELECT saga.complete((:s6::bigint << 10), '{}');
SELECT saga.publish('PaymentConfirmed', '{}', correlation_id => 'bridge "1" --> %%');
SELECT saga.publish('Unheard', '{}', correlation_id => 'bridge "1" --> %%');
INSERT INTO diagram_cases (name, kind, text, expect)
VALUES ('flow bridge', 'mermaid', saga.flow_diagram('bridge "1" --> %%'),
        ARRAY['saga await_def', 'OrderSubmitted (starts saga ' || :s6 || ')',
              'PaymentConfirmed (ends wait_payment of saga ' || :s6 || ')', 'Unheard: not delivered']);
