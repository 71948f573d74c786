#!/usr/bin/env bash
# test/scripts/pgbouncer.sh: the worker protocols through PgBouncer in transaction mode.
#
# Installs pgbouncer and python3-psycopg when missing (apt, as root, no stdin), builds and
# installs saga (unless scripts/test.sh did: SAGA_SKIP_BUILD=1), starts a throwaway cluster with
# the worker, then Debian's pgbouncer as postgres on a unix socket of its own in the scratch
# directory, pool_mode = transaction, with two pooled databases: "saga" (pool_size 2) and
# "saga_one" (pool_size 1).  test/pooler/clients.py then drives several client connections
# through it: idempotent start, leased claim/heartbeat/release/complete with fencing, the
# transactional poll, failure and compensation, publish and delivery, session state (plain SET
# vs SET LOCAL), LISTEN (the pooled listener gets nothing; a direct connection does) and
# protocol-level prepared statements (fail; prepare_threshold=None works).  What README.md's
# "Through a connection pooler (PgBouncer)" says is what this checks.
# One line per check; the last line is "N passed, N failed"; exit 1 on a failure.
# Run from the top of the tree: bash test/scripts/pgbouncer.sh
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

PGBOUNCER=/usr/sbin/pgbouncer
PYTHON=/usr/bin/python3   # Debian's, the one python3-psycopg belongs to
BOUNCER_DIR=
# stop the pgbouncer we started (its pid file), and wait until it is gone
bouncer_stop() {
	local pid i
	[ -n "$BOUNCER_DIR" ] && pid=$(saga_as_root cat "$BOUNCER_DIR/pgbouncer.pid" 2>/dev/null) || return 0
	[ -n "$pid" ] || return 0
	saga_as_root kill -INT "$pid" 2>/dev/null || return 0
	for i in $(seq 1 100); do
		saga_as_root kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	saga_as_root kill -KILL "$pid" 2>/dev/null || true
}

bouncer_start() {
	BOUNCER_DIR=$SAGA_WORK/pg/bouncer
	BOUNCER_PORT=$(saga_free_port)
	saga_as_pg mkdir -p "$BOUNCER_DIR"
	saga_as_pg tee "$BOUNCER_DIR/userlist.txt" >/dev/null <<<'"postgres" ""'
	saga_as_pg tee "$BOUNCER_DIR/pgbouncer.ini" >/dev/null <<-EOF
		[databases]
		saga = host=$SAGA_PGHOST port=$SAGA_PGPORT dbname=postgres pool_size=2
		saga_one = host=$SAGA_PGHOST port=$SAGA_PGPORT dbname=postgres pool_size=1

		[pgbouncer]
		pool_mode = transaction
		default_pool_size = 2
		max_client_conn = 50
		; unix socket only, in a directory of our own
		listen_addr =
		listen_port = $BOUNCER_PORT
		unix_socket_dir = $BOUNCER_DIR
		auth_type = trust
		auth_file = $BOUNCER_DIR/userlist.txt
		admin_users = postgres
		; JDBC sends it at startup; harmless here, documented in README.md
		ignore_startup_parameters = extra_float_digits
		logfile = $BOUNCER_DIR/pgbouncer.log
		pidfile = $BOUNCER_DIR/pgbouncer.pid
	EOF
	saga_on_cleanup bouncer_stop
	saga_as_pg "$PGBOUNCER" -d -q "$BOUNCER_DIR/pgbouncer.ini" ||
		saga_die "pgbouncer did not start: $(saga_as_root tail -n 20 "$BOUNCER_DIR/pgbouncer.log" 2>&1)"
	local i
	for i in $(seq 1 100); do
		saga_as_pg psql -X -q -At -h "$BOUNCER_DIR" -p "$BOUNCER_PORT" -d saga -c 'SELECT 1' \
			>/dev/null 2>&1 && break
		sleep 0.1
	done
	BOUNCER_VERSION=$(saga_as_pg psql -X -At -h "$BOUNCER_DIR" -p "$BOUNCER_PORT" -d pgbouncer \
		-c 'SHOW VERSION') || saga_die "pgbouncer does not answer on $BOUNCER_DIR port $BOUNCER_PORT"
	saga_log "$BOUNCER_VERSION up: host=$BOUNCER_DIR port=$BOUNCER_PORT, pool_mode = transaction"
}

main() {
	local out rc p f t0
	saga_check_traps
	saga_init_privileges
	# Debian's package would start its own pgbouncer service where services run; we do not use it
	saga_install_packages pgbouncer python3-psycopg || saga_die "could not install pgbouncer and python3-psycopg"
	[ -x "$PGBOUNCER" ] || saga_die "$PGBOUNCER not found"
	saga_build_install || saga_die "build or install failed"
	saga_make_workdir pgbouncer
	saga_cluster_start "saga.databases = 'postgres'"
	saga_psql -c "CREATE EXTENSION saga" >/dev/null
	bouncer_start
	saga_pass "pgbouncer runs: $BOUNCER_VERSION, pool_mode = transaction"

	t0=$EPOCHREALTIME
	out=$SAGA_WORK/clients.out
	set +e
	saga_as_pg env BOUNCER_HOST="$BOUNCER_DIR" BOUNCER_PORT="$BOUNCER_PORT" \
		"$PYTHON" "$SAGA_WORK/src/test/pooler/clients.py" 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	set -e
	read -r p f < <(grep -oE '^clients: [0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1 | tr -d ',' |
		awk '{ print $2, $4 }') || true
	SAGA_PASSED=$((SAGA_PASSED + ${p:-0}))
	SAGA_FAILED=$((SAGA_FAILED + ${f:-0}))
	if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then
		saga_fail "test/pooler/clients.py stopped early (exit $rc)"
	fi
	saga_log "clients: $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
	if [ "$SAGA_FAILED" -ne 0 ]; then
		printf '\n--- last lines of pgbouncer.log ---\n'
		saga_as_root tail -n 30 "$BOUNCER_DIR/pgbouncer.log" || true
		saga_server_log_tail 30
	fi

	saga_summary
}

main "$@"
