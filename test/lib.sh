# shellcheck shell=bash
#
# test/lib.sh — shell functions shared by the freshpay test and demo scripts.
#
# Two halves, both sourced from this one file:
#
#   outer  (test/run, test/demo): run as root or as a normal user with sudo on
#          a fresh Debian bookworm machine; install packages, prepare the
#          unprivileged user and a throwaway copy of the checkout, build and
#          install the extension, then hand over to the inner half.
#   inner  (test/run-suites, test/demo-run): run as the unprivileged user with
#          the work copy as the current directory; start PostgreSQL instances
#          (make installcheck's, the demo's) and the demo's stand-in servers,
#          and stop them again.
#
# Sourcing defines functions and constants only; it runs nothing.  Every
# process a script starts is recorded and stopped by fp_stop_started, which
# the scripts call from their EXIT trap, so a failure or ^C leaves nothing
# running.

# The PostgreSQL whose programs the scripts run and whose pg_config builds
# freshpay: the system's, unless FRESHPAY_PG_BINDIR names another bin/
# directory (test/run's sanitized pass points it at a private copy).
FP_SYSTEM_PG_BINDIR=/usr/lib/postgresql/15/bin
FP_PG_BINDIR=${FRESHPAY_PG_BINDIR:-$FP_SYSTEM_PG_BINDIR}
FP_PG_CONFIG=$FP_PG_BINDIR/pg_config
FP_TEST_USER=freshpay_test
FP_TEST_HOME=/var/lib/freshpay_test
FP_CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Debian packages the build, the tests and the demo need.  libasan8 and
# libubsan1 are gcc's sanitizer runtimes (test/run's sanitized pass);
# postgresql-15-cron is pg_cron, which test/t/330_pg_cron.pl schedules
# freshpay_sync() with; clang and libclang-rt-14-dev (libFuzzer) are for the
# fuzz targets.
FP_PACKAGES=(
	build-essential pkg-config
	postgresql-15 postgresql-server-dev-15
	libcurl4-openssl-dev libjson-c-dev
	perl libipc-run-perl python3
	openssl ca-certificates curl
	procps util-linux passwd
	libasan8 libubsan1
	postgresql-15-cron
	clang libclang-rt-14-dev
)

# Build outputs and test leftovers that never belong in a work copy.
FP_COPY_EXCLUDES=(
	./.git ./tmp_check ./tmp_regress ./tmp_demo ./tmp_results ./tmp_standin
	./results ./log ./regression.diffs ./regression.out ./fp.port ./pt.port
	./test/fuzz/out ./test/fuzz/build
	'*.o' '*.so' '*.bc' '.deps' '__pycache__' '*.pyc'
)

# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------

# fp_say TEXT… — a plain progress line.
fp_say() { printf '%s\n' "$*"; }

# fp_banner TEXT… — a step header, easy to spot in a long log.
fp_banner() { printf '\n==== %s ====\n' "$*"; }

# fp_warn TEXT… — a warning on stderr.
fp_warn() { printf 'warning: %s\n' "$*" >&2; }

# fp_die TEXT… — print an error and exit 1 (EXIT traps still run).
fp_die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# fp_tail FILE [LINES] — show the end of a log file under a header.
fp_tail() {
	local file=$1 lines=${2:-60}
	[[ -s $file ]] || return 0
	printf -- '---- last %s lines of %s ----\n' "$lines" "$file"
	tail -n "$lines" -- "$file" || true
	printf -- '---- end of %s ----\n' "$file"
}

# ---------------------------------------------------------------------------
# Outer half: privileges, packages, the test user, the work copy, the build
# ---------------------------------------------------------------------------

# fp_is_root — true when running as root.
fp_is_root() { [[ $(id -u) -eq 0 ]]; }

# fp_as_root CMD… — run a command as root: directly when root, else via sudo.
fp_as_root() {
	if fp_is_root; then
		"$@"
	else
		sudo -- "$@"
	fi
}

# fp_check_privileges — fail early, with a clear message, when neither root
# nor sudo is available.
fp_check_privileges() {
	fp_is_root && return 0
	command -v sudo >/dev/null 2>&1 ||
		fp_die "run this as root, or as a user who may use sudo (sudo is not installed)"
	fp_say "not root: using sudo for apt-get and make install"
	sudo -v || fp_die "sudo refused; run this as root or as a user who may use sudo"
}

# fp_missing_packages — print the FP_PACKAGES that dpkg does not report as
# installed, one a line.
fp_missing_packages() {
	local pkg status
	for pkg in "${FP_PACKAGES[@]}"; do
		status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
		[[ $status == installed ]] || printf '%s\n' "$pkg"
	done
}

# fp_install_packages — apt-get install whatever is missing (nothing when all
# is there, so a prepared machine needs no network).
fp_install_packages() {
	fp_banner "Debian packages"
	local missing=()
	mapfile -t missing < <(fp_missing_packages)
	if ((${#missing[@]} == 0)); then
		fp_say "all ${#FP_PACKAGES[@]} required packages are installed"
		return 0
	fi
	fp_say "installing: ${missing[*]}"
	fp_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
	fp_as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "${missing[@]}"
	mapfile -t missing < <(fp_missing_packages)
	((${#missing[@]} == 0)) || fp_die "still missing after apt-get install: ${missing[*]}"
	[[ -x $FP_PG_CONFIG ]] || fp_die "$FP_PG_CONFIG not found after installing postgresql-server-dev-15"
}

# fp_ensure_test_user — as root, create the system user that runs initdb and
# the servers (initdb refuses to run as root).  A normal user runs them
# itself.
fp_ensure_test_user() {
	fp_is_root || return 0
	if ! getent passwd "$FP_TEST_USER" >/dev/null; then
		fp_say "creating system user $FP_TEST_USER"
		useradd --system --create-home --home-dir "$FP_TEST_HOME" \
			--shell /bin/bash "$FP_TEST_USER"
	fi
}

# fp_tester_env — print, NUL-separated, the environment the unprivileged half
# runs with: a clean PATH (root's may point into /root), a UTF-8 locale, and
# the FRESHPAY_*, PG_TEST_*, PROVE_* and CI variables of the caller.
fp_tester_env() {
	local home user name
	if fp_is_root; then
		home=$FP_TEST_HOME user=$FP_TEST_USER
	else
		home=${HOME:-/tmp} user=$(id -un)
	fi
	printf '%s\0' "HOME=$home" "USER=$user" "LOGNAME=$user" "SHELL=/bin/bash" \
		"PATH=$FP_CLEAN_PATH" "LANG=C.UTF-8" "TERM=${TERM:-dumb}"
	while IFS= read -r name; do
		case $name in
		FRESHPAY_* | PG_TEST_* | PROVE_* | CI) printf '%s\0' "$name=${!name}" ;;
		esac
	done < <(compgen -e)
}

# fp_tester_name — the name of the user the suites and the demo run as.
fp_tester_name() {
	if fp_is_root; then
		printf '%s\n' "$FP_TEST_USER"
	else
		id -un
	fi
}

# fp_tester_prefix — set FP_TESTER_PREFIX to the command prefix that runs a
# command as the unprivileged user (freshpay_test when root, else the
# caller) with fp_tester_env.
fp_tester_prefix() {
	local envv=()
	mapfile -d '' -t envv < <(fp_tester_env)
	if fp_is_root; then
		FP_TESTER_PREFIX=(runuser -u "$FP_TEST_USER" -- env -i "${envv[@]}")
	else
		FP_TESTER_PREFIX=(env -i "${envv[@]}")
	fi
}

# fp_as_tester CMD… — run a command as the unprivileged user, in the current
# directory.
fp_as_tester() {
	fp_tester_prefix
	"${FP_TESTER_PREFIX[@]}" "$@"
}

# Every work copy fp_make_workdir made, for fp_outer_cleanup.
FP_WORK_DIRS=()

# fp_make_workdir SRC — copy the checkout SRC (without .git and build
# outputs) into a fresh directory; sets FP_WORK.  Owned by the test user.
fp_make_workdir() {
	local src=$1 excludes=() pattern
	fp_banner "Work copy"
	FP_WORK=$(mktemp -d /tmp/freshpay-test.XXXXXX)
	FP_WORK_DIRS+=("$FP_WORK")
	for pattern in "${FP_COPY_EXCLUDES[@]}"; do
		excludes+=("--exclude=$pattern")
	done
	tar -C "$src" "${excludes[@]}" -cf - . | tar -C "$FP_WORK" -xf -
	if fp_is_root; then
		chown -R "$FP_TEST_USER:" "$FP_WORK"
	fi
	fp_say "copied $src to $FP_WORK"
}

# fp_build_and_install [--private] [MAKE_ARG…] — build in the work copy as
# the test user with -Werror (and the make arguments given), then make
# install: as root into the system's PostgreSQL, or with --private as the test
# user into the private copy FP_PG_CONFIG belongs to (fp_make_private_pg).
# Returns non-zero when the build or install fails.
# shellcheck disable=SC2120 # test/run passes arguments
fp_build_and_install() {
	local installer=fp_as_root
	if [[ ${1:-} == --private ]]; then
		installer=fp_as_tester
		shift
	fi
	fp_banner "Build (make FRESHPAY_CFLAGS=-Werror${*:+ $*})"
	if ! (cd "$FP_WORK" && fp_as_tester make -s -j"$(nproc)" PG_CONFIG="$FP_PG_CONFIG" FRESHPAY_CFLAGS=-Werror "$@"); then
		fp_say "the build failed"
		return 1
	fi
	fp_banner "Install (make install into $("$FP_PG_CONFIG" --pkglibdir))"
	if ! (cd "$FP_WORK" && "$installer" make -s PG_CONFIG="$FP_PG_CONFIG" "$@" install); then
		fp_say "make install failed"
		return 1
	fi
}

# fp_sanitizer_lib NAME — print the path of gcc's sanitizer runtime NAME
# (libasan.so, libubsan.so), which a freshpay.so built by "gcc
# -fsanitize=address,undefined" needs.
fp_sanitizer_lib() {
	realpath -e -- "$(gcc -print-file-name="$1")" 2>/dev/null ||
		fp_die "gcc's $1 not found (packages gcc, libasan8, libubsan1)"
}

# fp_copy_pg DEST — make DEST a copy of the PostgreSQL of FP_PG_CONFIG,
# owned by the test user, without freshpay, and switch FP_PG_BINDIR and
# FP_PG_CONFIG to it.  PostgreSQL finds its lib and share directories
# relative to the program that runs, so the copy keeps their layout
# (fp_make_private_pg and test/bench/bench_lib.sh use it).
fp_copy_pg() {
	local dest=$1 bindir pkglibdir sharedir includedir prefix dir
	bindir=$("$FP_PG_CONFIG" --bindir)
	pkglibdir=$("$FP_PG_CONFIG" --pkglibdir)
	sharedir=$("$FP_PG_CONFIG" --sharedir)
	includedir=$("$FP_PG_CONFIG" --includedir)
	prefix=$bindir
	for dir in "$pkglibdir" "$sharedir" "$includedir"; do
		while [[ $dir != "$prefix" && $dir != "$prefix"/* ]]; do
			prefix=${prefix%/*}
		done
	done
	fp_as_tester mkdir -p -- "$dest"
	for dir in "$bindir" "$pkglibdir" "$sharedir"; do
		fp_as_tester mkdir -p -- "$dest${dir#"$prefix"}"
		fp_as_tester cp -R --preserve=mode,timestamps -T -- "$dir" "$dest${dir#"$prefix"}"
	done
	if [[ ! -e $dest${includedir#"$prefix"} ]]; then
		fp_as_tester mkdir -p -- "$(dirname -- "$dest${includedir#"$prefix"}")"
		fp_as_tester ln -s -- "$includedir" "$dest${includedir#"$prefix"}"
	fi
	fp_as_tester rm -rf -- "$dest${pkglibdir#"$prefix"}/freshpay.so" \
		"$dest${pkglibdir#"$prefix"}/bitcode/freshpay" \
		"$dest${pkglibdir#"$prefix"}/bitcode/freshpay.index.bc"
	fp_as_tester find "$dest${sharedir#"$prefix"}/extension" -name 'freshpay[-.]*' -delete

	FP_PG_BINDIR=$dest${bindir#"$prefix"}
	FP_PG_CONFIG=$FP_PG_BINDIR/pg_config
	[[ $("$FP_PG_CONFIG" --pkglibdir) == "$dest${pkglibdir#"$prefix"}" &&
		$("$FP_PG_CONFIG" --sharedir) == "$dest${sharedir#"$prefix"}" ]] ||
		fp_die "the copy's pg_config does not point into the copy: $("$FP_PG_CONFIG" --pkglibdir) $("$FP_PG_CONFIG" --sharedir)"
}

# fp_make_private_pg DEST SANDIR — make DEST a private copy of the PostgreSQL
# of FP_PG_CONFIG for a sanitized freshpay, owned by the test user, and
# switch FP_PG_BINDIR and FP_PG_CONFIG to it (the inner half gets it as
# FRESHPAY_PG_BINDIR).  The system's PostgreSQL is not touched.
#
# Its bin, lib and share directories are copied to the same paths relative to
# their common prefix (Debian: DEST/lib/postgresql/15/{bin,lib} and
# DEST/share/postgresql/15), because PostgreSQL finds its lib and share
# directories relative to the program that runs: the copy's pg_config, initdb
# and postgres use the copy.  The headers are a symlink.  freshpay's files of
# the system install are left out.  bin/postgres becomes a wrapper that runs
# the real server (postgres.bin) with gcc's sanitizer runtimes preloaded, so
# the server processes and only they have them.  Each run of the wrapper
# adds a line to SANDIR/servers.log.
#
# Where reports go: AddressSanitizer's to SANDIR/reports/sanitizer.<pid>.
# UBSan's runtime (gcc keeps it apart from AddressSanitizer's) writes its
# reports to the process's stderr, the server log, whatever log_path says;
# test/run-suites looks for them there.
#
# A small library, DEST/sanitizer_preload.so, is preloaded between the two
# runtimes, for two faults of theirs:
#  - AddressSanitizer initializes itself at the first malloc, which in
#    postgres comes from a library constructor inside bindtextdomain() or
#    newlocale(), with glibc's locale lock held; it then looks up the symbol
#    swift_demangle, and the dlerror() message of that failing lookup takes
#    the same lock (gettext) and leaves it broken: postgres hangs for good
#    (google/sanitizers#1270).  The library defines swift_demangle
#    (returning NULL, "not demangled"), so the lookup succeeds.
#  - UBSan's runtime initializes itself at its first report, long after
#    postgres overwrote its environment with the process title, so it cannot
#    read UBSAN_OPTIONS then.  The library's __ubsan_default_options gives
#    it the same options.
fp_make_private_pg() {
	local dest=$1 sandir=$2
	local asan ubsan preload asan_options ubsan_options
	fp_banner "Private PostgreSQL for the sanitized build ($dest)"
	fp_copy_pg "$dest"
	fp_as_tester mkdir -p -- "$sandir/reports"
	asan=$(fp_sanitizer_lib libasan.so)
	ubsan=$(fp_sanitizer_lib libubsan.so)

	asan_options="detect_leaks=0:abort_on_error=1:verify_asan_link_order=0:log_path=$sandir/reports/sanitizer"
	ubsan_options="print_stacktrace=1:halt_on_error=1:abort_on_error=1:detect_leaks=0:log_path=$sandir/reports/sanitizer"
	fp_as_tester tee "$dest/sanitizer_preload.c" >/dev/null <<PRELOAD
/* Written by test/lib.sh (fp_make_private_pg), which says why. */
#include <stddef.h>

char	   *swift_demangle(const char *name, size_t len, char *out, size_t *outlen, unsigned flags);
const char *__ubsan_default_options(void);

char *
swift_demangle(const char *name, size_t len, char *out, size_t *outlen, unsigned flags)
{
	return NULL;
}

const char *
__ubsan_default_options(void)
{
	return "$ubsan_options";
}
PRELOAD
	fp_as_tester gcc -shared -fPIC -O2 -o "$dest/sanitizer_preload.so" "$dest/sanitizer_preload.c"
	# AddressSanitizer's runtime first; the library before UBSan's, so that
	# its __ubsan_default_options is the one found.
	preload="$asan $dest/sanitizer_preload.so $ubsan"

	fp_as_tester mv -- "$FP_PG_BINDIR/postgres" "$FP_PG_BINDIR/postgres.bin"
	fp_as_tester tee "$FP_PG_BINDIR/postgres" >/dev/null <<WRAPPER
#!/bin/bash
# Written by test/lib.sh (fp_make_private_pg).  freshpay.so in this private
# copy of PostgreSQL is built with -fsanitize=address,undefined: the server
# runs with the sanitizer runtimes preloaded.
printf '%s %s\\n' "\$\$" "\$*" >>'$sandir/servers.log'
export LD_PRELOAD='$preload'"\${LD_PRELOAD:+ \$LD_PRELOAD}"
export ASAN_OPTIONS='$asan_options'
export UBSAN_OPTIONS='$ubsan_options'
exec -a "\$0" "\${BASH_SOURCE[0]}.bin" "\$@"
WRAPPER
	fp_as_tester chmod 755 "$FP_PG_BINDIR/postgres"
	fp_say "pg_config: $FP_PG_CONFIG"
	fp_say "preloaded into the server: $preload"
}

# fp_relative_args SRC ARG… — print the arguments NUL-separated, with paths
# that point into the checkout SRC rewritten relative to it, so that
# "test/run tap /work/main/test/t/010_x.pl" finds the file in the work copy.
fp_relative_args() {
	local src=$1 arg abs
	shift
	for arg in "$@"; do
		if [[ -e $arg ]] && abs=$(realpath -- "$arg" 2>/dev/null) && [[ $abs == "$src"/* ]]; then
			arg=${abs#"$src"/}
		fi
		printf '%s\0' "$arg"
	done
}

# fp_cleanup_guard — called first by every EXIT trap that stops what a
# script started: from there on nothing may cut the cleanup short.  A second
# ^C or TERM, a second hangup and a closed pipe are ignored, and errors no
# longer end the script (set +e): when the terminal is gone (its window
# closed, the ssh connection lost), every message the cleanup prints fails
# with EIO, and under set -e the first one ended the EXIT trap on the spot,
# leaving the stand-ins running.
fp_cleanup_guard() {
	set +e
	trap '' INT TERM HUP PIPE
}

# fp_outer_cleanup — EXIT trap of test/run and test/demo: stop the inner
# script if it still runs, stop any server left in the work copy, then
# remove the work copies — or keep them (and say where) on failure or when
# FRESHPAY_KEEP=1.  When FP_WANT_SUMMARY=1 (test/run), the runner's closing
# "N passed, M failed" line (FP_SUMMARY) is repeated last when something was
# printed after it, or "0 passed, 1 failed" printed when a failure came
# before the suites could count anything.
fp_outer_cleanup() {
	local rc=$? dir kept=0
	trap - EXIT
	fp_cleanup_guard
	fp_stop_inner
	cd / || true
	for dir in "${FP_WORK_DIRS[@]}"; do
		[[ -d $dir ]] || continue
		fp_stop_clusters_under "$dir" tester
		if [[ $rc -ne 0 || ${FRESHPAY_KEEP:-} == 1 ]]; then
			fp_say "work directory kept: $dir"
			kept=1
		else
			rm -rf -- "$dir" || fp_as_root rm -rf -- "$dir" || true
		fi
	done
	if [[ ${FP_WANT_SUMMARY:-} == 1 ]]; then
		if [[ -n ${FP_SUMMARY:-} ]]; then
			((kept == 0)) || fp_say "$FP_SUMMARY"
		elif [[ $rc -ne 0 ]]; then
			fp_say "0 passed, 1 failed"
		fi
	fi
	exit "$rc"
}

# fp_stop_inner — stop the inner scripts that still run and wait for them
# to clean up.  As root, each of FP_INNER_PIDS is runuser, which would KILL
# the script 2 s after passing a TERM on, before its cleanup is done: the TERM
# goes to the script (runuser's child) itself, and runuser ends with it.
fp_stop_inner() {
	local pid target
	for pid in "${FP_INNER_PIDS[@]}"; do
		fp_alive "$pid" || continue
		target=$pid
		if fp_is_root; then
			target=$(ps -o pid= --ppid "$pid" | head -n 1 | tr -d ' ')
			target=${target:-$pid}
		fi
		kill -TERM "$target" 2>/dev/null || true
	done
	for pid in "${FP_INNER_PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	FP_INNER_PIDS=()
}

# fp_outer_traps — install fp_outer_cleanup; ^C and TERM end with 130/143.
fp_outer_traps() {
	trap fp_outer_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# Inner scripts started and not yet waited for (fp_start_inner).
FP_INNER_PIDS=()

# fp_start_inner SCRIPT ARG… — start an inner script of the work copy
# FP_WORK as the test user, in the background, with the environment of
# fp_tester_env as it is now; its output goes to the file FP_INNER_LOG when
# that is set.  Sets FP_INNER_PID; fp_stop_inner stops it.
fp_start_inner() {
	local script=$1
	shift
	cd "$FP_WORK" || return 1
	fp_tester_prefix
	# A simple command, so that $! is runuser (or the script) itself, which
	# passes a TERM on to the script.
	if [[ -n ${FP_INNER_LOG:-} ]]; then
		"${FP_TESTER_PREFIX[@]}" bash "$script" "$@" </dev/null >"$FP_INNER_LOG" 2>&1 &
	else
		"${FP_TESTER_PREFIX[@]}" bash "$script" "$@" </dev/null &
	fi
	FP_INNER_PID=$!
	FP_INNER_PIDS+=("$FP_INNER_PID")
}

# fp_wait_inner PID — wait for an inner script fp_start_inner started and
# return its exit code.  Waiting (rather than running it in the foreground)
# lets a TERM or ^C reach the trap at once (bash defers traps while a
# foreground command runs), and the trap can stop it.
fp_wait_inner() {
	local pid=$1 rc=0 keep=() other
	wait "$pid" || rc=$?
	for other in "${FP_INNER_PIDS[@]}"; do
		[[ $other == "$pid" ]] || keep+=("$other")
	done
	FP_INNER_PIDS=("${keep[@]}")
	return "$rc"
}

# fp_run_inner SCRIPT ARG… — run an inner script of the work copy as the test
# user and return its exit code.
fp_run_inner() {
	fp_start_inner "$@" || return 1
	fp_wait_inner "$FP_INNER_PID"
}

# fp_outer_prepare SRC — everything test/run and test/demo do before the
# inner half: privileges, packages, user, work copy, build, install.
# Returns non-zero when the build or install fails.
fp_outer_prepare() {
	local src=$1
	fp_check_privileges
	fp_install_packages
	fp_ensure_test_user
	fp_make_workdir "$src"
	fp_build_and_install
}

# ---------------------------------------------------------------------------
# Inner half: processes of the unprivileged user
# ---------------------------------------------------------------------------

FP_STARTED_PIDS=()

# fp_track PID — remember a process this script started, for fp_stop_started.
fp_track() { FP_STARTED_PIDS+=("$1"); }

# fp_track_group PID — remember the process group that PID leads (a process
# started with setsid): fp_stop_started signals the whole group.
fp_track_group() { FP_STARTED_PIDS+=("-$1"); }

# fp_untrack PID — forget a process that has been waited for (its pid may be
# reused by a stranger from now on).
fp_untrack() {
	local keep=() pid
	for pid in "${FP_STARTED_PIDS[@]}"; do
		[[ $pid == "$1" ]] || keep+=("$pid")
	done
	FP_STARTED_PIDS=("${keep[@]}")
}

# fp_alive PID — true while the process (or, for -N, the process group N)
# exists.
fp_alive() { kill -0 -- "$1" 2>/dev/null; }

# fp_stop_pids PID… — TERM processes we started, all at once, and KILL the
# ones still there after 5 s.  A negative PID (-N) stands for the process
# group N (see fp_track_group).
fp_stop_pids() {
	local pid i alive
	for pid in "$@"; do
		kill -TERM -- "$pid" 2>/dev/null || true
	done
	for ((i = 0; i < 50; i++)); do
		alive=0
		for pid in "$@"; do
			if fp_alive "$pid"; then
				alive=1
			fi
		done
		((alive)) || break
		sleep 0.1
	done
	for pid in "$@"; do
		if fp_alive "$pid"; then
			kill -KILL -- "$pid" 2>/dev/null || true
		fi
		wait "${pid#-}" 2>/dev/null || true
	done
}

# fp_stop_started — stop every tracked process.
fp_stop_started() {
	if ((${#FP_STARTED_PIDS[@]} > 0)); then
		fp_stop_pids "${FP_STARTED_PIDS[@]}"
	fi
	FP_STARTED_PIDS=()
}

# fp_stop_clusters_under DIR [tester] — immediate-stop every PostgreSQL server
# whose data directory (a postmaster.pid) lies under DIR: the temp instances
# of pg_regress and the TAP tests and the demo cluster, when an interrupted
# run left them behind.  With "tester", pg_ctl runs as the test user (pg_ctl
# refuses to run as root).
fp_stop_clusters_under() {
	local dir=$1 as=${2:-} pidfile
	[[ -d $dir ]] || return 0
	while IFS= read -r -d '' pidfile; do
		if [[ $as == tester ]]; then
			fp_as_tester "$FP_PG_BINDIR/pg_ctl" -D "${pidfile%/postmaster.pid}" -m immediate stop >/dev/null 2>&1 || true
		else
			"$FP_PG_BINDIR/pg_ctl" -D "${pidfile%/postmaster.pid}" -m immediate stop >/dev/null 2>&1 || true
		fi
	done < <(find "$dir" -name postmaster.pid -print0 2>/dev/null)
}

# fp_free_port — print a TCP port on 127.0.0.1 that is free right now.
fp_free_port() {
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# fp_start_standin NAME SCRIPT — start stand-in SCRIPT (relative to the work
# copy) on a free port, wait up to 15 s for its port file, and set
# FP_STANDIN_URL.  Its output goes to tmp_standin/NAME.log.
fp_start_standin() {
	local name=$1 script=$2 portfile=$PWD/$1.port log=$PWD/tmp_standin/$1.log pid port="" i
	[[ -f $script ]] || fp_die "stand-in $script is missing"
	mkdir -p "$PWD/tmp_standin"
	rm -f -- "$portfile"
	python3 -u "$script" --port 0 --port-file "$portfile" --quiet >"$log" 2>&1 &
	pid=$!
	fp_track "$pid"
	for ((i = 0; i < 150; i++)); do
		if [[ -s $portfile ]]; then
			port=$(tr -d '[:space:]' <"$portfile")
			[[ $port =~ ^[0-9]+$ ]] && break
			port=""
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			fp_tail "$log"
			fp_die "stand-in $script exited before it was ready"
		fi
		sleep 0.1
	done
	if [[ -z $port ]]; then
		fp_tail "$log"
		fp_die "stand-in $script wrote no port file within 15 s"
	fi
	FP_STANDIN_URL=http://127.0.0.1:$port
	fp_say "$name stand-in ($script) listening at $FP_STANDIN_URL (pid $pid)"
}

# fp_start_standins — start the FreshPortal and PayTrace stand-ins and export
# what tests and the demo read: the URLs, the stand-in directory and the
# secrets the servers resolve through env: references.
fp_start_standins() {
	fp_banner "Stand-in servers"
	fp_start_standin fp test/standin/freshportal.py
	export FRESHPAY_TEST_FP_URL=$FP_STANDIN_URL
	fp_start_standin pt test/standin/paytrace.py
	export FRESHPAY_TEST_PT_URL=$FP_STANDIN_URL
	export FRESHPAY_STANDIN_DIR=$PWD/test/standin
	export FRESHPAY_TEST_SECRET=fp-test-key
	export FRESHPAY_TEST_PT_PASSWORD=pt-pass
}

# fp_inner_cleanup — EXIT trap of the inner scripts: stop what they started
# and any server still running in the work copy.
fp_inner_cleanup() {
	local rc=$?
	trap - EXIT
	fp_cleanup_guard
	fp_stop_started
	fp_stop_clusters_under "$FP_INNER_DIR"
	exit "$rc"
}

# fp_inner_traps — enter the work copy's state (FP_INNER_DIR = the current
# directory) and install fp_inner_cleanup; ^C and TERM end with 130/143.
fp_inner_traps() {
	FP_INNER_DIR=$PWD
	trap fp_inner_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# fp_run_tracked CMD… — run a long command in the background, tracked, and
# wait for it (so that signals reach the trap promptly); returns its status.
fp_run_tracked() {
	local pid rc=0
	"$@" &
	pid=$!
	fp_track "$pid"
	wait "$pid" || rc=$?
	fp_untrack "$pid"
	return "$rc"
}
