--
-- 70_sql_steps: in-database steps ("sql": "schema.fn") run in the
-- transaction that makes them ready, in a subtransaction: an error fails the
-- step.  SQL compensations run when their wave comes.
--
-- schema shop exists since 10_define
CREATE TABLE shop.payments (id serial PRIMARY KEY, order_id int NOT NULL, amount numeric NOT NULL,
                            refunded boolean NOT NULL DEFAULT false);
CREATE TABLE shop.stock (item text PRIMARY KEY, available int NOT NULL CHECK (available >= 0));
CREATE TABLE shop.flags (name text PRIMARY KEY, enabled boolean NOT NULL);
INSERT INTO shop.stock VALUES ('widget', 3);
INSERT INTO shop.flags VALUES ('refund_broken', false);

CREATE FUNCTION shop.charge(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    pid int;
BEGIN
    INSERT INTO shop.payments (order_id, amount)
    VALUES ((p -> 'input' ->> 'order_id')::int, (p -> 'input' ->> 'amount')::numeric)
    RETURNING id INTO pid;
    RETURN jsonb_build_object('payment_id', pid);
END
$$;

CREATE FUNCTION shop.refund(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT enabled FROM shop.flags WHERE name = 'refund_broken') THEN
        RAISE EXCEPTION 'refund service unavailable' USING ERRCODE = 'P0001', DETAIL = 'the flag is set';
    END IF;
    UPDATE shop.payments SET refunded = true
     WHERE id = (p -> 'results' -> 'charge' ->> 'payment_id')::int;
    RETURN jsonb_build_object('refunded', p -> 'results' -> 'charge' -> 'payment_id');
END
$$;

-- takes stock, and raises (the CHECK) when there is not enough
CREATE FUNCTION shop.reserve(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE shop.stock SET available = available - (p -> 'input' ->> 'qty')::int WHERE item = 'widget';
    RETURN jsonb_build_object('reserved', (p -> 'input' ->> 'qty')::int);
END
$$;

CREATE FUNCTION shop.release(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE shop.stock SET available = available + (p -> 'results' -> 'reserve' ->> 'reserved')::int
     WHERE item = 'widget';
    RETURN '{"released": true}';
END
$$;

SELECT saga.define('q_order', $${"steps": [
  {"name": "charge", "sql": "shop.charge", "compensate": {"sql": "shop.refund"}},
  {"name": "reserve", "sql": "shop.reserve", "compensate": {"sql": "shop.release"}},
  {"name": "ship", "topic": "q_ship"}
]}$$);

--
-- Both SQL steps run inside saga.start; the topic step is dispatched.
--
SELECT saga.start('q_order', '{"order_id": 1, "amount": 10, "qty": 2}') AS o1 \gset
SELECT step, status, attempts, result, error FROM saga.step_runs WHERE saga_id = :o1 ORDER BY step_index;
SELECT order_id, amount, refunded FROM shop.payments ORDER BY id;
SELECT available FROM shop.stock;
SELECT topic, kind, step, payload FROM saga.outbox WHERE saga_id = :o1;
-- a rolled-back start leaves no trace in the shop either
BEGIN;
SELECT saga.start('q_order', '{"order_id": 99, "amount": 1, "qty": 1}') > 0 AS started;
ROLLBACK;
SELECT count(*) AS payments FROM shop.payments;
SELECT available FROM shop.stock;

-- the topic step fails for good: both SQL compensations run in that
-- transaction, in reverse order, and the saga is compensated
BEGIN;
SELECT saga.fail(saga_test.task(:o1, 'ship'), '{"reason": "no carrier"}', retryable => false) AS recorded;
SELECT status FROM saga.instances WHERE id = :o1;
COMMIT;
SELECT step, status, result, error FROM saga.step_runs WHERE saga_id = :o1 ORDER BY step_index;
SELECT order_id, refunded FROM shop.payments ORDER BY id;
SELECT available FROM shop.stock;
SELECT event, step FROM saga.history WHERE saga_id = :o1 ORDER BY id;

--
-- An error in an SQL step fails the step; its effects are rolled back, the
-- saga compensates what succeeded, and start itself succeeds.
--
SELECT saga.start('q_order', '{"order_id": 2, "amount": 20, "qty": 5}') AS o2 \gset
SELECT status FROM saga.instances WHERE id = :o2;
SELECT step, status, error FROM saga.step_runs WHERE saga_id = :o2 ORDER BY step_index;
SELECT order_id, refunded FROM shop.payments ORDER BY id;
SELECT available FROM shop.stock;
SELECT count(*) AS tasks FROM saga.outbox WHERE saga_id = :o2;

--
-- An SQL step after a topic step runs in the transaction of the report.
--
SELECT saga.define('q_after', $${"steps": [
  {"name": "ask", "topic": "q_ask"},
  {"name": "charge", "sql": "shop.charge", "compensate": {"sql": "shop.refund"}},
  {"name": "tell", "topic": "q_tell"}
]}$$);
SELECT saga.start('q_after', '{"order_id": 3, "amount": 30}') AS o3 \gset
SELECT step, status FROM saga.step_runs WHERE saga_id = :o3 ORDER BY step_index;
SELECT saga.complete(saga_test.task(:o3, 'ask'), '{"answer": 42}');
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :o3 ORDER BY step_index;
SELECT step, payload FROM saga.outbox WHERE saga_id = :o3;
SELECT saga.complete(saga_test.task(:o3, 'tell'));
SELECT status FROM saga.instances WHERE id = :o3;

-- a saga of SQL steps only completes inside start
SELECT saga.define('q_sql_only', $${"steps": [
  {"name": "charge", "sql": "shop.charge"},
  {"name": "reserve", "sql": "shop.reserve"}
]}$$);
SELECT saga.start('q_sql_only', '{"order_id": 4, "amount": 40, "qty": 1}') AS o4 \gset
SELECT status, finished_at IS NOT NULL AS finished FROM saga.instances WHERE id = :o4;
SELECT step, status, result FROM saga.step_runs WHERE saga_id = :o4 ORDER BY step_index;
SELECT available FROM shop.stock;

--
-- An SQL compensation that raises: the saga is failed and an incident; once
-- the cause is fixed, saga.retry runs the compensation again.
--
SELECT saga.start('q_order', '{"order_id": 5, "amount": 50, "qty": 1}') AS o5 \gset
UPDATE shop.flags SET enabled = true WHERE name = 'refund_broken';
SELECT saga.fail(saga_test.task(:o5, 'ship'), '{"reason": "lost"}', retryable => false) AS recorded;
SELECT status FROM saga.instances WHERE id = :o5;
SELECT step, status FROM saga.step_runs WHERE saga_id = :o5 ORDER BY step_index;
SELECT name, step, error FROM saga.incidents WHERE saga_id = :o5;
SELECT order_id, refunded FROM shop.payments WHERE order_id = 5;
SELECT available FROM shop.stock;
-- still broken: retry fails again and the saga stays failed
SELECT saga_test.err(format('SELECT saga.retry(%s)', :o5));
SELECT status FROM saga.instances WHERE id = :o5;
-- fixed
UPDATE shop.flags SET enabled = false WHERE name = 'refund_broken';
SELECT saga.retry(:o5);
SELECT status, finished_at IS NOT NULL AS finished FROM saga.instances WHERE id = :o5;
SELECT step, status FROM saga.step_runs WHERE saga_id = :o5 ORDER BY step_index;
SELECT order_id, refunded FROM shop.payments WHERE order_id = 5;
SELECT count(*) AS incidents FROM saga.incidents WHERE saga_id = :o5;

-- an SQL step runs once before the pivot: its "retry" paces its
-- compensation's retries, or its own past a pivot; where it would do
-- neither it is refused, not ignored
SELECT saga_test.err($$SELECT saga.define('sq_retry', '{"steps": [{"name": "a", "sql": "shop.charge", "retry": {"max_attempts": 10}}]}')$$);
SELECT count(*) AS stored FROM saga.definitions WHERE name = 'sq_retry';
SELECT saga.define('sq_retry', '{"steps": [{"name": "a", "sql": "shop.charge", "retry": {"initial_delay": "10 seconds"}, "compensate": {"sql": "shop.refund"}}]}') AS version;
SELECT saga.define('sq_retry_past', '{"steps": [{"name": "p", "topic": "sq_t", "pivot": true},
  {"name": "a", "sql": "shop.charge", "retry": {"initial_delay": "10 seconds"}}]}') AS version;
