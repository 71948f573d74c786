-- demo/shop.sql: a small shop whose orders run both ways (loaded by scripts/demo.sh).
--
-- One order flow, coordinated in two styles on the same tables by the same three services:
--
--   orchestrated   saga definition order_flow: the engine sends each step to its topic as a
--                  task (kind action, or compensate to undo it) and decides what comes next;
--   choreographed  choreography order_events: the services publish events (OrderPlaced,
--                  PaymentCharged, ...) and each reacts to the others' (kind event); the engine
--                  only follows each flow by its correlation id and times it out.
--
-- The services, one per topic (demo/worker.sh runs them):
--   payments       charges the order, refunds it              leased claim (saga.claim)
--   inventory      reserves the stock, releases it            transactional poll
--   notifications  tells the customer the order is confirmed  leased claim
-- Each serves tasks and deliveries alike through shop.serve_<topic>(), which does the shop work
-- with the functions below (the same for both styles) and reports it in the same transaction:
-- saga.complete / saga.fail for a task; saga.complete and saga.publish(answer, causation_id =>
-- the event handled) for a delivery.
--
-- Every unit of shop work locks its order row first and checks the order's status, so the
-- outcome holds whatever order deliveries arrive in: once an order is cancelled (by a refund or
-- a release) nothing charges, reserves or notifies it any more.  A late delivery, say the
-- StockReserved of an order whose flow timed out while the notifications service was down, is
-- then done with no effect and no answer (the notification is recorded as withheld).
-- Needs: CREATE EXTENSION saga.
\set ON_ERROR_STOP on

CREATE SCHEMA shop;

CREATE TABLE shop.products (
    sku      text PRIMARY KEY,
    price    numeric(10,2) NOT NULL,
    stock    integer NOT NULL CHECK (stock >= 0),   -- available now
    stocked  integer NOT NULL                       -- delivered to the warehouse
);

CREATE TABLE shop.orders (
    id              integer PRIMARY KEY,
    style           text NOT NULL CHECK (style IN ('orchestrated', 'choreographed')),
    correlation_id  text NOT NULL UNIQUE,            -- 'order-<id>': the saga's, or the flow's
    customer        text NOT NULL,
    sku             text NOT NULL REFERENCES shop.products,
    qty             integer NOT NULL CHECK (qty > 0),
    amount          numeric(10,2) NOT NULL,
    saga_id         bigint,                          -- orchestrated: its saga
    placed_event    bigint,                          -- choreographed: its OrderPlaced event
    status          text NOT NULL DEFAULT 'placed'   -- placed, confirmed, cancelled
                    CHECK (status IN ('placed', 'confirmed', 'cancelled'))
);

-- one charge per order (the unique order_id makes a repeated charge a no-op); charged_by and
-- attempt say which service instance charged it, at which delivery of its task
CREATE TABLE shop.payments (
    id           text PRIMARY KEY,
    order_id     integer NOT NULL UNIQUE REFERENCES shop.orders,
    amount       numeric(10,2) NOT NULL,
    status       text NOT NULL,                  -- charged, refunded
    charged_by   text NOT NULL,
    attempt      integer NOT NULL,
    charged_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    refunded_at  timestamptz
);

CREATE TABLE shop.reservations (
    order_id     integer PRIMARY KEY REFERENCES shop.orders,
    sku          text NOT NULL REFERENCES shop.products,
    qty          integer NOT NULL,
    status       text NOT NULL,                  -- reserved, released
    released_at  timestamptz
);

-- status 'sent', or 'withheld' when the order had been cancelled by the time the request came
CREATE TABLE shop.notifications (
    order_id  integer PRIMARY KEY REFERENCES shop.orders,
    status    text NOT NULL CHECK (status IN ('sent', 'withheld')),
    message   text NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

INSERT INTO shop.products VALUES
    ('widget', 19.90, 1000, 1000),
    ('gadget', 99.00, 2, 2);        -- only two in stock: later gadget orders fail and compensate

-- The orchestrated order flow.  Each step is a task on its topic; a step that fails for good
-- (out of stock, or the notification not sent within 3 seconds) compensates the steps that
-- succeeded before it, in reverse order.
SELECT saga.define('order_flow', $doc$
{
  "steps": [
    {"name": "charge_payment", "topic": "payments",
     "compensate": {"topic": "payments"}},
    {"name": "reserve_inventory", "topic": "inventory",
     "compensate": {"topic": "inventory"}},
    {"name": "notify_customer", "topic": "notifications", "timeout": "3 seconds"}
  ]
}
$doc$) AS order_flow_version;

-- The same flow, choreographed.  Each participant is a topic: it reacts to its "on" events and
-- answers with one of its "emits" (it acted) or "fails" (it did nothing); if a
-- "compensation.on" event reaches it after it acted, it undoes and answers with
-- "compensation.emits".  A flow not completed within 5 seconds gets OrderTimedOut from the
-- background worker, and compensates.
SELECT saga.define_choreography('order_events', $doc$
{
  "start": "OrderPlaced",
  "participants": {
    "payments":      {"on": ["OrderPlaced"], "emits": ["PaymentCharged"],
                      "compensation": {"on": ["StockUnavailable", "OrderTimedOut"],
                                       "emits": "PaymentRefunded"}},
    "inventory":     {"on": ["PaymentCharged"], "emits": ["StockReserved"],
                      "fails": ["StockUnavailable"],
                      "compensation": {"on": ["OrderTimedOut"], "emits": "StockReleased"}},
    "notifications": {"on": ["StockReserved"], "emits": ["CustomerNotified"]}
  },
  "completed": ["CustomerNotified"],
  "deadline": {"after": "5 seconds", "publish": "OrderTimedOut"}
}
$doc$) AS order_events_version;

-- Place an order and start it, in one transaction: the order never exists without its saga
-- (orchestrated) or its OrderPlaced event (choreographed).  Placing the same order again
-- returns the same saga or event: the idempotency key is the order's.
CREATE FUNCTION shop.place_order(p_order integer, p_style text, p_sku text, p_qty integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_cid    text := 'order-' || p_order;
    v_input  jsonb;
    v_id     bigint;
BEGIN
    INSERT INTO shop.orders (id, style, correlation_id, customer, sku, qty, amount)
    SELECT p_order, p_style, v_cid, 'customer-' || p_order, p_sku, p_qty, price * p_qty
      FROM shop.products WHERE sku = p_sku
    ON CONFLICT (id) DO NOTHING;
    SELECT jsonb_build_object('order_id', id, 'customer', customer, 'sku', sku, 'qty', qty,
                              'amount', amount)
      INTO STRICT v_input FROM shop.orders WHERE id = p_order;
    IF p_style = 'orchestrated' THEN
        v_id := saga.start('order_flow', v_input,
                           correlation_id => v_cid, idempotency_key => v_cid);
        UPDATE shop.orders SET saga_id = v_id WHERE id = p_order;
    ELSE
        v_id := saga.publish('OrderPlaced', v_input,
                             correlation_id => v_cid, idempotency_key => v_cid);
        UPDATE shop.orders SET placed_event = v_id WHERE id = p_order;
    END IF;
    RETURN v_id;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The shop's work, the same for both styles.  Each takes the order (locked by the caller) and
-- returns what it did as jsonb: {"ok": true, ...} or {"ok": false, "reason": ...}.  Each is
-- idempotent: done twice, it has the effect of once.

CREATE FUNCTION shop.charge(o shop.orders, p_worker text, p_attempt integer)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF o.status = 'cancelled' THEN
        RETURN jsonb_build_object('ok', false, 'reason', 'order cancelled');
    END IF;
    INSERT INTO shop.payments (id, order_id, amount, status, charged_by, attempt)
    VALUES ('p_' || o.id, o.id, o.amount, 'charged', p_worker, p_attempt)
    ON CONFLICT (order_id) DO NOTHING;
    RETURN jsonb_build_object('ok', true, 'order_id', o.id, 'payment_id', 'p_' || o.id,
                              'amount', o.amount);
END
$$;

-- cancels the order; refunded is the payment refunded now (NULL: none was charged, or it had
-- been refunded already)
CREATE FUNCTION shop.refund(o shop.orders)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_payment text;
BEGIN
    UPDATE shop.orders SET status = 'cancelled' WHERE id = o.id;
    UPDATE shop.payments SET status = 'refunded', refunded_at = clock_timestamp()
     WHERE order_id = o.id AND status = 'charged'
    RETURNING id INTO v_payment;
    RETURN jsonb_build_object('ok', true, 'order_id', o.id, 'refunded', v_payment);
END
$$;

CREATE FUNCTION shop.reserve(o shop.orders)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_left integer;
BEGIN
    IF o.status = 'cancelled' THEN
        RETURN jsonb_build_object('ok', false, 'reason', 'order cancelled');
    END IF;
    IF NOT EXISTS (SELECT FROM shop.reservations WHERE order_id = o.id) THEN
        UPDATE shop.products SET stock = stock - o.qty
         WHERE sku = o.sku AND stock >= o.qty
        RETURNING stock INTO v_left;
        IF NOT FOUND THEN
            RETURN jsonb_build_object('ok', false, 'reason', 'out of stock', 'sku', o.sku);
        END IF;
        INSERT INTO shop.reservations (order_id, sku, qty, status)
        VALUES (o.id, o.sku, o.qty, 'reserved');
    END IF;
    RETURN jsonb_build_object('ok', true, 'order_id', o.id, 'sku', o.sku, 'qty', o.qty);
END
$$;

-- cancels the order; released is the quantity put back now (NULL: nothing was reserved, or it
-- had been released already)
CREATE FUNCTION shop.release(o shop.orders)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_qty integer;
BEGIN
    UPDATE shop.orders SET status = 'cancelled' WHERE id = o.id;
    UPDATE shop.reservations SET status = 'released', released_at = clock_timestamp()
     WHERE order_id = o.id AND status = 'reserved'
    RETURNING qty INTO v_qty;
    IF v_qty IS NOT NULL THEN
        UPDATE shop.products SET stock = stock + v_qty WHERE sku = o.sku;
    END IF;
    RETURN jsonb_build_object('ok', true, 'order_id', o.id, 'released', v_qty);
END
$$;

-- confirms the order and sends the message; for a cancelled order the message is withheld
-- (and recorded as such)
CREATE FUNCTION shop.notify(o shop.orders)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF o.status = 'cancelled' THEN
        INSERT INTO shop.notifications (order_id, status, message)
        VALUES (o.id, 'withheld', format('order %s was cancelled: not notified', o.id))
        ON CONFLICT (order_id) DO NOTHING;
        RETURN jsonb_build_object('ok', false, 'reason', 'order cancelled');
    END IF;
    INSERT INTO shop.notifications (order_id, status, message)
    VALUES (o.id, 'sent', format('order %s confirmed: %s x %s, paid with p_%s',
                                 o.id, o.qty, o.sku, o.id))
    ON CONFLICT (order_id) DO NOTHING;
    UPDATE shop.orders SET status = 'confirmed' WHERE id = o.id;
    RETURN jsonb_build_object('ok', true, 'order_id', o.id, 'notified', o.customer);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Serving a task or a delivery: find and lock its order, do the work, report, and (for a
-- delivery) publish the answer, all in the caller's transaction.  p_lease is the lease of a
-- leased claim, NULL in a transactional poll (the caller's row lock is the lease).  Each returns
-- one line for the service's log.

-- the order a task or delivery is about (its correlation id is the order's), locked
CREATE FUNCTION shop.order_of(p_headers jsonb)
RETURNS shop.orders
LANGUAGE sql AS $$
    SELECT * FROM shop.orders WHERE correlation_id = p_headers ->> 'correlation_id' FOR UPDATE
$$;

-- what the log says about a task or delivery and its outcome:
--   "order-4   action reserve_inventory #1: not done, out of stock"
CREATE FUNCTION shop.describe(p_headers jsonb, p_result jsonb)
RETURNS text
LANGUAGE sql AS $$
    SELECT format('%-9s %s %s #%s: ', p_headers ->> 'correlation_id', p_headers ->> 'kind',
                  coalesce(p_headers ->> 'step', p_headers ->> 'event_type'),
                  p_headers ->> 'attempt')
           || CASE WHEN (p_result ->> 'ok')::boolean THEN (p_result - 'ok' - 'order_id')::text
                   ELSE 'not done, ' || (p_result ->> 'reason') END
$$;

-- report the outcome of a saga task: complete, or fail for good (nothing to retry: the saga
-- compensates)
CREATE FUNCTION shop.report(p_task bigint, p_lease integer, p_headers jsonb, p_result jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF (p_result ->> 'ok')::boolean THEN
        PERFORM saga.complete(p_task, p_result, lease => p_lease);
    ELSE
        PERFORM saga.fail(p_task, p_result, retryable => false, lease => p_lease);
    END IF;
    RETURN shop.describe(p_headers, p_result);
END
$$;

-- answer a delivery: it is done (whatever the outcome: the answer says it), and the answer
-- event, if any (NULL: none), continues the flow, with what the work did as its payload
CREATE FUNCTION shop.answer(p_task bigint, p_lease integer, p_headers jsonb, p_result jsonb,
                            p_event text)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM saga.complete(p_task, p_result, lease => p_lease);
    IF p_event IS NOT NULL THEN
        PERFORM saga.publish(p_event, p_result - 'ok',
                             causation_id => (p_headers ->> 'event_id')::bigint);
    END IF;
    RETURN shop.describe(p_headers, p_result) || coalesce(' -> ' || p_event, ', no answer');
END
$$;

-- a task or delivery this service does not expect (a bug, or a definition changed under it):
-- fail it for good, so that it shows (a failed step compensates; a delivery is a dead letter)
CREATE FUNCTION shop.reject(p_task bigint, p_lease integer, p_headers jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r jsonb := jsonb_build_object('ok', false, 'reason', 'unexpected, failed for good');
BEGIN
    PERFORM saga.fail(p_task, r, retryable => false, lease => p_lease);
    RETURN shop.describe(p_headers, r);
END
$$;

-- payments: the step charge_payment and its compensation; OrderPlaced, and the events that
-- undo a charge
CREATE FUNCTION shop.serve_payments(p_task bigint, p_lease integer, p_headers jsonb, p_worker text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    o        shop.orders := shop.order_of(p_headers);
    attempt  integer := (p_headers ->> 'attempt')::integer;
    r        jsonb;
BEGIN
    CASE coalesce(p_headers ->> 'event_type', p_headers ->> 'kind')
    WHEN 'action' THEN
        RETURN shop.report(p_task, p_lease, p_headers, shop.charge(o, p_worker, attempt));
    WHEN 'compensate' THEN
        RETURN shop.report(p_task, p_lease, p_headers, shop.refund(o));
    WHEN 'OrderPlaced' THEN
        r := shop.charge(o, p_worker, attempt);
        RETURN shop.answer(p_task, p_lease, p_headers, r,
                           CASE WHEN (r ->> 'ok')::boolean THEN 'PaymentCharged' END);
    WHEN 'StockUnavailable', 'OrderTimedOut' THEN
        r := shop.refund(o);    -- answered only if there was a charge to undo
        RETURN shop.answer(p_task, p_lease, p_headers, r,
                           CASE WHEN r ->> 'refunded' IS NOT NULL THEN 'PaymentRefunded' END);
    ELSE
        RETURN shop.reject(p_task, p_lease, p_headers);
    END CASE;
END
$$;

-- inventory: the step reserve_inventory and its compensation; PaymentCharged, and the event
-- that undoes a reservation
CREATE FUNCTION shop.serve_inventory(p_task bigint, p_lease integer, p_headers jsonb, p_worker text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    o        shop.orders := shop.order_of(p_headers);
    r        jsonb;
BEGIN
    CASE coalesce(p_headers ->> 'event_type', p_headers ->> 'kind')
    WHEN 'action' THEN
        RETURN shop.report(p_task, p_lease, p_headers, shop.reserve(o));
    WHEN 'compensate' THEN
        RETURN shop.report(p_task, p_lease, p_headers, shop.release(o));
    WHEN 'PaymentCharged' THEN
        r := shop.reserve(o);
        RETURN shop.answer(p_task, p_lease, p_headers, r,
                           CASE WHEN (r ->> 'ok')::boolean THEN 'StockReserved'
                                WHEN r ->> 'reason' = 'out of stock' THEN 'StockUnavailable' END);
    WHEN 'OrderTimedOut' THEN
        r := shop.release(o);   -- answered only if there was a reservation to undo
        RETURN shop.answer(p_task, p_lease, p_headers, r,
                           CASE WHEN r ->> 'released' IS NOT NULL THEN 'StockReleased' END);
    ELSE
        RETURN shop.reject(p_task, p_lease, p_headers);
    END CASE;
END
$$;

-- notifications: the step notify_customer; StockReserved
CREATE FUNCTION shop.serve_notifications(p_task bigint, p_lease integer, p_headers jsonb,
                                         p_worker text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    o        shop.orders := shop.order_of(p_headers);
    r        jsonb;
BEGIN
    CASE coalesce(p_headers ->> 'event_type', p_headers ->> 'kind')
    WHEN 'action' THEN
        RETURN shop.report(p_task, p_lease, p_headers, shop.notify(o));
    WHEN 'StockReserved' THEN
        r := shop.notify(o);
        RETURN shop.answer(p_task, p_lease, p_headers, r,
                           CASE WHEN (r ->> 'ok')::boolean THEN 'CustomerNotified' END);
    ELSE
        RETURN shop.reject(p_task, p_lease, p_headers);
    END CASE;
END
$$;

-- The inventory service's transactional poll: lock a batch of visible tasks and deliveries
-- with FOR UPDATE SKIP LOCKED and serve each in this transaction.  If the service dies, its
-- transaction rolls back with the locks: nothing happened, and the rows are visible again.
CREATE FUNCTION shop.inventory_poll(p_worker text, p_batch integer DEFAULT 10)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT id, headers
          FROM saga.outbox
         WHERE topic = 'inventory' AND visible_at <= now()
         ORDER BY visible_at, id
           FOR UPDATE SKIP LOCKED
         LIMIT p_batch
    LOOP
        RETURN NEXT shop.serve_inventory(t.id, NULL, t.headers, p_worker);
    END LOOP;
END
$$;
