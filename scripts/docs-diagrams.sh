#!/usr/bin/env bash
# scripts/docs-diagrams.sh [--check] [--runbook]: the generated diagrams in docs/*.md.
#
# Starts a throwaway cluster (scripts/common.sh), loads demo/shop.sql (the demo's definitions
# order_flow and order_events) and docs/fixture.sql (a few orders driven to known ends under
# fixed correlation ids), then rewrites every block of docs/*.md between
# "<!-- diagram: <expression> -->" and "<!-- /diagram -->" with what SELECT <expression> returns
# now (scripts/docs-blocks.py has the format).  Commit the result.
#
#   --check    compare instead of writing: one "ok"/"FAILED" line per block and a diff for each
#              that drifted; exit 1 on drift
#   --runbook  also run every ```sql block of docs/runbook.md against the same fixture plus
#              docs/runbook-fixture.sql, each in a transaction that is rolled back; a block
#              preceded by "<!-- sql: skip -->" is not run, one preceded by
#              "<!-- sql: error 55000 -->" must fail with that SQLSTATE
#
# SAGA_PG_BIN selects another PostgreSQL installation; SAGA_SKIP_BUILD=1 skips the build (what
# scripts/test.sh passes); SAGA_KEEP=1 keeps the scratch directory.
# shellcheck disable=SC2119  # helpers with optional arguments
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CHECK=
RUNBOOK=
for arg in "$@"; do
	case "$arg" in
	--check) CHECK=1 ;;
	--runbook) RUNBOOK=1 ;;
	*) saga_die "usage: scripts/docs-diagrams.sh [--check] [--runbook]" ;;
	esac
done

BLOCKS="python3 $SAGA_ROOT/scripts/docs-blocks.py"

render() {
	local out=$SAGA_WORK/blocks k=0 file expr
	mkdir -p "$out"
	while IFS=$'\t' read -r file expr; do
		[ -n "$file" ] || continue
		if ! saga_psql -A -t -c "SELECT $expr" >"$out/$k.out" 2>"$out/$k.err"; then
			printf 'FAILED %s: %s: %s\n' "$file" "$expr" "$(cat "$out/$k.err")"
			return 1
		fi
		k=$((k + 1))
	done < <(cd "$SAGA_ROOT" && $BLOCKS list docs/*.md)
	if [ -n "$CHECK" ]; then
		(cd "$SAGA_ROOT" && $BLOCKS check "$out" docs/*.md)
	else
		(cd "$SAGA_ROOT" && $BLOCKS apply "$out" docs/*.md)
	fi
}

# each ```sql block of docs/runbook.md in a transaction that is rolled back; "ok"/"FAILED" per block
runbook() {
	local dir=$SAGA_WORK/runbook n f head want got rc=0 log
	mkdir -p "$dir"
	saga_as_root chmod 755 "$dir"
	saga_psql -f src/docs/runbook-fixture.sql >/dev/null
	n=$(cd "$SAGA_ROOT" && $BLOCKS sql docs/runbook.md "$dir")
	for ((k = 0; k < n; k++)); do
		f=$dir/$k.sql
		head=$(head -n 1 "$f")
		head=${head#-- }
		case "$head" in
		*" skip") printf 'skip   %s\n' "$head"; continue ;;
		*" error "*) want=${head##* error } ;;
		*) want= ;;
		esac
		log=$dir/$k.log
		{
			echo 'BEGIN;'
			echo '\set VERBOSITY verbose'
			cat "$f"
			echo 'ROLLBACK;'
		} >"$dir/$k.run.sql"
		saga_as_root chmod 644 "$dir/$k.run.sql"
		if saga_psql -f "$dir/$k.run.sql" >"$log" 2>&1; then
			got=
		else
			got=$(grep -oE '^psql:[^ ]* ERROR:  [0-9A-Z]{5}' "$log" | head -n 1 | grep -oE '[0-9A-Z]{5}$' || echo '?')
		fi
		if [ "$got" = "$want" ]; then
			printf 'ok     %s\n' "$head"
		else
			rc=1
			if [ -n "$got" ]; then got="error $got"; else got="no error"; fi
			printf 'FAILED %s: %s, expected %s\n' "$head" "$got" "${want:+error }${want:-no error}"
			sed 's/^/    /' "$log" | head -n 20
		fi
	done
	return "$rc"
}

main() {
	saga_traps
	saga_init_privileges
	saga_install_packages >/dev/null
	# the blocks are read and written by scripts/docs-blocks.py
	if ! command -v python3 >/dev/null 2>&1; then
		saga_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null &&
			saga_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				--no-install-recommends python3 </dev/null >/dev/null
	fi
	saga_build_install
	saga_make_workdir docs >/dev/null
	saga_cluster_start >/dev/null
	saga_psql -c 'CREATE EXTENSION saga' 2>/dev/null
	saga_psql -f src/demo/shop.sql >/dev/null
	saga_psql -f src/docs/fixture.sql >/dev/null
	local rc=0
	render || rc=1
	if [ -n "$RUNBOOK" ]; then runbook || rc=1; fi
	return "$rc"
}

main "$@"
