#!/usr/bin/env bash
# demo/worker.sh: one instance of a shop service (scripts/demo.sh starts them).
#
#   bash demo/worker.sh TOPIC NAME      TOPIC: payments, inventory or notifications
#
# A service serves every outbox row of its topic: saga tasks (kind action or compensate, of
# order_flow) and event deliveries (kind event, of order_events) alike, through
# shop.serve_<topic>() in demo/shop.sql, which does the work and reports it (saga.complete or
# saga.fail; for a delivery also saga.publish of the answer) in one transaction.  What differs
# is how it gets the rows, the two worker protocols:
#
#   payments, notifications   leased claim: saga.claim() commits a lease of 2 seconds on a
#                             batch; each row is then served in a transaction of its own, whose
#                             report carries the lease number (refused if the lease was lost)
#   inventory                 transactional poll: shop.inventory_poll() locks a batch FOR
#                             UPDATE SKIP LOCKED and serves it in the same transaction
#
# Connection settings come from the PG* environment variables.  SIGTERM stops it after its
# round.  DEMO_HANG_ON (correlation ids, space-separated) injects a fault: once it has claimed a
# row of one of those orders, the instance hangs before reporting, as a service stuck on a call
# would; scripts/demo.sh then kills it with SIGKILL and its leases lapse.  A real service would
# also LISTEN saga_<topic> to wake up early; polling every 100 ms is enough here.
set -uo pipefail

topic=${1:?usage: worker.sh payments|inventory|notifications NAME}
worker=${2:-$topic-$$}
LEASE='2 seconds'   # of a leased claim
hang_on=" ${DEMO_HANG_ON:-} "
[ -z "${DEMO_PIDFILE:-}" ] || echo $$ >"$DEMO_PIDFILE"

log() { printf '  [%-15s] %s\n' "$worker" "$*"; }

# run SQL from stdin, variables as name=value arguments, unaligned tab-separated output
sql() {
	local args=() v
	for v in "$@"; do args+=(-v "$v"); done
	psql -X -q -A -t -F $'\t' -v ON_ERROR_STOP=1 "${args[@]}"
}

# --- transactional poll: one transaction locks, works and reports ---------------------------
poll_round() {
	local out
	out=$(sql worker="$worker" <<-'SQL'
		BEGIN;
		SELECT * FROM shop.inventory_poll(:'worker');
		COMMIT;
	SQL
	) || { log "poll failed (rolled back: the rows are visible again)"; return 1; }
	[ -n "$out" ] || return 1
	while IFS= read -r line; do log "$line"; done <<<"$out"
}

# --- leased claim: the lease commits first, each report comes later -------------------------
claim_round() {
	local tasks id lease cid headers out
	tasks=$(sql topic="$topic" worker="$worker" lease="$LEASE" <<-'SQL'
		SELECT id, lease, headers ->> 'correlation_id', headers
		  FROM saga.claim(:'topic', :'worker', 10, :'lease');
	SQL
	) || { log "claim failed"; return 1; }
	[ -n "$tasks" ] || return 1
	while IFS=$'\t' read -r id lease cid headers; do
		if [[ $hang_on == *" $cid "* ]]; then
			log "claimed $cid (task $id, lease $lease) and hangs before reporting (DEMO_HANG_ON)"
			sleep infinity
		fi
		if out=$(sql id="$id" lease="$lease" headers="$headers" worker="$worker" \
			<<<"SELECT shop.serve_$topic(:id, :lease, :'headers', :'worker');" 2>&1); then
			log "$out"
		else
			# 55000: the lease was lost (it lapsed, someone else has the row now): the
			# transaction rolled back, the work with it; the current holder does it
			log "task $id ($cid) not served: ${out//$'\n'/ }"
		fi
	done <<<"$tasks"
}

stopping=
trap 'stopping=1' TERM
log "started ($( [ "$topic" = inventory ] && echo 'transactional poll' || echo "leased claim, lease $LEASE"))"
while [ -z "$stopping" ]; do
	if [ "$topic" = inventory ]; then
		poll_round && continue
	else
		claim_round && continue
	fi
	sleep 0.1
done
log "stopped"
