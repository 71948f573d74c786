#!/usr/bin/env bash
# scripts/demo.sh: the order saga on a throwaway cluster.  Usage: bash scripts/demo.sh
# (as root or with sudo).  Installs the Debian packages it needs, builds and installs saga,
# starts a private PostgreSQL 15 (unix socket only, removed afterwards), loads demo/shop.sql,
# runs the three services of demo/worker.sh in the background, places 20 orders and waits until
# every saga has finished; then shows what happened and checks that the books balance.
# Exit status 0 only if every saga finished and the outcome is consistent.
# DEMO_ORDERS (default 20) and DEMO_TIMEOUT (seconds, default 60) can be set.
# shellcheck disable=SC2119  # helpers with optional arguments
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ORDERS=${DEMO_ORDERS:-20}
TIMEOUT=${DEMO_TIMEOUT:-60}
WORKER_PIDS=()

# ask the workers to stop (they finish their round), kill what is left after 10 s
stop_workers() {
	local pid f
	[ ${#WORKER_PIDS[@]} -gt 0 ] || return 0
	touch "$SAGA_WORK/stop-workers"
	for _ in $(seq 1 50); do
		[ -n "$(jobs -rp)" ] || break
		sleep 0.2
	done
	if [ -n "$(jobs -rp)" ]; then
		for f in "$SAGA_WORK"/pg/worker-*.pid; do
			if [ -e "$f" ]; then saga_as_root kill "$(cat "$f")" 2>/dev/null || true; fi
		done
	fi
	for pid in "${WORKER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	WORKER_PIDS=()
}

start_worker() {
	saga_as_pg env DEMO_STOP="$SAGA_WORK/stop-workers" DEMO_PIDFILE="$SAGA_WORK/pg/worker-$1.pid" \
		bash src/demo/worker.sh "$1" &
	WORKER_PIDS+=($!)
}

q() { saga_psql -A -t "$@"; }

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
	saga_on_cleanup stop_workers
	saga_psql -c 'CREATE EXTENSION saga'
	saga_psql -f src/demo/shop.sql >/dev/null
	saga_stage_end

	saga_stage_begin "sagas"
	printf '\nsaga definition order_flow:\n'
	q -c "SELECT jsonb_pretty(definition) FROM saga.definitions WHERE name = 'order_flow' ORDER BY version DESC LIMIT 1"

	printf '\nservices (demo/worker.sh): payments = transactional poll, inventory and notifications = leased claim\n'
	start_worker payments
	start_worker inventory
	start_worker notifications

	# every 4th order is for a gadget; only two gadgets are in stock
	local n sku orders_sql=""
	for n in $(seq 1 "$ORDERS"); do
		if [ $((n % 4)) -eq 0 ]; then sku=gadget; else sku=widget; fi
		orders_sql+="SELECT shop.place_order($n, 'customer-$n', '$sku', 1);"$'\n'
	done
	printf '\nplacing %s orders (each: saga.start(..., correlation_id => order-N, idempotency_key => order-N))\n' "$ORDERS"
	q <<<"$orders_sql" >/dev/null
	local again first
	first=$(q -c "SELECT saga_id FROM shop.orders WHERE id = 1")
	again=$(q -c "SELECT shop.place_order(1, 'customer-1', 'widget', 1)")
	printf 'order 1 placed again: saga %s (first time: saga %s)\n\n' "$again" "$first"
	[ "$again" = "$first" ] || saga_die "the idempotency key did not return the same saga"

	# wait (bounded) until every saga is in a final state
	local deadline=$((SECONDS + TIMEOUT)) open
	while :; do
		open=$(q -c "SELECT count(*) FROM saga.instances
		              WHERE status NOT IN ('completed', 'compensated', 'cancelled', 'failed')")
		[ "$open" -eq 0 ] && break
		if [ "$SECONDS" -ge "$deadline" ]; then
			stop_workers
			printf '\n%s sagas still open after %s s:\n' "$open" "$TIMEOUT"
			saga_psql -c "SELECT i.correlation_id, i.status, r.step, r.status AS step_status, r.attempts
			                FROM saga.instances i JOIN saga.step_runs r ON r.saga_id = i.id
			               WHERE i.status NOT IN ('completed', 'compensated', 'cancelled', 'failed')
			               ORDER BY i.id, r.step_index"
			saga_psql -c "SELECT id, topic, kind, step, attempt, deliveries, lease_owner, visible_at FROM saga.outbox ORDER BY id"
			saga_server_log_tail 30
			saga_die "not every saga finished within $TIMEOUT s"
		fi
		sleep 0.5
	done
	stop_workers
	saga_stage_end

	report
}

report() {
	local problems
	printf '\n=== outcome ===\n'
	saga_psql -c "SELECT status, count(*) AS sagas FROM saga.instances GROUP BY status ORDER BY status"
	printf 'completed:   %s\n' "$(q -c "SELECT string_agg(correlation_id, ' ' ORDER BY id) FROM saga.instances WHERE status = 'completed'")"
	printf 'compensated: %s\n' "$(q -c "SELECT string_agg(correlation_id, ' ' ORDER BY id) FROM saga.instances WHERE status = 'compensated'")"
	printf 'notification retried: %s\n\n' "$(q -c "SELECT string_agg(DISTINCT i.correlation_id, ' ') FROM saga.step_runs r JOIN saga.instances i ON i.id = r.saga_id WHERE r.step = 'notify_customer' AND r.attempts > 1")"

	printf 'orders, payments, reservations and notifications:\n'
	saga_psql -c "
		SELECT o.id AS order_id, i.correlation_id, o.sku, i.status AS saga, o.status AS order_status,
		       p.id AS payment, p.status AS payment_status, r.status AS reservation,
		       n.order_id IS NOT NULL AS notified
		  FROM shop.orders o
		  JOIN saga.instances i ON i.id = o.saga_id
		  LEFT JOIN shop.payments p ON p.order_id = o.id
		  LEFT JOIN shop.reservations r ON r.order_id = o.id
		  LEFT JOIN shop.notifications n ON n.order_id = o.id
		 ORDER BY o.id"
	saga_psql -c "SELECT status AS payments, count(*), sum(amount) AS amount FROM shop.payments GROUP BY status ORDER BY status"
	saga_psql -c "SELECT sku, stocked, stock AS in_stock FROM shop.products ORDER BY sku"

	local cs
	cs=$(q -c "SELECT id FROM saga.instances WHERE status = 'compensated' ORDER BY id LIMIT 1")
	if [ -n "$cs" ]; then
		printf 'history of compensated saga %s (%s):\n' "$cs" \
			"$(q -c "SELECT correlation_id FROM saga.instances WHERE id = $cs")"
		saga_psql -c "SELECT to_char(at, 'HH24:MI:SS.MS') AS at, event, step, actor, detail
		                FROM saga.history WHERE saga_id = $cs ORDER BY at, id"
		saga_psql -c "SELECT step, status, attempts, result, error FROM saga.step_runs
		               WHERE saga_id = $cs ORDER BY step_index"
	fi

	# the books must balance
	problems=$(q <<-'SQL'
		SELECT format('%s: saga %s but %s', i.correlation_id, i.status, v.problem)
		  FROM saga.instances i
		  JOIN shop.orders o ON o.saga_id = i.id
		  LEFT JOIN shop.payments p ON p.order_id = o.id
		  LEFT JOIN shop.reservations r ON r.order_id = o.id
		  LEFT JOIN shop.notifications n ON n.order_id = o.id
		 CROSS JOIN LATERAL (VALUES
		       (i.status NOT IN ('completed', 'compensated'), 'it should have finished'),
		       (i.status = 'completed' AND p.status IS DISTINCT FROM 'charged', 'payment not charged'),
		       (i.status = 'completed' AND r.status IS DISTINCT FROM 'reserved', 'stock not reserved'),
		       (i.status = 'completed' AND n.order_id IS NULL, 'customer not notified'),
		       (i.status = 'completed' AND o.status <> 'confirmed', 'order not confirmed'),
		       (i.status = 'compensated' AND p.status IS DISTINCT FROM 'refunded', 'payment not refunded'),
		       (i.status = 'compensated' AND r.status = 'reserved', 'stock still reserved'),
		       (i.status = 'compensated' AND n.order_id IS NOT NULL, 'customer notified'),
		       (i.status = 'compensated' AND o.status <> 'cancelled', 'order not cancelled')
		       ) AS v(bad, problem)
		 WHERE v.bad
		UNION ALL
		SELECT format('%s: %s stocked, %s in stock, %s reserved', p.sku, p.stocked, p.stock,
		              coalesce(sum(r.qty) FILTER (WHERE r.status = 'reserved'), 0))
		  FROM shop.products p LEFT JOIN shop.reservations r ON r.sku = p.sku
		 GROUP BY p.sku
		HAVING p.stocked <> p.stock + coalesce(sum(r.qty) FILTER (WHERE r.status = 'reserved'), 0)
		UNION ALL
		SELECT format('%s tasks left in the outbox', count(*)) FROM saga.outbox HAVING count(*) > 0
		UNION ALL
		SELECT format('%s orders without a saga', count(*)) FROM shop.orders
		 WHERE saga_id IS NULL HAVING count(*) > 0
		UNION ALL
		SELECT format('expected %s compensated gadget orders, got %s', e.n, g.n)
		  FROM (SELECT greatest(count(*) - 2, 0) AS n FROM shop.orders WHERE sku = 'gadget') e,
		       (SELECT count(*) AS n FROM shop.orders o JOIN saga.instances i ON i.id = o.saga_id
		         WHERE i.status = 'compensated') g
		 WHERE e.n <> g.n;
	SQL
	)
	if [ -n "$problems" ]; then
		printf '\nINCONSISTENT:\n%s\n' "$problems"
		saga_die "the demo's outcome is inconsistent"
	fi
	printf '\nconsistent: every completed order is charged, reserved and notified; every compensated order is refunded and holds no stock\n'
	saga_print_timings
}

main "$@"
