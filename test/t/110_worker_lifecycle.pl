# The worker's life (issue 4): freshpay.worker_status shows it; SIGHUP
# changes its sync interval; SIGTERM stops it within 5 s even while a
# PayTrace request is in flight, and after the postmaster restarts it the
# attempt is resolved by lookup, never sent twice; kill -9 in the middle of
# a batch of queued collections ends with every invoice collected once; on
# a hot standby no worker runs and no money moves, until it is promoted.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

# PostgreSQL::Test::Cluster turns restart_after_crash off; the kill -9 case
# needs it.  A short request timeout lets an attempt that never reached
# PayTrace be resolved within seconds.
my $node = FreshpayTest::new_node('life', extension => 1,
	conf => "freshpay.sync_interval = '1h'\nrestart_after_crash = on\nfreshpay.request_timeout = '4s'");
FreshpayTest::add_administration($node);

my $json = JSON::PP->new;
my $SALE = '/v1/transactions/sale/by_customer';
my $POLL = 30;

# --- Helpers ---------------------------------------------------------------

sub sql { return $node->safe_psql('freshpay', shift); }

# Polls survive a restart: a failed connection counts as "not yet".
sub poll_until { return FreshpayTest::poll_true($node, $_[0], $_[2] // $POLL, $_[1]); }

sub worker_pid { return sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'freshpay worker'}); }

sub body_of { return FreshpayTest::request_body($_[0]); }

sub pt_sale_requests { return $pt->requests_for($SALE, @_); }

sub pt_sales { return $pt->sales($_[0]); }

sub fp_registrations { return $fp->registrations($_[0]); }

sub set_interval
{
	my ($interval) = @_;
	$node->append_conf('postgresql.conf', "freshpay.sync_interval = '$interval'\n");
	$node->reload;
	ok(poll_until("SELECT current_setting('freshpay.sync_interval') = '$interval'", "interval $interval"),
		"freshpay.sync_interval = '$interval' is in effect after the reload");
}

# freshpay_capture in a psql of its own.
sub start_capture { return FreshpayTest::start_psql($node, "SELECT status FROM freshpay_capture($_[0])"); }

# Give the session 10 s to end by itself, then kill it.
sub finish_psql
{
	my ($session) = @_;
	FreshpayTest::wait_for(sub { $session->{handle}->pump_nb; !$session->{handle}->pumpable }, 10,
		'the capturing session to end');
	eval { $session->{handle}->finish; 1 } or $session->{handle}->kill_kill;
	note("the capturing session said: $session->{out} $session->{err}");
	return $session;
}

# Every invoice of @$fp_ids collected once: one sale request and one sale
# at PayTrace, one captured payment, nothing pending or unknown, one
# registration in FreshPortal.
sub collected_once
{
	my ($case, $since, @fp_ids) = @_;
	my $list = join(',', @fp_ids);
	my $local = "SELECT id FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id IN ($list)";
	ok( poll_until(
			"SELECT count(DISTINCT invoice_id) = " . scalar(@fp_ids) . " FROM freshpay.payments"
			  . " WHERE invoice_id IN ($local) AND kind = 'sale' AND status = 'captured'",
			"$case: every invoice captured", 60),
		"$case: every invoice ends with a captured sale");
	is(sql("SELECT count(*) FROM freshpay.payments WHERE invoice_id IN ($local) AND status = 'captured'"),
		scalar(@fp_ids), "$case: exactly one captured payment per invoice");
	is(sql("SELECT count(*) FROM freshpay.payments WHERE invoice_id IN ($local) AND status IN ('pending', 'unknown')"),
		'0', "$case: no payment is left pending or unknown");
	my (@twice_sold, @twice_sent);
	for my $id (@fp_ids)
	{
		push @twice_sold, $id if scalar(pt_sales("2026-$id")) != 1;
		push @twice_sent, $id if scalar(pt_sale_requests("2026-$id", $since)) != 1;
	}
	is_deeply(\@twice_sold, [], "$case: PayTrace holds exactly one sale per invoice number");
	is_deeply(\@twice_sent, [], "$case: PayTrace received exactly one sale request per invoice number: nothing was sent twice");
	ok( poll_until(
			"SELECT bool_and(freshportal_payment_id IS NOT NULL) FROM freshpay.payments"
			  . " WHERE invoice_id IN ($local) AND status = 'captured'",
			"$case: registrations"),
		"$case: every captured payment is registered in FreshPortal");
	is_deeply([ grep { scalar(fp_registrations($_)) != 1 } @fp_ids ], [],
		"$case: FreshPortal holds exactly one registration per invoice");
}

# --- Setup -----------------------------------------------------------------

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' }, { customer_id => 'C-ISSUE', method => 'card' } ]);
$fp->seed(
	{
		customers => [
			{ id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' },
			{ id => 2, code => 'PETAL', name => 'Petal Pushers Inc.',  currency => 'USD' },
		],
		invoices => [ { id => 2001, number => '2026-2001', customer_id => 1, amount_incl_vat => '590.00' } ]
	});
sql("SELECT count(*) FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-BLOOM', 'manual', 'card')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 2), 'C-ISSUE', 'on_issue', 'card')");
my $i2001 = sql("SELECT id FROM freshpay.invoices WHERE freshportal_id = 2001");
like($i2001, qr/^\d+$/, 'setup: the invoice is synced');

# --- worker_status ------------------------------------------------------------

ok(poll_until(q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'freshpay worker'}, 'the worker'),
	'status: a freshpay worker runs');
is(sql(q{SELECT application_name FROM pg_stat_activity WHERE backend_type = 'freshpay worker'}), 'freshpay worker',
	'status: its application_name is "freshpay worker"');
ok(poll_until(q{SELECT state IN ('idle', 'working') FROM freshpay.worker_status}, 'worker_status idle or working'),
	'status: freshpay.worker_status.state is idle or working');
my ($status_pid, $queue_depth) = split /\|/, sql(q{SELECT pid || '|' || queue_depth FROM freshpay.worker_status});
is($status_pid, worker_pid(), 'status: freshpay.worker_status.pid is the worker\'s pid in pg_stat_activity');
like($queue_depth // '', qr/^\d+$/, 'status: queue_depth is a number');
is(sql('SELECT count(*) FROM freshpay.worker_status'), '1', 'status: freshpay.worker_status has one row');

# --- SIGHUP: the sync interval follows the configuration ----------------------

my $last_sync_before = sql('SELECT last_sync_at FROM freshpay.worker_status');
my $seq_fp = $fp->last_seq;
sleep 3;
is(scalar(grep { $_->{method} eq 'GET' && $_->{path} eq '/v1/customers' } @{ $fp->requests(since => $seq_fp) }), 0,
	'SIGHUP: with sync_interval = 1h the worker does not pull FreshPortal for 3 s');
$seq_fp = $fp->last_seq;
set_interval('1s');
ok( FreshpayTest::wait_for(
		sub { scalar grep { $_->{method} eq 'GET' && $_->{path} eq '/v1/customers' } @{ $fp->requests(since => $seq_fp) } },
		10, 'a scheduled sync'),
	'SIGHUP: after the reload to 1s, FreshPortal receives GET /v1/customers from the worker within seconds');
ok( poll_until(
		'SELECT last_sync_at > ' . ($last_sync_before eq '' ? "'-infinity'" : "'$last_sync_before'")
		  . '::timestamptz FROM freshpay.worker_status',
		'last_sync_at', 10),
	'SIGHUP: freshpay.worker_status.last_sync_at is set by the scheduled sync');
set_interval('1h');

# --- SIGTERM with a sale in flight ---------------------------------------------

# PayTrace records the sale at once and answers 30 s later.
$pt->config({ approval_delay => 30 });
my $seq = $pt->last_seq;
my $caller = start_capture($i2001);
ok(FreshpayTest::wait_for(sub { scalar pt_sale_requests('2026-2001', $seq) }, 20, 'the sale request'),
	'SIGTERM: the sale request reached PayTrace');
my $pid = worker_pid();
like($pid, qr/^\d+$/, 'SIGTERM: the worker runs');
my $t0 = time;
ok(kill('TERM', $pid), "SIGTERM: sent to the worker (pid $pid)");
ok(FreshpayTest::wait_for(sub { !kill(0, $pid) }, 5, "worker $pid to exit"),
	'SIGTERM: the worker process is gone within 5 s, though its request was in flight');
note(sprintf('the worker exited %.2f s after SIGTERM', time - $t0));
$pt->config({ approval_delay => 0 });
ok( poll_until(
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'freshpay worker' AND pid <> $pid",
		'a new worker', 15),
	'SIGTERM: the postmaster starts a new worker within seconds');
finish_psql($caller);
ok( poll_until("SELECT count(*) = 1 AND bool_and(status = 'captured') FROM freshpay.payments WHERE invoice_id = $i2001",
		'the attempt to resolve'),
	'SIGTERM: the attempt is resolved: one payment, captured');
ok( scalar(grep { (body_of($_)->{including_text} // '') eq '2026-2001' }
		  @{ $pt->requests(since => $seq, path_prefix => '/v1/transactions/export/') }),
	'SIGTERM: by looking the invoice number up at PayTrace');
collected_once('SIGTERM', $seq, 2001);

# --- kill -9 in the middle of a batch -------------------------------------------

my @batch = 2101 .. 2106;
$pt->config({ approval_delay => 2 });
$fp->seed({ invoices => [ map { +{ id => $_, number => "2026-$_", customer_id => 2, amount_incl_vat => "$_.00" } } @batch ] });
$seq = $pt->last_seq;
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql("SELECT count(*) FROM freshpay.jobs j JOIN freshpay.invoices i ON i.id = j.invoice_id"
		  . " WHERE j.kind = 'collect_invoice' AND i.freshportal_id BETWEEN 2101 AND 2106"),
	scalar(@batch), 'kill -9: the sync queued a collection for each of the 6 on_issue invoices');
ok( FreshpayTest::wait_for(sub { scalar grep { $_->{path} eq $SALE } @{ $pt->requests(since => $seq) } }, 20,
		'the first sale of the batch'),
	'kill -9: the worker has started sending the batch');
$pid = worker_pid();
like($pid, qr/^\d+$/, 'kill -9: the worker runs');
my $offset = -s $node->logfile;
ok(kill('KILL', $pid), "kill -9: the worker (pid $pid) is killed mid-batch");
ok( FreshpayTest::wait_for(
		sub { slurp_file($node->logfile, $offset) =~ /\(PID $pid\) was terminated by signal 9/ }, 30,
		'the postmaster to notice the crash'),
	'kill -9: the postmaster saw the worker die by signal 9');
$pt->config({ approval_delay => 0 });
ok( poll_until(
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'freshpay worker' AND pid <> $pid",
		'a new worker', 60),
	'kill -9: after the crash restart a new worker runs');

# An attempt the worker had recorded but not yet sent when it was killed is
# unknown to the new worker (it cannot tell it from one sent): it stays so
# until a person settles it.  Each such attempt must be one PayTrace never
# saw; the test settles it as the README says, and the invoice is collected.
my $batch_ids = join(',', @batch);
ok( poll_until(
		"SELECT count(*) = 0 FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id"
		  . " WHERE i.freshportal_id IN ($batch_ids) AND (p.status = 'pending'"
		  . "   OR (p.status = 'unknown' AND p.updated_at > now() - interval '5 seconds'))",
		'the batch to settle', 60),
	'kill -9: the batch settles after the restart');
my @unknown = split /\n/, sql("SELECT p.id || ':' || i.freshportal_id FROM freshpay.payments p"
	  . " JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE i.freshportal_id IN ($batch_ids) AND p.status = 'unknown'");
note(scalar(@unknown) . ' attempt(s) were recorded but not sent when the worker was killed');
for (@unknown)
{
	my ($payment, $fp_id) = split /:/;
	is(scalar(pt_sale_requests("2026-$fp_id", $seq)), 0,
		"kill -9: the attempt left unknown ($fp_id) is one PayTrace never received");
	is(sql("SELECT status FROM freshpay_resolve($payment, 'not_processed')"), 'failed',
		"kill -9: a person settles it ($fp_id)");
}
collected_once('kill -9', $seq, @batch);

$node->stop;

# --- A hot standby runs no collections, until promoted ---------------------------

$fp->reset;
$pt->reset;
$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' } ],
		invoices  => [ { id => 2201, number => '2026-2201', customer_id => 1, amount_incl_vat => '75.00' } ]
	});
my $primary = FreshpayTest::new_node('primary', extension => 1, init => { allows_streaming => 1 });
FreshpayTest::add_administration($primary);
$primary->safe_psql('freshpay', "SELECT count(*) FROM freshpay_sync('main')");
$primary->safe_psql('freshpay',
	"SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-BLOOM', 'manual', 'card')");
my $i2201 = $primary->safe_psql('freshpay', 'SELECT id FROM freshpay.invoices WHERE freshportal_id = 2201');

$primary->backup('standby_backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'standby_backup', has_streaming => 1);
$standby->append_conf('postgresql.conf',
	"shared_preload_libraries = 'freshpay'\nfreshpay.database_name = 'freshpay'\n"
	  . "freshpay.allow_plain_http = on\nfreshpay.sync_interval = 0\n");
$standby->start;
$primary->wait_for_catchup($standby);
is($standby->safe_psql('freshpay', 'SELECT pg_is_in_recovery()'), 't', 'standby: the standby is in recovery');
is($standby->safe_psql('freshpay', "SELECT count(*) FROM freshpay.invoices WHERE id = $i2201"), '1',
	'standby: the invoice has been replicated');
sleep 2;
is($standby->safe_psql('freshpay', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'freshpay worker'}), '0',
	'standby: no freshpay worker runs on the hot standby');
$seq = $pt->last_seq;
my ($out, $err, $rc) = FreshpayTest::psql_result($standby, 'freshpay',
	"SET statement_timeout = '20s';\nSELECT status FROM freshpay_capture($i2201)");
isnt($rc, 0, 'standby: freshpay_capture fails on the hot standby');
like($err, qr/read-only|recovery|standby|worker/i, 'standby: the error says why (read-only, or no worker)');
is(scalar @{ $pt->requests(since => $seq) }, 0, 'standby: nothing reached PayTrace');

$standby->promote;
is($standby->safe_psql('freshpay', 'SELECT pg_is_in_recovery()'), 'f', 'promote: the standby is now a primary');
ok( FreshpayTest::poll_true($standby,
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'freshpay worker'}, 20, 'a worker on the promoted node'),
	'promote: a freshpay worker starts on the promoted node');

$standby->stop;
$primary->stop;
done_testing();
