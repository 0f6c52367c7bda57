# A statement waiting on a slow remote API stops promptly when it is
# cancelled or times out, and the backend stays usable.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
$fp->reset;
$fp->seed({ customers => [ { id => 1, code => 'BLOOM', name => 'Bloom & Co Florists' } ] });

my $node = FreshpayTest::new_node('cancel', extension => 1);
FreshpayTest::add_administration($node);

# FreshPortal takes 60 s to answer the customer list.
my $slow = [ { action => 'delay', seconds => 60, path => '/v1/customers', times => -1 } ];

# statement_timeout
$fp->faults($slow);
my $start = time;
my ($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay',
	"SET statement_timeout = '1s'; SELECT * FROM freshpay_sync('main')");
my $elapsed = time - $start;
isnt($rc, 0, 'the sync fails under statement_timeout');
like($err, qr/canceling statement due to statement timeout/, 'with the usual timeout error');
cmp_ok($elapsed, '<', 10, sprintf('within seconds of the timeout, not after the 60 s answer (%.1f s)', $elapsed));

# pg_cancel_backend from another session
my ($bg_out, $bg_err) = ('', '');
my $sync = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('freshpay'),
	  '-c', "SET application_name = 'slow_sync'; SELECT * FROM freshpay_sync('main')" ],
	'>', \$bg_out, '2>', \$bg_err);
ok( $node->poll_query_until('freshpay',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'slow_sync' AND state = 'active'"),
	'the slow sync is running');
sleep 1;    # let it get into the HTTP wait
$start = time;
$node->safe_psql('freshpay', "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'slow_sync'");
$sync->finish;
$elapsed = time - $start;
like($bg_err, qr/canceling statement due to user request/, 'pg_cancel_backend cancels the sync');
cmp_ok($elapsed, '<', 10, sprintf('promptly (%.1f s)', $elapsed));

# pg_terminate_backend ends the waiting backend just as promptly.
($bg_out, $bg_err) = ('', '');
$sync = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('freshpay'),
	  '-c', "SET application_name = 'slow_sync'; SELECT * FROM freshpay_sync('main')" ],
	'>', \$bg_out, '2>', \$bg_err);
ok( $node->poll_query_until('freshpay',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'slow_sync' AND state = 'active'"),
	'another slow sync is running');
sleep 1;
$start = time;
$node->safe_psql('freshpay', "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'slow_sync'");
$sync->finish;
$elapsed = time - $start;
like($bg_err, qr/terminating connection due to administrator command/, 'pg_terminate_backend ends it');
cmp_ok($elapsed, '<', 10, sprintf('promptly (%.1f s)', $elapsed));

# A backend whose request was cancelled midway (its libcurl handle is kept
# for reuse) syncs normally afterwards: here the first answer is slow once.
$fp->faults([ { action => 'delay', seconds => 60, path => '/v1/customers', times => 1 } ]);
is( $node->safe_psql('freshpay', q{
		SET statement_timeout = '1s';
		DO $$ BEGIN PERFORM freshpay_sync('main'); EXCEPTION WHEN query_canceled THEN NULL; END $$;
		RESET statement_timeout;
		SELECT stream, inserted FROM freshpay_sync('main') WHERE stream IN ('customers', 'invoices') ORDER BY 1}),
	"customers|1\ninvoices|0", 'the same backend syncs normally afterwards, and nothing was written before');

$node->stop;
done_testing();
