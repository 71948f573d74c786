-- docs/runbook-fixture.sql: the situations docs/runbook.md's SQL is run against (loaded by
-- scripts/docs-diagrams.sh --runbook after demo/shop.sql and docs/fixture.sql).  Each runbook
-- block then runs in a transaction that is rolled back, so every block sees this state:
--   order-301  order_flow failed: out of stock, and the refund failed for good (an incident)
--   order-302  order_flow running: charge_payment waits on topic payments (to cancel)
--   order-303  order_events: the payments delivery of OrderPlaced failed for good (a dead letter)
--   order-304  order_events: an event chain past the hop limit (a looping flow)
\set ON_ERROR_STOP on

SELECT saga.start('order_flow', '{"order_id": 301, "sku": "gadget", "qty": 1, "amount": 99.00}',
                  correlation_id => 'order-301');
SELECT id, lease FROM saga.claim('payments', 'payments-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, '{"ok": true, "payment_id": "p_301"}', lease => :t_lease);
SELECT id, lease FROM saga.claim('inventory', 'inventory-1', 1, '30 seconds') \gset t_
SELECT saga.fail(:t_id, '{"ok": false, "reason": "out of stock"}', retryable => false, lease => :t_lease);
SELECT id, lease FROM saga.claim('payments', 'payments-1', 1, '30 seconds') \gset t_
SELECT saga.fail(:t_id, '{"reason": "card processor refused the refund"}', retryable => false, lease => :t_lease);

SELECT saga.publish('OrderPlaced', '{"order_id": 303, "sku": "widget", "qty": 1, "amount": "nineteen"}',
                    correlation_id => 'order-303');
SELECT id, lease FROM saga.claim('payments', 'payments-1', 1, '30 seconds') \gset t_
SELECT saga.fail(:t_id, '{"reason": "amount is not a number"}', retryable => false, lease => :t_lease);

SELECT saga.start('order_flow', '{"order_id": 302, "sku": "widget", "qty": 1, "amount": 19.90}',
                  correlation_id => 'order-302');

SELECT saga.publish('OrderPlaced', '{"order_id": 304, "sku": "widget", "qty": 1, "amount": 19.90}',
                    correlation_id => 'order-304') AS cause \gset
DO $$
DECLARE
    v_cause bigint := (SELECT max(id) FROM saga.events WHERE correlation_id = 'order-304');
BEGIN
    FOR i IN 1 .. 40 LOOP
        v_cause := saga.publish('OrderNoteAdded', jsonb_build_object('note', i), causation_id => v_cause);
    END LOOP;
END
$$;

DO $$
BEGIN
    IF (SELECT status FROM saga.instances WHERE correlation_id = 'order-301') <> 'failed'
       OR (SELECT status FROM saga.instances WHERE correlation_id = 'order-302') <> 'running'
       OR NOT EXISTS (SELECT FROM saga.dead_letters WHERE topic = 'payments')
       OR (SELECT status FROM saga.flows WHERE correlation_id = 'order-304') <> 'looping' THEN
        RAISE EXCEPTION 'docs/runbook-fixture.sql: the situations are not as described';
    END IF;
END
$$;
