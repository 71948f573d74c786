#!/bin/sh
# Run the pgTAP suite against a throwaway cluster with saga preloaded.
# Run as a user the server accepts (not root), from the top of the tree,
# after `make install`:   sh test/pgtap/run.sh
# PG_CONFIG picks the installation (default: pg_config on PATH).
set -e
PG_CONFIG=${PG_CONFIG:-pg_config}
BINDIR=$("$PG_CONFIG" --bindir)
TESTDIR=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/saga_pgtap.XXXXXX")
PORT=${PGTAP_PORT:-54329}
cleanup() {
    "$BINDIR/pg_ctl" -D "$TMP/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
"$BINDIR/initdb" -D "$TMP/data" -A trust --no-sync >"$TMP/initdb.log"
cat >>"$TMP/data/postgresql.conf" <<CONF
shared_preload_libraries = 'saga'
listen_addresses = ''
unix_socket_directories = '$TMP'
port = $PORT
CONF
"$BINDIR/pg_ctl" -D "$TMP/data" -l "$TMP/server.log" -w start >/dev/null
"$BINDIR/psql" -X -q -h "$TMP" -p "$PORT" -d postgres -c 'CREATE DATABASE saga_pgtap'
"$BINDIR/psql" -X -q -h "$TMP" -p "$PORT" -d saga_pgtap \
    -c 'CREATE EXTENSION pgtap' -c 'CREATE EXTENSION saga'
pg_prove ${PG_PROVE_OPTS:-} -h "$TMP" -p "$PORT" -d saga_pgtap "$TESTDIR"/*.sql
