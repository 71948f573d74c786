-- demo/shop.sql: a small shop whose orders run as sagas (loaded by scripts/demo.sh).
--
-- Three services, one per outbox topic:
--   payments      charges a card; its compensation refunds it      (transactional poll)
--   inventory     reserves stock; its compensation releases it     (leased claim, demo/worker.sh)
--   notifications tells the customer the order is confirmed          (leased claim, demo/worker.sh)
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
    id        integer PRIMARY KEY,
    customer  text NOT NULL,
    sku       text NOT NULL REFERENCES shop.products,
    qty       integer NOT NULL CHECK (qty > 0),
    amount    numeric(10,2) NOT NULL,
    saga_id   bigint,
    status    text NOT NULL DEFAULT 'placed'     -- placed, confirmed, cancelled
);

-- one charge per order (the unique order_id makes a redelivered charge a no-op)
CREATE TABLE shop.payments (
    id           text PRIMARY KEY,
    order_id     integer NOT NULL UNIQUE REFERENCES shop.orders,
    amount       numeric(10,2) NOT NULL,
    status       text NOT NULL,                  -- charged, refunded
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

CREATE TABLE shop.notifications (
    order_id  integer PRIMARY KEY REFERENCES shop.orders,
    message   text NOT NULL,
    sent_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

INSERT INTO shop.products VALUES
    ('widget', 19.90, 1000, 1000),
    ('gadget', 99.00, 2, 2);        -- only two in stock: later gadget orders fail and compensate

-- The order saga.  Each step is a task on its topic; a failed step compensates the steps that
-- succeeded before it, in reverse order.
SELECT saga.define('order_flow', $doc$
{
  "steps": [
    {"name": "charge_payment", "topic": "payments",
     "compensate": {"topic": "payments"}},
    {"name": "reserve_inventory", "topic": "inventory",
     "compensate": {"topic": "inventory"}},
    {"name": "notify_customer", "topic": "notifications",
     "retry": {"max_attempts": 5, "initial_delay": "200 milliseconds", "backoff": 2,
               "max_delay": "2 seconds", "jitter": true}}
  ]
}
$doc$) AS order_flow_version;

-- Place an order and start its saga in one transaction: the order never exists without its
-- saga.  Same order id twice: the idempotency key returns the saga already started.
CREATE FUNCTION shop.place_order(p_order integer, p_customer text, p_sku text, p_qty integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_amount numeric;
    v_saga   bigint;
BEGIN
    SELECT price * p_qty INTO STRICT v_amount FROM shop.products WHERE sku = p_sku;
    INSERT INTO shop.orders (id, customer, sku, qty, amount)
    VALUES (p_order, p_customer, p_sku, p_qty, v_amount)
    ON CONFLICT (id) DO NOTHING;
    v_saga := saga.start('order_flow',
                         jsonb_build_object('order_id', p_order, 'customer', p_customer,
                                            'sku', p_sku, 'qty', p_qty, 'amount', v_amount),
                         correlation_id => 'order-' || p_order,
                         idempotency_key => 'order-' || p_order);
    UPDATE shop.orders SET saga_id = v_saga WHERE id = p_order;
    RETURN v_saga;
END
$$;

-- The payments service, transactional-poll style: lock a batch of visible tasks with
-- FOR UPDATE SKIP LOCKED, do the work in the same transaction, report with saga.complete().
-- The caller's transaction is the lease: if it dies, the locks go and nothing happened.
-- Returns one line per task for the log.
CREATE FUNCTION shop.payments_poll(p_batch integer DEFAULT 10)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    t          record;
    v_order    integer;
    v_payment  text;
BEGIN
    FOR t IN
        SELECT id, kind, payload, headers
          FROM saga.outbox
         WHERE topic = 'payments' AND visible_at <= now()
         ORDER BY visible_at, id
           FOR UPDATE SKIP LOCKED
         LIMIT p_batch
    LOOP
        v_order := (t.payload -> 'input' ->> 'order_id')::integer;
        IF t.kind = 'action' THEN
            v_payment := 'p_' || v_order;
            INSERT INTO shop.payments (id, order_id, amount, status)
            VALUES (v_payment, v_order, (t.payload -> 'input' ->> 'amount')::numeric, 'charged')
            ON CONFLICT (order_id) DO NOTHING;
            PERFORM saga.complete(t.id, jsonb_build_object('payment_id', v_payment));
            RETURN NEXT format('charged %s for %s (%s)', v_payment,
                               t.headers ->> 'correlation_id', t.payload -> 'input' ->> 'amount');
        ELSE
            -- compensation: refund what charge_payment reported
            v_payment := t.payload -> 'results' -> 'charge_payment' ->> 'payment_id';
            UPDATE shop.payments
               SET status = 'refunded', refunded_at = clock_timestamp()
             WHERE id = v_payment AND status = 'charged';
            UPDATE shop.orders SET status = 'cancelled' WHERE id = v_order;
            PERFORM saga.complete(t.id, jsonb_build_object('refunded', v_payment));
            RETURN NEXT format('refunded %s for %s', v_payment, t.headers ->> 'correlation_id');
        END IF;
    END LOOP;
END
$$;

-- Work of the inventory service, called by demo/worker.sh between saga.claim() and its report
-- (standing in for a call to another system).  Idempotent per order.
CREATE FUNCTION shop.reserve_stock(p_payload jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_order integer := (p_payload -> 'input' ->> 'order_id')::integer;
    v_sku   text := p_payload -> 'input' ->> 'sku';
    v_qty   integer := (p_payload -> 'input' ->> 'qty')::integer;
    v_left  integer;
BEGIN
    IF EXISTS (SELECT FROM shop.reservations WHERE order_id = v_order AND status = 'reserved') THEN
        RETURN jsonb_build_object('ok', true, 'reservation', v_order);
    END IF;
    UPDATE shop.products SET stock = stock - v_qty
     WHERE sku = v_sku AND stock >= v_qty
    RETURNING stock INTO v_left;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('ok', false, 'reason', 'out of stock', 'sku', v_sku);
    END IF;
    INSERT INTO shop.reservations (order_id, sku, qty, status)
    VALUES (v_order, v_sku, v_qty, 'reserved');
    RETURN jsonb_build_object('ok', true, 'reservation', v_order, 'stock_left', v_left);
END
$$;

CREATE FUNCTION shop.release_stock(p_payload jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_order integer := (p_payload -> 'input' ->> 'order_id')::integer;
    r       record;
BEGIN
    UPDATE shop.reservations SET status = 'released', released_at = clock_timestamp()
     WHERE order_id = v_order AND status = 'reserved'
    RETURNING sku, qty INTO r;
    IF FOUND THEN
        UPDATE shop.products SET stock = stock + r.qty WHERE sku = r.sku;
    END IF;
    RETURN jsonb_build_object('released', v_order);
END
$$;

-- Work of the notification service.  To show retries, the first attempt for every fifth order
-- fails as if the mail server timed out; demo/worker.sh reports it as a retryable failure.
CREATE FUNCTION shop.send_notification(p_payload jsonb, p_attempt integer)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_order integer := (p_payload -> 'input' ->> 'order_id')::integer;
BEGIN
    IF v_order % 5 = 0 AND p_attempt = 1 THEN
        RETURN jsonb_build_object('ok', false, 'reason', 'mail server timeout');
    END IF;
    INSERT INTO shop.notifications (order_id, message)
    VALUES (v_order, format('order %s confirmed: %s x %s, paid with %s', v_order,
                            p_payload -> 'input' ->> 'qty', p_payload -> 'input' ->> 'sku',
                            p_payload -> 'results' -> 'charge_payment' ->> 'payment_id'))
    ON CONFLICT (order_id) DO NOTHING;
    UPDATE shop.orders SET status = 'confirmed' WHERE id = v_order;
    RETURN jsonb_build_object('ok', true);
END
$$;
