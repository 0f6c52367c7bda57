# Reconciliation verdicts (issue 11, part 1; contract section 14), each made
# the way it happens: freshpay.reconciliation shows every settled
# transaction (refunds and ACH debits sent back too) with its batch and a
# verdict, and every verdict but matched and statement is a row of
# freshpay.exceptions for the same transaction, with a suggested action.
#
#   matched                        a sale collected, registered, settled
#   statement                      one charge for two invoices, allocations adding up
#   amount_mismatch                an invoice lowered in FreshPortal after its capture
#   not_registered_in_freshportal  FreshPortal refuses every registration
#   no_invoice                     a sale made in PayTrace's terminal for an unknown invoice number
#   refund_without_sale            a refund made in the terminal of such a sale
#   returned                       an ACH debit (API v3) settled, then sent back by the bank
#   batch_unknown                  a batch freshpay has not pulled
#   registered_twice               a registration made a second time in FreshPortal by someone else
#
# Batches: PayTrace's totals of a batch against the transactions freshpay
# holds in it; a refund the pull cannot record (of a sale made without an
# invoice number) and a local edit of a batch's totals each make a
# batch_mismatch exception.  A settled transaction's registrations are
# looked up once more at settlement (a check_registrations job): one
# registered again by hand is registered_twice; one registration per invoice
# (a sale, a statement) is not.  While it shows registered twice, freshpay
# looks again by itself (an hour after each look, shortened here) and at
# once after freshpay_sync(), so the exception goes when the extra
# registration is reversed or deleted in FreshPortal.  A sale made in
# PayTrace's terminal and first seen settled is looked up too, and so is a
# sale whose settlement freshpay learns from PayTrace refusing to void it.
use strict;
use warnings;

use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;
my $MERCHANT = $pt->config->{merchant_id};

my $node = FreshpayTest::new_node('verdicts', extension => 1);
FreshpayTest::add_administration($node, paytrace_merchant_id => $MERCHANT);

my $POLL = 60;

sub sql { return $node->safe_psql('freshpay', shift); }
sub poll_until { return FreshpayTest::poll_true($node, $_[0], $_[2] // $POLL, $_[1]); }
sub sync_main { return sql("SELECT count(*) FROM freshpay_sync('main')"); }
sub inv { return sql("SELECT id FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id = $_[0]") || 0; }
sub cust { return sql("SELECT id FROM freshpay.customers WHERE administration = 'main' AND freshportal_id = $_[0]") || 0; }

# The payments row a money function returned (its id and status), stderr.
sub money
{
	my ($call) = @_;
	my ($out, $err) = FreshpayTest::call($node, "SELECT id || '|' || status FROM $call");
	my ($id, $status) = split /\|/, $out // '';
	return ($id || 0, $status // '', $err);
}

# The reconciliation row of a payment: "match|reason" (empty when none).
sub verdict
{
	my ($payment) = @_;
	return sql("SELECT match || '|' || match_reason FROM freshpay.reconciliation WHERE payment_id = " . ($payment || 0));
}

# The exceptions of a payment: "kind: suggested_action" lines, by kind.
sub exceptions_of
{
	my ($payment) = @_;
	return sql("SELECT string_agg(kind || ': ' || coalesce(suggested_action, '(none)'), E'\\n' ORDER BY kind)"
		  . " FROM freshpay.exceptions WHERE payment_id = " . ($payment || 0));
}

# One verdict case: its reconciliation row, and (unless healthy) its
# exception of kind $kind with a suggested action matching $action.
sub check_case
{
	my ($case, $payment, $match, $reason, $kind, $action) = @_;
	my ($got_match, $got_reason) = split /\|/, verdict($payment), 2;
	is($got_match // '(no row)', $match, "$case: reconciliation says $match");
	like($got_reason // '', $reason, "$case: with its reason");
	my $exceptions = exceptions_of($payment);
	if (!defined $kind)
	{
		is($exceptions, '', "$case: no exception");
		return;
	}
	like($exceptions, qr/^\Q$kind\E: /m, "$case: an exception of kind $kind for the transaction");
	my ($line) = grep { /^\Q$kind\E: / } split /\n/, $exceptions;
	like($line // '', $action, "$case: whose suggested action says what to do");
	return;
}

# A call of FreshPortal's API, as a person's tools make it: (HTTP status, decoded answer).
my $http = HTTP::Tiny->new(timeout => 30, keep_alive => 0);
my $fp_token;
sub fp_api
{
	my ($method, $path, $body) = @_;
	$fp_token //= JSON::PP->new->decode($http->post($fp->url . '/v1/auth',
		{ headers => { 'Content-Type' => 'application/json' },
		  content => encode_json({ username => $FreshpayTest::FP_API_KEY, type => 'api' }) })->{content})->{token};
	my $res = $http->request($method, $fp->url . $path,
		{ headers => { 'Content-Type' => 'application/json', Authorization => "Bearer $fp_token" },
		  content => encode_json($body) });
	return ($res->{status}, eval { JSON::PP->new->decode($res->{content}) } // {});
}

# A registration of PayTrace transaction $tx made by hand on FreshPortal
# invoice $invoice: its FreshPortal payment id (0 if refused).
sub register_by_hand
{
	my ($invoice, $amount, $tx) = @_;
	my ($status, $answer) = fp_api('POST', "/v1/invoices/$invoice/payments",
		{ amount => $amount, currency => 'USD', payment_date => '2026-09-25', method => 'card',
		  provider => 'paytrace', provider_transaction_id => "$tx", provider_status => 'captured' });
	return $status == 201 ? $answer->{payment}{id} : 0;
}

# FreshPortal's registrations of a provider transaction id as freshpay
# recorded them: "id:status,..." by id.
sub registrations_of
{
	my ($provider_id) = @_;
	return sql("SELECT string_agg(freshportal_payment_id || ':' || status, ',' ORDER BY freshportal_payment_id)"
		  . " FROM freshpay.freshportal_registrations WHERE provider_transaction_id = '$provider_id'");
}

sub twice_exceptions
{
	return sql("SELECT count(*) FROM freshpay.exceptions WHERE kind = 'registered_twice' AND payment_id = $_[0]");
}

# --- Setup -------------------------------------------------------------------------------

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' }, { customer_id => 'C-STMT', method => 'card' },
				 { customer_id => 'C-ACH', method => 'ach', masked_number => 'xxxxx6789' } ]);
$fp->seed({
	customers => [
		{ id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' },
		{ id => 2, code => 'STMT', name => 'Statement Stems', currency => 'USD' },
		{ id => 3, code => 'ACH', name => 'Check Chrysanths', currency => 'USD' },
	],
	invoices => [
		map { { id => $_->[0], number => "V-$_->[0]", customer_id => $_->[1], amount_excl_vat => $_->[2],
				vat_amount => '0.00', amount_incl_vat => $_->[2] } }
		  ([ 801, 1, '500.00' ], [ 802, 1, '300.00' ], [ 803, 1, '80.00' ], [ 804, 1, '10.00' ],
		   [ 805, 1, '100.00' ], [ 806, 1, '60.00' ], [ 807, 1, '100.00' ], [ 808, 1, '100.00' ], [ 809, 1, '200.00' ], [ 810, 1, '100.00' ],
		   [ 811, 2, '100.00' ], [ 812, 2, '50.00' ], [ 813, 2, '70.00' ], [ 814, 2, '30.00' ], [ 821, 3, '200.00' ])
	] });
sync_main();
is(sql("SELECT count(*) FROM freshpay.invoices WHERE administration = 'main'"), '15', 'setup: fifteen invoices synced');
sql("SELECT 1 FROM freshpay_link_customer(" . cust(1) . ", 'C-BLOOM')");
sql("SELECT 1 FROM freshpay_link_customer(" . cust(2) . ", 'C-STMT')");
sql("SELECT 1 FROM freshpay_link_customer(" . cust(3) . ", 'C-ACH', 'manual', 'ach')");

# --- Batch A: collections, and sales made in PayTrace's own terminal ----------------------

# V-803: FreshPortal refuses every registration.
$fp->faults([ { action => 'status', status => 500, body => '{"message":"down"}', method => 'POST',
				path => '/v1/invoices/803/payments', times => -1 } ]);

my ($s801, $st801, $e801) = money('freshpay_capture(' . inv(801) . ')');
is($st801, 'captured', 'V-801 is collected') or diag($e801);
my ($s802, $st802, $e802) = money('freshpay_capture(' . inv(802) . ')');
is($st802, 'captured', 'V-802 is collected') or diag($e802);
my ($s803, $st803, $e803) = money('freshpay_capture(' . inv(803) . ')');
is($st803, 'captured', 'V-803 is collected') or diag($e803);
my ($stmt, $ststmt, $estmt) = money('freshpay_capture_statement(' . cust(2) . ', ARRAY[' . inv(811) . ', ' . inv(812) . ']::bigint[])');
is($ststmt, 'captured', 'STMT: one charge for V-811 and V-812') or diag($estmt);

# In the terminal: a sale for an invoice number freshpay does not know, one
# more to be refunded there, and one without an invoice number.
my $zz301 = $pt->terminal('/v1/transactions/sale/by_customer', { customer_id => 'C-BLOOM', amount => 42.00, invoice_id => 'ZZ-301' });
my $zz302 = $pt->terminal('/v1/transactions/sale/by_customer', { customer_id => 'C-BLOOM', amount => 30.00, invoice_id => 'ZZ-302' });
my $nonum = $pt->terminal('/v1/transactions/sale/by_customer', { customer_id => 'C-BLOOM', amount => 25.00 });
is(join(',', map { $_->{response_code} // 'none' } $zz301, $zz302, $nonum), '101,101,101',
	'setup: three sales made in the terminal');

ok(poll_until("SELECT count(*) = 2 FROM freshpay.payments WHERE id IN ($s801, $s802) AND freshportal_payment_id IS NOT NULL",
		'V-801 and V-802 registered'), 'V-801 and V-802 are registered in FreshPortal');
ok(poll_until("SELECT count(*) = 2 FROM freshpay.payment_allocations WHERE payment_id = $stmt AND freshportal_payment_id IS NOT NULL",
		'the statement registered'), 'the statement is registered per invoice');

$pt->settle;
sync_main();
my $batch_a = sql("SELECT batch_number FROM freshpay.payments WHERE id = $s801");
like($batch_a, qr/^\d+$/, "PayTrace settles them in batch $batch_a, and the sync learns of it");
my $p_zz301 = sql("SELECT id FROM freshpay.payments WHERE paytrace_transaction_id = $zz301->{transaction_id}") || 0;
my $p_zz302 = sql("SELECT id FROM freshpay.payments WHERE paytrace_transaction_id = $zz302->{transaction_id}") || 0;
my $p_nonum = sql("SELECT id FROM freshpay.payments WHERE paytrace_transaction_id = $nonum->{transaction_id}") || 0;
ok($p_zz301 && $p_zz302 && $p_nonum, 'the pull records the three terminal sales');

# --- Batch B: refunds made in the terminal -------------------------------------------------

my $r302 = $pt->terminal('/v1/transactions/refund/for_transaction', { transaction_id => 0 + $zz302->{transaction_id}, amount => 30 });
my $rnon = $pt->terminal('/v1/transactions/refund/for_transaction', { transaction_id => 0 + $nonum->{transaction_id}, amount => 25 });
is(join(',', map { $_->{response_code} // 'none' } $r302, $rnon), '106,106', 'setup: both sales refunded in the terminal');
$pt->settle;
sync_main();
# (A refund made outside freshpay is recorded by one pull, and its batch
# learned by the next.)
sync_main();
my $p_r302 = sql("SELECT id FROM freshpay.payments WHERE kind = 'refund' AND paytrace_transaction_id = $r302->{transaction_id}") || 0;
ok($p_r302, 'the pull records the refund of ZZ-302 (its sale is known, for no invoice)');
is(sql("SELECT count(*) FROM freshpay.payments WHERE paytrace_transaction_id = $rnon->{transaction_id}"), '0',
	'the refund of the sale without an invoice number is not recorded: the pull cannot tell what it refunds');
my $batch_b = sql("SELECT batch_number FROM freshpay.payments WHERE id = $p_r302");

# --- V-802 lowered in FreshPortal after its capture -----------------------------------------

$fp->admin_post('/_standin/invoices/802', { amount_excl_vat => '250.00', vat_amount => '0.00', amount_incl_vat => '250.00' });
sync_main();
is(sql("SELECT amount_incl_vat || '|' || amount_paid FROM freshpay.invoices WHERE id = " . inv(802)), '250.00|300.00',
	'setup: V-802 is now 250.00 in FreshPortal, 300.00 of it paid');

# --- An ACH debit through v3, settled, then sent back by the bank ----------------------------

my ($d821, $std821, $ed821) = money('freshpay_capture(' . inv(821) . ')');
is($std821, 'captured', 'V-821 is debited through ACH (v3)') or diag($ed821);
my ($ach821) = map { $_->{ach_transaction_id} } grep { $_->{invoice_number} eq 'V-821' } @{ $pt->state->{ach_transactions} // [] };
$pt->admin_post("/_standin/ach/$ach821/settle", {});
sync_main();
ok(defined(sql("SELECT settled_at FROM freshpay.payments WHERE id = $d821 AND settled_at IS NOT NULL") || undef),
	'setup: the debit settles');
$pt->admin_post("/_standin/ach/$ach821/return", { status => 'RETURNED', reason => 'R01' });
sync_main();
is(sql("SELECT status FROM freshpay.payments WHERE id = $d821"), 'returned', 'setup: the bank sends it back');

# --- Batch C: a batch freshpay has not pulled --------------------------------------------------

my ($s804, $st804, $e804) = money('freshpay_capture(' . inv(804) . ')');
is($st804, 'captured', 'V-804 is collected') or diag($e804);
ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $s804", 'V-804 registered'),
	'V-804 is registered');
$pt->settle;
sync_main();
my $batch_c = sql("SELECT batch_number FROM freshpay.payments WHERE id = $s804");
# (The pull would bring it back: this is the state between the two pulls of a sync.)
sql("DELETE FROM freshpay.settlements WHERE administration = 'main' AND batch_number = $batch_c");

# --- The verdicts ---------------------------------------------------------------------------------

check_case('matched', $s801, 'matched', qr/batch, transaction, invoice and customer agree/, undef);
check_case('statement', $stmt, 'statement', qr/one charge for 2 invoices/, undef);
check_case('amount edited after the capture', $s802, 'amount_mismatch',
	qr/300\.00 collected .* for invoice V-802, whose total is 250\.00/, 'amount_mismatch',
	qr/refund the difference: SELECT freshpay_refund\($s802, 50\.00\)/);
check_case('FreshPortal refuses the registration', $s803, 'not_registered_in_freshportal',
	qr/not registered in FreshPortal/, 'not_registered_in_freshportal', qr/register_payment job/);
check_case('terminal sale, unknown invoice number', $p_zz301, 'no_invoice',
	qr/names no invoice freshpay knows \(invoice number ZZ-301\)/, 'settled_without_invoice',
	qr/Find PayTrace transaction \Q$zz301->{transaction_id}\E .*freshpay_refund\($p_zz301\)/);
check_case('terminal sale, no invoice number', $p_nonum, 'no_invoice',
	qr/invoice number none/, 'settled_without_invoice', qr/Virtual Terminal/);
check_case('refund of a sale made for no invoice', $p_r302, 'refund_without_sale',
	qr/refund of 30\.00 of PayTrace transaction \Q$zz302->{transaction_id}\E, a sale freshpay did not collect for any invoice \(invoice number ZZ-302\)/,
	'refund_without_sale', qr/Find refund \Q$r302->{transaction_id}\E/);
check_case('ACH debit sent back', $d821, 'returned', qr/sent the ACH debit of 200\.00 back \(RETURNED, reason R01\)/,
	'ach_returned', qr/freshpay_capture\(${\ inv(821) }\)/);
check_case('batch not pulled', $s804, 'batch_unknown', qr/batch $batch_c has not been pulled/, 'batch_unknown',
	qr/freshpay_sync\('main'\)/);

# Every settled transaction is there, with its batch; refunds too.
is( sql("SELECT string_agg(kind || ':' || amount || ':' || coalesce(batch_number::text, 'ach'), ',' ORDER BY payment_id)"
		  . " FROM freshpay.reconciliation WHERE administration = 'main'"),
	join(',', "sale:500.00:$batch_a", "sale:300.00:$batch_a", "sale:80.00:$batch_a", "sale:150.00:$batch_a",
		"sale:42.00:$batch_a", "sale:30.00:$batch_a", "sale:25.00:$batch_a", "refund:30.00:$batch_b", 'ach_sale:200.00:ach',
		"sale:10.00:$batch_c"),
	'reconciliation: every settled transaction with its batch, the refund and the ACH debit included');
is(sql("SELECT count(*) FROM freshpay.reconciliation WHERE administration = 'main' AND settled_at IS NULL"), '0',
	'every row has its settlement time (batch C\'s transaction its own)');
is(sql("SELECT method FROM freshpay.reconciliation WHERE payment_id = $d821"), 'ach', 'the ACH debit is method ach');
is( sql(q{SELECT count(*) FROM freshpay.reconciliation r
		   WHERE r.match NOT IN ('matched', 'statement')
			 AND NOT EXISTS (SELECT FROM freshpay.exceptions e
							 WHERE e.payment_id = r.payment_id AND coalesce(e.suggested_action, '') <> '')}),
	'0', 'every verdict but matched and statement is an exception with a suggested action');
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE coalesce(suggested_action, '') = ''"), '0',
	'no exception without a suggested action');

# --- Batches: PayTrace's totals against the transactions ----------------------------------------

is( sql("SELECT string_agg(detail, E'\\n') FROM freshpay.exceptions WHERE kind = 'batch_mismatch'"),
	"batch $batch_b: PayTrace counts 2 transactions, 0.00 of sales and 55.00 of refunds (net -55.00);"
	  . " freshpay holds 1 transactions in it, 0.00 of sales and 30.00 of refunds (net -30.00)",
	'batch B does not add up: the refund the pull could not record is missing');
like(sql("SELECT suggested_action FROM freshpay.exceptions WHERE kind = 'batch_mismatch'"),
	qr/Compare batch $batch_b in PayTrace's Virtual Terminal .*batch_number = $batch_b/, 'with what to compare');
# A batch's totals edited (as if PayTrace reported one sale more).
sql("UPDATE freshpay.settlements SET transaction_count = transaction_count + 1, sales_amount = sales_amount + 9.99,"
	  . " net_amount = net_amount + 9.99 WHERE administration = 'main' AND batch_number = $batch_a");
is( sql("SELECT string_agg(split_part(detail, ':', 1), ',' ORDER BY detail) FROM freshpay.exceptions WHERE kind = 'batch_mismatch'"),
	join(',', sort("batch $batch_a", "batch $batch_b")), 'batch A, edited, is a batch_mismatch too');
like(sql("SELECT detail FROM freshpay.exceptions WHERE kind = 'batch_mismatch' AND detail LIKE 'batch $batch_a:%'"),
	qr/PayTrace counts 8 transactions, 1136\.99 of sales .* freshpay holds 7 transactions in it, 1127\.00 of sales/,
	'with both sides\' figures');
sql("UPDATE freshpay.settlements SET transaction_count = transaction_count - 1, sales_amount = sales_amount - 9.99,"
	  . " net_amount = net_amount - 9.99 WHERE administration = 'main' AND batch_number = $batch_a");
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE kind = 'batch_mismatch'"), '1', 'put back, it adds up again');

# --- Verdicts turn when the cause goes ----------------------------------------------------------------

# FreshPortal accepts registrations again (the job, backed off, is due at once).
$fp->faults([]);
sql("BEGIN; UPDATE freshpay.jobs SET next_run_at = now() WHERE payment_id = $s803 AND state = 'queued';"
	  . " SELECT freshpay._wake_worker_at_commit(); COMMIT;");
ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $s803", 'V-803 registered', 90),
	'once FreshPortal answers again, V-803 is registered');
is(verdict($s803), 'matched|batch, transaction, invoice and customer agree', 'and its verdict is matched');
is(exceptions_of($s803), '', 'and it is no exception any more');
# The difference of V-802 is refunded.
my ($rf802, $strf802, $erf802) = money("freshpay_refund($s802, 50.00)");
is($strf802, 'refunded', 'the 50.00 V-802 was lowered by is refunded') or diag($erf802);
ok(poll_until("SELECT count(*) = 0 FROM freshpay.jobs WHERE state = 'queued' AND kind IN ('register_payment', 'reverse_payment')",
		'write-back quiet'), 'FreshPortal is corrected');
# The next sync brings V-802 as FreshPortal has it now, and the batch not pulled.
sync_main();
is(sql("SELECT amount_paid FROM freshpay.invoices WHERE id = " . inv(802)), '250.00', 'FreshPortal shows 250.00 paid on V-802');
is(verdict($s802), 'matched|batch, transaction, invoice and customer agree', 'V-802 is matched once the difference is refunded');
is(exceptions_of($s802), '', 'and it is no exception any more');
is(verdict($s804), 'matched|batch, transaction, invoice and customer agree', 'V-804 is matched once its batch is pulled');

# --- Registered twice in FreshPortal -------------------------------------------------------------

# V-805: 40.00 of 100.00 collected and registered; someone registers the same
# PayTrace transaction again in FreshPortal (room enough on the invoice).
# V-806 and a statement of V-813 and V-814: registered once each.
my ($s805, $st805, $e805) = money('freshpay_capture(' . inv(805) . ', 40.00)');
is($st805, 'captured', 'V-805: 40.00 of it collected') or diag($e805);
my ($s806, $st806, $e806) = money('freshpay_capture(' . inv(806) . ')');
is($st806, 'captured', 'V-806 is collected') or diag($e806);
my ($stmt2, $ststmt2, $estmt2) = money('freshpay_capture_statement(' . cust(2) . ', ARRAY[' . inv(813) . ', ' . inv(814) . ']::bigint[])');
is($ststmt2, 'captured', 'STMT: one charge for V-813 and V-814') or diag($estmt2);
ok( poll_until("SELECT count(*) = 2 FROM freshpay.payments WHERE id IN ($s805, $s806) AND freshportal_payment_id IS NOT NULL"
		  . " AND (SELECT count(*) = 2 FROM freshpay.payment_allocations WHERE payment_id = $stmt2 AND freshportal_payment_id IS NOT NULL)",
		'V-805, V-806 and the statement registered'),
	'V-805, V-806 and the statement are registered');
my $own805 = sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = $s805");
my $tx805 = sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE id = $s805");

my $dup805 = register_by_hand(805, '40.00', $tx805);
ok($dup805, 'setup: someone registers PayTrace transaction ' . $tx805 . ' on V-805 again in FreshPortal');
isnt($dup805, $own805, "setup: as FreshPortal payment $dup805 (freshpay's is $own805)");

# PayTrace settles them; the sync learns of it and each is looked up once more.
$pt->settle;
sync_main();
ok( poll_until("SELECT count(*) = 3 FROM freshpay.jobs WHERE kind = 'check_registrations' AND state = 'done'"
		  . " AND payment_id IN ($s805, $s806, $stmt2)", 'the settled transactions checked'),
	'at settlement, FreshPortal\'s registrations of each are looked up');
is(registrations_of($tx805), "$own805:registered,$dup805:registered",
	'freshpay.freshportal_registrations holds both registrations of V-805');

check_case('registered twice', $s805, 'registered_twice',
	qr/registered 2 times in FreshPortal on invoice V-805 \(FreshPortal payments $own805, $dup805, provider transaction id $tx805\)/,
	'registered_twice', qr/Reverse FreshPortal payment $dup805 on invoice V-805 in FreshPortal.*keep FreshPortal payment $own805/);
check_case('settled sale, registered once', $s806, 'matched', qr/batch, transaction, invoice and customer agree/, undef);
check_case('settled statement, registered once per invoice', $stmt2, 'statement', qr/one charge for 2 invoices/, undef);
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE kind = 'registered_twice'"), '1',
	'one registered_twice exception: V-805\'s');

# --- Registered twice, then reversed in FreshPortal: freshpay looks again by itself ------------

is( sql("SELECT count(*) FROM freshpay.jobs WHERE kind = 'check_registrations' AND state = 'queued'"
		  . " AND payment_id = $s805"
		  . " AND next_run_at BETWEEN now() + interval '50 minutes' AND now() + interval '70 minutes'"),
	'1', 'while V-805 shows registered twice, its next look is queued, an hour after the last');
is( sql("SELECT count(*) FROM freshpay.jobs WHERE kind = 'check_registrations' AND state = 'queued'"
		  . " AND payment_id IN ($s806, $stmt2)"),
	'0', 'none for the transactions registered once');
my ($rev_status) = fp_api('POST', "/v1/payments/$dup805/reverse",
	{ reason => 'refunded', provider_transaction_id => "$tx805", date => '2026-09-26' });
is($rev_status, 200, "setup: someone reverses FreshPortal payment $dup805 in FreshPortal");
is(twice_exceptions($s805), '1', 'until freshpay looks again, V-805 still shows registered twice');
# The hour, shortened: the look queued is due now.
sql("BEGIN; UPDATE freshpay.jobs SET next_run_at = now()"
	  . " WHERE kind = 'check_registrations' AND state = 'queued' AND payment_id = $s805;"
	  . " SELECT freshpay._wake_worker_at_commit(); COMMIT;");
ok(poll_until("SELECT count(*) = 0 FROM freshpay.exceptions WHERE kind = 'registered_twice' AND payment_id = $s805",
		'V-805 looked at again'),
	'freshpay looks again by itself, and the registered_twice exception of V-805 goes');
is(registrations_of($tx805), "$own805:registered,$dup805:reversed",
	'freshpay.freshportal_registrations shows the extra registration reversed');
is(verdict($s805), 'matched|batch, transaction, invoice and customer agree', 'V-805 is matched again');
is(sql("SELECT count(*) FROM freshpay.jobs WHERE kind = 'check_registrations' AND state = 'queued' AND payment_id = $s805"),
	'0', 'registered once again, V-805 is not looked up again');

# --- Registered twice, then deleted in FreshPortal: freshpay_sync() looks at once --------------

my ($s807, $st807, $e807) = money('freshpay_capture(' . inv(807) . ', 40.00)');
is($st807, 'captured', 'V-807: 40.00 of it collected') or diag($e807);
ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $s807", 'V-807 registered'),
	'V-807 is registered');
my $own807 = sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = $s807");
my $tx807 = sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE id = $s807");
is(registrations_of($tx807), "$own807:registered",
	'freshpay.freshportal_registrations holds the registration freshpay made, as soon as it is made');
my $dup807 = register_by_hand(807, '40.00', $tx807);
ok($dup807, "setup: someone registers PayTrace transaction $tx807 on V-807 again, as FreshPortal payment $dup807");
$pt->settle;
sync_main();
ok(poll_until("SELECT count(*) = 1 FROM freshpay.exceptions WHERE kind = 'registered_twice' AND payment_id = $s807",
		'V-807 registered twice'),
	'V-807 settles, and shows registered twice');
$fp->admin_post("/_standin/payments/$dup807/delete", {});
is(twice_exceptions($s807), '1', "setup: someone deletes FreshPortal payment $dup807; freshpay has not looked yet");
sync_main();
ok(poll_until("SELECT count(*) = 0 FROM freshpay.exceptions WHERE kind = 'registered_twice' AND payment_id = $s807",
		'V-807 looked at again', 30),
	'freshpay_sync() has freshpay look again at once: the registered_twice exception of V-807 goes');
is(registrations_of($tx807), "$own807:registered,$dup807:gone",
	'freshpay.freshportal_registrations records the deleted registration as gone');

# --- Sales made in PayTrace's terminal, first seen settled ------------------------------------

# V-808 and V-809: sales made in PayTrace's terminal, each registered twice
# by hand in FreshPortal, settled before freshpay's pull sees them.  V-809
# was partly refunded in the terminal too: what freshpay registers is the
# rest, under <sale>-r<refund>.
my $t808 = $pt->terminal('/v1/transactions/sale/by_customer', { customer_id => 'C-BLOOM', amount => 40.00, invoice_id => 'V-808' });
my $t809 = $pt->terminal('/v1/transactions/sale/by_customer', { customer_id => 'C-BLOOM', amount => 40.00, invoice_id => 'V-809' });
my @hand808 = map { register_by_hand(808, '40.00', $t808->{transaction_id}) } 1 .. 2;
my @hand809 = map { register_by_hand(809, '40.00', $t809->{transaction_id}) } 1 .. 2;
$pt->settle;
my $r809 = $pt->terminal('/v1/transactions/refund/for_transaction', { transaction_id => 0 + $t809->{transaction_id}, amount => 10 });
is(join(',', map { $_->{response_code} // 'none' } $t808, $t809, $r809), '101,101,106',
	'setup: two sales made in the terminal and settled, one partly refunded');
ok((grep { $_ } @hand808, @hand809) == 4, 'setup: each registered twice by hand in FreshPortal');
sync_main();
my $p808 = sql("SELECT id FROM freshpay.payments WHERE paytrace_transaction_id = $t808->{transaction_id} AND kind = 'sale'") || 0;
my $p809 = sql("SELECT id FROM freshpay.payments WHERE paytrace_transaction_id = $t809->{transaction_id} AND kind = 'sale'") || 0;
is( sql("SELECT count(*) FROM freshpay.payments WHERE id IN ($p808, $p809) AND batch_number IS NOT NULL"
		  . " AND invoice_id IS NOT NULL AND requested_by = 'paytrace'"),
	'2', 'the pull records both, already settled, on their invoices');
ok( poll_until("SELECT count(*) = 2 FROM freshpay.jobs WHERE kind = 'check_registrations' AND state = 'done'"
		  . " AND payment_id IN ($p808, $p809)", 'the terminal sales checked'),
	'each is looked up once more as it is first seen settled');
ok( poll_until("SELECT count(*) = 2 FROM freshpay.exceptions WHERE kind = 'registered_twice' AND payment_id IN ($p808, $p809)"
		  . " AND (SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $p809)",
		'both registered twice'),
	'both show registered twice');
check_case('terminal sale registered twice by hand', $p808, 'registered_twice',
	qr/registered 2 times in FreshPortal on invoice V-808 \(FreshPortal payments $hand808[0], $hand808[1],/,
	'registered_twice', qr/Reverse FreshPortal payment $hand808[1] on invoice V-808 .*keep FreshPortal payment $hand808[0]/);
my $own809 = sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = $p809");
check_case('terminal sale registered twice by hand, partly refunded', $p809, 'registered_twice',
	qr/registered 3 times in FreshPortal on invoice V-809 \(FreshPortal payments $hand809[0], $hand809[1], $own809,/,
	'registered_twice',
	qr/Reverse FreshPortal payment $hand809[0], $hand809[1] on invoice V-809 .*keep FreshPortal payment $own809\./);

# --- Settled, learned from a void PayTrace refuses --------------------------------------------

# V-810: collected, registered, registered again by hand; PayTrace settles
# it and a person tries to void it before freshpay's pull has seen that.
my ($s810, $st810, $e810) = money('freshpay_capture(' . inv(810) . ', 40.00)');
is($st810, 'captured', 'V-810: 40.00 of it collected') or diag($e810);
ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $s810", 'V-810 registered'),
	'V-810 is registered');
my $own810 = sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = $s810");
my $dup810 = register_by_hand(810, '40.00', sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE id = $s810"));
ok($dup810, "setup: someone registers it on V-810 again, as FreshPortal payment $dup810");
$pt->settle;
my (undef, undef, $ev810) = money("freshpay_void($s810)");
like($ev810, qr/payment $s810 is settled and cannot be voided/, 'setup: the void is refused: PayTrace shows it settled');
ok( poll_until("SELECT count(*) = 1 FROM freshpay.exceptions WHERE kind = 'registered_twice' AND payment_id = $s810",
		'V-810 registered twice'),
	'its registrations are looked up once more as freshpay learns it settled, and it shows registered twice');
like(sql("SELECT suggested_action FROM freshpay.exceptions WHERE kind = 'registered_twice' AND payment_id = $s810"),
	qr/Reverse FreshPortal payment $dup810 on invoice V-810 .*keep FreshPortal payment $own810\./,
	'naming the registration made by hand to reverse');

# Readers see the verdicts and the actions.
sql('CREATE ROLE bi_fin LOGIN IN ROLE freshpay_reader');
is( $node->safe_psql('freshpay',
		"SELECT count(*) > 0 FROM freshpay.reconciliation r JOIN freshpay.exceptions e USING (payment_id)"
		  . " WHERE e.suggested_action <> ''",
		extra_params => [ '-U', 'bi_fin' ]),
	't', 'a freshpay_reader reads both');

$node->stop;
done_testing();
