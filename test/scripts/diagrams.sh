#!/usr/bin/env bash
# test/scripts/diagrams.sh: render every kind of diagram saga draws with the real renderers.
#
# A throwaway cluster gets the corpus of test/diagrams/corpus.sql (definitions, choreographies,
# sagas, flows, adversarial names); each Mermaid text is parsed and rendered to SVG by the
# mermaid package pinned in test/diagrams/package.json (installed with `npm ci` into the scratch
# directory) in headless chromium, offline, and each DOT text by `dot -Tsvg` (a non-zero exit or
# a warning fails); the rendered text must show the labels the corpus names.  One PASS/FAIL line
# per diagram, then "N passed, N failed"; non-zero exit on any failure.  Installs chromium,
# graphviz, nodejs and npm with apt when missing.  Run from anywhere, as root or with sudo.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

saga_traps
saga_init_privileges

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
	saga_log "installing: ${need[*]}"
	saga_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null
	saga_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		"${need[@]}" </dev/null >/dev/null
fi
saga_build_install

saga_make_workdir diagrams
mkdir "$SAGA_WORK/npm" "$SAGA_WORK/check"
cp "$SAGA_ROOT/test/diagrams/package.json" "$SAGA_ROOT/test/diagrams/package-lock.json" "$SAGA_WORK/npm/"
saga_log "npm ci (mermaid)"
(cd "$SAGA_WORK/npm" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error </dev/null >/dev/null)

saga_cluster_start
saga_as_pg cp "$SAGA_WORK/src/test/diagrams/corpus.sql" "$SAGA_WORK/pg/corpus.sql"
saga_psql -o /dev/null -f "$SAGA_WORK/pg/corpus.sql"
saga_psql -At -c "SELECT json_agg(json_build_object('name', name, 'kind', kind, 'text', text,
                  'expect', expect) ORDER BY n) FROM diagram_cases" >"$SAGA_WORK/check/cases.json"

node "$SAGA_ROOT/test/diagrams/check.js" "$SAGA_WORK/check/cases.json" "$SAGA_WORK/npm/node_modules" \
	"$SAGA_WORK/check"
