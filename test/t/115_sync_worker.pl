# The scheduled sync runs in a worker of its own: while it waits on a slow
# FreshPortal, money calls are served at once by the money worker.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

my $node = FreshpayTest::new_node('syncworker', extension => 1);
FreshpayTest::add_administration($node);

sub sql { return $node->safe_psql('freshpay', shift); }
sub poll_until { return FreshpayTest::poll_true($node, $_[0], $_[2] // 30, $_[1]); }

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' } ],
		invoices  => [ map { +{ id => $_, number => "2026-$_", customer_id => 1, invoice_date => '2026-11-02',
								amount_incl_vat => '120.00' } } 901 .. 902 ]
	});
sql("SELECT * FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-BLOOM', 'manual', 'card')");
my %inv = map { split /\|/ } split /\n/, sql('SELECT freshportal_id, id FROM freshpay.invoices');

ok(poll_until(q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'freshpay sync worker'},
		'the sync worker'),
	'a sync worker runs beside the money worker');

# FreshPortal takes 15 s to list customers; the scheduled sync starts.
$fp->faults([ { action => 'delay', method => 'GET', path => '/v1/customers', seconds => 15, times => 1 } ]);
my $seq = $fp->last_seq;
sql("ALTER SYSTEM SET freshpay.sync_interval = '1s'");
sql('SELECT pg_reload_conf()');
ok(FreshpayTest::wait_for(sub { scalar grep { $_->{path} eq '/v1/customers' } @{ $fp->requests(since => $seq) } }, 20,
		'the scheduled sync to ask FreshPortal'),
	'the scheduled sync is waiting on FreshPortal');
sql("ALTER SYSTEM SET freshpay.sync_interval = '0'");
sql('SELECT pg_reload_conf()');

# Meanwhile a money call is served at once.
my $t0 = time;
my ($out, $err) = FreshpayTest::psql_result($node, 'freshpay', "SELECT status FROM freshpay_capture($inv{901})");
my $took = time - $t0;
is($out, 'captured', 'a capture during the slow sync succeeds') or diag($err);
cmp_ok($took, '<', 5, sprintf('and does not wait for the sync (%.2f s)', $took));
is(sql(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'freshpay sync worker' AND query = 'scheduled sync'}),
	'1', 'the sync was still running meanwhile');

ok(poll_until('SELECT last_sync_at IS NOT NULL FROM freshpay.worker_status', 'the sync to end', 40),
	'then the scheduled sync ends and is reported in freshpay.worker_status');
$fp->faults([]);

$node->stop;
done_testing();
