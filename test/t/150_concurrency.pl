# Many requests in flight (issue 4): 64 invoices of on_issue customers
# arrive in one sync while every PayTrace money call takes 1 s; with
# freshpay.max_parallel_requests = 16 the worker collects all of them in
# well under 16 s (one at a time would take over a minute), each exactly
# once, and freshpay.worker_status.in_flight shows more than one request.
use strict;
use warnings;

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

my $node = FreshpayTest::new_node('parallel', extension => 1, conf => 'freshpay.max_parallel_requests = 16');
FreshpayTest::add_administration($node);

my $json = JSON::PP->new;
my $SALE = '/v1/transactions/sale/by_customer';
my @ids = 6001 .. 6064;
my $LIMIT = 16;      # seconds from the sync's commit to the 64th capture
my $GIVE_UP = 40;    # seconds to wait at most, so that a serial worker fails fast

# --- Helpers ---------------------------------------------------------------

sub sql { return $node->safe_psql('freshpay', shift); }

sub body_of { return FreshpayTest::request_body($_[0]); }

# --- Setup -------------------------------------------------------------------

my @profiles = map { "C-PAR$_" } 1 .. 4;
$pt->customers([ map { { customer_id => $_, method => 'card' } } @profiles ]);
$fp->seed({ customers => [ map { +{ id => $_, code => "PAR$_", name => "Parallel Florist $_", currency => 'USD' } } 1 .. 4 ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
for my $c (1 .. 4)
{
	sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = $c),"
		  . " 'C-PAR$c', 'on_issue', 'card')");
}
is(sql(q{SELECT count(*) FROM freshpay.customers WHERE collection = 'on_issue' AND paytrace_customer_id IS NOT NULL}), '4',
	'setup: 4 on_issue customers with vault profiles');

# Warm up the tokens of both APIs, so that the timing is about collections.
$fp->seed({ invoices => [ { id => 6000, number => 'P-6000', customer_id => 1, amount_incl_vat => '10.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
ok( FreshpayTest::poll_true($node,
		q{SELECT count(*) = 1 FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
		  WHERE i.freshportal_id = 6000 AND p.status = 'captured'}, 30, 'the warm-up invoice'),
	'setup: a first on_issue invoice is collected');

# --- 64 invoices in one sync, each money call taking 1 s ----------------------------

$pt->config({ approval_delay => 1 });
$fp->seed(
	{
		invoices => [
			map { +{ id => $_, number => "P-$_", customer_id => 1 + $_ % 4, amount_incl_vat => sprintf('%d.%02d', 100 + $_ % 50, $_ % 100) } }
			  @ids
		]
	});
my $seq = $pt->last_seq;
# The second statement runs after the first has committed: the commit time.
my ($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay',
	"SELECT count(*) FROM freshpay_sync('main');\nSELECT extract(epoch FROM clock_timestamp());");
is($rc, 0, 'the sync bringing 64 invoices succeeds') or diag($err);
my (undef, $committed) = split /\n/, $out;
$committed ||= time;
is(sql(q{SELECT count(*) FROM freshpay.jobs j JOIN freshpay.invoices i ON i.id = j.invoice_id
		 WHERE j.kind = 'collect_invoice' AND i.freshportal_id BETWEEN 6001 AND 6064}), '64',
	'the sync queued 64 collect_invoice jobs');

my ($max_in_flight, $captured, $done_at) = (0, 0, undef);
while (time < $committed + $GIVE_UP)
{
	my ($o, $e, $r) = FreshpayTest::psql_result($node, 'freshpay',
		q{SELECT (SELECT coalesce(in_flight, 0) FROM freshpay.worker_status) || '|' ||
		         (SELECT count(*) FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
		           WHERE i.freshportal_id BETWEEN 6001 AND 6064 AND p.kind = 'sale' AND p.status = 'captured')});
	my ($in_flight, $count) = $r == 0 ? split(/\|/, $o) : (0, 0);
	$max_in_flight = $in_flight if $in_flight > $max_in_flight;
	$captured = $count;
	if ($count >= 64) { $done_at = time; last; }
	sleep 0.2;
}
my $seq_slow_end = $pt->last_seq;    # requests up to here took 1 s each
$pt->config({ approval_delay => 0 });
is($captured, 64, 'all 64 invoices are collected (a captured sale each)');
my $elapsed = defined $done_at ? $done_at - $committed : $GIVE_UP;
note(sprintf('64 collections took %.2f s from the commit; in_flight was at most %d', $elapsed, $max_in_flight));
cmp_ok($elapsed, '<', $LIMIT, "in under $LIMIT s from the sync's commit, with 1 s per PayTrace call");
cmp_ok($max_in_flight, '>', 1, 'freshpay.worker_status.in_flight was above 1 while they ran');

# Let a slow worker finish before counting, so that the counts below say
# "once" and not "not yet".
ok( FreshpayTest::poll_true($node,
		q{SELECT count(*) = 64 FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
		  WHERE i.freshportal_id BETWEEN 6001 AND 6064 AND p.status = 'captured' AND p.freshportal_payment_id IS NOT NULL},
		60, 'registrations'),
	'all 64 are registered in FreshPortal');

# PayTrace's view.
my @sales = grep { $_->{path} eq $SALE } @{ $pt->requests(since => $seq) };
my %requests;
$requests{ body_of($_)->{invoice_id} // '' }++ for @sales;
is_deeply([ grep { ($requests{"P-$_"} // 0) != 1 } @ids ], [], 'PayTrace received exactly one sale request per invoice number');
my %held;
$held{ $_->{invoice_id} }++ for grep { $_->{kind} eq 'SALE' && $_->{state} ne 'declined' } @{ $pt->state->{transactions} };
is_deeply([ grep { ($held{"P-$_"} // 0) != 1 } @ids ], [], 'PayTrace holds exactly one sale per invoice number');
my @times = sort { $a <=> $b } map { $_->{time} } grep { $_->{seq} <= $seq_slow_end } @sales;
my $most = 0;
for my $i (0 .. $#times)
{
	my $n = grep { $_ >= $times[$i] && $_ < $times[$i] + 0.9 } @times;
	$most = $n if $n > $most;
}
cmp_ok($most, '>', 8, "PayTrace saw more than 8 sale requests start within 0.9 s ($most)");
cmp_ok($most, '<=', 16, 'but never more than max_parallel_requests = 16');
is(sql(q{SELECT count(*) FROM freshpay.payments WHERE status IN ('pending', 'unknown')}), '0',
	'no payment is left pending or unknown');
my %registered;
$registered{ $_->{invoice_id} }++ for grep { $_->{status} eq 'registered' } @{ $fp->state->{payments} };
is_deeply([ grep { ($registered{$_} // 0) != 1 } @ids ], [], 'FreshPortal holds exactly one registration per invoice');

$node->stop;
done_testing();
