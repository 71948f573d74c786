#!/usr/bin/env bash
# test/scripts/python-client.sh: the Python client (clients/python) against a throwaway cluster.
#
# Installs python3-psycopg and python3-pytest when missing (apt, as root, no stdin), builds and
# installs saga (unless scripts/test.sh did: SAGA_SKIP_BUILD=1), starts a throwaway cluster with
# the background worker serving `postgres`, creates the extension and runs the pytest suite of
# clients/python/tests as postgres, with Debian's /usr/bin/python3, against the copy of the tree
# in the scratch directory.  The last line is "N passed, N failed" (pytest's errors count as
# failures); exit 1 on a failure.  Run from the top of the tree: bash test/scripts/python-client.sh
# SAGA_PYTEST_ARGS: more pytest arguments, split on spaces (say "-k lost -o log_cli=true").
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

PYTHON=/usr/bin/python3

main() {
	local out rc passed failed errors summary extra=()
	saga_check_traps
	saga_init_privileges
	saga_install_packages python3 python3-psycopg python3-pytest || saga_die "could not install python3-psycopg and python3-pytest"
	saga_build_install || saga_die "build or install failed"
	saga_make_workdir pyclient
	saga_cluster_start "saga.databases = 'postgres'"
	saga_psql -c "CREATE EXTENSION saga" >/dev/null 2>&1
	out=$SAGA_WORK/pytest.out

	read -ra extra <<<"${SAGA_PYTEST_ARGS:-}"
	set +e
	# SAGA_TEST_PGDATA and SAGA_TEST_SERVER_LOG: for the test that restarts the server
	saga_as_pg env PYTHONDONTWRITEBYTECODE=1 SAGA_TEST_PGDATA="$SAGA_PGDATA" \
		SAGA_TEST_SERVER_LOG="$SAGA_SERVER_LOG" timeout 300 "$PYTHON" -m pytest -p no:cacheprovider \
		-q -rfE --log-level=DEBUG --durations=5 "${extra[@]}" src/clients/python/tests 2>&1 |
		tee "$out"
	rc=${PIPESTATUS[0]}
	set -e

	# pytest's last line: "12 passed, 1 failed, 1 error in 20.5s" (any of them may be missing)
	summary=$(grep -E '^=*[ ]*[0-9]+ (passed|failed|errors?|skipped)' "$out" | tail -n 1 || true)
	passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
	failed=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
	errors=$(grep -oE '[0-9]+ errors?' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
	failed=$((failed + errors))
	if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
		failed=1   # pytest stopped early (or timed out) without saying what failed
	fi
	if [ "$failed" -ne 0 ]; then
		saga_server_log_tail 40
	fi
	SAGA_PASSED=$passed SAGA_FAILED=$failed
	saga_summary
}

main "$@"
