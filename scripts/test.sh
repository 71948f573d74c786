#!/usr/bin/env bash
# scripts/test.sh: run every test of saga.  Usage: bash scripts/test.sh  (as root or with sudo)
#
# 1. installs the Debian packages it needs (apt only when something is missing) and, with
#    SAGA_PG_BIN, copies the extensions among them (pgTAP, pg_cron) into that installation;
# 2. builds with -Werror and installs into PostgreSQL 15;
# 3. as postgres, in a copy of the tree: `make installcheck` for the pg_regress suite (sql/,
#    expected/), then for the isolation specs (test/isolation/), then for the TAP tests
#    (test/t/*.pl, PostgreSQL::Test::Cluster) -- each brings its own temporary server;
# 4. starts a throwaway cluster and runs the pgTAP files test/pgtap/*.sql with pg_prove;
# 5. runs each test/scripts/*.sh (tests that need more than a server; see stage_scripts).
# Every suite runs even when an earlier one failed; the exit status is non-zero if anything
# failed, and the last line is "N passed, N failed".
# SAGA_KEEP=1 keeps the scratch directory (test output, server logs) for inspection.
# shellcheck disable=SC2119  # helpers with optional arguments
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

STAGE_TIMEOUT=${SAGA_STAGE_TIMEOUT:-1200}   # seconds, per suite: a hung test must not hang CI
TOTAL_PASSED=0
TOTAL_FAILED=0
FAILED_SUITES=()

count() {
	TOTAL_PASSED=$((TOTAL_PASSED + $1))
	TOTAL_FAILED=$((TOTAL_FAILED + $2))
}

# a suite failed ($1 name, $2 passed, $3 failed): record it, count at least one failure even
# if no test said so, and end the stage
suite_failed() {
	FAILED_SUITES+=("$1")
	if [ "$3" -eq 0 ]; then
		count 0 1
		saga_stage_end "FAILED: $2 passed, the suite stopped early (counted as 1 failure)"
	else
		saga_stage_end "FAILED: $2 passed, $3 failed"
	fi
}

# after a failed suite: the diffs, and the end of the temporary servers' logs when the diffs do
# not explain the failure (no diffs, or a server crashed)
show_failure_output() {
	local f shown=
	while IFS= read -r f; do
		printf '\n--- %s ---\n' "${f#"$SAGA_WORK"/}"
		saga_as_pg head -n 3000 "$f"
		shown=1
	done < <(saga_as_pg find src -name regression.diffs -size +0 -newer stage-stamp 2>/dev/null)
	while IFS= read -r f; do
		if saga_as_pg grep -qE 'terminated by signal|PANIC|TRAP:' "$f" ||
			{ [ -z "$shown" ] && [ "${f##*/}" = postmaster.log ]; }; then
			printf '\n--- last lines of %s ---\n' "${f#"$SAGA_WORK"/}"
			saga_as_pg tail -n 30 "$f"
		fi
	done < <(saga_as_pg find src -path '*/log/*.log' ! -name initdb.log -newer stage-stamp 2>/dev/null)
}

# make installcheck for one suite; $1 label, $2 output file, rest: make variables
run_installcheck() {
	local label=$1 out=$2 rc=0
	shift 2
	touch "$SAGA_WORK/stage-stamp"
	set +e
	saga_as_pg timeout "$STAGE_TIMEOUT" make -C "$SAGA_WORK/src" installcheck \
		PG_CONFIG="$PG_CONFIG" "$@" 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	set -e
	[ "$rc" -eq 124 ] && echo "$label: timed out after $STAGE_TIMEOUT s" | tee -a "$out"
	return "$rc"
}

stage_regress() {
	local out=$SAGA_WORK/regress.out p f rc=0
	saga_stage_begin "pg_regress (sql/)"
	if ! compgen -G "$SAGA_ROOT/sql/*.sql" >/dev/null; then
		saga_stage_end "skipped: no sql/*.sql"
		return 0
	fi
	run_installcheck regress "$out" ISOLATION= TAP_TESTS= || rc=$?
	read -r p f < <(saga_regress_counts "$out")
	count "$p" "$f"
	if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
		show_failure_output
		suite_failed pg_regress "$p" "$f"
	else
		saga_stage_end "$p passed"
	fi
}

stage_isolation() {
	local out=$SAGA_WORK/isolation.out p f rc=0
	saga_stage_begin "isolation (test/isolation)"
	if ! compgen -G "$SAGA_ROOT/test/isolation/specs/*.spec" >/dev/null; then
		saga_stage_end "skipped: no test/isolation/specs/*.spec"
		return 0
	fi
	run_installcheck isolation "$out" REGRESS= TAP_TESTS= || rc=$?
	read -r p f < <(saga_regress_counts "$out")
	count "$p" "$f"
	if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
		show_failure_output
		suite_failed isolation "$p" "$f"
	else
		saga_stage_end "$p passed"
	fi
}

# prove / pg_prove output -> "passed failed", counted in assertions.  "Tests=" counts the
# assertions that ran; the Test Summary Report lists each bad file as
# "name (Wstat: W Tests: T Failed: F)", perhaps followed by "You planned P tests but ran R":
# its failures are F plus the P - R that never ran, and at least 1 (a file that died).
prove_counts() {
	awk '
		/^Files=[0-9]+, Tests=[0-9]+/ { split($2, a, "="); tests = a[2] + 0 }
		/^Result: PASS/ { pass = 1 }
		/\(Wstat: [0-9]+/ {
			if (file) { failed += (ff > 0 ? ff : 1); ran_failed += f }
			file = 1; ff = 0; f = 0
			if (match($0, /Failed: [0-9]+/)) { f = substr($0, RSTART + 8, RLENGTH - 8) + 0; ff = f }
		}
		/You planned [0-9]+ tests? but ran [0-9]+/ && file {
			match($0, /planned [0-9]+/); p = substr($0, RSTART + 8, RLENGTH - 8) + 0
			match($0, /ran [0-9]+/); r = substr($0, RSTART + 4, RLENGTH - 4) + 0
			if (p > r) ff += p - r
		}
		END {
			if (file) { failed += (ff > 0 ? ff : 1); ran_failed += f }
			if (!pass && failed == 0) failed = 1
			passed = tests - ran_failed
			print (passed > 0 ? passed : 0), failed + 0
		}' "$1"
}

# TAP tests with PostgreSQL::Test::Cluster under test/t/.  If the Makefile does not set
# TAP_TESTS / PROVE_TESTS yet, they are set here so the tests still run.
stage_tap() {
	local out=$SAGA_WORK/tap.out p f rc=0 vars=(REGRESS= ISOLATION= TAP_TESTS=1)
	saga_stage_begin "TAP (test/t)"
	if ! compgen -G "$SAGA_ROOT/test/t/*.pl" >/dev/null; then
		saga_stage_end "skipped: no test/t/*.pl"
		return 0
	fi
	if ! grep -q '^[[:space:]]*PROVE_TESTS' "$SAGA_ROOT/Makefile"; then
		vars+=("PROVE_TESTS=$(cd "$SAGA_ROOT" && echo test/t/*.pl)")
	fi
	run_installcheck tap "$out" "${vars[@]}" PROVE_FLAGS=--timer || rc=$?
	read -r p f < <(prove_counts "$out")
	count "$p" "$f"
	if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
		show_failure_output
		suite_failed TAP "$p" "$f"
	else
		saga_stage_end "$p passed"
	fi
}

stage_pgtap() {
	local out=$SAGA_WORK/pgtap.out p f rc=0 files
	saga_stage_begin "pgTAP (test/pgtap)"
	if ! compgen -G "$SAGA_ROOT/test/pgtap/*.sql" >/dev/null; then
		saga_stage_end "skipped: no test/pgtap/*.sql yet"
		return 0
	fi
	saga_cluster_start
	saga_psql -d postgres -c 'CREATE DATABASE saga_test'
	# no worker serves this database, as CREATE EXTENSION would warn: pgTAP needs none
	saga_psql -d saga_test -c 'CREATE EXTENSION pgtap' -c 'SET client_min_messages = error' \
		-c 'CREATE EXTENSION saga'
	files=$(cd "$SAGA_ROOT" && echo test/pgtap/*.sql)
	set +e
	# shellcheck disable=SC2086  # file names are ours, without spaces
	saga_as_pg timeout "$STAGE_TIMEOUT" bash -c 'cd src && exec pg_prove --timer -d saga_test "$@"' \
		pg_prove $files 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	set -e
	saga_cluster_stop
	read -r p f < <(prove_counts "$out")
	count "$p" "$f"
	if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
		saga_server_log_tail 40
		suite_failed pgTAP "$p" "$f"
	else
		saga_stage_end "$p passed"
	fi
}

# test/scripts/*.sh: tests that need more than a server (a browser, graphviz, an exporter,
# the demo).  Each runs as `bash test/scripts/NAME.sh` from the repository root, after the build
# and install above (SAGA_SKIP_BUILD=1 tells it so), brings what it needs (packages, its own
# throwaway cluster through scripts/common.sh) and ends its output with "N passed, N failed".
stage_scripts() {
	local t name out p f rc
	for t in "$SAGA_ROOT"/test/scripts/*.sh; do
		[ -e "$t" ] || continue
		name=${t##*/}
		out=$SAGA_WORK/${name%.sh}.out
		saga_stage_begin "script $name"
		set +e
		(cd "$SAGA_ROOT" && SAGA_SKIP_BUILD=1 timeout "$STAGE_TIMEOUT" bash "$t" </dev/null) 2>&1 | tee "$out"
		rc=${PIPESTATUS[0]}
		set -e
		p=0 f=0
		if read -r p f < <(grep -oE '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1 | tr -d ',' |
			awk '{ print $1, $3 }') && [ -n "$p" ]; then :; else p=0 f=0; fi
		count "$p" "$f"
		if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
			suite_failed "$name" "$p" "$f"
		else
			saga_stage_end "$p passed"
		fi
	done
}

SUMMARY_PRINTED=
print_summary() {
	saga_print_timings
	if [ ${#FAILED_SUITES[@]} -gt 0 ]; then
		printf 'FAILED: %s\n' "${FAILED_SUITES[*]}"
	fi
	printf '%d passed, %d failed\n' "$TOTAL_PASSED" "$TOTAL_FAILED"
	SUMMARY_PRINTED=1
}

# runs last on exit: when a step outside the suites aborted the run (set -e), still end with
# the summary line, counting the abort as a failure
summary_on_abort() {
	[ -z "$SUMMARY_PRINTED" ] || return 0
	printf 'aborted during: %s\n' "${SAGA_STAGE:-setup}" >&2
	FAILED_SUITES+=("${SAGA_STAGE:-setup}")
	count 0 1
	print_summary
}

main() {
	saga_traps
	saga_on_cleanup summary_on_abort
	saga_init_privileges
	saga_stage_begin "packages"
	saga_install_packages
	saga_copy_extensions
	saga_stage_end

	saga_stage_begin "build and install"
	saga_build_install
	saga_stage_end

	saga_make_workdir test
	stage_regress
	stage_isolation
	stage_tap
	stage_pgtap
	stage_scripts

	print_summary
	[ ${#FAILED_SUITES[@]} -eq 0 ]
}

main "$@"
