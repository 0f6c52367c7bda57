# Level 3 (issue 10, item 1; contract section 13): after an approved card
# sale or capture of a Visa or Mastercard, the worker sends the invoice's
# lines to level_three/visa or level_three/mastercard before settlement, as
# its own job.  The card's brand comes from its BIN in PayTrace's export.
# Other cards and ACH get none; a refusal is recorded on the payment
# (level3_status, level3_message) and never touches it; a call that fails
# is retried while the sale is unsettled, and after settlement nothing is
# sent; partial payments and administrations that turned it off are skipped.
use strict;
use warnings;

use JSON::PP;
use List::Util qw(sum0);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

use FreshpayTest;

my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);
my $VISA = '/v1/level_three/visa';
my $MC   = '/v1/level_three/mastercard';

my $node = FreshpayTest::new_node('level3', extension => 1, conf => "freshpay.sync_interval = '5min'");
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url);

sub sql { return $node->safe_psql('freshpay', shift); }

sub inv { return sql("SELECT id FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id = $_[0]"); }

sub level3_calls { my ($path) = @_; return grep { $_->{path} eq $path } @{ $pt->requests }; }

sub calls_for
{
	my ($path, $txn) = @_;
	return grep { (FreshpayTest::request_body($_)->{transaction_id} // 0) == $txn } level3_calls($path);
}

# Capture an invoice; wait until its Level 3 step is over; return (payment id, transaction, status, message).
sub collect
{
	my ($fp_id, $amount) = @_;
	my $args = inv($fp_id) . (defined $amount ? ", $amount" : '');
	my ($id, $txn) = split /\|/, sql("SELECT id, paytrace_transaction_id FROM freshpay_capture($args)");
	FreshpayTest::poll_true($node, "SELECT coalesce(level3_status, '') NOT IN ('pending') FROM freshpay.payments WHERE id = $id",
		30, "Level 3 of payment $id");
	my ($status, $message) = split /\|/, sql("SELECT coalesce(level3_status, ''), coalesce(level3_message, '') FROM freshpay.payments WHERE id = $id"), -1;
	return ($id, $txn, $status, $message);
}

# --- Setup: a Visa, a Mastercard, an Amex and an ACH customer -------------------------

$pt->customers([
	{ customer_id => 'C-VISA', method => 'card', bin => '401200' },
	{ customer_id => 'C-MC',   method => 'card', bin => '545454' },
	{ customer_id => 'C-AMEX', method => 'card', bin => '371449' },
	{ customer_id => 'C-ACH',  method => 'ach' } ]);
my @lines = (
	{ description => 'Red roses, 60 cm, Ecuador', quantity => 200, unit_price => '1.25', vat_rate => '0.00', product_id => 7101 },
	{ description => 'Eucalyptus cinerea bunches for a hotel lobby arrangement', quantity => 12, unit_price => '4.50', vat_rate => '0.00', product_id => 7102 },
	{ description => 'Delivery', quantity => 1, unit_price => '35.00', vat_rate => '8.00', product_id => 9001 });
$fp->seed({
	customers => [ map { +{ id => $_->[0], code => $_->[1], name => "$_->[1] Florist", currency => 'USD' } }
		  [ 1, 'VISA' ], [ 2, 'MC' ], [ 3, 'AMEX' ], [ 4, 'ACH' ] ],
	invoices => [
		{ id => 11, number => 'L3-11', customer_id => 1, lines => \@lines },
		{ id => 12, number => 'L3-12', customer_id => 2, lines => \@lines },
		{ id => 13, number => 'L3-13', customer_id => 3, lines => \@lines },
		{ id => 14, number => 'L3-14', customer_id => 4, lines => \@lines },
		{ id => 15, number => 'L3-15', customer_id => 1, lines => \@lines },
		{ id => 16, number => 'L3-16', customer_id => 1, lines => \@lines },
		{ id => 17, number => 'L3-17', customer_id => 1, lines => \@lines },
		{ id => 18, number => 'L3-18', customer_id => 1, lines => \@lines },
	] });
sql("SELECT count(*) FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = $_->[0]), '$_->[1]', 'manual', '$_->[2]')")
  for [ 1, 'C-VISA', 'card' ], [ 2, 'C-MC', 'card' ], [ 3, 'C-AMEX', 'card' ], [ 4, 'C-ACH', 'ach' ];
is(sql("SELECT amount_excl_vat || '|' || vat_amount || '|' || amount_incl_vat FROM freshpay.invoices WHERE freshportal_id = 11"),
	'339.00|2.80|341.80', 'setup: an invoice of three lines, 339.00 + 2.80 tax');

# --- A Visa sale: one level_three/visa call with the invoice's lines ---------------------

my ($id, $txn, $status, $message) = collect(11);
is($status, 'sent', 'a Visa sale: Level 3 sent') or diag($message);
like($message, qr/line item/i, "with PayTrace's answer in level3_message");
my @visa = calls_for($VISA, $txn);
is(scalar @visa, 1, 'PayTrace received one level_three/visa call for the sale');
my $body = FreshpayTest::request_body($visa[0] // {});
is($body->{invoice_id}, 'L3-11', 'naming the invoice');
is_deeply([ map { [ $_->{description}, 0 + $_->{quantity}, sprintf('%.2f', $_->{unit_cost}), sprintf('%.2f', $_->{amount}), "$_->{product_id}" ] } @{ $body->{line_items} // [] } ],
	[ [ 'Red roses, 60 cm, Ecuador', 200, '1.25', '250.00', '7101' ],
	  [ 'Eucalyptus cinerea bunches for a ho', 12, '4.50', '54.00', '7102' ],
	  [ 'Delivery', 1, '35.00', '35.00', '9001' ] ],
	"the invoice's lines: description (cut to 35 characters), quantity, unit cost, amount, product");
is(sprintf('%.2f', sum0(map { $_->{amount} } @{ $body->{line_items} // [] }) + ($body->{tax_amount} // 0)),
	sql("SELECT amount FROM freshpay.payments WHERE id = $id"), 'the lines and the tax add up to the sale');
ok(!grep({ exists $_->{debit_or_credit} } @{ $body->{line_items} // [] }), 'Visa lines carry no debit_or_credit');
is(sql("SELECT status FROM freshpay.payments WHERE id = $id"), 'captured', 'the payment is untouched');
is(sql("SELECT level3_status FROM freshpay.invoice_status WHERE number = 'L3-11'"), 'sent', 'invoice_status shows it');
my @stored = grep { $_->{id} == $txn } @{ $pt->state->{transactions} };
is(scalar @{ $stored[0]{level_three} // [] }, 1, 'PayTrace holds the Level 3 data on the transaction');

# --- Mastercard, Amex, ACH --------------------------------------------------------

($id, $txn, $status, $message) = collect(12);
is($status, 'sent', 'a Mastercard sale: Level 3 sent') or diag($message);
my @mc = calls_for($MC, $txn);
is(scalar @mc, 1, 'through level_three/mastercard');
is_deeply([ map { $_->{debit_or_credit} } @{ FreshpayTest::request_body($mc[0] // {})->{line_items} // [] } ], [ 'D', 'D', 'D' ],
	'Mastercard lines say debit_or_credit D');
is(scalar(calls_for($VISA, $txn)), 0, 'and not through level_three/visa');

($id, $txn, $status, $message) = collect(13);
is("$status|$message", 'not_applicable|Level 3 is for Visa and Mastercard only', 'an Amex sale: not applicable');
is(scalar(calls_for($VISA, $txn)) + scalar(calls_for($MC, $txn)), 0, 'no Level 3 call for the Amex sale');

my $before = scalar(level3_calls($VISA)) + scalar(level3_calls($MC));
($id) = split /\|/, sql("SELECT id FROM freshpay_capture(" . inv(14) . ")");
ok(FreshpayTest::poll_true($node, "SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $id", 30, 'ACH registered'),
	'setup: an ACH debit, registered');
is(sql("SELECT coalesce(level3_status, 'null') FROM freshpay.payments WHERE id = $id"), 'null', 'an ACH debit has no Level 3');
is(scalar(level3_calls($VISA)) + scalar(level3_calls($MC)), $before, 'and sends none');

# --- A refusal is recorded, the payment untouched ------------------------------------

$pt->set_faults([ { name => 'l3 refused', path => $VISA, action => 'status', status => 400, times => 1,
	body => '{"success":false,"response_code":1,"status_message":"One or more errors has occurred.","errors":{"9503":["Line item 1 is invalid."]}}' } ]);
($id, $txn, $status, $message) = collect(15);
is($status, 'failed', 'PayTrace refusing the Level 3 data: failed');
like($message, qr/Line item 1 is invalid/, "with PayTrace's reason");
is(sql("SELECT status || '|' || amount FROM freshpay.payments WHERE id = $id"), 'captured|341.80', 'the payment stays captured');
is(scalar(calls_for($VISA, $txn)), 1, 'a refusal is not sent again');

# --- A failure to reach PayTrace is retried; after settlement nothing is sent ----------

$pt->set_faults([ { name => 'l3 down', path => $VISA, action => 'status', status => 503, times => 1, body => '{"message":"down"}' } ]);
($id, $txn, $status, $message) = collect(16);
is($status, 'sent', 'a 503 is retried until it is sent') or diag($message);
is(scalar(calls_for($VISA, $txn)), 2, 'two calls: the failed one and the one sent');

$pt->set_faults([ { name => 'l3 down long', path => $VISA, action => 'status', status => 503, times => -1, body => '{"message":"down"}' } ]);
($id, $txn) = split /\|/, sql("SELECT id, paytrace_transaction_id FROM freshpay_capture(" . inv(17) . ")");
ok(FreshpayTest::poll_true($node, "SELECT count(*) > 0 FROM freshpay.jobs WHERE kind = 'send_level3' AND payment_id = $id AND attempts > 0", 30, 'a failed try'),
	'setup: Level 3 fails while PayTrace is down');
$pt->settle;
$pt->set_faults([]);
sql("UPDATE freshpay.jobs SET next_run_at = now() WHERE kind = 'send_level3' AND payment_id = $id AND state = 'queued'");
sql("SELECT freshpay._wake_worker_at_commit()");
ok(FreshpayTest::poll_true($node, "SELECT level3_status = 'skipped' FROM freshpay.payments WHERE id = $id", 30, 'skipped'),
	'the sale settled meanwhile: Level 3 is skipped');
like(sql("SELECT level3_message FROM freshpay.payments WHERE id = $id"), qr/settled/, 'because it settled');
is(scalar(grep { ($_->{status} // 0) == 200 } calls_for($VISA, $txn)), 0, 'nothing was sent after settlement');

# --- A Level 3 that keeps failing is given up after freshpay.max_attempts tries --------

$node->append_conf('postgresql.conf', 'freshpay.max_attempts = 2');
$node->reload;
$pt->set_faults([ { name => 'l3 down for good', path => $VISA, action => 'status', status => 503, times => -1, body => '{"message":"down"}' } ]);
$fp->seed({ invoices => [ { id => 20, number => 'L3-20', customer_id => 1, lines => \@lines } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
($id, $txn, $status, $message) = collect(20);
is($status, 'failed', 'PayTrace unreachable for Level 3: given up, failed');
like($message, qr/^gave up after 2 tries: /, 'after freshpay.max_attempts tries, with the last error');
is(sql("SELECT count(*) FROM freshpay.jobs WHERE kind = 'send_level3' AND payment_id = $id AND state = 'queued'"), '0',
	'and nothing is left queued');
$pt->set_faults([]);

# --- A partial payment, and an administration that turned it off -----------------------

($id, $txn, $status, $message) = collect(18, '100.00');
is("$status|$message", 'skipped|a partial payment: the invoice\'s lines would not add up to it', 'a partial payment: skipped');

sql("UPDATE freshpay.administrations SET level3_enabled = false WHERE name = 'main'");
$fp->seed({ invoices => [ { id => 19, number => 'L3-19', customer_id => 1, lines => \@lines } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
($id, $txn, $status, $message) = collect(19);
is("$status|$message", '|', 'turned off: the payment has no Level 3 step');
is(sql("SELECT count(*) FROM freshpay.jobs WHERE kind = 'send_level3' AND payment_id = $id"), '0', 'and no job');
is(scalar(calls_for($VISA, $txn)), 0, 'and nothing sent');

$node->stop;
done_testing();
