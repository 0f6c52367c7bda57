# The decline guard (issue 10, item 3; contract section 13): PayTrace warns
# on the 3rd failed charge of one card within 24 hours and disables the card
# on the 4th.  After freshpay.max_declines_per_day declined charges of a
# customer within 24 hours its automatic collection pauses, and
# freshpay.exceptions says why and when it resumes; a person's explicit
# freshpay_capture still goes through.  Until a customer's card has been
# charged successfully within 24 hours, or after it declined, the worker
# charges one of its invoices at a time, so that a burst of invoices cannot
# meet a dead card all at once.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

use FreshpayTest;

my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);
my $SALE = '/v1/transactions/sale/by_customer';

my $node = FreshpayTest::new_node('guard', extension => 1,
	conf => "freshpay.max_declines_per_day = 2\nfreshpay.sync_interval = '5min'");
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url);

sub sql { return $node->safe_psql('freshpay', shift); }

sub inv { return sql("SELECT id FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id = $_[0]"); }

sub sale_requests { return scalar $pt->requests_for($SALE, $_[0]); }

# --- Setup: a florist whose card declines, one whose card works, on_issue -----------

$pt->customers([ { customer_id => 'C-DEAD', method => 'card' }, { customer_id => 'C-GOOD', method => 'card' } ]);
$fp->seed({ customers => [
	{ id => 1, code => 'DEAD', name => 'Wilted Florist', currency => 'USD' },
	{ id => 2, code => 'GOOD', name => 'Blooming Florist', currency => 'USD' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = $_->[0]), '$_->[1]', 'on_issue', 'card')")
  for [ 1, 'C-DEAD' ], [ 2, 'C-GOOD' ];
is(sql("SHOW freshpay.max_declines_per_day"), '2', 'setup: the limit is 2 declines a day');

# --- A burst of four invoices meets a declining card ----------------------------------------

# (0.29 is PayTrace's sandbox decline trigger)
$fp->seed({ invoices => [ map { +{ id => 100 + $_, number => "DG-$_", customer_id => 1, amount_incl_vat => '0.29' } } 1 .. 4 ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
ok( FreshpayTest::poll_true($node,
		"SELECT count(*) = 2 FROM freshpay.payments WHERE customer_id = (SELECT customer_id FROM freshpay.invoices WHERE id = "
		  . inv(101) . ") AND status = 'failed'", 30, 'two declines'),
	'the worker charges the declining card and records two declines');
# Let the queue run on a while: nothing more may be sent for this customer.
sleep 4;
my @tries = map { sale_requests("DG-$_") } 1 .. 4;
is(eval { my $n = 0; $n += $_ for @tries; $n }, 2, 'PayTrace received exactly two charges of the four invoices, not more')
  or diag("sales per invoice: @tries");
is(sql("SELECT count(*) FROM freshpay.payments p JOIN freshpay.customers c ON c.id = p.customer_id"
	  . " WHERE c.freshportal_id = 1 AND p.status IN ('pending', 'unknown')"), '0',
	'and none is in flight');
my $paused = sql("SELECT detail FROM freshpay.exceptions WHERE kind = 'collection_paused'");
like($paused, qr/Wilted Florist.*2 declined charges in 24 hours.*resumes at \d{4}-\d\d-\d\d/s,
	'exceptions: collection_paused names the customer, the declines and when it resumes');
like($paused, qr/freshpay_capture/, 'and how to collect by hand');
is(sql("SELECT code || '|' || declines_24h || '|' || collection_paused FROM freshpay.customer_status ORDER BY code"),
	"DEAD|2|true\nGOOD|0|false", 'customer_status: the declines of the day and the pause');
is(sql("SELECT count(*) FROM freshpay.jobs j WHERE j.kind = 'collect_invoice' AND j.state = 'queued'"
	  . " AND j.invoice_id IN (SELECT id FROM freshpay.invoices WHERE freshportal_id BETWEEN 101 AND 104)"
	  . " AND j.next_run_at > now() + interval '23 hours'"), '2',
	'the two invoices not tried wait for the pause to end (a day later), queued');

# --- A person's explicit call still goes through ------------------------------------------

my ($untried) = grep { !sale_requests("DG-$_") } 1 .. 4;
my $row = sql("SELECT status FROM freshpay_capture(" . inv(100 + $untried) . ")");
is($row, 'failed', 'an explicit freshpay_capture of a paused customer is sent (and declines)');
is(sale_requests("DG-$untried"), 1, 'PayTrace received it');

# --- A card that works: the first charge alone, then the rest ------------------------------

$fp->seed({ invoices => [ map { +{ id => 200 + $_, number => "OK-$_", customer_id => 2, amount_incl_vat => sprintf('%d.00', 40 + $_) } } 1 .. 5 ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
ok( FreshpayTest::poll_true($node,
		"SELECT count(*) = 5 FROM freshpay.payments p JOIN freshpay.customers c ON c.id = p.customer_id"
		  . " WHERE c.freshportal_id = 2 AND p.status = 'captured'", 40, 'five captured'),
	'a working card: all five invoices are collected');
my @recorded = split /\n/, sql("SELECT extract(epoch FROM p.created_at) FROM freshpay.payments p"
	  . " JOIN freshpay.customers c ON c.id = p.customer_id WHERE c.freshportal_id = 2 ORDER BY p.created_at");
my $first_answered = sql("SELECT extract(epoch FROM min(h.at)) FROM freshpay.payment_history h JOIN freshpay.payments p ON p.id = h.payment_id"
	  . " JOIN freshpay.customers c ON c.id = p.customer_id WHERE c.freshportal_id = 2 AND h.new_status = 'captured'");
cmp_ok($recorded[1], '>=', $first_answered, 'the second charge was recorded only after the first was approved');
my %rereads;
$rereads{$_}++ for map { $_->{method} eq 'GET' && $_->{path} =~ m{^/v1/invoices/(20[1-5])$} ? $1 : () } @{ $fp->requests };
is_deeply(\%rereads, { map { (200 + $_ => 1) } 1 .. 5 },
	'each invoice was re-read from FreshPortal once: the waiting ones made no call while the first was out')
  or diag(join "\n", map { "$_->{method} $_->{path}" } grep { $_->{path} =~ m{/v1/invoices} } @{ $fp->requests });
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE kind = 'collection_paused'"), '1', 'the working card is not paused');

# --- A lost answer does not hold the customer up ------------------------------------------

$pt->customers([ { customer_id => 'C-LOST', method => 'card' } ]);
$fp->seed({ customers => [ { id => 3, code => 'LOST', name => 'Misty Florist', currency => 'USD' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 3), 'C-LOST', 'on_issue', 'card')");
# The customer's first charge never reaches PayTrace, and its answer is lost.
$pt->faults([ { method => 'POST', path => $SALE, action => 'close_before', times => 1 } ]);
$fp->seed({ invoices => [ map { +{ id => 300 + $_, number => "LO-$_", customer_id => 3, amount_incl_vat => sprintf('%d.00', 60 + $_) } } 1 .. 3 ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
ok( FreshpayTest::poll_true($node,
		"SELECT count(*) = 1 FROM freshpay.payments p JOIN freshpay.customers c ON c.id = p.customer_id"
		  . " WHERE c.freshportal_id = 3 AND p.status = 'unknown'", 30, 'the unknown'),
	'setup: the first charge of a new customer is unknown (answer lost)');
ok( FreshpayTest::poll_true($node,
		"SELECT count(*) = 2 FROM freshpay.payments p JOIN freshpay.customers c ON c.id = p.customer_id"
		  . " WHERE c.freshportal_id = 3 AND p.status = 'captured'", 30, 'the others'),
	'its other invoices are still collected: a lost answer does not hold the customer up');
$pt->faults([]);

# --- Off ------------------------------------------------------------------------------

$node->append_conf('postgresql.conf', 'freshpay.max_declines_per_day = 0');
$node->reload;
sql("UPDATE freshpay.jobs SET next_run_at = now() WHERE kind = 'collect_invoice' AND state = 'queued'");
sql("SELECT freshpay._wake_worker_at_commit()");
ok( FreshpayTest::poll_true($node,
		"SELECT count(*) = 4 FROM freshpay.payments p JOIN freshpay.customers c ON c.id = p.customer_id"
		  . " WHERE c.freshportal_id = 1 AND p.status = 'failed'", 30, 'the last one'),
	'with the guard off (0), the last waiting invoice is charged');
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE kind = 'collection_paused'"), '0', 'and nothing is paused');

$node->stop;
done_testing();
