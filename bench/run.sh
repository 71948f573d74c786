#!/usr/bin/env bash
# bench/run.sh: the saga benchmarks.  Usage: bash bench/run.sh   (as root or with sudo)
#
# Installs what it needs (the packages of scripts/common.sh, postgresql-15-pgq3 and libpq-dev),
# builds and installs saga, starts a throwaway PostgreSQL 15 (fsync and synchronous_commit on,
# shared_buffers 512MB, max_connections 50, the saga worker in the bench databases), runs the
# workloads below with pgbench (8 clients, 2 threads), alternating the variants of each
# comparison (A B A B ...), prints a table and writes it to bench/RESULTS.md.  The server and
# its directory are removed on exit, also on failure.  bench/README.md describes each figure.
#
# Environment (defaults; QUICK=1 gives a ~5-minute smoke test, written to RESULTS-quick.md):
#   DURATION=15          seconds per pgbench run (QUICK: 3)
#   ROUNDS=2             rounds of each A/B alternation
#   CLIENTS=8 JOBS=2     pgbench clients and threads
#   DURATION_LATENCY=10  seconds per latency measurement (QUICK: 3)
#   CLAIM_BACKLOG=1000000  pending tasks for the claim-latency comparison (QUICK: 100000)
#   DURATION_STEADY=600  seconds of the steady-load run (QUICK: 20)
#   SAMPLE_EVERY=30      seconds between size samples (QUICK: 5)
#   RETENTION=60         saga.retention during the steady run, seconds (QUICK: 5)
#   MEM_CALLS=100000     statements one backend runs for the memory figure (QUICK: 10000)
#   RESULTS=bench/RESULTS.md   where the report goes (ONLY=events: bench/RESULTS-events.md)
#   ONLY=                only these stages, comma-separated (a stage's prerequisites are added):
#                        starts steps pgq e2e failure notify events dispatch claim memory steady
#                        (ONLY=events: the choreography lines alone)
# shellcheck disable=SC2119  # helpers with optional arguments
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

SAGA_PACKAGES+=(postgresql-15-pgq3 libpq-dev)

# the command that reproduces this run: the settings given in the environment
GIVEN=""
for v in QUICK ONLY DURATION ROUNDS CLIENTS JOBS DURATION_LATENCY CLAIM_BACKLOG DURATION_STEADY \
	SAMPLE_EVERY RETENTION MEM_CALLS; do
	if [ -n "${!v:-}" ]; then GIVEN+="$v=${!v} "; fi
done
QUICK=${QUICK:-0}

# the stages to run: all, or those of ONLY and what they need (failure and dispatch take their
# rates from steps, steady from e2e)
STAGES=(starts steps pgq e2e failure notify events dispatch claim memory steady)
declare -A WANT
ONLY=${ONLY:-}
if [ -z "$ONLY" ]; then
	for s in "${STAGES[@]}"; do WANT[$s]=1; done
else
	for s in ${ONLY//,/ }; do
		[[ " ${STAGES[*]} " == *" $s "* ]] || saga_die "ONLY: unknown stage '$s' (stages: ${STAGES[*]})"
		WANT[$s]=1
	done
	if [ -n "${WANT[failure]:-}${WANT[dispatch]:-}" ]; then WANT[steps]=1; fi
	if [ -n "${WANT[steady]:-}" ]; then WANT[e2e]=1; fi
fi
wanted() { [ -n "${WANT[$1]:-}" ]; }

if [ "$QUICK" = 1 ]; then
	D=${DURATION:-3} D_LAT=${DURATION_LATENCY:-3} BACKLOG=${CLAIM_BACKLOG:-100000}
	D_STEADY=${DURATION_STEADY:-20} SAMPLE=${SAMPLE_EVERY:-5} RETENTION_S=${RETENTION:-5}
	MEM_N=${MEM_CALLS:-10000}
	RESULTS_FILE=${RESULTS:-$SAGA_ROOT/bench/RESULTS-quick.md}
else
	D=${DURATION:-15} D_LAT=${DURATION_LATENCY:-10} BACKLOG=${CLAIM_BACKLOG:-1000000}
	D_STEADY=${DURATION_STEADY:-600} SAMPLE=${SAMPLE_EVERY:-30} RETENTION_S=${RETENTION:-60}
	MEM_N=${MEM_CALLS:-100000}
	if [ -n "$ONLY" ]; then
		RESULTS_FILE=${RESULTS:-$SAGA_ROOT/bench/RESULTS-${ONLY//,/-}.md}
	else
		RESULTS_FILE=${RESULTS:-$SAGA_ROOT/bench/RESULTS.md}
	fi
fi
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-8}
JOBS=${JOBS:-2}
DBS=(bench)     # the benchmark databases (the saga worker runs in each)
if wanted events; then DBS+=(bench_events); fi
if wanted claim; then DBS+=(bench_claim); fi
if wanted steady; then DBS+=(bench_steady); fi
DB=bench        # the database of the throughput workloads (bench_events in stage events)

OUT=            # pgbench logs and tool output of this run
BG_PIDS=()      # background pgbench / loaders of ours
declare -A R    # R[workload] = "rate rate ..." (one per round)
declare -A NOTE # NOTE[workload] = warnings (pool ran dry, failed transactions)
REPORT=()       # lines of the results table

# ---------- helpers ----------------------------------------------------------------------------

q() { # q DB SQL: one value (or rows, |-separated)
	saga_psql -A -t -d "$1" -c "$2"
}

calc() { awk "BEGIN { printf \"%s\", ($*) }"; }
fmt0() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
fmt2() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }

mean() { # mean of the numbers in $1
	awk -v s="$1" 'BEGIN { n = split(s, a, " "); t = 0; for (i = 1; i <= n; i++) t += a[i]; printf "%.1f", n ? t / n : 0 }'
}

ratio() { # ratio B A, two decimals; n/a when A is 0 or missing
	awk -v b="$1" -v a="$2" 'BEGIN { if (a + 0 == 0 || b == "") print "n/a"; else printf "%.2f", b / a }'
}

# "mean (r1, r2, ...)" of a workload's rounds, rates rounded
figure() {
	local w=$1 list
	list=$(awk -v s="${R[$w]:-}" 'BEGIN { n = split(s, a, " "); for (i = 1; i <= n; i++) printf "%s%.0f", (i > 1 ? ", " : ""), a[i] }')
	printf '%s (%s)%s' "$(fmt0 "$(mean "${R[$w]:-}")")" "$list" "${NOTE[$w]:+ $(printf '%s' "${NOTE[$w]}")}"
}

add_row() { # add_row MEASUREMENT A_LABEL A_KEY B_LABEL B_KEY
	local a b
	a=$(mean "${R[$3]:-}") b=$(mean "${R[$5]:-}")
	REPORT+=("| $1 | $2: $(figure "$3") | $4: $(figure "$5") | **$(ratio "$b" "$a")** |")
}

kill_background() {
	local pid
	for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${BG_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	BG_PIDS=()
}

# wait until the benchmark clients of a database have gone (their statistics are flushed at exit)
wait_clients_gone() {
	local i
	for i in $(seq 1 100); do
		[ "$(q "$1" "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		              AND backend_type = 'client backend' AND pid <> pg_backend_pid()")" = 0 ] && return 0
		sleep 0.1
	done
	saga_warn "clients of $1 still connected after 10 s"
}

# run_pgbench NAME DB CLIENTS SECONDS SCRIPT [pgbench options]: sets PGB_TX, PGB_TPS, PGB_ELAPSED
run_pgbench() {
	local name=$1 db=$2 clients=$3 secs=$4 script=$5 jobs=$JOBS failed rc
	shift 5
	[ "$clients" -ge "$jobs" ] || jobs=$clients
	q "$db" "CHECKPOINT" >/dev/null
	rc=0
	saga_as_pg pgbench -n -c "$clients" -j "$jobs" -T "$secs" \
		-f "src/bench/pgbench/$script" "$@" "$db" >"$OUT/$name.log" 2>&1 || rc=$?
	if [ "$rc" -eq 2 ]; then
		# some clients aborted on an error: the run counts, marked
		saga_warn "pgbench $name: clients aborted: $(grep -m1 'aborted' "$OUT/$name.log")"
		NOTE[${name%.r*}]+=" [clients aborted]"
	elif [ "$rc" -ne 0 ]; then
		cat "$OUT/$name.log" >&2
		saga_die "pgbench $name failed"
	fi
	PGB_TX=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$OUT/$name.log")
	PGB_TPS=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$OUT/$name.log")
	failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$OUT/$name.log")
	PGB_ELAPSED=$(awk -v n="$PGB_TX" -v t="$PGB_TPS" 'BEGIN { printf "%.6f", (t > 0 ? n / t : 1) }')
	if [ "${failed:-0}" != 0 ]; then NOTE[${name%.r*}]+=" [${failed} failed tx]"; fi
	wait_clients_gone "$db"
}

record() { # record WORKLOAD RATE
	R[$1]="${R[$1]:-} $2"
	case $1 in saga_step | saga_claim1 | saga_poll50 | saga_claim50 | saga_claim50_1 | notify_* | ev_step | ev_step_claim)
		CHAIN_RATE=$(awk -v a="$CHAIN_RATE" -v b="$2" 'BEGIN { print (b > a ? b : a) }') ;;
	esac
	printf '    %-22s round %s: %10.1f /s\n' "$1" "$ROUND" "$2"
}

outbox_deleted() { # rows deleted from an outbox table so far (statistics)
	q "$DB" "SELECT n_tup_del FROM pg_stat_user_tables WHERE relid = '$1'::regclass"
}

pending() { # ready tasks of a topic in saga.outbox
	q "${2:-$DB}" "SELECT count(*) FROM saga.outbox WHERE topic = '$1'"
}

dry_check() { # dry_check WORKLOAD COUNT: warn when the pool it drew from ran empty
	if [ "$2" -eq 0 ]; then
		NOTE[$1]=" [pool ran dry]"
		saga_warn "$1: the pool ran dry during round $ROUND; raise the preload"
	fi
}

# ---------- pools (preloaded work, outside the timed runs) -----------------------------------

CHAIN_POOL=20000     # pending sagas on topic chain (and baseline sagas), set after calibration
CHAIN_RATE=0         # the highest step rate seen on topic chain

# before a run on topic chain: at least CHAIN_POOL sagas pending, and steps left in them for a
# run at 1.5 times the highest rate seen (a pending task of step i has 10 - i steps left)
topup_chain() {
	local have left need
	IFS='|' read -r have left < <(q "$DB" "SELECT count(*), coalesce(sum(10 - ((id >> 1) & 511)), 0)
	                                         FROM saga.outbox WHERE topic = 'chain'")
	need=$(awk -v h="$have" -v l="$left" -v p="$CHAIN_POOL" -v r="$CHAIN_RATE" -v d="$D" 'BEGIN {
		a = p - h; b = int((1.5 * r * d - l) / 10) + 1; n = (a > b ? a : b); print (n > 0 ? n : 0) }')
	if [ "$need" -gt 0 ]; then
		saga_psql -d "$DB" -c "SET synchronous_commit = off" -c "CALL bench_start_many('chain', $need)"
	fi
}

fill_pgq() { # fill_pgq EVENTS: make at least EVENTS pending for consumer c
	local have
	have=$(q bench "SELECT pending_events FROM pgq.get_consumer_info('bq', 'c')")
	if [ "$have" -lt "$1" ]; then
		saga_psql -d bench -c "SET synchronous_commit = off" \
			-c "CALL bench_pgq_fill($(($1 - have)), 50)"
	fi
}

# ---------- workloads (each measures one round and records its rate) ---------------------------

wl_base_start() {
	run_pgbench "base_start.r$ROUND" bench "$CLIENTS" "$D" base_start.sql
	record base_start "$PGB_TPS"
}
wl_saga_start() {
	run_pgbench "saga_start.r$ROUND" bench "$CLIENTS" "$D" saga_start.sql
	record saga_start "$PGB_TPS"
}
wl_pgq_insert() {
	run_pgbench "pgq_insert.r$ROUND" bench "$CLIENTS" "$D" pgq_insert.sql
	record pgq_insert "$PGB_TPS"
}

# Each step and end-to-end run starts from vacuumed tables, both variants' alike: the batch
# workloads delete ten times as many rows from saga.outbox as a step run does, and the next run
# would otherwise pay for their dead index entries at the head of the queue (which the baseline's
# table never has), or share the machine with the autovacuum they set off.
settle_tables() { # settle_tables DB
	saga_psql -d "$1" -c "VACUUM saga.outbox, saga.sagas, saga.history_log, base.outbox, base.saga, base.history" >/dev/null
}

# steps/s = outbox rows deleted (one per completed task) per second of the run
steps_run() { # steps_run WORKLOAD OUTBOX CLIENTS SCRIPT [options]
	local w=$1 table=$2 clients=$3 before after
	shift 3
	settle_tables "$DB"
	before=$(outbox_deleted "$table")
	run_pgbench "$w.r$ROUND" "$DB" "$clients" "$D" "$@"
	after=$(outbox_deleted "$table")
	record "$w" "$(calc "($after - $before) / $PGB_ELAPSED")"
}

wl_base_step() {
	steps_run base_step base.outbox "$CLIENTS" base_step.sql -D "topic='chain'" -D nsteps=10 -D wrap=1
}
wl_base_step_quiet() {
	steps_run base_step_quiet base.outbox "$CLIENTS" base_step.sql -D "topic='chain'" -D nsteps=10 -D wrap=1
}
wl_base_step_notify() {
	steps_run base_step_notify base.outbox "$CLIENTS" base_step_notify.sql -D "topic='chain'" -D nsteps=10 -D wrap=1
}
wl_saga_step() {
	topup_chain
	steps_run saga_step saga.outbox "$CLIENTS" saga_step.sql -D "topic='chain'" -D n=1
	dry_check saga_step "$(pending chain)"
}
wl_saga_claim1() {
	topup_chain
	steps_run saga_claim1 saga.outbox "$CLIENTS" saga_claim.sql -D "topic='chain'" -D n=1
	dry_check saga_claim1 "$(pending chain)"
}
# the machine's commit ceiling: a one-row INSERT per transaction (the table is emptied first)
wl_ceiling() {
	saga_psql -d "$DB" -c "TRUNCATE base.ceiling" >/dev/null
	run_pgbench "ceiling.r$ROUND" "$DB" "$CLIENTS" "$D" ceiling.sql
	record ceiling "$PGB_TPS"
}
wl_saga_poll50() {
	topup_chain
	steps_run saga_poll50 saga.outbox "$CLIENTS" saga_step.sql -D "topic='chain'" -D n=50
	dry_check saga_poll50 "$(pending chain)"
}
wl_saga_claim50() {
	topup_chain
	steps_run saga_claim50 saga.outbox "$CLIENTS" saga_claim.sql -D "topic='chain'" -D n=50
	dry_check saga_claim50 "$(pending chain)"
}
wl_saga_claim50_1() {
	topup_chain
	steps_run saga_claim50_1 saga.outbox 1 saga_claim.sql -D "topic='chain'" -D n=50
	dry_check saga_claim50_1 "$(pending chain)"
}
wl_pgq_consume_1() {
	local before after
	fill_pgq "$(fmt0 "$(calc "1.5 * $PGQ_RATE * $D + 10000")")"
	before=$(q bench "SELECT pending_events FROM pgq.get_consumer_info('bq', 'c')")
	run_pgbench "pgq_consume_1.r$ROUND" bench 1 "$D" pgq_consume.sql
	after=$(q bench "SELECT pending_events FROM pgq.get_consumer_info('bq', 'c')")
	record pgq_consume_1 "$(calc "($before - $after) / $PGB_ELAPSED")"
	PGQ_RATE=$(calc "($before - $after) / $PGB_ELAPSED > $PGQ_RATE ? ($before - $after) / $PGB_ELAPSED : $PGQ_RATE")
	dry_check pgq_consume_1 "$after"
}

# sagas/s end to end: sagas that finished during the run
wl_base_e3() {
	local t0 n
	settle_tables bench
	t0=$(q bench "SELECT clock_timestamp()")
	run_pgbench "base_e3.r$ROUND" bench "$CLIENTS" "$D" base_e3.sql
	n=$(q bench "SELECT count(*) FROM base.saga WHERE state = -1 AND updated_at >= '$t0'")
	record base_e3 "$(calc "$n / $PGB_ELAPSED")"
}
wl_saga_e3() {
	local t0 n
	settle_tables bench
	t0=$(q bench "SELECT clock_timestamp()")
	run_pgbench "saga_e3.r$ROUND" bench "$CLIENTS" "$D" saga_e3.sql
	n=$(q bench "SELECT count(*) FROM saga.sagas WHERE name = 'e3' AND status = 'completed'
	               AND finished_at >= '$t0'")
	record saga_e3 "$(calc "$n / $PGB_ELAPSED")"
}

# success and failure of step s2 of saga fs, drawn from one preloaded pool
wl_fs_success() {
	steps_run fs_success saga.outbox "$CLIENTS" saga_step.sql -D "topic='fs_b'" -D n=1
	dry_check fs_success "$(pending fs_b)"
}
wl_fs_fail() {
	steps_run fs_fail saga.outbox "$CLIENTS" saga_fail.sql
	dry_check fs_fail "$(pending fs_b)"
}

set_notify() {
	saga_psql -d bench -c "ALTER SYSTEM SET saga.notify = $1" -c "SELECT pg_reload_conf()" >/dev/null
	sleep 0.5
}
wl_notify_on() {
	set_notify on
	topup_chain
	steps_run notify_on saga.outbox "$CLIENTS" saga_step.sql -D "topic='chain'" -D n=1
}
wl_notify_off() {
	set_notify off
	topup_chain
	steps_run notify_off saga.outbox "$CLIENTS" saga_step.sql -D "topic='chain'" -D n=1
	set_notify on
}

rotate() { # rotate WORKLOAD...: ROUNDS rounds of the workloads in turn
	local w
	for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
		for w in "$@"; do "wl_$w"; done
	done
}

# ---------- stages -----------------------------------------------------------------------------

setup_cluster() {
	saga_make_workdir bench
	OUT=$SAGA_WORK/out
	PGLOG=$OUT/pglog
	mkdir -p "$OUT" "$SAGA_WORK/bin" "$PGLOG"
	saga_as_root chown postgres: "$PGLOG" # pgbench --log files (fan-out latency)
	local inc
	inc=$("$PG_CONFIG" --includedir)
	gcc -O2 -Wall -Wextra -Werror -o "$SAGA_WORK/bin/listen_latency" "$SAGA_ROOT/bench/listen_latency.c" -I"$inc" -lpq
	gcc -O2 -Wall -Wextra -Werror -o "$SAGA_WORK/bin/claim_latency" "$SAGA_ROOT/bench/claim_latency.c" -I"$inc" -lpq
	chmod 755 "$SAGA_WORK/bin" "$SAGA_WORK/bin"/*
	saga_cluster_start "fsync = on" "synchronous_commit = on" "shared_buffers = 512MB" \
		"max_connections = 50" "saga.databases = '$(
			IFS=,
			echo "${DBS[*]}"
		)'"
	saga_on_cleanup kill_background
	local db
	for db in "${DBS[@]}"; do
		saga_psql -c "CREATE DATABASE $db"
		saga_psql -d "$db" -f src/bench/setup.sql >/dev/null
	done
	if wanted starts || wanted pgq; then
		saga_psql -d bench -f src/bench/setup_pgq.sql >/dev/null
	fi
	if wanted events; then
		saga_psql -d bench_events -f src/bench/setup_events.sql >/dev/null
	fi
}

drop_db() { # drop_db DB: take it off the worker's list (saga.databases), then drop it
	local d keep=()
	for d in "${DBS[@]}"; do [ "$d" = "$1" ] || keep+=("$d"); done
	DBS=("${keep[@]}")
	saga_psql -c "ALTER SYSTEM SET saga.databases = '$(
		IFS=,
		echo "${DBS[*]}"
	)'" -c "SELECT pg_reload_conf()" >/dev/null
	saga_psql -c "DROP DATABASE $1 WITH (FORCE)" >/dev/null
}

stage_starts() {
	rotate base_start saga_start pgq_insert
	add_row "starts/s ($CLIENTS clients, one per transaction)" "baseline start" base_start "saga.start" saga_start
	add_row "... against PgQ (one event per transaction)" "pgq.insert_event" pgq_insert "saga.start" saga_start
}

stage_steps() {
	local cal before
	# calibrate the pool: a short batched run sizes it so that no saga of the pool can finish
	# within a run (each run advances every pending saga by less than 10 steps)
	saga_psql -d bench -c "SET synchronous_commit = off" -c "CALL bench_start_many('chain', $CHAIN_POOL)" \
		-c "SELECT base.start_many('chain', $CHAIN_POOL)" >/dev/null
	ROUND=0
	before=$(outbox_deleted saga.outbox)
	run_pgbench calibrate bench "$CLIENTS" 2 saga_step.sql -D "topic='chain'" -D n=50
	cal=$(calc "($(outbox_deleted saga.outbox) - $before) / $PGB_ELAPSED")
	CHAIN_RATE=$cal
	CHAIN_POOL=$(awk -v r="$cal" -v d="$D" -v p="$CHAIN_POOL" 'BEGIN { n = int(r * d * 0.4 / 1000 + 1) * 1000; print (n > p ? n : p) }')
	saga_log "batched poll ~$(fmt0 "$cal") steps/s: pools of $CHAIN_POOL sagas"
	topup_chain >/dev/null
	saga_psql -d bench -c "SET synchronous_commit = off" \
		-c "SELECT base.start_many('chain', ($CHAIN_POOL - (SELECT count(*) FROM base.outbox WHERE topic = 'chain'))::int)" >/dev/null
	saga_psql -d bench -c "VACUUM ANALYZE" >/dev/null
	rotate base_step saga_step saga_claim1 ceiling saga_poll50 saga_claim50
	add_row "steps/s ($CLIENTS clients, one task per transaction)" "baseline" base_step "transactional poll" saga_step
	add_row "... leased: claim(1) + complete(lease), one statement per transaction" "baseline" base_step "claim(1) + complete" saga_claim1
	add_row "... against the commit ceiling ($CLIENTS clients, a one-row INSERT per transaction)" "commit ceiling" ceiling "transactional poll" saga_step
	add_row "steps/s, batches of 50 per transaction" "baseline, 1 per tx" base_step "poll LIMIT 50 + complete" saga_poll50
	add_row "... batches of 50, leased" "baseline, 1 per tx" base_step "claim(50) + complete(lease)" saga_claim50
}

stage_pgq_consume() {
	fill_pgq 200000 >/dev/null
	# a short calibration so the queue is filled for a whole run
	ROUND=0
	run_pgbench pgq_calibrate bench 1 1 pgq_consume.sql
	PGQ_RATE=$(calc "$PGB_TPS * 50")
	rotate pgq_consume_1 saga_claim50_1
	add_row "events/s, one consumer, batches of 50" "PgQ next_batch/get_batch_events/finish_batch" pgq_consume_1 "saga claim(50) + complete, 1 client" saga_claim50_1
}

stage_e2e() {
	rotate base_e3 saga_e3
	add_row "3-step sagas/s end to end (start + 3 polled steps)" "baseline" base_e3 "saga" saga_e3
}

stage_failure() {
	local n
	n=$(awk -v r="$(mean "${R[saga_step]}")" -v d="$D" -v k="$ROUNDS" 'BEGIN { printf "%d", 1.3 * r * d * k * 2 + 2000 }')
	saga_log "preloading $n sagas at step s2 (of saga fs)"
	saga_psql -d bench -c "SET synchronous_commit = off" -c "CALL bench_start_many('fs', $n)" \
		-c "CALL bench_complete_topic('fs_a', $n)" -c "VACUUM ANALYZE saga.outbox" >/dev/null
	rotate fs_success fs_fail
	add_row "failure path vs success path (steps/s)" "complete (next step dispatched)" fs_success "fail(retryable => false) + compensation enqueued" fs_fail
}

stage_notify() {
	if q bench "SHOW saga.notify" >/dev/null 2>&1; then
		rotate notify_on notify_off
		add_row "steps/s, NOTIFY on dispatch on vs off" "saga.notify = on" notify_on "saga.notify = off" notify_off
	else
		saga_log "no GUC saga.notify: nothing to switch; measuring what a NOTIFY per transaction costs the baseline"
		REPORT+=("| steps/s, NOTIFY on dispatch on vs off | n/a (no switch: the GUC saga.notify does not exist) | | |")
		rotate base_step_quiet base_step_notify
		add_row "... proxy: baseline step without / with one NOTIFY per transaction" "baseline" base_step_quiet "baseline + NOTIFY" base_step_notify
	fi
}

# ---------- choreography: publish, flow tracking, deliveries, fan-out ------------------
# In database bench_events (setup_events.sql), dropped at the end of the stage: the deliveries
# that nobody consumes (publish, flow and fan-out lines) stay in its outbox until then.

EV_POOL=20000   # deliveries pending on topic ev_work before each run, at least
EV_RATE=0       # the highest delivery rate seen on topic ev_work
FLOW_TX=0       # pgbench transactions of the flow workload (one flow each)
declare -A SL   # SL[workload:statement] = "ms ms ..." mean statement latency (pgbench -r) per round

mean3() { # mean of the numbers in $1, three decimals
	awk -v s="$1" 'BEGIN { n = split(s, a, " "); t = 0; for (i = 1; i <= n; i++) t += a[i]; printf "%.3f", n ? t / n : 0 }'
}

stmt_latency() { # stmt_latency LOG TEXT: mean latency (ms) pgbench -r gave the statement containing TEXT
	awk -v t="$2" '/^statement latencies/ { f = 1; next } f && index($0, t) { print $1; exit }' "$1"
}

lat_stats() { # lat_stats FILE...: mean, p50, p99 (ms) of the transactions of pgbench --log files
	awk '$3 ~ /^[0-9]+$/ { print $3 }' "$@" | sort -n | awk '{ a[NR] = $1; t += $1 }
		END { if (NR == 0) { print "n/a n/a n/a"; exit }
		      printf "%.3f %.3f %.3f\n", t / NR / 1000, a[int((NR - 1) * 0.50) + 1] / 1000, a[int((NR - 1) * 0.99) + 1] / 1000 }'
}

# before a run on topic ev_work: at least EV_POOL deliveries pending, and 1.5 runs at the highest rate
topup_events() {
	local need
	need=$(awk -v h="$(pending ev_work)" -v p="$EV_POOL" -v r="$EV_RATE" -v d="$D" 'BEGIN {
		w = 1.5 * r * d; if (w < p) w = p; n = int(w - h); print (n > 0 ? n : 0) }')
	if [ "$need" -gt 0 ]; then
		saga_psql -d "$DB" -c "SET synchronous_commit = off" -c "CALL bench_publish_many('bench.work', $need)" >/dev/null
	fi
}

wl_ev_base_publish() {
	run_pgbench "ev_base_publish.r$ROUND" "$DB" "$CLIENTS" "$D" base_publish.sql
	record ev_base_publish "$PGB_TPS"
}
wl_ev_publish() {
	run_pgbench "ev_publish.r$ROUND" "$DB" "$CLIENTS" "$D" ev_publish.sql -D "etype='bench.pub3'" -D "corr='bench-noflow'"
	record ev_publish "$PGB_TPS"
}
# the same with prepared statements: without the baseline's parsing and planning
# (with -M prepared the variables are parameters, given without quotes)
wl_ev_base_publish_prep() {
	run_pgbench "ev_base_publish_prep.r$ROUND" "$DB" "$CLIENTS" "$D" base_publish.sql -M prepared
	record ev_base_publish_prep "$PGB_TPS"
}
wl_ev_publish_prep() {
	run_pgbench "ev_publish_prep.r$ROUND" "$DB" "$CLIENTS" "$D" ev_publish.sql -M prepared -D etype=bench.pub3 -D corr=bench-noflow
	record ev_publish_prep "$PGB_TPS"
}

flow_run() { # flow_run WORKLOAD START NEXT: publishes/s (two per pgbench transaction)
	run_pgbench "$1.r$ROUND" "$DB" "$CLIENTS" "$D" ev_flow.sql -r -D "start='$2'" -D "next='$3'"
	record "$1" "$(calc "2 * $PGB_TPS")"
	SL[$1:start]+=" $(stmt_latency "$OUT/$1.r$ROUND.log" 'saga.publish(:start')"
	SL[$1:next]+=" $(stmt_latency "$OUT/$1.r$ROUND.log" 'saga.publish(:next')"
}
wl_ev_flow_plain() { flow_run ev_flow_plain Plain.Placed Plain.Charged; }
wl_ev_flow() {
	flow_run ev_flow OrderPlaced PaymentCharged
	FLOW_TX=$((FLOW_TX + PGB_TX))
}

wl_ev_step() {
	topup_chain >/dev/null
	steps_run ev_step saga.outbox "$CLIENTS" saga_step.sql -D "topic='chain'" -D n=1
	dry_check ev_step "$(pending chain)"
}
wl_ev_step_claim() {
	topup_chain >/dev/null
	steps_run ev_step_claim saga.outbox "$CLIENTS" saga_claim.sql -D "topic='chain'" -D n=1
	dry_check ev_step_claim "$(pending chain)"
}
delivery_run() { # delivery_run WORKLOAD SCRIPT: deliveries of topic ev_work settled per second
	topup_events
	steps_run "$1" saga.outbox "$CLIENTS" "$2" -D "topic='ev_work'" -D n=1
	EV_RATE=$(awk -v a="$EV_RATE" -v s="${R[$1]}" 'BEGIN { n = split(s, x, " "); print (x[n] > a ? x[n] : a) }')
	dry_check "$1" "$(pending ev_work)"
}
wl_ev_poll() { delivery_run ev_poll saga_step.sql; }
wl_ev_claim() { delivery_run ev_claim saga_claim.sql; }

worker_cpu() { # CPU time (s) the saga worker of $DB has used so far (0 without one)
	local pid
	pid=$(q "$DB" "SELECT pid FROM pg_stat_activity WHERE backend_type = 'saga worker' AND datname = current_database() LIMIT 1")
	if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
		awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$pid/stat"
	else
		echo 0
	fi
}

fan_run() { # fan_run N: one client publishing events of a type with N subscriptions
	local w=ev_fan$1 c0 c1
	c0=$(worker_cpu)
	run_pgbench "$w.r$ROUND" "$DB" 1 "$D_LAT" ev_publish.sql -r --log --log-prefix="$PGLOG/$w.r$ROUND" \
		-D "etype='bench.fan$1'" -D "corr='bench-noflow'"
	c1=$(worker_cpu)
	SL[$w:publish]+=" $(stmt_latency "$OUT/$w.r$ROUND.log" 'saga.publish(')"
	# the worker's share of one CPU during the run (it sends the wake-ups of the deliveries)
	SL[$w:worker]+=" $(awk -v a="$c0" -v b="$c1" -v d="$D_LAT" 'BEGIN { v = (b - a) / d * 100; printf "%.1f", (v > 0 ? v : 0) }')"
	printf '    %-22s round %s: %10.1f /s, publish statement %s ms, saga worker %s%% of a CPU\n' "$w" "$ROUND" "$PGB_TPS" \
		"${SL[$w:publish]##* }" "${SL[$w:worker]##* }"
}

# what the runs left behind, as the API says it should be (logged; a mismatch is a warning)
events_check() {
	local n mn mx rows
	IFS='|' read -r n mn mx < <(q "$DB" "SELECT count(*), min(deliveries), max(deliveries) FROM saga.events WHERE type = 'bench.pub3'")
	rows=$(q "$DB" "SELECT count(*) FROM saga.outbox WHERE topic IN ('pub_a', 'pub_b', 'pub_c') AND kind = 'event'")
	saga_log "bench.pub3: $n events, deliveries per event $mn..$mx, $rows delivery rows"
	if [ "$mn" != 3 ] || [ "$mx" != 3 ] || [ "$rows" != $((3 * n)) ]; then
		saga_warn "bench.pub3: expected 3 deliveries per event and $((3 * n)) rows"
	fi
}
flows_check() {
	local n running waiting plain
	IFS='|' read -r n running waiting < <(q "$DB" "SELECT count(*), count(*) FILTER (WHERE status = 'running'),
	    count(*) FILTER (WHERE waiting_on = '{inventory}') FROM saga.flows WHERE choreography = 'order'")
	plain=$(q "$DB" "SELECT count(*) FROM saga.flows f JOIN saga.events e ON e.correlation_id = f.correlation_id
	                  WHERE e.type = 'Plain.Placed'")
	saga_log "choreography order: $n flows for $FLOW_TX start events, $running running, $waiting waiting on inventory; $plain flows for Plain.Placed"
	if [ "$n" != "$FLOW_TX" ] || [ "$running" != "$n" ] || [ "$waiting" != "$n" ] || [ "$plain" != 0 ]; then
		saga_warn "flows: expected $FLOW_TX running flows waiting on inventory, none for Plain.Placed"
	fi
}

stage_events() {
	local before s1 s10 s100
	DB=bench_events
	# 1. saga.publish against the hand-written statement
	rotate ev_base_publish ev_publish ev_base_publish_prep ev_publish_prep
	add_row "publishes/s ($CLIENTS clients, an event type with 3 subscriptions, one per transaction)" \
		"hand-written: event row + 3 delivery rows, one statement" ev_base_publish \
		"saga.publish (correlation id of no flow)" ev_publish
	add_row "... both as prepared statements (pgbench -M prepared)" \
		"hand-written, prepared" ev_base_publish_prep "saga.publish, prepared" ev_publish_prep
	events_check

	# 4. flow tracking: the same two publishes with and without a choreography concerned
	rotate ev_flow_plain ev_flow
	add_row "publishes/s, flow tracking ($CLIENTS clients; a start event with a fresh correlation id, then the event it caused, a transaction each)" \
		"no choreography concerned" ev_flow_plain "choreography order: a new flow, then its next event" ev_flow
	REPORT+=("| ... mean publish latency (ms, pgbench -r): start event / caused event | no choreography: $(mean3 "${SL[ev_flow_plain:start]:-}") / $(mean3 "${SL[ev_flow_plain:next]:-}") | order flow: $(mean3 "${SL[ev_flow:start]:-}") / $(mean3 "${SL[ev_flow:next]:-}") | start $(ratio "$(mean3 "${SL[ev_flow:start]:-}")" "$(mean3 "${SL[ev_flow_plain:start]:-}")"), caused $(ratio "$(mean3 "${SL[ev_flow:next]:-}")" "$(mean3 "${SL[ev_flow_plain:next]:-}")") |")
	flows_check

	# 2. delivery throughput against the step throughput, both measured here
	saga_log "preloading sagas on topic chain and deliveries on topic ev_work"
	topup_chain >/dev/null
	topup_events
	saga_psql -d "$DB" -c "VACUUM ANALYZE" >/dev/null
	ROUND=0
	before=$(outbox_deleted saga.outbox)
	run_pgbench ev_calibrate "$DB" "$CLIENTS" 2 saga_step.sql -D "topic='ev_work'" -D n=1
	EV_RATE=$(calc "($(outbox_deleted saga.outbox) - $before) / $PGB_ELAPSED")
	saga_log "transactional poll of deliveries ~$(fmt0 "$EV_RATE")/s"
	rotate ev_step ev_step_claim ev_poll ev_claim
	add_row "deliveries/s vs steps/s ($CLIENTS clients, one per transaction): transactional poll + complete" \
		"saga step (topic chain)" ev_step "event delivery (topic ev_work)" ev_poll
	add_row "deliveries/s vs steps/s: claim(1) + complete(lease), one transaction" \
		"saga step, transactional poll" ev_step "event delivery, claim(1) + complete(lease)" ev_claim
	add_row "... like for like: claim(1) + complete(lease) of each" \
		"saga step, claim(1)" ev_step_claim "event delivery, claim(1)" ev_claim

	# 3. fan-out: publish latency at 1, 10 and 100 subscribers, one client
	for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
		fan_run 1
		fan_run 10
		fan_run 100
	done
	read -r -a s1 <<<"$(lat_stats "$PGLOG"/ev_fan1.r*)"
	read -r -a s10 <<<"$(lat_stats "$PGLOG"/ev_fan10.r*)"
	read -r -a s100 <<<"$(lat_stats "$PGLOG"/ev_fan100.r*)"
	local m1 m10 m100 c1 c10 c100
	m1=$(mean3 "${SL[ev_fan1:publish]:-}") m10=$(mean3 "${SL[ev_fan10:publish]:-}") m100=$(mean3 "${SL[ev_fan100:publish]:-}")
	LAT_LINES+=("| fan-out: saga.publish statement, mean (ms, pgbench -r) | 1 subscriber: $m1 | 10 subscribers: $m10; 100 subscribers: $m100 | 10/1 $(ratio "$m10" "$m1"), **100/1 $(ratio "$m100" "$m1")** |")
	LAT_LINES+=("| fan-out: transaction (publish + commit), mean / p50 / p99 (ms) | 1 subscriber: ${s1[0]} / ${s1[1]} / ${s1[2]} | 10 subscribers: ${s10[0]} / ${s10[1]} / ${s10[2]}; 100 subscribers: ${s100[0]} / ${s100[1]} / ${s100[2]} | 100/1: mean $(ratio "${s100[0]}" "${s1[0]}"), p50 $(ratio "${s100[1]}" "${s1[1]}"), p99 $(ratio "${s100[2]}" "${s1[2]}") |")
	c1=$(mean "${SL[ev_fan1:worker]:-}") c10=$(mean "${SL[ev_fan10:worker]:-}") c100=$(mean "${SL[ev_fan100:worker]:-}")
	LAT_LINES+=("| fan-out: the saga worker's CPU during the run (% of one CPU) | 1 subscriber: $c1 | 10 subscribers: $c10; 100 subscribers: $c100 | |")

	DB=bench
	drop_db bench_events
}

LAT_LINES=()
stage_dispatch_latency() {
	local peak rate samples idle loaded bg_tps
	samples=$((D_LAT * 1000 / 20))
	idle=$(saga_as_pg "$SAGA_WORK/bin/listen_latency" "dbname=bench" disp disp "$samples" 20)
	peak=$(mean "${R[saga_step]}")
	rate=$(fmt0 "$(calc "$peak / 2")")
	topup_chain >/dev/null
	q bench "CHECKPOINT" >/dev/null
	saga_log "background load: transactional poll at $rate steps/s (half of $(fmt0 "$peak"))"
	saga_as_pg pgbench -n -c "$CLIENTS" -j "$JOBS" -T $((D_LAT + 4)) -R "$rate" \
		-f src/bench/pgbench/saga_step.sql -D "topic='chain'" -D n=1 bench >"$OUT/dispatch_bg.log" 2>&1 &
	BG_PIDS+=($!)
	sleep 2
	loaded=$(saga_as_pg "$SAGA_WORK/bin/listen_latency" "dbname=bench" disp disp "$samples" 20)
	wait "${BG_PIDS[@]}" || saga_warn "background pgbench failed: $(tail -3 "$OUT/dispatch_bg.log")"
	BG_PIDS=()
	bg_tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$OUT/dispatch_bg.log")
	wait_clients_gone bench
	# samples missed avg p50 p99 max send_p50 send_p99
	read -r -a I <<<"$idle"
	read -r -a L <<<"$loaded"
	LAT_LINES+=("| dispatch: commit -> LISTENer notified, p50 / p99 (ms) | idle: ${I[3]} / ${I[4]} | at $(fmt0 "$bg_tps") steps/s (half of peak): ${L[3]} / ${L[4]} | p99 $(ratio "${L[4]}" "${I[4]}") |")
	LAT_LINES+=("| dispatch: statement sent -> notified, p50 / p99 (ms) | idle: ${I[6]} / ${I[7]} | loaded: ${L[6]} / ${L[7]} | p99 $(ratio "${L[7]}" "${I[7]}") |")
	LAT_LINES+=("| dispatch: samples (missed), max commit -> notified (ms) | idle: ${I[0]} (${I[1]}), ${I[5]} | loaded: ${L[0]} (${L[1]}), ${L[5]} | |")
}

declare -A CL # CL[case] = "claim_avg claim_p50 claim_p99 both_avg both_p50 both_p99" summed over rounds
claim_run() { # claim_run CASE TOPIC DEFINITION
	local out
	q bench_claim "CHECKPOINT" >/dev/null
	out=$(saga_as_pg "$SAGA_WORK/bin/claim_latency" "dbname=bench_claim" "$2" "$3" "$D_LAT")
	printf '    %-22s round %s: %s\n' "claim_$1" "$ROUND" "$out"
	CL[$1]="${CL[$1]:-}|$out"
}
claim_mean() { # claim_mean CASE FIELD: mean over rounds of field FIELD (0-based) of the output
	awk -v s="${CL[$1]}" -v f="$2" 'BEGIN { n = split(s, r, "|"); t = 0; k = 0
		for (i = 1; i <= n; i++) if (r[i] != "") { split(r[i], a, " "); t += a[f + 1]; k++ }
		printf "%.3f", k ? t / k : 0 }'
}
stage_claim_latency() {
	local loaders=2 per i
	for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do claim_run empty lat lat; done
	per=$((BACKLOG / loaders))
	saga_log "loading $BACKLOG pending tasks on topic bulk ($loaders sessions, saga.start in transactions of 10k)"
	for ((i = 0; i < loaders; i++)); do
		saga_psql -d bench_claim -c "SET synchronous_commit = off" \
			-c "CALL bench_start_many('bulk', $per)" >/dev/null &
		BG_PIDS+=($!)
	done
	wait "${BG_PIDS[@]}"
	BG_PIDS=()
	saga_psql -d bench_claim -c "VACUUM ANALYZE" >/dev/null
	saga_log "$(pending bulk bench_claim) tasks pending on topic bulk"
	for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
		claim_run other lat lat
		claim_run same bulk bulk
	done
	local c label
	for c in other same; do
		if [ $c = other ]; then label="$BACKLOG pending on another topic"; else label="$BACKLOG pending on the same topic"; fi
		LAT_LINES+=("| claim(1) latency avg / p50 / p99 (ms) | empty topic: $(claim_mean empty 1) / $(claim_mean empty 2) / $(claim_mean empty 3) | $label: $(claim_mean $c 1) / $(claim_mean $c 2) / $(claim_mean $c 3) | p50 $(ratio "$(claim_mean $c 2)" "$(claim_mean empty 2)"), p99 $(ratio "$(claim_mean $c 3)" "$(claim_mean empty 3)") |")
		LAT_LINES+=("| claim + complete latency avg / p50 / p99 (ms) | empty topic: $(claim_mean empty 7) / $(claim_mean empty 8) / $(claim_mean empty 9) | $label: $(claim_mean $c 7) / $(claim_mean $c 8) / $(claim_mean $c 9) | p50 $(ratio "$(claim_mean $c 8)" "$(claim_mean empty 8)"), p99 $(ratio "$(claim_mean $c 9)" "$(claim_mean empty 9)") |")
	done
	# the backlog is not needed any more
	drop_db bench_claim
}

SIZE_SERIES=()
STEADY_EXTRA=
HIST=saga.history   # the table behind the history (saga.history_log where saga.history is a view)
sizes_row() { # one line of sizes (MB) of the saga tables in bench_steady
	q bench_steady "
	  SELECT format('%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s', $1,
	    (SELECT count(*) FROM saga.sagas), (SELECT count(*) FROM saga.sagas WHERE finished_at IS NULL),
	    (SELECT count(*) FROM saga.outbox),
	    round(pg_relation_size('saga.sagas') / 1048576.0, 1), round(pg_indexes_size('saga.sagas') / 1048576.0, 1),
	    round(pg_relation_size('saga.outbox') / 1048576.0, 1), round(pg_indexes_size('saga.outbox') / 1048576.0, 1),
	    round(pg_relation_size('$HIST') / 1048576.0, 1), round(pg_indexes_size('$HIST') / 1048576.0, 1),
	    (SELECT round(sum(pg_total_relation_size(c.oid)) / 1048576.0, 1) FROM pg_class c
	      WHERE c.relnamespace = 'saga'::regnamespace AND c.relkind IN ('r', 'p')),
	    (SELECT count(*) FROM saga.history))"
}
stage_steady() {
	local rate t0 pid next elapsed
	rate=$(fmt0 "$(calc "$(mean "${R[saga_e3]}") / 2")")
	HIST=$(q bench_steady "SELECT c.oid::regclass FROM pg_class c WHERE c.relnamespace = 'saga'::regnamespace
	                         AND c.relname IN ('history_log', 'history') AND c.relkind IN ('r', 'p')
	                       ORDER BY c.relname = 'history_log' DESC LIMIT 1")
	saga_psql -c "ALTER SYSTEM SET saga.retention = $RETENTION_S" -c "SELECT pg_reload_conf()" >/dev/null
	if [ "$QUICK" = 1 ]; then
		# the worker sleeps up to saga.max_sleep (60 s) between rounds: too long for a short run
		saga_psql -c "ALTER SYSTEM SET saga.max_sleep = 1000" -c "SELECT pg_reload_conf()" >/dev/null
		STEADY_EXTRA=", saga.max_sleep = 1000 ms"
	fi
	saga_log "steady load: $rate 3-step sagas/s (half of the measured peak) for $D_STEADY s, saga.retention = $RETENTION_S s"
	SIZE_SERIES+=("$(sizes_row "'before'")")
	q bench_steady "CHECKPOINT" >/dev/null
	saga_as_pg pgbench -n -c "$CLIENTS" -j "$JOBS" -T "$D_STEADY" -R "$rate" \
		-f src/bench/pgbench/saga_e3.sql bench_steady >"$OUT/steady.log" 2>&1 &
	pid=$!
	BG_PIDS+=("$pid")
	t0=$SECONDS
	next=$SAMPLE
	while kill -0 "$pid" 2>/dev/null; do
		elapsed=$((SECONDS - t0))
		if [ "$elapsed" -ge "$next" ]; then
			SIZE_SERIES+=("$(sizes_row "$elapsed")")
			printf '    %s\n' "${SIZE_SERIES[-1]}"
			next=$((next + SAMPLE))
		fi
		sleep 1
	done
	wait "$pid" || saga_warn "steady pgbench failed: $(tail -3 "$OUT/steady.log")"
	BG_PIDS=()
	wait_clients_gone bench_steady
	SIZE_SERIES+=("$(sizes_row "'after'")")
	STEADY_TPS=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$OUT/steady.log")
	STEADY_RATE=$rate
}

# ---------- memory per backend ------------------------------------------------------------------

# One psql session (one backend) runs MEM_N statements, a saga started and its step completed per
# two; it pauses in pg_sleep after the first 1,000 and after the last, and the backend's
# /proc/<pid>/status is read in each pause: RssAnon (its private memory) and VmRSS (with the
# shared buffers it touched).  synchronous_commit = off: the figure is memory, not commits.
MEM_LINES=()
mem_pause_read() { # mem_pause_read APPNAME: "RssAnon VmRSS" (kB) of the backend sleeping under it
	local pid="" i
	for i in $(seq 1 600); do
		pid=$(q bench "SELECT pid FROM pg_stat_activity WHERE application_name = '$1'
		                 AND wait_event = 'PgSleep'")
		[ -n "$pid" ] && break
		sleep 0.2
	done
	[ -n "$pid" ] || saga_die "memory: backend $1 never paused"
	awk '/^RssAnon:/ { a = $2 } /^VmRSS:/ { r = $2 } END { print a, r }' "/proc/$pid/status"
	# wait until it has left this pause
	while [ -n "$(q bench "SELECT 1 FROM pg_stat_activity WHERE pid = $pid AND wait_event = 'PgSleep'")" ]; do
		sleep 0.2
	done
}
mem_run() { # mem_run NAME START_SQL STEP_SQL: prints "anon_1k rss_1k anon_end rss_end" (kB)
	local name=$1 f="$OUT/mem_$1.sql" psql_pid first last
	awk -v app="mem_$name" -v n="$MEM_N" -v a="$2" -v b="$3" 'BEGIN {
		printf "SET application_name = %s;\nSET synchronous_commit = off;\n", "\x27" app "\x27"
		for (i = 0; i < n; i += 2) {
			print a; print b
			if (i + 2 == 1000) print "SELECT pg_sleep(2);"
		}
		print "SELECT pg_sleep(2);"
	}' >"$f"
	chmod 644 "$f"
	saga_psql -d bench -o /dev/null -f "$f" &
	psql_pid=$!
	BG_PIDS+=("$psql_pid")
	first=$(mem_pause_read "mem_$name")
	last=$(mem_pause_read "mem_$name")
	wait "$psql_pid" || saga_die "memory: the $name session failed"
	BG_PIDS=()
	echo "$first $last"
}
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
stage_memory() {
	local base saga b1 br1 b2 br2 s1 sr1 s2 sr2
	base=$(mem_run base \
		"WITH s AS (INSERT INTO base.saga (state, input, updated_at) VALUES (0, '{\"n\": 1}', now()) RETURNING id), o AS (INSERT INTO base.outbox (saga_id, step, topic, payload) SELECT id, 0, 'mem', '{\"input\": {\"n\": 1}, \"step\": 0}' FROM s), h AS (INSERT INTO base.history (saga_id, at, event, step) SELECT id, now(), 'started', 0 FROM s) SELECT id FROM s;" \
		"WITH t AS (SELECT id, saga_id, step FROM base.outbox WHERE topic = 'mem' AND visible_at <= now() ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1), d AS (DELETE FROM base.outbox o USING t WHERE o.id = t.id RETURNING t.saga_id, t.step), s AS (UPDATE base.saga s SET state = -1, updated_at = now() FROM d WHERE s.id = d.saga_id RETURNING s.id), h AS (INSERT INTO base.history (saga_id, at, event, step) SELECT saga_id, now(), 'completed', step FROM d) SELECT count(*) FROM d;")
	saga=$(mem_run saga "SELECT saga.start('mem', '{\"n\": 1}');" \
		"SELECT saga.complete(id, '{\"ok\": true}') FROM (SELECT id FROM saga.outbox WHERE topic = 'mem' AND visible_at <= now() ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1) t;")
	printf '    memory (kB: RssAnon, VmRSS after 1,000 and after %s): baseline %s; saga %s\n' "$MEM_N" "$base" "$saga"
	read -r b1 br1 b2 br2 <<<"$base"
	read -r s1 sr1 s2 sr2 <<<"$saga"
	MEM_LINES+=("| baseline: start + step statements | $(mb "$b1") | $(mb "$b2") | $(mb "$br1") | $(mb "$br2") |")
	MEM_LINES+=("| saga: saga.start + transactional poll and saga.complete | $(mb "$s1") | $(mb "$s2") | $(mb "$sr1") | $(mb "$sr2") |")
	MEM_LINES+=("| saga / baseline | $(ratio "$s1" "$b1") | **$(ratio "$s2" "$b2")** | $(ratio "$sr1" "$br1") | $(ratio "$sr2" "$br2") |")
}

# ---------- report -----------------------------------------------------------------------------

command_line() { printf '%sbash bench/run.sh' "$GIVEN"; }

run_stage() { # run_stage STAGE TITLE FUNCTION: when the stage is wanted (ONLY)
	wanted "$1" || return 0
	shift
	note_foreign_servers
	saga_stage_begin "$1"
	"$2"
	saga_stage_end
}

# other PostgreSQL servers on this machine compete for its CPUs and disk: note their data
# directories (checked at every stage)
declare -A FOREIGN=()   # assigned: with set -u an empty, unassigned array is "unbound"
note_foreign_servers() {
	local dir
	while IFS= read -r dir; do
		[ -n "$dir" ] && [ "$dir" != "$SAGA_PGDATA" ] && FOREIGN[$dir]=1
	done < <(ps -eo args= 2>/dev/null | sed -n 's|^[^ ]*/bin/postgres .*-D \([^ ]*\).*|\1|p')
	return 0
}

write_report() {
	local f=$1 commit dirty settings line s
	commit=$(git -C "$SAGA_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
	dirty=$(git -C "$SAGA_ROOT" status --porcelain -- src 'saga--*.sql' bench 2>/dev/null | wc -l || echo 0)
	settings=$(q bench "SELECT string_agg(name || ' = ' || current_setting(name), ', ' ORDER BY name)
	                      FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers',
	                      'max_connections', 'wal_level', 'max_wal_size', 'checkpoint_timeout', 'autovacuum')")
	{
		printf '# saga benchmarks\n\n'
		# shellcheck disable=SC2016  # the backquotes are markdown
		printf 'Reproduce: `%s` (as root or with sudo; see bench/README.md).\n\n' "$(command_line)"
		printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
		if [ "$dirty" -gt 0 ]; then dirty=' + uncommitted changes in src/, bench/ or the install scripts'; else dirty=''; fi
		printf -- '- saga: commit %s%s\n' "$commit" "$dirty"
		printf -- '- machine: %s CPUs (%s), %s GB RAM, %s\n' "$(nproc)" \
			"$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
			"$(awk '/MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)" "$(uname -sr)"
		printf -- '- server: %s\n' "$(q bench "SELECT version()")"
		printf -- '- settings: %s; shared_preload_libraries = saga; saga.databases = the bench databases; default saga.* otherwise\n' "$settings"
		if [ ${#FOREIGN[@]} -gt 0 ]; then
			printf -- '- **caution**: other PostgreSQL servers ran on this machine during the benchmark (%s); their load makes these figures noisier and lower\n' \
				"$(printf '%s ' "${!FOREIGN[@]}" | sed 's/ $//')"
		fi
		if [ -n "$ONLY" ]; then
			printf -- '- stages: %s only (ONLY)\n' "$(for s in "${STAGES[@]}"; do wanted "$s" && printf '%s ' "$s"; done | sed 's/ $//')"
		fi
		printf -- '- load: pgbench, %s clients, %s threads, %s s per run, variants alternated A B A B (%s rounds); figures are the mean, rounds in parentheses\n' \
			"$CLIENTS" "$JOBS" "$D" "$ROUNDS"
		if [ ${#REPORT[@]} -gt 0 ]; then
			printf '\n## Throughput\n\n'
			printf '| measurement | A (reference) | B | B/A |\n| --- | --- | --- | --- |\n'
			for line in "${REPORT[@]}"; do printf '%s\n' "$line"; done
		fi
		if [ ${#LAT_LINES[@]} -gt 0 ]; then
			printf '\n## Latency (single client; %s s per measurement)\n\n' "$D_LAT"
			printf '| measurement | A | B | B/A |\n| --- | --- | --- | --- |\n'
			for line in "${LAT_LINES[@]}"; do printf '%s\n' "$line"; done
		fi
		if [ ${#MEM_LINES[@]} -gt 0 ]; then
			local n_fmt
			n_fmt=$(sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$MEM_N")
			printf '\n## Memory per backend (one session, %s statements)\n\n' "$n_fmt"
			printf '| session | RssAnon after 1,000 (MB) | RssAnon after %s (MB) | VmRSS after 1,000 (MB) | VmRSS after %s (MB) |\n| --- | --- | --- | --- | --- |\n' "$n_fmt" "$n_fmt"
			for line in "${MEM_LINES[@]}"; do printf '%s\n' "$line"; done
		fi
		if [ ${#SIZE_SERIES[@]} -gt 0 ]; then
			steady_report
		fi
		local others=
		for s in "${STAGES[@]}"; do
			if [ "$s" != events ] && wanted "$s"; then others=1; fi
		done
		if [ -n "$others" ]; then
			printf '\nNotes: the baseline is bench/pgbench/base_*.sql: one state row, one outbox row per ready step, one history row per transition, '
			printf 'in one statement per transaction.'
			if wanted steps || wanted failure || wanted notify; then
				printf ' Steps are counted as outbox rows deleted (one per completed task).'
			fi
			if wanted e2e; then printf ' Sagas end to end are sagas finished during the run.'; fi
			if wanted claim; then
				printf ' Claim latency is bench/claim_latency.c (claim and complete are separate transactions, prepared statements).'
			fi
			if wanted dispatch; then
				printf ' Dispatch latency is bench/listen_latency.c (CLOCK_REALTIME, one process).'
			fi
			if wanted memory; then
				printf ' Memory: RssAnon is the backend'"'"'s private memory; VmRSS adds the pages of shared buffers it has touched, more for saga as its statements touch more tables and indexes.'
			fi
			printf '\n'
		fi
		if wanted events; then
			printf '\nChoreography lines (database bench_events, bench/setup_events.sql): the publish baseline is bench/pgbench/base_publish.sql, '
			printf 'one statement into base.events and base.ev_outbox, copies of saga.events and saga.outbox (LIKE ... INCLUDING ALL, same fillfactor); '
			printf 'deliveries and steps are counted as outbox rows deleted; flow tracking is the order choreography of the README (deadline 1 day); '
			printf 'fan-out latency is one client, the statement from pgbench -r, the transaction (BEGIN, publish, COMMIT) from pgbench --log.\n'
		fi
	} >"$f"
}

steady_report() {
	local line
	{
		printf '\n## Table sizes under steady load\n\n'
		printf '3-step sagas started and driven by %s clients at %s/s (half of the peak above; achieved %s/s), ' \
			"$CLIENTS" "$STEADY_RATE" "$(fmt0 "${STEADY_TPS:-0}")"
		printf 'for %s s, saga.retention = %s s%s; sizes in MB, sampled every %s s.\n\n' "$D_STEADY" "$RETENTION_S" "${STEADY_EXTRA:-}" "$SAMPLE"
		printf 'History table: %s; total: every table of schema saga with its indexes and TOAST.\n\n' "$HIST"
		printf '| t (s) | sagas | running | outbox rows | sagas heap | sagas idx | outbox heap | outbox idx | history heap | history idx | total | history events |\n'
		printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
		for line in "${SIZE_SERIES[@]}"; do printf '| %s |\n' "$line"; done
		if [ ${#SIZE_SERIES[@]} -ge 3 ]; then
			local mid=$((${#SIZE_SERIES[@]} / 2)) a b
			a=$(awk -F'|' '{ gsub(/ /, "", $11); print $11 }' <<<"${SIZE_SERIES[$mid]}")
			b=$(awk -F'|' '{ gsub(/ /, "", $11); print $11 }' <<<"${SIZE_SERIES[-1]}")
			printf '\nTotal size at the end / at mid-run: **%s** (1.00 = a plateau).\n' "$(ratio "$b" "$a")"
		fi
	}
}

main() {
	local t_start=$SECONDS
	saga_traps
	saga_init_privileges
	saga_stage_begin "packages"
	saga_install_packages
	saga_stage_end
	saga_stage_begin "build and install"
	saga_build_install
	saga_stage_end
	saga_stage_begin "throwaway cluster"
	setup_cluster
	saga_stage_end

	run_stage starts "starts" stage_starts
	run_stage steps "steps" stage_steps
	run_stage pgq "one consumer vs PgQ" stage_pgq_consume
	run_stage e2e "end to end" stage_e2e
	run_stage failure "failure path" stage_failure
	run_stage notify "notify on/off" stage_notify
	run_stage events "choreography: publish, flows, deliveries, fan-out" stage_events
	run_stage dispatch "dispatch latency" stage_dispatch_latency
	run_stage claim "claim latency" stage_claim_latency
	run_stage memory "memory per backend" stage_memory
	run_stage steady "steady load, sizes" stage_steady
	note_foreign_servers

	write_report "$OUT/RESULTS.md"
	printf '\n'
	cat "$OUT/RESULTS.md"
	cp "$OUT/RESULTS.md" "$RESULTS_FILE"
	saga_print_timings
	printf '\nwritten to %s (%s s in all)\n' "$RESULTS_FILE" $((SECONDS - t_start))
}

main "$@"
