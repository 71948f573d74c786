# shellcheck shell=bash
# scripts/common.sh: shared by scripts/test.sh, scripts/demo.sh, scripts/other-major.sh, the test scripts
# of test/scripts and bench/run.sh (source it, do not run it).
#
# It installs the Debian packages the build needs, builds and installs the extension, copies the
# tree to a scratch directory owned by `postgres` (the server refuses to run as root) and starts
# or stops a throwaway cluster there: unix socket only, in the scratch directory, with
# shared_preload_libraries = 'saga'.  Works as root or as a user with sudo, without stdin.

PG_MAJOR=15
PG_BIN=${SAGA_PG_BIN:-/usr/lib/postgresql/$PG_MAJOR/bin}   # SAGA_PG_BIN: another installation (a private copy)
PG_CONFIG=$PG_BIN/pg_config
SAGA_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap postgresql-15-cron
	libtap-parser-sourcehandler-pgtap-perl libipc-run-perl make gcc)
# the extensions among them that tests load (pgTAP; pg_cron for test/t/007_pg_cron.pl): Debian
# installs them into the system tree only, saga_copy_extensions copies them to a private one
SAGA_EXTENSION_PACKAGES=(postgresql-15-pgtap postgresql-15-cron)

SAGA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SAGA_WORK=       # scratch directory of this run (its src/ and pg/ belong to postgres)
SAGA_PGDATA=     # data directory of the throwaway cluster, under pg/
SAGA_PGHOST=     # its socket directory, under pg/
SAGA_PGPORT=
SAGA_CLEANUP_HOOKS=()

saga_log() { printf '==> %s\n' "$*"; }
saga_warn() { printf 'warning: %s\n' "$*" >&2; }
saga_die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# run as root: directly when we are root, else through sudo (non-interactive without a tty)
saga_init_privileges() {
	if [ "$(id -u)" -eq 0 ]; then
		AS_ROOT=()
	elif command -v sudo >/dev/null 2>&1; then
		if [ -t 0 ]; then AS_ROOT=(sudo); else AS_ROOT=(sudo -n); fi
	else
		saga_die "run as root, or install sudo and run as a user allowed to use it"
	fi
}

saga_as_root() { "${AS_ROOT[@]}" "$@"; }

# run as the postgres user, in the scratch directory (cwd must be readable by postgres)
saga_as_pg() {
	local runner home
	home=$(getent passwd postgres 2>/dev/null | cut -d: -f6)
	if [ "$(id -un)" = postgres ]; then
		runner=()
	elif [ "$(id -u)" -eq 0 ]; then
		runner=(runuser -u postgres --)
	else
		runner=("${AS_ROOT[@]}" -u postgres --)
	fi
	(cd "${SAGA_WORK:-/}" && "${runner[@]}" env \
		PATH="$PG_BIN:/usr/local/bin:/usr/bin:/bin" HOME="${home:-/}" \
		PGHOST="$SAGA_PGHOST" PGPORT="$SAGA_PGPORT" PGUSER=postgres \
		PGDATABASE="${PGDATABASE:-postgres}" LC_ALL=C.UTF-8 \
		"$@")
}

# psql as postgres against the throwaway cluster; extra arguments pass through
saga_psql() { saga_as_pg psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# --- timing ---------------------------------------------------------------------------------
SAGA_TIMINGS=()
saga_stage_begin() {
	SAGA_STAGE=$1
	SAGA_STAGE_T0=$EPOCHREALTIME
	saga_log "$SAGA_STAGE"
}
saga_stage_end() {
	local secs
	secs=$(awk -v a="$SAGA_STAGE_T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
	SAGA_TIMINGS+=("$(printf '%-28s %7s s  %s' "$SAGA_STAGE" "$secs" "${1:-ok}")")
	saga_log "$SAGA_STAGE: ${1:-ok} (${secs} s)"
}
saga_print_timings() {
	local line
	printf '\n%s\n' "--- stages ---"
	for line in "${SAGA_TIMINGS[@]}"; do printf '%s\n' "$line"; done
}

# --- packages, build, install ---------------------------------------------------------------
# saga_install_packages [PACKAGE...]: install those of the packages (default: SAGA_PACKAGES)
# that are missing; apt runs only if one is
saga_install_packages() {
	local missing=() p
	[ $# -gt 0 ] || set -- "${SAGA_PACKAGES[@]}"
	for p in "$@"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
			missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		saga_log "all Debian packages present"
		return 0
	fi
	saga_log "installing: ${missing[*]}"
	saga_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null &&
		saga_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends "${missing[@]}" </dev/null
}

# with SAGA_PG_BIN (a private installation): copy the files of SAGA_EXTENSION_PACKAGES that
# Debian put under /usr/lib/postgresql/15/lib and /usr/share/postgresql/15/extension into its
# matching directories, where missing or different; the system installation needs nothing
saga_copy_extensions() {
	local sys_lib=/usr/lib/postgresql/$PG_MAJOR/lib sys_ext=/usr/share/postgresql/$PG_MAJOR/extension
	local lib ext pkg f dest
	[ "$PG_BIN" != "/usr/lib/postgresql/$PG_MAJOR/bin" ] || return 0
	lib=$("$PG_CONFIG" --pkglibdir)
	ext=$("$PG_CONFIG" --sharedir)/extension
	for pkg in "${SAGA_EXTENSION_PACKAGES[@]}"; do
		while IFS= read -r f; do
			case $f in
			"$sys_lib"/*.so) dest=$lib/${f##*/} ;;
			"$sys_ext"/*) dest=$ext/${f##*/} ;;
			*) continue ;;
			esac
			if [ ! -f "$f" ] || cmp -s "$f" "$dest"; then continue; fi
			saga_log "copying $f to $dest"
			saga_as_root cp "$f" "$dest"
		done < <(dpkg -L "$pkg")
	done
}

# build in the repository with warnings as errors, then install into PostgreSQL 15
saga_build_install() {
	[ -x "$PG_CONFIG" ] || saga_die "$PG_CONFIG not found"
	# a test script run by scripts/test.sh after its own build
	[ "${SAGA_SKIP_BUILD:-}" != 1 ] || return 0
	make -C "$SAGA_ROOT" -s WERROR=1 PG_CONFIG="$PG_CONFIG" -j"$(nproc 2>/dev/null || echo 2)" &&
		saga_as_root make -C "$SAGA_ROOT" -s install PG_CONFIG="$PG_CONFIG" >/dev/null
}

# --- checks of the test scripts -------------------------------------------------------------
# An "ok" or "FAILED" line per check, and "N passed, N failed" as the last line (scripts/test.sh
# reads it), also when the script aborts.
SAGA_PASSED=0
SAGA_FAILED=0
SAGA_SUMMARY_DONE=
saga_pass() {
	SAGA_PASSED=$((SAGA_PASSED + 1))
	printf 'ok     %s\n' "$1"
}
saga_fail() {
	SAGA_FAILED=$((SAGA_FAILED + 1))
	printf 'FAILED %s\n' "$1"
}
# the summary line; true when nothing failed
saga_summary() {
	SAGA_SUMMARY_DONE=1
	printf '%d passed, %d failed\n' "$SAGA_PASSED" "$SAGA_FAILED"
	[ "$SAGA_FAILED" -eq 0 ]
}
# saga_traps for a test script: on exit, the summary line if nothing printed it (an abort counts
# as a failure), then saga_cleanup with the script's status
saga_check_traps() {
	saga_traps
	trap saga_check_exit EXIT
}
# errexit is off here: under it, the `(exit "$rc")` that hands the status on to saga_cleanup
# would end the trap before the cleanup (the cluster, servers of the script's own) ran
saga_check_exit() {
	local rc=$?
	set +e
	if [ -z "$SAGA_SUMMARY_DONE" ]; then
		printf '%d passed, %d failed\n' "$SAGA_PASSED" $((SAGA_FAILED + 1))
		[ "$rc" -ne 0 ] || rc=1
	fi
	(exit "$rc")
	saga_cleanup
}

# "PASSED FAILED" of a pg_regress or pg_isolation_regress output file: from "All N tests passed."
# or "X of N tests failed." (17 and later print them after "# "); without that line (it gave up
# half-way) from the per-test lines, "test x ... ok" (15) or "ok 1 - x" (16 and later)
saga_regress_counts() {
	local out=$1 n x f
	if n=$(grep -oE 'All [0-9]+ tests passed' "$out" | grep -oE '[0-9]+' | tail -n 1) && [ -n "$n" ]; then
		echo "$n 0"
	elif x=$(grep -oE '[0-9]+ of [0-9]+ tests failed' "$out" | tail -n 1) && [ -n "$x" ]; then
		read -r f _ n _ <<<"$x"
		echo "$((n - f)) $f"
	else
		n=$(grep -cE '^(test| ) +[^ ]+ +\.\.\. ok|^ok [0-9]+ ' "$out" || true)
		f=$(grep -cE '^(test| ) +[^ ]+ +\.\.\. (FAILED|failed)|^not ok [0-9]+ ' "$out" || true)
		echo "$n $f"
	fi
}

# --- scratch directory ----------------------------------------------------------------------
# trap target for EXIT: runs the registered hooks (last first), stops stray servers, removes
# the scratch directory
saga_cleanup() {
	local rc=$? hook i
	trap - EXIT INT TERM
	for ((i = ${#SAGA_CLEANUP_HOOKS[@]} - 1; i >= 0; i--)); do
		hook=${SAGA_CLEANUP_HOOKS[i]}
		"$hook" || true
	done
	if [ -n "$SAGA_WORK" ] && [ -d "$SAGA_WORK" ]; then
		# servers left behind by an interrupted run (ours, or pg_regress temp instances)
		local pidfile
		while IFS= read -r pidfile; do
			saga_as_pg pg_ctl -D "$(dirname "$pidfile")" -m immediate -w stop >/dev/null 2>&1 || true
		done < <(saga_as_root find "$SAGA_WORK" -name postmaster.pid 2>/dev/null)
		if [ -n "${SAGA_KEEP:-}" ]; then
			saga_log "kept $SAGA_WORK (SAGA_KEEP set)"
		else
			(cd / && saga_as_root rm -rf "$SAGA_WORK")
		fi
	fi
	exit "$rc"
}

saga_on_cleanup() { SAGA_CLEANUP_HOOKS+=("$1"); }

saga_traps() {
	trap saga_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# make $SAGA_WORK: src/ is a copy of the source tree (without git and test output), pg/ holds
# the throwaway cluster; both belong to postgres.  Call `trap saga_cleanup EXIT` first.
saga_make_workdir() {
	SAGA_WORK=$(mktemp -d "${TMPDIR:-/tmp}/saga-$1.XXXXXX")
	chmod 755 "$SAGA_WORK"
	mkdir "$SAGA_WORK/src" "$SAGA_WORK/pg"
	tar -C "$SAGA_ROOT" --exclude=./.git --exclude='./tmp_check*' --exclude=./results \
		--exclude=./output_iso --exclude=./log --exclude=./regression.diffs \
		--exclude=./regression.out -cf - . | tar -C "$SAGA_WORK/src" -xf -
	saga_as_root chown -R postgres: "$SAGA_WORK/src" "$SAGA_WORK/pg"
	SAGA_PGHOST=$SAGA_WORK/pg/sock
	SAGA_PGDATA=$SAGA_WORK/pg/data
	SAGA_SERVER_LOG=$SAGA_WORK/pg/server.log
}

# --- throwaway cluster ----------------------------------------------------------------------
# SAGA_PORTS=LOW-HIGH: pick from that range instead (machines where ports are handed out)
saga_free_port() {
	local port hex low=20000 high=59999
	if [ -n "${SAGA_PORTS:-}" ]; then
		low=${SAGA_PORTS%-*} high=${SAGA_PORTS#*-}
	fi
	for _ in $(seq 1 50); do
		port=$((low + RANDOM % (high - low + 1)))
		hex=$(printf ':%04X ' "$port")
		if ! grep -qs "$hex" /proc/net/tcp /proc/net/tcp6 &&
			[ ! -e "/var/run/postgresql/.s.PGSQL.$port" ] && [ ! -e "/tmp/.s.PGSQL.$port" ]; then
			echo "$port"
			return 0
		fi
	done
	saga_die "no free port found"
}

# saga_cluster_start [extra postgresql.conf lines...]
saga_cluster_start() {
	local line
	SAGA_PGPORT=$(saga_free_port)
	saga_as_pg mkdir -p "$SAGA_PGHOST"
	saga_as_pg initdb -D "$SAGA_PGDATA" -U postgres -A trust -E UTF8 --no-locale -N >/dev/null
	{
		echo "# throwaway cluster of scripts/common.sh"
		echo "listen_addresses = ''"
		echo "port = $SAGA_PGPORT"
		echo "unix_socket_directories = '$SAGA_PGHOST'"
		echo "shared_preload_libraries = 'saga'"
		echo "fsync = off"
		echo "max_connections = 50"
		for line in "$@"; do echo "$line"; done
	} | saga_as_pg tee -a "$SAGA_PGDATA/postgresql.conf" >/dev/null
	saga_on_cleanup saga_cluster_stop
	if ! saga_as_pg pg_ctl -D "$SAGA_PGDATA" -l "$SAGA_SERVER_LOG" -w -t 60 start >/dev/null; then
		saga_server_log_tail 40 >&2
		saga_die "the throwaway cluster did not start"
	fi
	saga_log "throwaway cluster up: PGHOST=$SAGA_PGHOST PGPORT=$SAGA_PGPORT"
}

saga_cluster_stop() {
	[ -n "$SAGA_PGDATA" ] && [ -f "$SAGA_PGDATA/postmaster.pid" ] || return 0
	saga_as_pg pg_ctl -D "$SAGA_PGDATA" -m fast -w -t 60 stop >/dev/null ||
		saga_as_pg pg_ctl -D "$SAGA_PGDATA" -m immediate -w stop >/dev/null
}

saga_server_log_tail() {
	[ -n "${SAGA_SERVER_LOG:-}" ] || return 0
	printf '\n--- last lines of the server log ---\n'
	saga_as_pg tail -n "${1:-40}" "$SAGA_SERVER_LOG" || true
}
