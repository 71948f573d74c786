-- demo/audit.sql: does the shop's book balance after scripts/demo.sh, for both styles?
--
-- One line per check, "PASS: <check>" or "FAIL: <check> -- <what is wrong>".  The checks read
-- the shop's own tables (what the services did) against the engine's views (what the sagas and
-- flows say happened), and check that each injected fault really happened.
\set ON_ERROR_STOP on

WITH o AS (     -- every order, with where its saga or flow is and what the services did
    SELECT o.id, o.style, o.correlation_id, o.sku, o.status AS order_status,
           coalesce(i.status, f.status) AS status,
           p.status AS payment, p.attempt AS payment_attempt, r.status AS reservation,
           n.status AS notification,
           o.saga_id, f.id AS flow_id
      FROM shop.orders o
      LEFT JOIN saga.instances i ON i.id = o.saga_id
      LEFT JOIN saga.flows f ON f.correlation_id = o.correlation_id AND f.choreography = 'order_events'
      LEFT JOIN shop.payments p ON p.order_id = o.id
      LEFT JOIN shop.reservations r ON r.order_id = o.id
      LEFT JOIN shop.notifications n ON n.order_id = o.id
),
style(style, unit) AS (VALUES ('orchestrated', 'saga'), ('choreographed', 'flow')),
-- orders that ran out of stock: the saga's reserve_inventory step failed so, or the flow saw
-- StockUnavailable
out_of_stock AS (
    SELECT o.* FROM o
     WHERE EXISTS (SELECT FROM saga.step_runs r
                    WHERE r.saga_id = o.saga_id AND r.step = 'reserve_inventory'
                      AND r.error ->> 'reason' = 'out of stock')
        OR EXISTS (SELECT FROM saga.events e
                    WHERE e.correlation_id = o.correlation_id AND e.type = 'StockUnavailable')
),
-- orders whose payment lease lapsed, and which were then charged at their second delivery
lapsed AS (
    SELECT o.* FROM o
     WHERE o.payment_attempt = 2
       AND (o.style = 'choreographed'
            OR EXISTS (SELECT FROM saga.history h
                        WHERE h.saga_id = o.saga_id AND h.step = 'charge_payment'
                          AND h.event = 'lease_lapsed'))
),
-- orders that timed out: a step timeout, or the flow's deadline event
timed_out AS (
    SELECT o.* FROM o
     WHERE EXISTS (SELECT FROM saga.step_runs r
                    WHERE r.saga_id = o.saga_id AND r.error ->> 'reason' = 'timeout')
        OR EXISTS (SELECT FROM saga.events e
                    WHERE e.correlation_id = o.correlation_id AND e.type = 'OrderTimedOut')
),
checks(n, ok, check_name, problem) AS (
    SELECT 10, NOT EXISTS (SELECT FROM o WHERE o.style = s.style AND o.status IS NULL),
           format('%s: every order has its %s', s.style, s.unit),
           (SELECT string_agg(o.correlation_id, ' ') FROM o WHERE o.style = s.style AND o.status IS NULL)
      FROM style s
    UNION ALL
    SELECT 20, NOT EXISTS (SELECT FROM o WHERE o.style = s.style
                                           AND o.status NOT IN ('completed', 'compensated')),
           format('%s: every %s finished (completed or compensated)', s.style, s.unit),
           (SELECT string_agg(o.correlation_id || ' ' || o.status, ', ') FROM o
             WHERE o.style = s.style AND o.status NOT IN ('completed', 'compensated'))
      FROM style s
    UNION ALL
    SELECT 30, NOT EXISTS (SELECT FROM o WHERE o.style = s.style AND o.status = 'completed'
               AND (o.payment IS DISTINCT FROM 'charged' OR o.reservation IS DISTINCT FROM 'reserved'
                    OR o.notification IS DISTINCT FROM 'sent' OR o.order_status <> 'confirmed')),
           format('%s: every completed order is charged, reserved, notified and confirmed', s.style),
           (SELECT string_agg(format('%s (payment %s, stock %s, notification %s, order %s)',
                                     o.correlation_id, o.payment, o.reservation, o.notification,
                                     o.order_status), ', ')
              FROM o WHERE o.style = s.style AND o.status = 'completed'
               AND (o.payment IS DISTINCT FROM 'charged' OR o.reservation IS DISTINCT FROM 'reserved'
                    OR o.notification IS DISTINCT FROM 'sent' OR o.order_status <> 'confirmed'))
      FROM style s
    UNION ALL
    SELECT 40, NOT EXISTS (SELECT FROM o WHERE o.style = s.style AND o.status = 'compensated'
               AND (o.payment IS DISTINCT FROM 'refunded' OR o.reservation = 'reserved'
                    OR o.notification = 'sent' OR o.order_status <> 'cancelled')),
           format('%s: every compensated order is refunded, holds no stock, was not notified and is cancelled', s.style),
           (SELECT string_agg(format('%s (payment %s, stock %s, notification %s, order %s)',
                                     o.correlation_id, o.payment, o.reservation, o.notification,
                                     o.order_status), ', ')
              FROM o WHERE o.style = s.style AND o.status = 'compensated'
               AND (o.payment IS DISTINCT FROM 'refunded' OR o.reservation = 'reserved'
                    OR o.notification = 'sent' OR o.order_status <> 'cancelled'))
      FROM style s
    UNION ALL
    SELECT 50, count(*) FILTER (WHERE p.stocked <> p.stock + coalesce(r.reserved, 0)) = 0,
           'stock balances: stocked = in stock + reserved, for every product',
           string_agg(format('%s: %s stocked, %s in stock, %s reserved', p.sku, p.stocked, p.stock,
                             coalesce(r.reserved, 0)), ', ')
               FILTER (WHERE p.stocked <> p.stock + coalesce(r.reserved, 0))
      FROM shop.products p
      LEFT JOIN (SELECT sku, sum(qty) AS reserved FROM shop.reservations
                  WHERE status = 'reserved' GROUP BY sku) r ON r.sku = p.sku
    UNION ALL
    SELECT 60, count(*) = 0, 'nothing left in the outbox',
           string_agg(format('%s %s %s', topic, kind, headers ->> 'correlation_id'), ', ')
      FROM saga.outbox
    UNION ALL
    SELECT 61, count(*) = 0, 'no dead letters',
           string_agg(format('%s %s', topic, headers ->> 'correlation_id'), ', ')
      FROM saga.dead_letters
    UNION ALL
    SELECT 62, count(*) = 0, 'no incidents', string_agg(format('%s %s', kind, correlation_id), ', ')
      FROM saga.incidents
    UNION ALL
    SELECT 70, EXISTS (SELECT FROM out_of_stock x WHERE x.style = s.style AND x.status = 'compensated'),
           format('%s: fault 1, an order out of stock compensated', s.style),
           'none found'
      FROM style s
    UNION ALL
    SELECT 71, (SELECT count(*) FROM out_of_stock) = (SELECT count(*) - 2 FROM o WHERE sku = 'gadget'),
           'fault 1: every gadget order past the two in stock ran out of stock',
           format('%s out of stock, %s gadget orders', (SELECT count(*) FROM out_of_stock),
                  (SELECT count(*) FROM o WHERE sku = 'gadget'))
    UNION ALL
    SELECT 80, EXISTS (SELECT FROM lapsed x WHERE x.style = s.style AND x.status = 'completed'),
           format('%s: fault 2, a payment whose lease lapsed was charged at attempt 2 and the order completed', s.style),
           'none found'
      FROM style s
    UNION ALL
    SELECT 90, EXISTS (SELECT FROM timed_out x WHERE x.style = s.style AND x.status = 'compensated'),
           format('%s: fault 3, an order timed out waiting for notifications and compensated', s.style),
           'none found'
      FROM style s
    UNION ALL
    SELECT 91, NOT EXISTS (SELECT FROM timed_out x WHERE x.notification = 'sent'),
           'fault 3: no customer of a timed-out order was notified after the restart',
           (SELECT string_agg(x.correlation_id, ' ') FROM timed_out x WHERE x.notification = 'sent')
)
SELECT CASE WHEN ok THEN 'PASS: ' || check_name
            ELSE format('FAIL: %s -- %s', check_name, coalesce(problem, '?')) END
  FROM checks
 ORDER BY n, check_name DESC;
