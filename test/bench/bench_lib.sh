# shellcheck shell=bash
# shellcheck disable=SC2034,SC2153 # the R_* and RAW_* results are read, and N, C, K, DRIVER … set, by the scripts that source this
#
# test/bench/bench_lib.sh — what the benchmarks share, sourced after
# test/lib.sh (whose two halves it follows):
#
#   outer  bench_outer_prepare SRC: like fp_outer_prepare (packages, the test
#          user, the work copy, the build), but freshpay is installed into a
#          private copy of PostgreSQL inside the work copy (tmp_pg), never
#          into the system's, so a benchmark cannot change what other test
#          runs on the machine load.  The inner half gets it through
#          FRESHPAY_PG_BINDIR.
#   inner  stand-in admin calls, throwaway clusters (start_cluster,
#          stop_cluster, bench_cleanup), and collect_run: one run of the
#          worker collecting N invoices (test/bench/README.md).
#
# The inner functions read these globals, which the scripts set: N, C, K
# (customers), DRIVER, EXT_VERSION, FSYNC, REGISTER_TIMEOUT, CURL_PASSES,
# BENCH_DIR.

HELPER=test/bench/bench_helper.py
PROFILE_PREFIX=BENCH-   # PayTrace vault profiles BENCH-1 .. BENCH-K
FIRST_INVOICE=100001    # FreshPortal ids of the benchmark's invoices
POLL_MS=200
MAILBOX_SLOTS=64        # freshpay's limit of money calls waiting at once

CLUSTER_DATA=   # data directory of the cluster now running, if any
SERVER_LOG=

# ---------------------------------------------------------------------------
# Outer half: a private PostgreSQL, the build
# ---------------------------------------------------------------------------

# bench_private_pg DEST — make DEST a private copy of the PostgreSQL of
# FP_PG_CONFIG (fp_copy_pg in test/lib.sh), exported as FRESHPAY_PG_BINDIR
# for the inner half; without the sanitizer wrapper of fp_make_private_pg:
# the benchmarks measure a normal build.
bench_private_pg() {
	local dest=$1
	fp_banner "Private PostgreSQL for the benchmark ($dest)"
	fp_copy_pg "$dest"
	export FRESHPAY_PG_BINDIR=$FP_PG_BINDIR
	fp_say "pg_config: $FP_PG_CONFIG"
}

# bench_outer_prepare SRC — everything a benchmark does before its inner
# half: privileges, packages, user, work copy, a private PostgreSQL in it,
# build, install into that copy.
bench_outer_prepare() {
	local src=$1
	fp_check_privileges
	fp_install_packages
	fp_ensure_test_user
	fp_make_workdir "$src"
	bench_private_pg "$FP_WORK/tmp_pg"
	fp_build_and_install --private || fp_die "the build or the install failed"
}

# ---------------------------------------------------------------------------
# Small tools
# ---------------------------------------------------------------------------

now_ms() { date +%s%3N; }

# fmt_div A B [FORMAT] — A / B with awk ("n/a" when B is 0).
fmt_div() {
	awk -v a="$1" -v b="$2" -v f="${3:-%.1f}" 'BEGIN { if (b == 0) print "n/a"; else printf f "\n", a / b }'
}

# standin SERVER METHOD PATH [JSON] — call a stand-in's API, print the answer.
standin() {
	local base
	case $1 in
	fp) base=$FRESHPAY_TEST_FP_URL ;;
	pt) base=$FRESHPAY_TEST_PT_URL ;;
	*) fp_die "standin: unknown server $1" ;;
	esac
	if (($# == 4)); then
		curl -sS --fail-with-body --max-time 120 -X "$2" -H 'Content-Type: application/json' \
			--data-binary @- "$base$3" <<<"$4"
	else
		curl -sS --fail-with-body --max-time 120 -X "$2" "$base$3"
	fi
}

# sql ARG… — psql on database bench, unaligned, tuples only, stop on error.
sql() { "$FP_PG_BINDIR/psql" -X -At -q -v ON_ERROR_STOP=1 -d bench "$@"; }

# ---------------------------------------------------------------------------
# The cluster of one run
# ---------------------------------------------------------------------------

# start_cluster NAME — initdb and start a throwaway cluster under
# BENCH_DIR/NAME with freshpay preloaded for database bench; create bench.
# CLUSTER_EXTRA_CONF (lines of postgresql.conf), when set, comes last and so
# overrides the settings before it.
start_cluster() {
	local dir=$BENCH_DIR/$1 port
	port=$(fp_free_port)
	rm -rf -- "$dir"
	mkdir -p "$dir"
	"$FP_PG_BINDIR/initdb" -D "$dir/data" -A trust -N -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
		{
			fp_tail "$dir/initdb.log"
			fp_die "initdb failed"
		}
	cat >>"$dir/data/postgresql.conf" <<CONF

# Added by test/bench (bench_lib.sh, start_cluster)
port = $port
listen_addresses = ''
unix_socket_directories = '$dir'
max_connections = $((C + 30))
fsync = $FSYNC
log_line_prefix = '%m [%p] %q%a '
shared_preload_libraries = 'freshpay'
freshpay.database_name = 'bench'
freshpay.allow_plain_http = on
freshpay.sync_interval = 0
freshpay.max_parallel_requests = $C
freshpay.request_timeout = '60s'
${CLUSTER_EXTRA_CONF:-}
CONF
	CLUSTER_DATA=$dir/data
	SERVER_LOG=$dir/postgres.log
	"$FP_PG_BINDIR/pg_ctl" -D "$CLUSTER_DATA" -l "$SERVER_LOG" -w -t 60 start >/dev/null ||
		fp_die "the cluster did not start (log: $SERVER_LOG)"
	export PGHOST=$dir PGPORT=$port
	"$FP_PG_BINDIR/createdb" bench
	fp_say "cluster running: socket $dir, port $port, database bench, log $SERVER_LOG"
}

stop_cluster() {
	[[ -n $CLUSTER_DATA && -f $CLUSTER_DATA/postmaster.pid ]] || return 0
	"$FP_PG_BINDIR/pg_ctl" -D "$CLUSTER_DATA" -m fast -w -t 60 stop >/dev/null || true
}

bench_cleanup() {
	local rc=$?
	trap '' INT TERM
	# No errexit from here on: the "(exit $rc)" below, which hands the status
	# on to fp_inner_cleanup, must not end the script before it has run.
	set +e
	stop_cluster
	if ((rc != 0)) && [[ -n $SERVER_LOG ]]; then
		fp_tail "$SERVER_LOG" 60
	fi
	(exit "$rc")
	fp_inner_cleanup
}

# seed_standins LATENCY_MS — both stand-ins reset (nothing left from an
# earlier run), PayTrace's money calls delayed by LATENCY_MS, K customers in
# FreshPortal (ids 1..K) and a card vault profile for each at PayTrace.
seed_standins() {
	standin fp POST /_standin/reset >/dev/null
	standin pt POST /_standin/reset >/dev/null
	standin pt POST /_standin/config \
		"{\"approval_delay\": $(awk -v l="$1" 'BEGIN { printf "%.3f", l / 1000 }')}" >/dev/null
	standin fp POST /_standin/generate "{\"customers\": $K, \"invoices\": 0, \"start_customer_id\": 1}" >/dev/null
	standin pt POST /_standin/customers "$(python3 "$HELPER" profiles "$K" "$PROFILE_PREFIX")" >/dev/null
}

# setup_extension — in the running cluster: CREATE EXTENSION freshpay and
# the administration 'main' (secrets as env: references, like the demo);
# sets R_VERSION.
setup_extension() {
	local create="CREATE EXTENSION freshpay"
	[[ -n $EXT_VERSION ]] && create+=" VERSION '$EXT_VERSION'"
	sql -c "$create"
	sql -v fp_url="$FRESHPAY_TEST_FP_URL" -v pt_url="$FRESHPAY_TEST_PT_URL" -f - >/dev/null <<'SQL'
SELECT name FROM freshpay_add_administration(
	name                   => 'main',
	freshportal_url        => :'fp_url',
	freshportal_api_key    => 'env:FRESHPAY_TEST_SECRET',
	paytrace_url           => :'pt_url',
	paytrace_username      => 'pt-user',
	paytrace_password      => 'env:FRESHPAY_TEST_PT_PASSWORD',
	paytrace_integrator_id => 'pt-integrator');
-- The plain client the benchmarks compare with sends no Level 3 data, nor
-- does freshpay here: both make the same calls.
DO $$
BEGIN
	IF EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid = 'freshpay.administrations'::regclass
				  AND attname = 'level3_enabled') THEN
		UPDATE freshpay.administrations SET level3_enabled = false WHERE name = 'main';
	END IF;
END
$$;
SQL
	R_VERSION=$(sql -c "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'freshpay'")
	wait_for_worker
}

# worker_pid — the pid of the money worker (pg_stat_activity.backend_type
# 'freshpay worker'), or nothing.
worker_pid() {
	sql -c "SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'freshpay worker' LIMIT 1" 2>/dev/null || true
}

# wait_for_worker — wait (up to 30 s) until the money worker runs in
# database bench.  It starts with the server, before bench exists, exits,
# and is restarted a second later: a run started before that would count the
# restart in its figures.
wait_for_worker() {
	local i
	for ((i = 0; i < 300; i++)); do
		[[ -n $(worker_pid) ]] && return 0
		sleep 0.1
	done
	fp_warn "no 'freshpay worker' in pg_stat_activity after 30 s; going on"
}

# link_customers COLLECTION [CONDITION] — sync the customers in and link
# each one whose FreshPortal id satisfies CONDITION (an SQL expression in
# fpid; default all) to its vault profile with collection COLLECTION; prints
# how many were linked.
link_customers() {
	local collection=$1 condition=${2:-true}
	sql -c "SELECT 1 FROM freshpay_sync('main')" >/dev/null
	sql -c "SELECT count(*) FROM (SELECT * FROM (SELECT c.id, c.freshportal_id AS fpid
			FROM freshpay.customers c WHERE c.administration = 'main') a WHERE ($condition) OFFSET 0) s,
		LATERAL freshpay_link_customer(s.id, '$PROFILE_PREFIX' || s.fpid, '$collection', 'card') l"
}

# save_logs DIR — the stand-ins' request logs and PayTrace's state (its
# transactions) as JSON files in DIR: fp_requests.json, pt_requests.json,
# fp_state.json, pt_state.json.
save_logs() {
	local dir=$1
	mkdir -p "$dir"
	standin fp GET /_standin/requests >"$dir/fp_requests.json"
	standin pt GET /_standin/requests >"$dir/pt_requests.json"
	standin fp GET /_standin/state >"$dir/fp_state.json"
	standin pt GET /_standin/state >"$dir/pt_state.json"
}

# ---------------------------------------------------------------------------
# One run of freshpay: results in R_* variables
# ---------------------------------------------------------------------------

# collect_run NAME LATENCY_MS [FP_DELAY_MS] — seed, collect N invoices,
# measure.  FP_DELAY_MS (default 0) is the FreshPortal stand-in's
# request_delay while the invoices are collected.
#
# Optional knobs (variables): CR_TIMEOUT_S, how long to wait for the
# captures (default FRESHPAY_BENCH_TIMEOUT, else 30 + 0.05·N + 4·N·L/C s);
# CR_DEADLINE_S, a limit, counted from the sync's commit, on the wait for
# the registrations too; CR_POLL_HOOK, a function called after each poll with
# the counts captured and registered.
#
# Sets R_VERSION, R_DRIVER, R_CAPTURED, R_FAILED, R_OTHER, R_REGISTERED,
# R_TIMED_OUT, R_PEAK, R_ELAPSED, R_RATE, R_REGISTER_ELAPSED; R_SYNC_END_MS
# (the server's clock after the sync, before its commit: every request
# after it is the collection's), R_T0_MS (after the commit), R_DIR (where
# save_logs left the request logs) and R_SAVED_MS (when it read them).
collect_run() {
	local name=$1 lat=$2 fp_delay=${3:-0} dir=$BENCH_DIR/$1 out line has_trigger has_status driver collection
	local t0_ms t_ms deadline_ms timeout_s polls max_polls next_report_ms hard_ms
	local captured=0 failed=0 other=0 registered=0 in_flight='' peak='' timed_out=0
	local sessions=0 pids=() pid i f sync_ms inserted end_s

	fp_banner "Run $name: N = $N invoices, L = $lat ms, C = $C${3:+, FreshPortal calls $fp_delay ms}"

	# Stand-ins: K customers and their vault profiles; money calls delayed by L.
	seed_standins "$lat"

	start_cluster "$name"
	setup_extension

	has_trigger=$(sql -c "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger
		WHERE tgrelid = 'freshpay.invoices'::regclass AND tgname = 'invoices_queue_collection')")
	has_status=$(sql -c "SELECT pg_catalog.to_regclass('freshpay.worker_status') IS NOT NULL")
	case $DRIVER in
	auto) if [[ $has_trigger == t ]]; then driver=on_issue; else driver=capture; fi ;;
	on_issue)
		[[ $has_trigger == t ]] ||
			fp_die "freshpay $R_VERSION has no on_issue trigger (invoices_queue_collection); FRESHPAY_BENCH_DRIVER=capture or auto"
		driver=on_issue
		;;
	capture) driver=capture ;;
	*) fp_die "FRESHPAY_BENCH_DRIVER must be auto, on_issue or capture, not '$DRIVER'" ;;
	esac
	R_DRIVER=$driver
	if [[ $driver == capture ]]; then
		sessions=$((C < MAILBOX_SLOTS ? C : MAILBOX_SLOTS))
		sessions=$((sessions < N ? sessions : N))
		R_DRIVER="capture ($sessions sessions calling freshpay_capture)"
		if [[ $has_trigger != t ]]; then
			fp_warn "freshpay $R_VERSION has no on_issue trigger (invoices_queue_collection):" \
				"the invoices are collected by $sessions sessions calling freshpay_capture instead"
		fi
	fi

	# Customers first, each linked to its vault profile: collected on issue,
	# or by hand (manual) when the capture driver collects them.
	collection=on_issue
	[[ $driver == capture ]] && collection=manual
	out=$(link_customers "$collection")
	[[ $out == "$K" ]] || fp_die "linked $out customers, expected $K"
	fp_say "freshpay $R_VERSION; driver: $R_DRIVER; $K customers linked, collection $collection"

	# The invoices appear in FreshPortal, which from now on answers each call
	# FP_DELAY_MS late; the request logs start empty.
	standin fp POST /_standin/generate \
		"{\"customers\": 0, \"invoices\": $N, \"start_invoice_id\": $FIRST_INVOICE}" >/dev/null
	if ((fp_delay > 0)); then
		standin fp POST /_standin/config \
			"{\"request_delay\": $(awk -v l="$fp_delay" 'BEGIN { printf "%.3f", l / 1000 }')}" >/dev/null
	fi
	standin fp POST /_standin/requests/clear >/dev/null
	standin pt POST /_standin/requests/clear >/dev/null

	timeout_s=${CR_TIMEOUT_S:-${FRESHPAY_BENCH_TIMEOUT:-$(awk -v n="$N" -v l="$lat" -v c="$C" \
		'BEGIN { printf "%d", 30 + 0.05 * n + 4 * n * l / 1000 / c }')}}
	sync_ms=$(now_ms)
	R_SYNC_END_MS=
	if [[ $driver == on_issue ]]; then
		# One transaction: the sync, then the clock before its commit (every
		# request after it is the collection's); then, in a transaction of
		# its own, the clock right after the sync (and its collect_invoice
		# jobs) committed.
		out=$(sql -c "BEGIN" -c "SELECT stream || ' ' || inserted FROM freshpay_sync('main')" \
			-c "SELECT 'sync_end ' || pg_catalog.round(extract(epoch FROM pg_catalog.clock_timestamp()) * 1000)" \
			-c "COMMIT" \
			-c "SELECT pg_catalog.round(extract(epoch FROM pg_catalog.clock_timestamp()) * 1000)")
		t0_ms=$(tail -n 1 <<<"$out")
		R_SYNC_END_MS=$(awk '$1 == "sync_end" { print $2 }' <<<"$out")
		inserted=$(awk '$1 == "invoices" { print $2 }' <<<"$out")
		fp_say "sync inserted ${inserted:-?} invoices in $(fmt_div $((t0_ms - sync_ms)) 1000 %.2f) s (not counted); collection starts at its commit"
	else
		out=$(sql -c "SELECT stream || ' ' || inserted FROM freshpay_sync('main')")
		inserted=$(awk '$1 == "invoices" { print $2 }' <<<"$out")
		fp_say "sync inserted ${inserted:-?} invoices in $(fmt_div $(($(now_ms) - sync_ms)) 1000 %.2f) s (not counted)"
		sql -c "SELECT id FROM freshpay.invoices WHERE administration = 'main' AND status = 'open' ORDER BY id" >"$dir/invoice_ids"
		rm -f -- "$dir"/capture.*.sql
		awk -v s="$sessions" -v d="$dir" '{ print "SELECT status FROM freshpay_capture(" $1 ");" > (d "/capture." (NR % s) ".sql") }' "$dir/invoice_ids"
		R_SYNC_END_MS=$(now_ms)
		t0_ms=$R_SYNC_END_MS
		for f in "$dir"/capture.*.sql; do
			"$FP_PG_BINDIR/psql" -X -At -q -d bench -f "$f" >/dev/null 2>>"$dir/capture.err" &
			pid=$!
			fp_track "$pid"
			pids+=("$pid")
		done
	fi
	R_T0_MS=$t0_ms
	[[ ${inserted:-} == "$N" ]] || fp_warn "the sync inserted ${inserted:-no} invoices, expected $N"

	# Poll until N captured (or all N settled one way or the other), bounded
	# in time and in count.
	local inflight_sql=NULL
	[[ $has_status == t ]] && inflight_sql="(SELECT in_flight FROM freshpay.worker_status)"
	local query="SELECT count(*) FILTER (WHERE status = 'captured'),
		count(*) FILTER (WHERE status = 'failed'),
		count(*) FILTER (WHERE status NOT IN ('captured', 'failed')),
		count(*) FILTER (WHERE freshportal_payment_id IS NOT NULL),
		$inflight_sql FROM freshpay.payments"
	deadline_ms=$((t0_ms + timeout_s * 1000))
	hard_ms=
	[[ -n ${CR_DEADLINE_S:-} ]] && hard_ms=$((t0_ms + CR_DEADLINE_S * 1000))
	[[ -n $hard_ms ]] && ((hard_ms < deadline_ms)) && deadline_ms=$hard_ms
	max_polls=$(((deadline_ms - t0_ms) / POLL_MS + 10))
	next_report_ms=$((t0_ms + 5000))
	fp_say "polling every $POLL_MS ms, giving up after $(((deadline_ms - t0_ms) / 1000)) s"
	for ((polls = 0; polls < max_polls; polls++)); do
		if line=$(sql -c "$query" 2>/dev/null) && [[ -n $line ]]; then
			IFS='|' read -r captured failed other registered in_flight <<<"$line"
			if [[ -n $in_flight ]] && [[ -z $peak || $in_flight -gt $peak ]]; then
				peak=$in_flight
			fi
		fi
		[[ -n ${CR_POLL_HOOK:-} ]] && "$CR_POLL_HOOK" "$captured" "$registered"
		t_ms=$(now_ms)
		((captured >= N || captured + failed >= N)) && break
		if ((t_ms >= deadline_ms)); then
			timed_out=1
			break
		fi
		if ((t_ms >= next_report_ms)); then
			fp_say "  $(fmt_div $((t_ms - t0_ms)) 1000 %5.1f) s: captured $captured/$N, failed $failed, pending $other, registered $registered${in_flight:+, in flight $in_flight}"
			next_report_ms=$((next_report_ms + 5000))
		fi
		sleep "$(fmt_div "$POLL_MS" 1000 %.3f)"
	done
	((polls < max_polls)) || timed_out=1

	# Elapsed: from the sync's commit to the last capture, by the server's
	# clock (payment_history.at); the poll's own time if there is none.
	end_s=$(sql -c "SELECT extract(epoch FROM max(at)) FROM freshpay.payment_history WHERE new_status = 'captured'" 2>/dev/null || true)
	if ((timed_out)) || [[ -z $end_s ]]; then
		R_ELAPSED=$(fmt_div $((t_ms - t0_ms)) 1000 %.3f)
	else
		R_ELAPSED=$(awk -v e="$end_s" -v t="$t0_ms" 'BEGIN { printf "%.3f\n", e - t / 1000 }')
	fi
	R_CAPTURED=$captured R_FAILED=$failed R_OTHER=$other R_TIMED_OUT=$timed_out R_PEAK=${peak:-n/a}
	[[ $has_status == t ]] || R_PEAK="n/a (no freshpay.worker_status in freshpay $R_VERSION)"
	R_RATE=$(fmt_div "$captured" "$R_ELAPSED" %.1f)
	((timed_out)) && fp_say "gave up after $(((deadline_ms - t0_ms) / 1000)) s with $captured/$N captured"

	# The capture sessions end once their calls are answered.
	if ((${#pids[@]} > 0)); then
		if ((timed_out)); then
			fp_stop_pids "${pids[@]}"
		else
			for ((i = 0; i < 600; i++)); do
				local alive=0
				for pid in "${pids[@]}"; do fp_alive "$pid" && alive=1; done
				((alive)) || break
				sleep 0.1
			done
			fp_stop_pids "${pids[@]}"
		fi
		for pid in "${pids[@]}"; do fp_untrack "$pid"; done
		if [[ -s $dir/capture.err ]]; then
			fp_warn "freshpay_capture sessions reported errors ($(grep -c ERROR "$dir/capture.err" || true) ERROR lines), first ones:"
			head -n 5 -- "$dir/capture.err" >&2
		fi
	fi

	# Write-back: each captured payment is registered in FreshPortal.
	R_REGISTERED=$registered R_REGISTER_ELAPSED=
	if ((!timed_out && captured > 0)); then
		deadline_ms=$(($(now_ms) + REGISTER_TIMEOUT * 1000))
		[[ -n $hard_ms ]] && ((hard_ms < deadline_ms)) && deadline_ms=$hard_ms
		for ((polls = 0; polls < REGISTER_TIMEOUT * 1000 / POLL_MS + 10; polls++)); do
			R_REGISTERED=$(sql -c "SELECT count(*) FROM freshpay.payments WHERE freshportal_payment_id IS NOT NULL" 2>/dev/null || echo "$R_REGISTERED")
			[[ -n ${CR_POLL_HOOK:-} ]] && "$CR_POLL_HOOK" "$captured" "$R_REGISTERED"
			((R_REGISTERED >= captured)) && break
			(($(now_ms) >= deadline_ms)) && break
			sleep "$(fmt_div "$POLL_MS" 1000 %.3f)"
		done
		end_s=$(sql -c "SELECT extract(epoch FROM max(at)) FROM freshpay.payment_history WHERE event = 'registered'" 2>/dev/null || true)
		[[ -n $end_s ]] && R_REGISTER_ELAPSED=$(awk -v e="$end_s" -v t="$t0_ms" 'BEGIN { printf "%.2f\n", e - t / 1000 }')
	fi

	fp_say ""
	fp_say "  payments: $captured captured, $failed failed, $other pending/other; $R_REGISTERED registered in FreshPortal"
	if ((failed + other > 0)); then
		fp_say "  not captured, by status and message:"
		sql -c "SELECT '    ' || status || ': ' || count(*) || ' × ' || coalesce(message, '(no message)')
			FROM freshpay.payments WHERE status <> 'captured' GROUP BY status, message ORDER BY count(*) DESC LIMIT 5" || true
	fi
	out=$(sql -c "SELECT count(*) FROM freshpay.jobs WHERE state = 'dead'" 2>/dev/null || echo '?')
	[[ $out == 0 ]] || fp_say "  dead jobs: $out"
	server_log_summary
	R_DIR=$dir
	R_SAVED_MS=$(now_ms)
	save_logs "$dir"
	fp_say "  requests the stand-ins logged since the sync (per invoice: divided by N = $N):"
	fp_say "   FreshPortal:"
	python3 "$HELPER" requests "$N" <"$dir/fp_requests.json" || true
	fp_say "   PayTrace:"
	python3 "$HELPER" requests "$N" <"$dir/pt_requests.json" || true

	stop_cluster
	CLUSTER_DATA=
}

# server_log_summary — the ERROR/WARNING/FATAL/PANIC lines of the running
# cluster's log, the first five of them.
server_log_summary() {
	local out
	# The worker starts before database bench exists: that FATAL is expected.
	out=$(grep -E ' (ERROR|WARNING|FATAL|PANIC): ' "$SERVER_LOG" | grep -v 'database "bench" does not exist' || true)
	if [[ -n $out ]]; then
		fp_say "  server log: $(wc -l <<<"$out") ERROR/WARNING/FATAL/PANIC lines, first ones:"
		head -n 5 <<<"$out" | sed 's/^/    /'
	else
		fp_say "  server log: no ERROR, WARNING, FATAL or PANIC"
	fi
}

# raw_curl NAME — N sales by curl at concurrency C against the PayTrace
# stand-in as it is configured now, CURL_PASSES times; sets RAW_RATE (the
# median pass) and RAW_RATES (every pass).  The median, because a pass now
# and then loses 1 s to a dropped SYN at the stand-in (see README.md).
raw_curl() {
	local name=$1 dir=$BENCH_DIR/$1 token t0 t1 parallel=$C pass ok rate results=()
	mkdir -p "$dir"
	((parallel <= 300)) || parallel=300 # curl's own maximum
	token=$(curl -sS --fail-with-body --max-time 30 -d grant_type=password -d username=pt-user \
		-d password=pt-pass "$FRESHPAY_TEST_PT_URL/oauth/token" | python3 "$HELPER" token)
	python3 "$HELPER" curl-config "$FRESHPAY_TEST_PT_URL/v1/transactions/sale/by_customer" \
		"$token" "$N" "$K" "$PROFILE_PREFIX" >"$dir/raw.curl"
	for ((pass = 1; pass <= CURL_PASSES; pass++)); do
		t0=$(now_ms)
		# Not --parallel-immediate: opening C connections at once overflows
		# the stand-in's listen backlog (5), and a dropped SYN costs 1 s.
		fp_run_tracked curl -s --no-progress-meter --parallel --parallel-max "$parallel" \
			-K "$dir/raw.curl" >"$dir/raw.$pass.codes" 2>"$dir/raw.$pass.err" || true
		t1=$(now_ms)
		ok=$(grep -c '^200$' "$dir/raw.$pass.codes" || true)
		rate=$(fmt_div "$ok" "$(fmt_div $((t1 - t0)) 1000 %.3f)" %.1f)
		fp_say "curl pass $pass: $ok/$N sales answered 200 in $(fmt_div $((t1 - t0)) 1000 %.3f) s at concurrency $parallel: $rate requests/s"
		((ok == N)) || fp_warn "curl: $((N - ok)) requests did not answer 200 (codes in $dir/raw.$pass.codes)"
		results+=("$rate $ok $(fmt_div $((t1 - t0)) 1000 %.3f)")
	done
	read -r RAW_RATE _ < <(printf '%s\n' "${results[@]}" | sort -g | sed -n "$(((CURL_PASSES + 1) / 2))p")
	RAW_RATES=$(printf '%s\n' "${results[@]}" | awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $1 }')
}

# passes_note — which curl passes RAW_RATE stands for.
passes_note() {
	if ((CURL_PASSES == 1)); then
		printf 'one pass'
	else
		printf 'median of %s passes: %s' "$CURL_PASSES" "$RAW_RATES"
	fi
}

# print_run LABEL — the figures of the last collect_run.
print_run() {
	local status="done" peak=$R_PEAK
	((R_TIMED_OUT)) && status="gave up (timeout)"
	[[ $peak =~ ^[0-9]+$ ]] && peak="$peak (sampled every $POLL_MS ms)"
	printf '  %-24s %s\n' \
		"driver" "$R_DRIVER (freshpay $R_VERSION)" \
		"N / L / C" "$N invoices / $1 ms / $C" \
		"captured" "$R_CAPTURED of $N ($status; failed $R_FAILED, pending $R_OTHER)" \
		"elapsed" "$R_ELAPSED s (sync commit → last capture)" \
		"freshpay" "$R_RATE invoices/s" \
		"peak in_flight" "$peak" \
		"registered in FreshPortal" "$R_REGISTERED of $R_CAPTURED${R_REGISTER_ELAPSED:+ (last $R_REGISTER_ELAPSED s after the sync)}"
}
