# The worker's pipeline (issue 8): FreshPortal calls are in flight at once
# and never more than freshpay.max_parallel_requests of them; a second
# administration's collections are not held up behind the first one's
# backlog; a money call made in a session goes before the backlog.
#
# Every FreshPortal re-read (GET /v1/invoices/{id}) and registration (POST
# /v1/invoices/{id}/payments) of administration "a" takes 0.5 s here, and
# max_parallel_requests = 2.  The checks are about order and overlap, read
# from the stand-ins' request logs, not about how long things took.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

use FreshpayTest;

my $fp_a = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $fp_b = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt   = FreshpayTest::start_standin('pt', args => ['--quiet']);

my $C = 2;
my $DELAY = 0.5;
my $node = FreshpayTest::new_node('pipeline', extension => 1,
	conf => "freshpay.max_parallel_requests = $C");
FreshpayTest::add_administration($node, name => 'a', freshportal_url => $fp_a->url, paytrace_url => $pt->url);
FreshpayTest::add_administration($node, name => 'b', freshportal_url => $fp_b->url, paytrace_url => $pt->url);

sub sql { return $node->safe_psql('freshpay', shift); }

sub invoices
{
	my ($from, $to, $customer) = @_;
	return [ map { +{ id => $_, number => "PL-$_", customer_id => $customer // 1,
				amount_incl_vat => sprintf('%d.00', 100 + $_ % 50) } } $from .. $to ];
}

# Captured and registered, each invoice of the range once.
sub wait_collected
{
	my ($admin, $from, $to, $what) = @_;
	my $n = $to - $from + 1;
	return FreshpayTest::poll_true($node,
		"SELECT count(*) = $n FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id"
		  . " WHERE i.administration = '$admin' AND i.freshportal_id BETWEEN $from AND $to"
		  . "   AND p.status = 'captured' AND p.freshportal_payment_id IS NOT NULL", 90, $what);
}

# Receive times of the re-reads of these invoices at a FreshPortal stand-in since seq.
sub reread_times
{
	my ($fp, $since, $from, $to) = @_;
	my %wanted = map { ("/v1/invoices/$_" => 1) } $from .. $to;
	return map { $_->{time} }
	  grep { $_->{method} eq 'GET' && $wanted{ $_->{path} } } @{ $fp->requests(since => $since) };
}

# --- Setup -------------------------------------------------------------------

$pt->customers([ { customer_id => 'C-PLA', method => 'card' }, { customer_id => 'C-PLB', method => 'card' },
	{ customer_id => 'C-PLM', method => 'card' } ]);
$fp_a->seed({ customers => [ { id => 1, code => 'PLA', name => 'Pipeline Florist A', currency => 'USD' },
	{ id => 2, code => 'PLM', name => 'Pipeline Florist Manual', currency => 'USD' } ] });
$fp_b->seed({ customers => [ { id => 1, code => 'PLB', name => 'Pipeline Florist B', currency => 'USD' } ] });
sql("SELECT count(*) FROM freshpay_sync('a')");
sql("SELECT count(*) FROM freshpay_sync('b')");
sql(q{SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE administration = 'a' AND freshportal_id = 1), 'C-PLA', 'on_issue', 'card')});
sql(q{SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE administration = 'a' AND freshportal_id = 2), 'C-PLM', 'manual', 'card')});
sql(q{SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE administration = 'b' AND freshportal_id = 1), 'C-PLB', 'on_issue', 'card')});

# Warm up the tokens of all three stand-ins.
$fp_a->seed({ invoices => invoices(100, 100) });
$fp_b->seed({ invoices => invoices(200, 200) });
sql("SELECT count(*) FROM freshpay_sync('a')");
sql("SELECT count(*) FROM freshpay_sync('b')");
ok(wait_collected('a', 100, 100, 'warm-up a') && wait_collected('b', 200, 200, 'warm-up b'),
	'setup: a first invoice of each administration is collected and registered');

# Administration a's FreshPortal is slow from here on.
$fp_a->faults([
	{ action => 'delay', seconds => $DELAY, method => 'GET',  path_prefix => '/v1/invoices/', times => -1 },
	{ action => 'delay', seconds => $DELAY, method => 'POST', path_prefix => '/v1/invoices/', times => -1 },
]);

# --- FreshPortal calls in flight at once, never more than C -------------------------

my $seq = $fp_a->last_seq;
$fp_a->seed({ invoices => invoices(1001, 1012) });
sql("SELECT count(*) FROM freshpay_sync('a')");
ok(wait_collected('a', 1001, 1012, 'twelve invoices'), 'twelve invoices of a are collected and registered');

my @slow = sort { $a <=> $b } map { $_->{time} }
  grep { $_->{path} =~ m{^/v1/invoices/\d+(/payments)?$} && $_->{method} =~ /^(GET|POST)$/ }
  @{ $fp_a->requests(since => $seq) };
is(scalar(@slow), 24, 'FreshPortal received 24 slow calls: a re-read and a registration per invoice');
my ($closest, $most) = (1e9, 0);
for my $i (0 .. $#slow)
{
	$closest = $slow[$i] - $slow[ $i - 1 ] if $i > 0 && $slow[$i] - $slow[ $i - 1 ] < $closest;
	my $n = grep { $_ >= $slow[$i] && $_ < $slow[$i] + $DELAY * 0.9 } @slow;
	$most = $n if $n > $most;
}
cmp_ok($closest, '<', $DELAY / 2,
	sprintf('two slow FreshPortal calls were in flight together (closest starts %.3f s apart)', $closest));
cmp_ok($most, '<=', $C, "never more than max_parallel_requests = $C slow FreshPortal calls in flight ($most)");
cmp_ok($most, '==', $C, "and that many were ($most)");

my %registered;
$registered{ $_->{invoice_id} }++ for grep { $_->{status} eq 'registered' } @{ $fp_a->state->{payments} };
is_deeply([ grep { ($registered{$_} // 0) != 1 } 1001 .. 1012 ], [], 'FreshPortal holds exactly one registration per invoice');

# --- Administrations take turns ------------------------------------------------

$seq = $fp_a->last_seq;
$fp_a->seed({ invoices => invoices(2001, 2016) });
sql("SELECT count(*) FROM freshpay_sync('a')");
# The backlog is queued; b's invoice arrives after it.
$fp_b->seed({ invoices => invoices(2501, 2501) });
sql("SELECT count(*) FROM freshpay_sync('b')");
ok(wait_collected('b', 2501, 2501, "b's invoice"), "administration b's invoice is collected");
ok(wait_collected('a', 2001, 2016, "a's backlog"), "and a's backlog is collected too");
my $behind = sql(q{SELECT count(*) FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
	WHERE i.administration = 'a' AND i.freshportal_id BETWEEN 2001 AND 2016 AND p.kind = 'sale'
	  AND p.created_at > (SELECT p2.created_at FROM freshpay.payments p2 JOIN freshpay.invoices i2 ON i2.id = p2.invoice_id
	                       WHERE i2.administration = 'b' AND i2.freshportal_id = 2501)});
cmp_ok($behind, '>=', 8, "b's collection was not queued behind a's backlog of 16: $behind of them were charged after it")
  or diag(sql(q{SELECT i.administration || ' ' || i.freshportal_id || ' ' || p.created_at::time FROM freshpay.payments p
	JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE i.freshportal_id BETWEEN 2001 AND 2501 ORDER BY p.created_at}));

# --- A session's money call goes before the backlog ----------------------------

$seq = $fp_a->last_seq;
$fp_a->seed({ invoices => [ @{ invoices(3001, 3016) }, { id => 3500, number => 'PL-3500', customer_id => 2, amount_incl_vat => '75.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('a')");
is(sql(q{SELECT count(*) FROM freshpay.jobs j JOIN freshpay.invoices i ON i.id = j.invoice_id
	WHERE i.administration = 'a' AND i.freshportal_id BETWEEN 3001 AND 3016}), '16', 'a backlog of 16 collections is queued');
my $called = time;
my ($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay',
	q{SELECT status FROM freshpay_capture((SELECT id FROM freshpay.invoices WHERE administration = 'a' AND freshportal_id = 3500))});
is($rc, 0, "the session's freshpay_capture succeeds") or diag($err);
is($out, 'captured', 'and captures the invoice');
ok(wait_collected('a', 3001, 3016, 'the third backlog'), 'the backlog is collected as well');
my ($mine) = reread_times($fp_a, $seq, 3500, 3500);
my @backlog = reread_times($fp_a, $seq, 3001, 3016);
my $after = defined $mine ? scalar(grep { $_ > $mine } @backlog) : 0;
ok(defined $mine, "the session's call re-read its invoice");
cmp_ok($after, '>=', 8, "its re-read went before most of the backlog's ($after of 16 came after it)");

is(sql(q{SELECT count(*) FROM freshpay.payments WHERE status IN ('pending', 'unknown')}), '0',
	'no payment is left pending or unknown');
my %held;
$held{ $_->{invoice_id} }++ for grep { $_->{kind} eq 'SALE' && $_->{state} ne 'declined' } @{ $pt->state->{transactions} };
is_deeply([ grep { ($held{$_} // 0) != 1 } map { "PL-$_" } 1001 .. 1012, 2001 .. 2016, 2501, 3001 .. 3016, 3500 ], [],
	'PayTrace holds exactly one sale per invoice');

$node->stop;
done_testing();
