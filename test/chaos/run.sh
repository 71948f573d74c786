#!/usr/bin/env bash
# test/chaos/run.sh: the saga engine under faults.  Usage: bash test/chaos/run.sh (as root or
# with sudo, no stdin needed).
#
# On a throwaway PostgreSQL 15 cluster (fsync on, so that kill -9 means what it says) with the
# *installed* extension (this script neither builds nor installs it), it starts SAGAS sagas of
# a mixed definition (test/chaos/schema.sql: a leased step, an SQL step, two parallel branches
# - one transactional poll, one leased with a timeout - a join, a final SQL step; each step with
# a compensation) at an even pace, served by POLLERS pollers (half transactional poll, half
# leased claim), a canceller and a zombie that reports under superseded leases
# (test/chaos/services.py).  While they run, for DURATION seconds, it
#   - kills a random poller with SIGKILL every 2-6 s and starts it again,
#   - ends the saga worker every 10-30 s (pg_terminate_backend, or SIGKILL: the postmaster then
#     reinitialises the whole cluster, a crash of its own),
#   - kills the server (postmaster and every child) with kill -9 every 5-40 s and starts it
#     again with pg_ctl start (crash recovery).
# Then it stops the faults, lets the pollers drain (at most DRAIN seconds) and audits from the
# services' own tables (svc.*) and saga.instances / saga.history (test/chaos/audit.sql):
#   sagas not terminal, steps whose effect happened twice, effects left standing in a
#   compensated (or cancelled) saga, stale reports accepted
# plus the consistency checks that show a loss in another way (an acknowledged start that is
# gone, a completed saga missing an effect or holding a compensation, a saga that completed
# although one of its steps was declined for good).  Exit status 0 only if all are 0.
#
# DURATION (default 600 s of faults), SAGAS (default 6 per second of DURATION), POLLERS
# (default 8), DRAIN (default 180 s), SEED (fates of the sagas; random by default) can be set;
# SAGA_KEEP=1 keeps the scratch directory (server log, process logs).
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

DURATION=${DURATION:-600}
SAGAS=${SAGAS:-$((DURATION * 6))}
POLLERS=${POLLERS:-8}
DRAIN=${DRAIN:-180}
SEED=${SEED:-$RANDOM$RANDOM}
PY=/usr/bin/python3        # Debian's python3, which python3-psycopg2 belongs to
# only what this test needs: the server and the driver of services.py
SAGA_PACKAGES=(postgresql-15 python3-psycopg2)

CHAOS=          # test/chaos in the scratch copy of the tree
RUN=            # process logs, stop files, acknowledged starts
declare -a PROC_PIDS=() PROC_ARGS=()    # index -> pid and arguments of services.py
declare -a POLLER_IDX=()                # indexes of the pollers in PROC_*
F_POLLER=0 F_WORKER_TERM=0 F_WORKER_KILL=0 F_SERVER=0 F_NO_WORKER=0 UNEXPECTED_EXITS=0

q() { saga_psql -A -t -c "$1"; }

# --- the processes of services.py -----------------------------------------------------------
# They run as root (any OS user may connect: trust over the unix socket, as postgres), so
# that $! is the python process itself and SIGKILL hits it, not a wrapper.

spawn() { # index
	local i=$1
	# shellcheck disable=SC2086 # PROC_ARGS holds words
	env PGHOST="$SAGA_PGHOST" PGPORT="$SAGA_PGPORT" PGUSER=postgres PGDATABASE=postgres \
		"$PY" -u "$CHAOS/services.py" ${PROC_ARGS[i]} >>"$RUN/proc-$i.log" 2>&1 &
	PROC_PIDS[i]=$!
}

add_proc() { # arguments...
	local i=${#PROC_ARGS[@]}
	PROC_ARGS[i]="$*"
	spawn "$i"
	LAST_IDX=$i
}

# SIGKILL and reap (the redirection keeps bash's "Killed" notice out of the output)
kill_proc() {
	{
		kill -9 "${PROC_PIDS[$1]}" || true
		wait "${PROC_PIDS[$1]}" || true
	} 2>/dev/null
}

# A process that exited 0 has finished (the starter once every saga is started, the others at
# their stop file); one that died otherwise, without being killed by us, is a fault of the test
# itself: restart it, and count it.
revive_dead() {
	local i rc
	for i in "${!PROC_PIDS[@]}"; do
		[ -n "${PROC_PIDS[i]}" ] || continue
		if ! kill -0 "${PROC_PIDS[i]}" 2>/dev/null; then
			rc=0
			wait "${PROC_PIDS[i]}" 2>/dev/null || rc=$?
			if [ "$rc" -eq 0 ]; then
				PROC_PIDS[i]=
				continue
			fi
			UNEXPECTED_EXITS=$((UNEXPECTED_EXITS + 1))
			saga_warn "process $i (${PROC_ARGS[i]%% *}) exited by itself; see $RUN/proc-$i.log"
			tail -n 5 "$RUN/proc-$i.log" >&2 || true
			spawn "$i"
		fi
	done
}

stop_procs() {
	local i
	[ -n "$RUN" ] || return 0
	touch "$RUN/stop-chaos" "$RUN/stop-all"
	for _ in $(seq 1 50); do
		[ -n "$(jobs -rp)" ] || break
		sleep 0.2
	done
	for i in "${!PROC_PIDS[@]}"; do
		[ -n "${PROC_PIDS[i]}" ] && kill_proc "$i"
	done
	PROC_PIDS=()
}

# --- faults ---------------------------------------------------------------------------------

rand_between() { echo $(($1 + RANDOM % ($2 - $1 + 1))); }

server_start() {
	local try out
	for try in 1 2 3; do
		# (after a kill -9 pg_ctl warns that "another server might be running": the stale
		# postmaster.pid; it is only worth showing when the start fails)
		if out=$(saga_as_pg pg_ctl -D "$SAGA_PGDATA" -l "$SAGA_SERVER_LOG" -w -t 120 start 2>&1); then
			return 0
		fi
		saga_warn "pg_ctl start failed (try $try): $out"
		sleep 2
	done
	saga_server_log_tail 40 >&2
	saga_die "the server did not come back after a crash"
}

# kill -9 the postmaster and, in the same breath, every process it had started: the whole
# server dies at once, as in a power cut (fsync is on), and no orphaned backend lives on to
# commit anything after its postmaster is gone
crash_server() {
	local pm kids p
	pm=$(head -n 1 "$SAGA_PGDATA/postmaster.pid" 2>/dev/null) || pm=
	if [ -z "$pm" ] || ! kill -0 "$pm" 2>/dev/null; then
		server_start
		return 0
	fi
	kids=$(grep -sl -P "^PPid:\t$pm\$" /proc/[0-9]*/status | cut -d/ -f3 | tr '\n' ' ') || kids=
	# shellcheck disable=SC2086
	kill -9 "$pm" $kids 2>/dev/null || true
	for _ in $(seq 1 100); do
		local alive=0
		for p in $pm $kids; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ "$alive" -eq 0 ] && break
		sleep 0.1
	done
	F_SERVER=$((F_SERVER + 1))
	server_start
}

# end the saga worker: mostly pg_terminate_backend (it is back within 5 s), sometimes SIGKILL,
# which the postmaster answers like any crashed child: every backend is ended and the cluster
# reinitialised (crash recovery) without our help
kill_saga_worker() {
	local pid
	pid=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'saga worker' LIMIT 1" 2>/dev/null) || pid=
	if [ -z "$pid" ]; then
		F_NO_WORKER=$((F_NO_WORKER + 1))     # restarting after the last fault: try later
		return 0
	fi
	if [ $((RANDOM % 3)) -eq 0 ]; then
		kill -9 "$pid" 2>/dev/null && F_WORKER_KILL=$((F_WORKER_KILL + 1))
	else
		q "SELECT pg_terminate_backend($pid)" >/dev/null 2>&1 && F_WORKER_TERM=$((F_WORKER_TERM + 1))
	fi
	return 0
}

kill_random_poller() {
	local i=${POLLER_IDX[RANDOM % ${#POLLER_IDX[@]}]}
	kill_proc "$i"
	F_POLLER=$((F_POLLER + 1))
	spawn "$i"
}

faults_total() { echo $((F_POLLER + F_WORKER_TERM + F_WORKER_KILL + F_SERVER)); }

progress() { # label
	local s
	s=$(q "SELECT format('%s started, %s running, %s compensating, %s finished; %s tasks in the outbox',
	                     count(*), count(*) FILTER (WHERE status = 'running'),
	                     count(*) FILTER (WHERE status = 'compensating'),
	                     count(*) FILTER (WHERE status IN ('completed', 'compensated', 'cancelled', 'failed')),
	                     (SELECT count(*) FROM saga.outbox))
	         FROM saga.instances WHERE name = 'chaos'" 2>/dev/null) || s="(server not reachable)"
	printf '[%4ss] %s: %s; %s faults\n' "$1" "${2:-chaos}" "$s" "$(faults_total)"
}

# --- the run --------------------------------------------------------------------------------

main() {
	saga_traps
	saga_init_privileges

	saga_stage_begin "packages"
	saga_install_packages
	"$PY" -c 'import psycopg2' || saga_die "$PY cannot import psycopg2"
	[ -f "$("$PG_CONFIG" --pkglibdir)/saga.so" ] ||
		saga_die "saga is not installed into PostgreSQL $PG_MAJOR (make install first)"
	saga_stage_end

	saga_stage_begin "throwaway cluster"
	saga_make_workdir chaos
	CHAOS=$SAGA_WORK/src/test/chaos
	RUN=$SAGA_WORK/run
	mkdir -m 755 "$RUN"
	# fsync and full pages as in production: a kill -9 must not lose a commit.  The saga
	# worker serves database postgres (the default), where everything here runs.
	saga_cluster_start "fsync = on" "synchronous_commit = on" "full_page_writes = on" \
		"restart_after_crash = on" "log_min_messages = warning" \
		"log_line_prefix = '%m [%p] %b '" "max_connections = 60"
	saga_on_cleanup stop_procs      # (hooks run last first: the services stop before the server)
	saga_psql -c 'CREATE EXTENSION saga' >/dev/null
	saga_psql -f "$CHAOS/schema.sql" >/dev/null
	# another `make install` may replace the library during the run: each restart then loads
	# the new one.  Noted at the end.
	SO=$("$PG_CONFIG" --pkglibdir)/saga.so
	SO_MTIME=$(date -r "$SO" '+%F %T')
	printf 'extension: saga %s (%s, installed %s)\n' \
		"$(q "SELECT extversion FROM pg_extension WHERE extname = 'saga'")" "$SO" "$SO_MTIME"
	saga_stage_end

	printf '\nDURATION=%s SAGAS=%s POLLERS=%s DRAIN=%s SEED=%s\n' "$DURATION" "$SAGAS" "$POLLERS" "$DRAIN" "$SEED"
	printf 'services: stock, billing = leased claim; shipping, confirm = transactional poll; charge, loyalty = SQL steps\n\n'

	saga_stage_begin "chaos"
	# The pollers stop at stop-all (after the drain), the others at stop-chaos (end of faults).
	local i
	# pollers: even ones poll (the transactional services' topics), odd ones claim (the
	# leased services' topics); both handle actions and compensations
	for ((i = 0; i < POLLERS; i++)); do
		if [ $((i % 2)) -eq 0 ]; then
			add_proc poll --name "poll-$i" --topics shipping,shipping_undo,confirm,confirm_undo --stop "$RUN/stop-all"
		else
			add_proc lease --name "lease-$i" --topics stock,stock_undo,billing,billing_undo --stop "$RUN/stop-all"
		fi
		POLLER_IDX+=("$LAST_IDX")
	done
	add_proc cancel --name canceller --stop "$RUN/stop-chaos"
	add_proc zombie --name zombie \
		--topics stock,shipping,billing,confirm,stock_undo,shipping_undo,billing_undo,confirm_undo --stop "$RUN/stop-chaos"
	add_proc start --name starter --sagas "$SAGAS" --duration "$DURATION" --seed "$SEED" \
		--acks "$RUN/acks.tsv" --stop "$RUN/stop-chaos"
	STARTER_IDX=$LAST_IDX

	local t0=$SECONDS now next_poller next_worker next_server next_report
	next_poller=$((t0 + $(rand_between 2 6)))
	next_worker=$((t0 + $(rand_between 10 30)))
	next_server=$((t0 + $(rand_between 5 40)))
	next_report=$((t0 + 15))
	while [ $((SECONDS - t0)) -lt "$DURATION" ]; do
		now=$SECONDS
		if [ "$now" -ge "$next_server" ]; then
			crash_server
			next_server=$((SECONDS + $(rand_between 5 40)))
		fi
		if [ "$now" -ge "$next_worker" ]; then
			kill_saga_worker
			next_worker=$((SECONDS + $(rand_between 10 30)))
		fi
		if [ "$now" -ge "$next_poller" ]; then
			kill_random_poller
			next_poller=$((SECONDS + $(rand_between 2 6)))
		fi
		if [ "$now" -ge "$next_report" ]; then
			progress $((now - t0))
			next_report=$((now + 15))
		fi
		revive_dead
		sleep 0.2
	done
	local chaos_secs=$((SECONDS - t0))
	saga_stage_end "$(faults_total) faults"

	# no more faults, starts, cancels or stale probes; the pollers carry on until nothing is
	# left to do (the server is up: every fault restarts what it ended)
	saga_stage_begin "drain"
	touch "$RUN/stop-chaos"
	local d0=$SECONDS open=1 drained=no
	while [ $((SECONDS - d0)) -lt "$DRAIN" ]; do
		revive_dead
		open=$(q "SELECT count(*) FROM saga.instances
		          WHERE status NOT IN ('completed', 'compensated', 'cancelled', 'failed')" 2>/dev/null) || open=unknown
		# done when every saga started has finished and the starter has stopped
		if [ "$open" = 0 ] && [ -z "${PROC_PIDS[STARTER_IDX]}" ]; then
			drained=yes
			break
		fi
		sleep 0.5
	done
	local drain_secs=$((SECONDS - d0))
	progress "$((chaos_secs + drain_secs))" "after the drain"
	stop_procs
	saga_stage_end "$drained"

	# --- audit --------------------------------------------------------------------------
	saga_stage_begin "audit"
	printf '\n=== chaos test: saga %s ===\n' "$(q "SELECT extversion FROM pg_extension WHERE extname = 'saga'")"
	printf 'duration: %s s of faults, drain %s s (%s)\n' "$chaos_secs" "$drain_secs" \
		"$([ "$drained" = yes ] && echo 'every saga finished' || echo "gave up after DRAIN=$DRAIN s")"
	printf 'faults injected: %s\n' "$(faults_total)"
	printf '  server kill -9 + restart:        %s\n' "$F_SERVER"
	printf '  saga worker SIGKILL (crash):     %s\n' "$F_WORKER_KILL"
	printf '  saga worker pg_terminate_backend: %s\n' "$F_WORKER_TERM"
	printf '  poller SIGKILL + restart:        %s\n' "$F_POLLER"
	[ "$F_NO_WORKER" -eq 0 ] || printf '  (saga worker not running when its turn came: %s times)\n' "$F_NO_WORKER"
	[ "$UNEXPECTED_EXITS" -eq 0 ] || printf 'WARNING: %s service processes exited by themselves (test bug?)\n' "$UNEXPECTED_EXITS"
	[ "$(date -r "$SO" '+%F %T')" = "$SO_MTIME" ] ||
		printf 'note: %s was reinstalled during the run (%s); restarts after that loaded it\n' \
			"$SO" "$(date -r "$SO" '+%F %T')"

	touch "$RUN/acks.tsv"
	saga_as_pg cp "$RUN/acks.tsv" "$SAGA_WORK/pg/acks.tsv"   # where the server may read it
	saga_psql -v acks="$SAGA_WORK/pg/acks.tsv" -f "$CHAOS/audit.sql"
	if grep -q 'ANOMALY' "$RUN"/proc-*.log; then
		printf '\nanomalies the services noticed:\n'
		grep -h 'ANOMALY' "$RUN"/proc-*.log | head -n 20
	fi
	saga_stage_end

	local failures
	failures=$(q "SELECT sum(value) FROM svc.audit WHERE fatal")
	printf '\nsummary: %s s, %s faults injected (%s server kill -9, %s saga worker kills, %s poller SIGKILLs)\n' \
		"$chaos_secs" "$(faults_total)" "$F_SERVER" "$((F_WORKER_KILL + F_WORKER_TERM))" "$F_POLLER"
	q "SELECT format('%6s  %s', value, label) FROM svc.audit ORDER BY ord"
	if [ "$failures" != 0 ]; then
		printf '\nFAILED: %s problems (see the evidence above); SEED=%s reproduces the fates\n' "$failures" "$SEED"
		exit 1
	fi
	printf '\nPASSED: nothing lost, nothing done twice, nothing left standing, no stale report accepted\n'
}

main "$@"
