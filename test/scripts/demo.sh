#!/usr/bin/env bash
# test/scripts/demo.sh: the README's demo as a test (scripts/test.sh runs it from the repository
# root, after its build, with SAGA_SKIP_BUILD=1).  Runs scripts/demo.sh and turns its audit
# (demo/audit.sql: one "PASS: ..." or "FAIL: ..." line per check) into the test count; a demo
# that stops before its audit counts as one failure.  Ends with "N passed, N failed".
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
out=$(mktemp)
trap 'rm -f "$out"' EXIT

bash scripts/demo.sh </dev/null 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}

passed=$(grep -c '^PASS: ' "$out")
failed=$(grep -c '^FAIL: ' "$out")
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
	printf 'FAIL: scripts/demo.sh stopped before its audit (exit status %s)\n' "$rc"
	failed=1
fi
printf '%d passed, %d failed\n' "$passed" "$failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
