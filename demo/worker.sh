#!/usr/bin/env bash
# demo/worker.sh: the shop's services, one process per topic (started by scripts/demo.sh).
#
#   bash demo/worker.sh payments       transactional poll: BEGIN; lock a batch of outbox rows
#                                      FOR UPDATE SKIP LOCKED; work; saga.complete(); COMMIT
#   bash demo/worker.sh inventory      leased claim: saga.claim() commits a lease; the work is
#   bash demo/worker.sh notifications  done outside that transaction; the report carries the
#                                      lease number (saga.complete / saga.fail ... lease => n)
#
# Connection settings come from the PG* environment variables.  The loop ends when the file
# named by $DEMO_STOP exists.  A real service would also LISTEN saga_<topic> to wake up early;
# polling every 200 ms is enough here.
set -uo pipefail

topic=${1:?usage: worker.sh payments|inventory|notifications}
worker="$topic-$$"
stop=${DEMO_STOP:-/nonexistent}
[ -z "${DEMO_PIDFILE:-}" ] || echo $$ >"$DEMO_PIDFILE"

log() { printf '[%-13s] %s\n' "$topic" "$*"; }

# run SQL from stdin, variables as name=value arguments, unaligned tab-separated output
sql() {
	local args=() v
	for v in "$@"; do args+=(-v "$v"); done
	psql -X -q -A -t -F $'\t' -v ON_ERROR_STOP=1 "${args[@]}"
}

# --- transactional poll ---------------------------------------------------------------------
# shop.payments_poll() runs the SELECT ... FOR UPDATE SKIP LOCKED and the saga.complete()
# calls; its work (the charge or the refund) commits together with the report.
payments_round() {
	sql <<-'SQL'
		BEGIN;
		SELECT * FROM shop.payments_poll(10);
		COMMIT;
	SQL
}

# --- leased claim ---------------------------------------------------------------------------
complete() { # id lease result
	sql id="$1" lease="$2" result="$3" <<<"SELECT saga.complete(:id, :'result', lease => :lease);" >/dev/null
}
fail() { # id lease error retryable
	sql id="$1" lease="$2" error="$3" retryable="$4" \
		<<<"SELECT saga.fail(:id, :'error', retryable => :retryable, lease => :lease);" >/dev/null
}

handle_task() { # id kind lease attempt correlation_id payload
	local id=$1 kind=$2 lease=$3 attempt=$4 cid=$5 payload=$6 ok out
	case "$topic/$kind" in
	inventory/action)
		# tell the engine we are alive (extends the lease), then do the work
		sql id="$id" lease="$lease" <<<"SELECT saga.heartbeat(:id, :lease);" >/dev/null || return 1
		IFS=$'\t' read -r ok out < <(sql payload="$payload" \
			<<<"SELECT r ->> 'ok', r FROM shop.reserve_stock(:'payload') AS r;") || return 1
		if [ "$ok" = true ]; then
			complete "$id" "$lease" "$out" && log "reserved stock for $cid"
		else
			# no point retrying: the saga compensates (refunds the payment)
			fail "$id" "$lease" "$out" false && log "$cid: out of stock, step failed for good"
		fi
		;;
	inventory/compensate)
		out=$(sql payload="$payload" <<<"SELECT shop.release_stock(:'payload');") || return 1
		complete "$id" "$lease" "$out" && log "released stock of $cid"
		;;
	notifications/action)
		IFS=$'\t' read -r ok out < <(sql payload="$payload" attempt="$attempt" \
			<<<"SELECT r ->> 'ok', r FROM shop.send_notification(:'payload', :attempt) AS r;") || return 1
		if [ "$ok" = true ]; then
			complete "$id" "$lease" "$out" && log "notified customer of $cid (attempt $attempt)"
		else
			# retryable: the task comes back after the step's backoff, with attempt + 1
			fail "$id" "$lease" "$out" true && log "$cid: mail server timeout, will retry"
		fi
		;;
	*)
		log "unexpected $kind task $id; failing it"
		fail "$id" "$lease" '{"reason": "unexpected task"}' false
		;;
	esac
}

claim_round() {
	local tasks id kind lease attempt cid payload n=0
	tasks=$(sql topic="$topic" worker="$worker" <<-'SQL'
		SELECT id, kind, lease, attempt, headers ->> 'correlation_id', payload
		  FROM saga.claim(:'topic', :'worker', 10, '30 seconds');
	SQL
	) || return 1
	while IFS=$'\t' read -r id kind lease attempt cid payload; do
		[ -n "$id" ] || continue
		n=$((n + 1))
		handle_task "$id" "$kind" "$lease" "$attempt" "$cid" "$payload" ||
			log "task $id ($cid): error, its lease will lapse and it will be delivered again"
	done <<<"$tasks"
	[ "$n" -gt 0 ]
}

log "worker $worker started"
while [ ! -e "$stop" ]; do
	if [ "$topic" = payments ]; then
		out=$(payments_round) || { log "poll failed"; sleep 1; continue; }
		if [ -n "$out" ]; then
			while IFS= read -r line; do log "$line"; done <<<"$out"
			continue
		fi
	elif claim_round; then
		continue
	fi
	sleep 0.2
done
log "worker $worker stopped"
