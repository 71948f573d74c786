-- docs/fixture.sql: orders driven to known ends for the generated diagrams in docs/*.md
-- (loaded by scripts/docs-diagrams.sh after demo/shop.sql, as a superuser, on a fresh cluster).
--
-- It plays the services by hand, one task at a time, with the saga API only (not the shop's
-- functions), so that the result depends on the definitions in demo/shop.sql and nothing else:
--   order-101  order_flow, completed
--   order-102  order_flow, out of stock: reserve_inventory failed, charge_payment compensated
--   order-201  order_events, completed
--   order-202  order_events, out of stock: StockUnavailable, the payment refunded
-- Times differ per run; nothing generated from this file may print one (saga.timeline does).
\set ON_ERROR_STOP on

-- each claim takes the one visible task of its topic into :t_id, :t_lease and :t_headers
-- order-101: every step succeeds
SELECT saga.start('order_flow', '{"order_id": 101, "customer": "customer-101", "sku": "widget", "qty": 1, "amount": 19.90}',
                  correlation_id => 'order-101', idempotency_key => 'order-101');
SELECT id, lease, headers FROM saga.claim('payments', 'payments-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, '{"ok": true, "payment_id": "p_101"}', lease => :t_lease);
SELECT id, lease, headers FROM saga.claim('inventory', 'inventory-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, '{"ok": true, "reservation": 101}', lease => :t_lease);
SELECT id, lease, headers FROM saga.claim('notifications', 'notifications-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, '{"ok": true}', lease => :t_lease);

-- order-102: no stock; the payment is refunded
SELECT saga.start('order_flow', '{"order_id": 102, "customer": "customer-102", "sku": "gadget", "qty": 1, "amount": 99.00}',
                  correlation_id => 'order-102', idempotency_key => 'order-102');
SELECT id, lease, headers FROM saga.claim('payments', 'payments-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, '{"ok": true, "payment_id": "p_102"}', lease => :t_lease);
SELECT id, lease, headers FROM saga.claim('inventory', 'inventory-1', 1, '30 seconds') \gset t_
SELECT saga.fail(:t_id, '{"ok": false, "reason": "out of stock"}', retryable => false, lease => :t_lease);
SELECT id, lease, headers FROM saga.claim('payments', 'payments-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, '{"ok": true, "refunded": "p_102"}', lease => :t_lease);

-- order-201: choreographed, every participant acts
SELECT saga.publish('OrderPlaced', '{"order_id": 201, "customer": "customer-201", "sku": "widget", "qty": 1, "amount": 19.90}',
                    correlation_id => 'order-201', idempotency_key => 'order-201');
SELECT id, lease, headers FROM saga.claim('payments', 'payments-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, lease => :t_lease);
SELECT saga.publish('PaymentCharged', '{"order_id": 201, "payment_id": "p_201"}',
                    causation_id => (:'t_headers'::jsonb ->> 'event_id')::bigint);
SELECT id, lease, headers FROM saga.claim('inventory', 'inventory-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, lease => :t_lease);
SELECT saga.publish('StockReserved', '{"order_id": 201, "reservation": 201}',
                    causation_id => (:'t_headers'::jsonb ->> 'event_id')::bigint);
SELECT id, lease, headers FROM saga.claim('notifications', 'notifications-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, lease => :t_lease);
SELECT saga.publish('CustomerNotified', '{"order_id": 201}',
                    causation_id => (:'t_headers'::jsonb ->> 'event_id')::bigint);

-- order-202: choreographed, no stock; payments hears StockUnavailable and refunds
SELECT saga.publish('OrderPlaced', '{"order_id": 202, "customer": "customer-202", "sku": "gadget", "qty": 1, "amount": 99.00}',
                    correlation_id => 'order-202', idempotency_key => 'order-202');
SELECT id, lease, headers FROM saga.claim('payments', 'payments-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, lease => :t_lease);
SELECT saga.publish('PaymentCharged', '{"order_id": 202, "payment_id": "p_202"}',
                    causation_id => (:'t_headers'::jsonb ->> 'event_id')::bigint);
SELECT id, lease, headers FROM saga.claim('inventory', 'inventory-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, lease => :t_lease);
SELECT saga.publish('StockUnavailable', '{"order_id": 202, "reason": "out of stock"}',
                    causation_id => (:'t_headers'::jsonb ->> 'event_id')::bigint);
SELECT id, lease, headers FROM saga.claim('payments', 'payments-1', 1, '30 seconds') \gset t_
SELECT saga.complete(:t_id, lease => :t_lease);
SELECT saga.publish('PaymentRefunded', '{"order_id": 202, "refunded": "p_202"}',
                    causation_id => (:'t_headers'::jsonb ->> 'event_id')::bigint);

-- every order ended as described above
DO $$
BEGIN
    IF (SELECT string_agg(correlation_id || '=' || status, ' ' ORDER BY correlation_id)
          FROM saga.instances) IS DISTINCT FROM 'order-101=completed order-102=compensated' THEN
        RAISE EXCEPTION 'docs/fixture.sql: the sagas did not end as expected';
    END IF;
    IF (SELECT string_agg(correlation_id || '=' || status, ' ' ORDER BY correlation_id)
          FROM saga.flows) IS DISTINCT FROM 'order-201=completed order-202=compensated' THEN
        RAISE EXCEPTION 'docs/fixture.sql: the flows did not end as expected';
    END IF;
END
$$;
