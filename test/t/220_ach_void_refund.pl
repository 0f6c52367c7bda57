# ACH payments can be voided (before settlement) and refunded (after) like
# cards (issue 9, contract section 12), through PayTrace v1's
# checks/manage/void and checks/refund/by_transaction: the void or refund row,
# the parent's status, the FreshPortal registration reversed (and a partial
# refund's remainder registered anew) exactly once; PayTrace's code 80 (not
# found or already settled) a clear error.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);

my $node = FreshpayTest::new_node('ach', extension => 1);
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url);

sub sql { return $node->safe_psql('freshpay', shift); }

sub call { return FreshpayTest::call($node, $_[0]); }

sub inv { return sql("SELECT id FROM freshpay.invoices WHERE freshportal_id = $_[0]"); }

sub registered
{
	my ($invoice) = @_;
	return FreshpayTest::poll_true($node,
		"SELECT bool_and(freshportal_payment_id IS NOT NULL) FROM freshpay.payments WHERE invoice_id = " . inv($invoice)
		  . " AND kind = 'ach_sale' AND status = 'captured'", 30, "registration of $invoice");
}

sub fp_payments { return grep { ($_->{invoice_id} // 0) == $_[0] } @{ $fp->state->{payments} }; }

# --- Setup -------------------------------------------------------------------

$pt->customers([ { customer_id => 'C-ACH', method => 'ach' } ]);
$fp->seed({
	customers => [ { id => 1, code => 'ACH1', name => 'Check Florist', currency => 'USD' } ],
	invoices => [
		{ id => 301, number => 'ACH-301', customer_id => 1, amount_incl_vat => '250.00' },
		{ id => 302, number => 'ACH-302', customer_id => 1, amount_incl_vat => '400.00' },
		{ id => 303, number => 'ACH-303', customer_id => 1, amount_incl_vat => '90.00' },
	] });
sql("SELECT count(*) FROM freshpay_sync('main')");
sql(q{SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-ACH', 'manual', 'ach')});

my %sale;
for my $n (301, 302, 303)
{
	my ($out, $err) = call("SELECT id || '|' || kind || '|' || status FROM freshpay_capture(" . inv($n) . ')');
	my ($id, $kind, $status) = split /\|/, $out // '';
	is("$kind|$status", 'ach_sale|captured', "setup: invoice $n collected by ACH") or diag($err);
	$sale{$n} = $id;
	ok(registered($n), "setup: invoice $n registered in FreshPortal");
}

# --- Void before settlement -------------------------------------------------------

my $seq = $pt->last_seq;
my ($out, $err) = call("SELECT kind || '|' || status FROM freshpay_void($sale{301})");
is($out, 'void|voided', 'an unsettled ACH debit is voided') or diag($err);
my @voids = grep { $_->{path} eq '/v1/checks/manage/void' } @{ $pt->requests(since => $seq) };
is(scalar @voids, 1, 'through one POST checks/manage/void');
is(FreshpayTest::request_body($voids[0] // {})->{check_transaction_id},
	0 + sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE id = $sale{301}"), 'naming the check transaction');
is(sql("SELECT status FROM freshpay.payments WHERE id = $sale{301}"), 'voided', 'the debit is voided');
ok( FreshpayTest::poll_true($node,
		q{SELECT count(*) = 1 FROM freshpay.jobs WHERE kind = 'reverse_payment' AND state = 'done'}, 30, 'the reversal'),
	'its reversal in FreshPortal is done');
is_deeply([ map { $_->{status} } fp_payments(301) ], ['reversed'], 'FreshPortal shows the registration reversed, once');

# --- Refund after settlement ---------------------------------------------------------

$pt->settle;
sql("SELECT count(*) FROM freshpay_sync('main')");
$seq = $pt->last_seq;
($out, $err) = call("SELECT kind || '|' || status || '|' || amount FROM freshpay_refund($sale{302}, 150)");
is($out, 'refund|refunded|150.00', 'a settled ACH debit is refunded in part') or diag($err);
my @refunds = grep { $_->{path} eq '/v1/checks/refund/by_transaction' } @{ $pt->requests(since => $seq) };
is(scalar @refunds, 1, 'through one POST checks/refund/by_transaction');
is(FreshpayTest::request_body($refunds[0] // {})->{amount}, 150, 'for the amount asked');
is(sql("SELECT status || '|' || refunded_amount FROM freshpay.payments WHERE id = $sale{302}"), 'captured|150.00',
	'the debit keeps the rest');
ok( FreshpayTest::poll_true($node,
		"SELECT count(*) = 1 FROM freshpay.payments WHERE id = $sale{302} AND freshportal_payment_id IS NOT NULL"
		  . " AND refunded_amount = 150", 30, 'the remainder'),
	'FreshPortal gets the remainder registered');
is_deeply([ sort map { "$_->{status}:$_->{amount}" } fp_payments(302) ], [ 'registered:250.00', 'reversed:400.00' ],
	'FreshPortal: the first registration reversed, 250.00 registered anew, each once');

# --- Settled: a void is refused -------------------------------------------------------------

# The pull told freshpay that ACH-303 settled: refused before anything is sent.
my $settled = $sale{303};
$seq = $pt->last_seq;
(undef, $err) = call("SELECT freshpay_void($settled)");
like($err, qr/ERROR:\s+55000: payment $settled is settled and cannot be voided/, 'voiding an ACH debit known settled is refused');
like($err, qr/HINT:.*freshpay_refund/, 'the hint says to refund it');
is(scalar(grep { $_->{path} eq '/v1/checks/manage/void' } @{ $pt->requests(since => $seq) }), 0, 'nothing was sent');

# PayTrace settled ACH-304, and freshpay has not pulled that yet: PayTrace's code 80.
$fp->seed({ invoices => [ { id => 304, number => 'ACH-304', customer_id => 1, amount_incl_vat => '33.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
($out, $err) = call('SELECT id FROM freshpay_capture(' . inv(304) . ')');
my $late = $out;
$pt->settle;
(undef, $err) = call("SELECT freshpay_void($late)");
like($err, qr/ERROR:\s+55000: PayTrace refused the void of payment $late/, 'PayTrace refusing the void (code 80) is a clear error');
like($err, qr/It may already be voided or settled/, "with PayTrace's reason");
is(sql("SELECT status FROM freshpay.payments WHERE id = $late"), 'captured', 'the debit is still captured');
is(sql("SELECT status FROM freshpay.payments WHERE parent_id = $late"), 'failed', 'the void attempt is recorded failed');

$node->stop;
done_testing();
