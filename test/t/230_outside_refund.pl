# A refund made outside freshpay (PayTrace's Virtual Terminal) is recorded
# by the PayTrace pull (issue 9, contract section 12): a refund row of the
# payment it refunds (requested_by 'paytrace'), the parent's refunded amount,
# and FreshPortal corrected exactly once (the registration reversed, the
# remainder registered anew); a second pull records nothing more.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);

my $node = FreshpayTest::new_node('outside_refund', extension => 1);
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url);

sub sql { return $node->safe_psql('freshpay', shift); }

# --- Setup: a collected, registered, settled sale -------------------------------

$pt->customers([ { customer_id => 'C-OUT', method => 'card' } ]);
$fp->seed({
	customers => [ { id => 1, code => 'OUT1', name => 'Outside Florist', currency => 'USD' } ],
	invoices => [ { id => 401, number => 'OUT-401', customer_id => 1, amount_incl_vat => '500.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
sql(q{SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-OUT')});
my ($sale, $transaction) = split /\|/,
  sql(q{SELECT id || '|' || paytrace_transaction_id FROM freshpay_capture((SELECT id FROM freshpay.invoices WHERE freshportal_id = 401))});
like($transaction // '', qr/^\d+$/, 'setup: the sale is captured');
ok( FreshpayTest::poll_true($node, "SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $sale", 30, 'registration'),
	'setup: and registered in FreshPortal');
$pt->settle;
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql("SELECT settled_at IS NOT NULL FROM freshpay.payments WHERE id = $sale"), 't', 'setup: and settled');

# --- A person refunds 120.00 of it in the Virtual Terminal --------------------------------

my $registration = sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = $sale");
my $refund = $pt->terminal('/v1/transactions/refund/for_transaction', { transaction_id => 0 + $transaction, amount => 120 });
is($refund->{response_code}, 106, 'setup: PayTrace refunds 120.00 outside freshpay');
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql("SELECT kind || '|' || status || '|' || amount || '|' || requested_by || '|' || paytrace_transaction_id"
	  . " FROM freshpay.payments WHERE parent_id = $sale"),
	"refund|refunded|120.00|paytrace|$refund->{transaction_id}", 'the pull records a refund row of the sale');
is(sql("SELECT status || '|' || refunded_amount FROM freshpay.payments WHERE id = $sale"), 'captured|120.00',
	"the sale's refunded amount follows");
# The pull's jobs wake the worker when its transaction commits, not before
# (the worker would find nothing yet, and idle for 10 s).
ok( FreshpayTest::poll_true($node,
		q{SELECT count(*) = 1 FROM freshpay.jobs WHERE kind = 'reverse_payment' AND state = 'done'}, 5, 'the reversal'),
	'the worker, woken when the pull commits, reverses the registration at once');
my $first = $registration;
ok( FreshpayTest::poll_true($node,
		"SELECT freshportal_payment_id IS NOT NULL AND freshportal_payment_id <> $first FROM freshpay.payments WHERE id = $sale", 30, 'the remainder'),
	'FreshPortal is corrected: the refund took the registration over, the remainder is registered anew');
is_deeply([ sort map { "$_->{status}:$_->{amount}" } grep { ($_->{invoice_id} // 0) == 401 } @{ $fp->state->{payments} } ],
	[ 'registered:380.00', 'reversed:500.00' ], 'once: the registration reversed, 380.00 registered anew');

sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql("SELECT count(*) FROM freshpay.payments WHERE parent_id = $sale"), '1', 'a second pull records nothing more');

# --- The rest, refunded outside as well ------------------------------------------------

$refund = $pt->terminal('/v1/transactions/refund/for_transaction', { transaction_id => 0 + $transaction, amount => 380 });
is($refund->{response_code}, 106, 'setup: PayTrace refunds the remaining 380.00');
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql("SELECT status || '|' || refunded_amount FROM freshpay.payments WHERE id = $sale"), 'refunded|500.00',
	'the sale is fully refunded');
ok( FreshpayTest::poll_true($node,
		q{SELECT count(*) = 2 FROM freshpay.jobs WHERE kind = 'reverse_payment' AND state = 'done'}, 30, 'the second reversal'),
	'its reversal is done');
ok( FreshpayTest::poll_true($node,
		q{SELECT count(*) = 0 FROM freshpay.jobs WHERE state = 'queued' AND kind IN ('register_payment', 'reverse_payment')}, 30, 'write-back'),
	'and the write-back is quiet');
is_deeply([ sort map { $_->{status} } grep { ($_->{invoice_id} // 0) == 401 } @{ $fp->state->{payments} } ],
	[ 'reversed', 'reversed' ], 'FreshPortal holds no registration for the invoice any more');

$node->stop;
done_testing();
