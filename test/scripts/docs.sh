#!/usr/bin/env bash
# test/scripts/docs.sh: the documentation is current and its links resolve.
#
# 1. scripts/docs-diagrams.sh --check --runbook: every generated diagram block of docs/*.md
#    equals what its function returns now for the demo's definitions and docs/fixture.sql (one
#    line per block), and every ```sql block of docs/runbook.md runs against that fixture plus
#    docs/runbook-fixture.sql, each rolled back (one line per block);
# 2. every relative link in README.md and docs/*.md, to a file or a heading, resolves (one line
#    per file).
# The last line is "N passed, N failed"; exit 1 on a failure.  Run from the top of the tree:
# bash test/scripts/docs.sh (SAGA_PG_BIN, SAGA_SKIP_BUILD as for scripts/docs-diagrams.sh).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
out=$(mktemp)
trap 'rm -f "$out"' EXIT

bash scripts/docs-diagrams.sh --check --runbook 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
python3 scripts/docs-blocks.py links README.md docs/*.md 2>&1 | tee -a "$out"

passed=$(grep -c '^ok ' "$out")
failed=$(grep -c '^FAILED ' "$out")
# the check stopped before it could say what failed (the cluster, the fixture): one failure
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
printf '%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
