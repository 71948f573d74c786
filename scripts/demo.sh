#!/usr/bin/env bash
# scripts/demo.sh: the order flow, orchestrated and choreographed side by side, under faults.
# Usage: bash scripts/demo.sh  (as root or with sudo; about 12 seconds after the build)
#
# Installs the Debian packages it needs, builds and installs saga, starts a private PostgreSQL
# 15 (unix socket only, saga preloaded so its background worker handles timeouts, lapsed leases
# and deadlines; removed afterwards) and loads demo/shop.sql: a shop, the saga definition
# order_flow and the choreography order_events.  Then, on the same tables and with the same
# three services (demo/worker.sh), every order of the orchestrated style (orders 1-8) has a twin
# in the choreographed style (orders 101-108), and both go through the same faults:
#   1. out of stock: three gadget orders each way, two gadgets in stock;
#   2. a payments instance hangs on a task it claimed and is killed (SIGKILL): the lease lapses
#      and a second instance charges the order at attempt 2 (orders 7 and 107);
#   3. the notifications service is down past the step timeout (3 s) and the flow deadline (5 s):
#      both orders compensate (orders 8 and 108); the service then comes back to stale requests.
# It shows where every order is and why, the history of the timed-out ones, the diagrams (when
# this build has saga.diagram), and audits the books (demo/audit.sql): exit status 0 only if
# every check passes.  DEMO_TIMEOUT (seconds, default 30) bounds each wait.
# shellcheck disable=SC2119  # helpers with optional arguments
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TIMEOUT=${DEMO_TIMEOUT:-30}
JOBS=()            # the background jobs that run the services
declare -A PIDS    # service instance name -> pid of its worker.sh

q() { saga_psql -A -t "$@"; }
heading() { printf '\n=== %s ===\n' "$*"; }

# --- the services -------------------------------------------------------------------------------
# start_service NAME TOPIC [VAR=value...]: one instance of demo/worker.sh, as postgres, in a
# session of its own (kill_service kills its process group: the worker and what it runs)
start_service() {
	local name=$1 topic=$2 pidfile=$SAGA_WORK/pg/$1.pid
	shift 2
	# runuser says "Killed" when kill_service does its job: that line is the demo's own doing
	saga_as_pg env DEMO_PIDFILE="$pidfile" "$@" setsid -w bash src/demo/worker.sh "$topic" "$name" \
		2> >(grep -v '^Killed$' >&2) &
	JOBS+=($!)
	for _ in $(seq 1 100); do
		[ -s "$pidfile" ] && break
		sleep 0.05
	done
	PIDS[$name]=$(cat "$pidfile")
}

alive() { [ -n "${PIDS[$1]:-}" ] && [ -d "/proc/${PIDS[$1]}" ]; }

# stop_service NAME: SIGTERM (it finishes its round), SIGKILL after 5 s
stop_service() {
	local name=$1
	alive "$name" || return 0
	saga_as_root kill -TERM "${PIDS[$name]}" 2>/dev/null || true
	for _ in $(seq 1 50); do
		alive "$name" || break
		sleep 0.1
	done
	kill_service "$name"
}

# kill_service NAME: SIGKILL, no warning, to the worker and what it runs
kill_service() {
	local name=$1
	if alive "$name"; then saga_as_root kill -KILL -- "-${PIDS[$name]}" 2>/dev/null || true; fi
	unset "PIDS[$name]"
}

stop_all_services() {
	local name pid
	for name in "${!PIDS[@]}"; do stop_service "$name"; done
	for pid in "${JOBS[@]}"; do wait "$pid" 2>/dev/null || true; done
	JOBS=()
}

# --- waiting --------------------------------------------------------------------------------------
# wait_until WHAT SQL: poll until the query returns true, at most $TIMEOUT s; on timeout show
# what is open and fail
wait_until() {
	local what=$1 cond=$2 deadline=$((SECONDS + TIMEOUT))
	until [ "$(q -c "SELECT ($cond)")" = t ]; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			printf '\nnot %s after %s s:\n' "$what" "$TIMEOUT"
			saga_psql -c "SELECT id, name, status, correlation_id FROM saga.instances
			               WHERE status NOT IN ('completed', 'compensated') ORDER BY id"
			saga_psql -c "SELECT id, choreography, status, correlation_id, waiting_on FROM saga.flows
			               WHERE status NOT IN ('completed', 'compensated') ORDER BY id"
			saga_psql -c "SELECT id, topic, kind, step, attempt, deliveries, lease_owner,
			                     headers ->> 'correlation_id' AS correlation_id, visible_at
			                FROM saga.outbox ORDER BY id"
			saga_server_log_tail 30
			saga_die "not $what within $TIMEOUT s"
		fi
		sleep 0.1
	done
}

ALL_FINISHED="NOT EXISTS (SELECT FROM saga.instances WHERE status NOT IN ('completed', 'compensated'))
          AND NOT EXISTS (SELECT FROM saga.flows WHERE status NOT IN ('completed', 'compensated'))"

# place_orders ID:SKU...: each order in both styles (order N orchestrated, 100 + N its
# choreographed twin), all in one transaction
place_orders() {
	local o sql="BEGIN;"$'\n'
	for o in "$@"; do
		sql+="SELECT shop.place_order(${o%:*}, 'orchestrated', '${o#*:}', 1);"$'\n'
		sql+="SELECT shop.place_order($((100 + ${o%:*})), 'choreographed', '${o#*:}', 1);"$'\n'
	done
	q >/dev/null <<<"${sql}COMMIT;"
}

# --- the run --------------------------------------------------------------------------------------
main() {
	saga_traps
	saga_init_privileges
	saga_stage_begin "packages"
	saga_install_packages
	saga_stage_end
	saga_stage_begin "build and install"
	saga_build_install
	saga_stage_end

	saga_stage_begin "throwaway cluster"
	saga_make_workdir demo
	saga_cluster_start
	saga_on_cleanup stop_all_services
	saga_psql -c 'CREATE EXTENSION saga'
	saga_psql -f src/demo/shop.sql >/dev/null
	saga_stage_end

	saga_stage_begin "orders"
	heading "the services (demo/worker.sh), each serving its topic's saga tasks and event deliveries"
	start_service payments-1 payments DEMO_HANG_ON="order-7 order-107"
	start_service inventory-1 inventory
	start_service notifications-1 notifications
	sleep 0.2

	heading "1. out of stock: orders 1-6 and 101-106, gadgets: 2 4 6 and 102 104 106 (two in stock)"
	place_orders 1:widget 2:gadget 3:widget 4:gadget 5:widget 6:gadget
	wait_until "every saga and flow finished" "$ALL_FINISHED"

	heading "2. payments-1 hangs on the tasks of orders 7 and 107 and is killed"
	place_orders 7:widget
	wait_until "payments-1 claimed both" "(SELECT count(*) FROM saga.outbox WHERE lease_owner = 'payments-1') = 2"
	q -c "SELECT format('  leased: %s %s to %s, lease %s, attempt %s, until %s', headers ->> 'correlation_id',
	                    kind, lease_owner, deliveries, attempt, to_char(visible_at, 'HH24:MI:SS.MS'))
	        FROM saga.outbox WHERE topic = 'payments' ORDER BY id"
	printf '  kill -KILL payments-1 (pid %s); start payments-2\n' "${PIDS[payments-1]}"
	kill_service payments-1
	start_service payments-2 payments
	wait_until "every saga and flow finished" "$ALL_FINISHED"

	heading "3. notifications down: orders 8 and 108 time out (step timeout 3 s, flow deadline 5 s)"
	stop_service notifications-1
	place_orders 8:widget
	wait_until "every saga and flow finished" "$ALL_FINISHED"
	q -c "SELECT format('  order-8:   step %s failed %s, %s s after the saga started (%s)', h.step, h.detail,
	                    round(extract(epoch FROM h.at - i.started_at), 1), h.actor)
	        FROM saga.history h JOIN saga.instances i ON i.id = h.saga_id
	       WHERE i.correlation_id = 'order-8' AND h.event = 'failed'"
	q -c "SELECT format('  order-108: %s published %s s after the flow started (%s)', e.type,
	                    round(extract(epoch FROM e.published_at - f.started_at), 1), e.publisher)
	        FROM saga.events e JOIN saga.flows f ON f.correlation_id = e.correlation_id
	       WHERE e.correlation_id = 'order-108' AND e.type = 'OrderTimedOut'"
	printf '  notifications back up, to what was left for it:\n'
	start_service notifications-2 notifications
	wait_until "the outbox drained" "$ALL_FINISHED AND NOT EXISTS (SELECT FROM saga.outbox)"

	heading "placing orders 1 and 101 again (idempotency key order-N)"
	local idem=()
	idem+=("$(q -c "SELECT CASE WHEN shop.place_order(1, 'orchestrated', 'widget', 1) = saga_id
	                     THEN 'PASS' ELSE 'FAIL' END || ': orchestrated: placing order 1 again returns its saga ' || saga_id
	                FROM shop.orders WHERE id = 1")")
	idem+=("$(q -c "SELECT CASE WHEN shop.place_order(101, 'choreographed', 'widget', 1) = placed_event
	                     THEN 'PASS' ELSE 'FAIL' END || ': choreographed: placing order 101 again returns its OrderPlaced event ' || placed_event
	                FROM shop.orders WHERE id = 101")")
	printf '  %s\n' "${idem[@]#*: }"
	stop_all_services
	saga_stage_end

	report
	audit "${idem[@]}"
}

report() {
	heading "outcome"
	saga_psql -c "
		SELECT o.style, coalesce(i.status, f.status) AS status, count(*) AS orders,
		       string_agg(o.id::text, ' ' ORDER BY o.id) AS which
		  FROM shop.orders o
		  LEFT JOIN saga.instances i ON i.id = o.saga_id
		  LEFT JOIN saga.flows f ON f.correlation_id = o.correlation_id AND f.choreography = 'order_events'
		 GROUP BY 1, 2 ORDER BY 1 DESC, 2"

	heading "orchestrated: where every order is (saga.instances joined to the shop)"
	saga_psql -c "
		SELECT o.id AS \"order\", o.sku, i.status AS saga, o.status AS \"order status\",
		       p.status || ' @' || p.attempt || ' by ' || p.charged_by AS payment,
		       r.status AS stock, n.status AS notification,
		       (SELECT s.step || ': ' || (s.error ->> 'reason') FROM saga.step_runs s
		         WHERE s.saga_id = i.id AND s.status = 'failed') AS why
		  FROM shop.orders o
		  JOIN saga.instances i ON i.id = o.saga_id
		  LEFT JOIN shop.payments p ON p.order_id = o.id
		  LEFT JOIN shop.reservations r ON r.order_id = o.id
		  LEFT JOIN shop.notifications n ON n.order_id = o.id
		 ORDER BY o.id"

	heading "choreographed: where every order is (saga.flows joined to the shop)"
	saga_psql -c "
		SELECT o.id AS \"order\", o.sku, f.status AS flow, o.status AS \"order status\",
		       p.status || ' @' || p.attempt || ' by ' || p.charged_by AS payment,
		       r.status AS stock, n.status AS notification,
		       (SELECT string_agg(e.type, ' > ' ORDER BY e.id) FROM saga.events e
		         WHERE e.correlation_id = o.correlation_id) AS events
		  FROM shop.orders o
		  JOIN saga.flows f ON f.correlation_id = o.correlation_id AND f.choreography = 'order_events'
		  LEFT JOIN shop.payments p ON p.order_id = o.id
		  LEFT JOIN shop.reservations r ON r.order_id = o.id
		  LEFT JOIN shop.notifications n ON n.order_id = o.id
		 ORDER BY o.id"
	printf '(payment: status @ the attempt it was charged at, by which instance)\n'

	local saga8
	saga8=$(q -c "SELECT saga_id FROM shop.orders WHERE id = 8")
	heading "orchestrated: the history of order 8, which timed out (saga.history, saga $saga8)"
	saga_psql -c "
		SELECT to_char(at, 'HH24:MI:SS.MS') AS at, event, step, actor, detail
		  FROM saga.history WHERE saga_id = $saga8 ORDER BY at, id"

	heading "choreographed: the events of order 108, which timed out (saga.events)"
	saga_psql -c "
		SELECT to_char(published_at, 'HH24:MI:SS.MS') AS at, id, type, causation_id AS cause, hops,
		       publisher, deliveries, late, payload
		  FROM saga.events WHERE correlation_id = 'order-108' ORDER BY id"

	heading "order 7's payment: the lease that lapsed (saga.history)"
	saga_psql -c "
		SELECT to_char(at, 'HH24:MI:SS.MS') AS at, event, step, detail
		  FROM saga.history h JOIN shop.orders o ON o.saga_id = h.saga_id
		 WHERE o.id = 7 AND h.step = 'charge_payment' ORDER BY at, h.id"

	heading "diagrams"
	diagram "saga.diagram" "order_flow" "SELECT saga.diagram('order_flow')"
	diagram "saga.diagram" "order_events" "SELECT saga.diagram('order_events')"
	diagram "saga.timeline" "order 8 (saga $saga8)" "SELECT saga.timeline($saga8)"
	diagram "saga.flow_diagram" "order 108" "SELECT saga.flow_diagram('order-108')"
}

# diagram FUNCTION WHAT SQL: show what the function draws, if this build has it (an error is
# shown, not fatal: the diagrams are not part of the audit)
diagram() {
	local fn=$1 what=$2 sql=$3 out
	if [ "$(q -c "SELECT EXISTS (SELECT FROM pg_catalog.pg_proc
	                WHERE pronamespace = 'saga'::regnamespace AND proname = '${fn#saga.}')")" != t ]; then
		printf '%s of %s: not in this build yet\n' "$fn" "$what"
	elif out=$(q -c "$sql" 2>&1); then
		printf '\n%s of %s:\n%s\n' "$fn" "$what" "$out"
	else
		printf '%s of %s failed: %s\n' "$fn" "$what" "$out"
	fi
}

# audit [PASS/FAIL lines from the run]: demo/audit.sql's checks; fail if one failed
audit() {
	local lines
	heading "audit (demo/audit.sql)"
	lines=$(printf '%s\n' "$@"; q -f src/demo/audit.sql)
	printf '%s\n' "$lines"
	saga_print_timings
	if grep -q '^FAIL: ' <<<"$lines"; then
		saga_die "the audit failed: $(grep -c '^FAIL: ' <<<"$lines") checks"
	fi
	printf '\nthe books balance: every check passed\n'
}

main "$@"
