-- two publishes, each in its own transaction: a start event with a fresh correlation id, then
-- the event that answers it (causation_id: the first; its correlation id is inherited).
-- -D start=... -D next=...: OrderPlaced / PaymentCharged (choreography order: a new flow, then
-- its next step) or Plain.Placed / Plain.Charged (no choreography concerned)
\set r random(1, 1000000000000000)
BEGIN;
SELECT saga.publish(:start, '{"order": 1}', 'ord-' || :r) AS ev \gset
COMMIT;
BEGIN;
SELECT saga.publish(:next, '{"order": 1}', causation_id => :ev);
COMMIT;
