#!/usr/bin/env bash
# test/scripts/exporter.sh: monitoring/postgres_exporter.yaml, end to end.
#
# Installs prometheus-postgres-exporter and curl when missing (apt, as root, no stdin), builds and
# installs saga (unless scripts/test.sh did: SAGA_SKIP_BUILD=1), starts a throwaway cluster with
# the worker, writes a known fixture (sagas in every state of the backlog, a failed compensation,
# a dead letter, a flow), runs the exporter binary itself (not its systemd service) on a free
# localhost port with only our queries, connected over the unix socket as a login role that is
# a member of saga_reader and nothing else (what README.md's "Monitoring" tells people to use),
# scrapes /metrics once and checks every documented metric against the fixture, and that no
# query failed.  One line per check; the last line is "N passed, N failed"; exit 1 on a failure.
# Run from the top of the tree: bash test/scripts/exporter.sh
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

EXPORTER=/usr/bin/prometheus-postgres-exporter
EXPORTER_PID=
exporter_stop() {
	[ -n "$EXPORTER_PID" ] || return 0
	kill "$EXPORTER_PID" 2>/dev/null || true
	wait "$EXPORTER_PID" 2>/dev/null || true
	EXPORTER_PID=
}

# the value of one series: $1 metric name, $2 a label pair it must carry (optional)
value() {
	awk -v n="$1" -v l="${2:-}" '
		(index($0, n "{") == 1 || index($0, n " ") == 1) && (l == "" || index($0, l)) { print $NF; exit }
	' "$METRICS"
}

# $1 what, $2 metric, $3 label pair or "", $4 the value it must have
expect() {
	local got
	got=$(value "$2" "$3")
	if [ "$got" = "$4" ]; then
		saga_pass "$1: $2${3:+{$3\}} = $4"
	else
		saga_fail "$1: $2${3:+{$3\}} is '${got:-absent}', expected $4"
	fi
}

# $1 what, $2 metric, $3 label pair or "", $4 low, $5 high (exclusive)
expect_between() {
	local got
	got=$(value "$2" "$3")
	if [ -n "$got" ] && awk -v v="$got" -v lo="$4" -v hi="$5" 'BEGIN { exit !(v + 0 >= lo && v + 0 < hi) }'; then
		saga_pass "$1: $2${3:+{$3\}} = $got, in [$4, $5)"
	else
		saga_fail "$1: $2${3:+{$3\}} is '${got:-absent}', expected in [$4, $5)"
	fi
}

# one value from the database, as the fixture's owner
sql_value() { saga_psql -At -c "$1"; }

main() {
	saga_check_traps
	saga_init_privileges
	saga_install_packages prometheus-postgres-exporter curl || saga_die "could not install prometheus-postgres-exporter and curl"
	[ -x "$EXPORTER" ] || saga_die "$EXPORTER not found"
	saga_build_install || saga_die "build or install failed"
	saga_make_workdir exporter
	saga_cluster_start "saga.databases = 'postgres'"
	saga_on_cleanup exporter_stop
	METRICS=$SAGA_WORK/metrics.txt
	EXPORTER_LOG=$SAGA_WORK/exporter.log

	# the fixture; every count below follows from it
	saga_psql -c "CREATE EXTENSION saga" -c "CREATE ROLE saga_monitor LOGIN IN ROLE saga_reader" \
		>/dev/null 2>&1
	saga_psql -v ON_ERROR_STOP=1 >/dev/null <<-'SQL'
		SELECT saga.define('ex_flow', '{"steps": [
		  {"name": "a", "topic": "ex_a", "compensate": {"topic": "ex_undo"},
		   "retry": {"max_attempts": 5, "initial_delay": "1 hour", "jitter": false}},
		  {"name": "b", "topic": "ex_b", "retry": {"max_attempts": 1}}]}');
		-- 7 sagas, each start its own transaction
		SELECT saga.start('ex_flow', '{"n": 1}');
		SELECT saga.start('ex_flow', '{"n": 2}');
		SELECT saga.start('ex_flow', '{"n": 3}');
		SELECT saga.start('ex_flow', '{"n": 4}');
		SELECT saga.start('ex_flow', '{"n": 5}');
		SELECT saga.start('ex_flow', '{"n": 6}');
		SELECT saga.start('ex_flow', '{"n": 7}');
		-- two go on to step b: one completes, one fails there and its compensation fails for
		-- good (parked on ex_undo, the saga failed: an incident)
		SELECT saga.complete(id, '{}', lease => lease) FROM saga.claim('ex_a', 'w', 2, '1 hour');
		SELECT saga.complete(id, '{}', lease => lease) FROM saga.claim('ex_b', 'w', 1, '1 hour');
		SELECT saga.fail(id, '{"no": "stock"}', retryable => false, lease => lease)
		  FROM saga.claim('ex_b', 'w', 1, '1 hour');
		SELECT saga.fail(id, '{"no": "refund"}', retryable => false, lease => lease)
		  FROM saga.claim('ex_undo', 'w', 1, '1 hour');
		-- of the other five's tasks on ex_a: one leased for an hour, one delayed an hour, 3 ready
		SELECT id FROM saga.claim('ex_a', 'w', 1, '1 hour');
		SELECT saga.fail(id, '{"try": "later"}', lease => lease) FROM saga.claim('ex_a', 'w', 1, '1 hour');
		-- events: two deliveries to ex_ev, one of them a dead letter
		SELECT saga.subscribe('ExEvent', 'ex_ev', '{"retry": {"max_attempts": 1}}');
		SELECT saga.publish('ExEvent', '{"n": 1}');
		SELECT saga.publish('ExEvent', '{"n": 2}');
		SELECT saga.fail(id, '{"bad": true}', retryable => false, lease => lease)
		  FROM saga.claim('ex_ev', 'w', 1, '1 hour');
		-- a choreography with one running flow (its start event, one delivery to ex_p)
		SELECT saga.define_choreography('ex_chor', '{"start": "ExStarted",
		  "participants": {"ex_p": {"on": ["ExStarted"], "emits": ["ExDone"]}},
		  "completed": ["ExDone"]}');
		SELECT saga.publish('ExStarted', '{}', correlation_id => 'c1');
	SQL
	saga_log "fixture written"

	# the worker serves the database: wait for it (it has nothing to do: nothing is due for an hour)
	local i
	for i in $(seq 1 100); do
		[ "$(sql_value 'SELECT worker_pid IS NOT NULL FROM saga.worker_status()')" = t ] && break
		sleep 0.1
	done

	# the exporter: our queries only, on a free localhost port, over the unix socket
	local port
	port=$(saga_free_port)
	DATA_SOURCE_NAME="host=$SAGA_PGHOST port=$SAGA_PGPORT user=saga_monitor dbname=postgres sslmode=disable" \
		"$EXPORTER" --web.listen-address="127.0.0.1:$port" \
		--extend.query-path="$SAGA_WORK/src/monitoring/postgres_exporter.yaml" \
		--disable-default-metrics --disable-settings-metrics \
		--no-collector.database --no-collector.bgwriter \
		>"$EXPORTER_LOG" 2>&1 </dev/null &
	EXPORTER_PID=$!
	for i in $(seq 1 100); do
		curl -sf "http://127.0.0.1:$port/metrics" -o "$METRICS" 2>/dev/null && break
		kill -0 "$EXPORTER_PID" 2>/dev/null || break
		sleep 0.1
	done
	if [ ! -s "$METRICS" ]; then
		cat "$EXPORTER_LOG" >&2
		saga_die "the exporter did not answer on 127.0.0.1:$port"
	fi
	saga_log "scraped $(wc -l <"$METRICS") lines from 127.0.0.1:$port"

	# the exporter itself: connected, every query ran
	expect "exporter" pg_up "" 1
	expect "exporter" pg_exporter_last_scrape_error "" 0
	expect "exporter" pg_exporter_user_queries_load_error "" 0
	if grep -q "Error running query" "$EXPORTER_LOG"; then
		saga_fail "exporter log: $(grep -m1 'Error running query' "$EXPORTER_LOG")"
	else
		saga_pass "exporter log: no query errors"
	fi

	# throughput counters (rows written: nothing in the fixture rolled back)
	expect "throughput" saga_throughput_sagas_started_total "" 7
	expect "throughput" saga_throughput_events_published_total "" 3
	expect "throughput" saga_throughput_dead_letters_total "" 1
	# 7 actions on ex_a, 2 on ex_b, 1 compensation, 3 event deliveries
	expect "throughput" saga_throughput_tasks_written_total "" 13
	# left: 2 completed on ex_a, 1 completed and 1 failed for good on ex_b, 1 dead letter
	expect "throughput" saga_throughput_tasks_left_total "" 5
	expect "throughput" saga_throughput_transitions_total "" "$(sql_value 'SELECT count(*) FROM saga.history_log')"

	# backlog per topic
	expect "backlog" saga_topic_ready 'topic="ex_a"' 3
	expect "backlog" saga_topic_delayed 'topic="ex_a"' 1
	expect "backlog" saga_topic_leased 'topic="ex_a"' 1
	expect "backlog" saga_topic_parked 'topic="ex_a"' 0
	expect "backlog" saga_topic_dead_letters 'topic="ex_a"' 0
	expect "backlog" saga_topic_parked 'topic="ex_undo"' 1
	expect "backlog" saga_topic_ready 'topic="ex_undo"' 0
	expect "backlog" saga_topic_ready 'topic="ex_ev"' 1
	expect "backlog" saga_topic_dead_letters 'topic="ex_ev"' 1
	expect "backlog" saga_topic_ready 'topic="ex_p"' 1
	if grep -q '^saga_topic_ready{.*topic="ex_b"' "$METRICS"; then
		saga_fail "backlog: ex_b (empty) is listed"
	else
		saga_pass "backlog: an empty topic (ex_b) is not listed"
	fi
	if grep -q 'topic="saga sql"' "$METRICS"; then saga_fail "backlog: saga sql listed"; else saga_pass "backlog: no internal topic"; fi
	expect_between "age" saga_topic_oldest_ready_age_seconds 'topic="ex_a"' 0.000001 120
	expect "age" saga_topic_oldest_ready_age_seconds 'topic="ex_undo"' 0

	# sagas, finished in the last minute, incidents, flows
	expect "sagas" saga_sagas_count 'status="running"' 5
	expect "sagas" saga_sagas_count 'status="completed"' 1
	expect "sagas" saga_sagas_count 'status="failed"' 1
	expect "sagas" saga_sagas_count 'status="compensating"' 0
	expect "sagas" saga_sagas_count 'status="compensated"' 0
	expect "sagas" saga_sagas_count 'status="cancelled"' 0
	expect "finished" saga_finished_last_minute 'status="completed"' 1
	expect "finished" saga_finished_last_minute 'status="failed"' 1
	expect "finished" saga_finished_last_minute 'status="cancelled"' 0
	expect "finished" saga_finished_last_minute 'status="compensated"' 0
	expect "incidents" saga_incidents_count 'kind="saga"' 1
	expect "incidents" saga_incidents_count 'kind="stuck_flow"' 0
	expect "incidents" saga_incidents_count 'kind="looping_flow"' 0
	expect_between "incidents" saga_incidents_oldest_age_seconds 'kind="saga"' 0 120
	expect "flows" saga_flows_count 'status="running"' 1
	expect "flows" saga_flows_count 'status="completed"' 0
	expect "flows" saga_flows_count 'status="stuck"' 0

	# the worker
	expect "worker" saga_worker_served "" 1
	expect "worker" saga_worker_preloaded "" 1
	expect "worker" saga_worker_listed "" 1
	expect "worker" saga_worker_running "" 1

	# every metric the README documents is exported
	local m unexported=0
	# shellcheck disable=SC2016  # the backquotes are the README's markdown
	while IFS= read -r m; do
		grep -q "^${m}[{ ]" "$METRICS" || {
			saga_fail "documented metric $m is not exported"
			unexported=1
		}
	done < <(sed -n '/^## Monitoring/,/^## /p' "$SAGA_ROOT/README.md" | grep -oE '^\| `saga_[a-z_]+`' | tr -d '|` ')
	[ "$unexported" -ne 0 ] || saga_pass "every metric documented in README.md is exported"

	saga_summary
}

main "$@"
