# ACH on PayTrace API v3 (issue 9, contract sections 11 and 12): an
# administration with a merchant id debits an ACH customer through
# POST /v3/checks/payment with an idempotency key recorded before sending,
# and reads the debit's status; a decline is an outcome; a lost answer is
# looked up by its key, never sent again (PayTrace committed: captured; it
# did not: unknown until a person settles it, then a new key); the pull
# follows the debit (settled, returned: the invoice reopens, FreshPortal is
# corrected exactly once, automatic collection of the invoice stops, an
# ach_returned exception until it is collected again); void and refund go
# through /v3/checks/void and /v3/checks/refund; a settled debit cannot be
# voided; an administration without a merchant id stays on v1.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

use FreshpayTest;

my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);
my $MERCHANT = $pt->config->{merchant_id};

my $node = FreshpayTest::new_node('ach_v3', extension => 1);
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url,
	paytrace_merchant_id => $MERCHANT);
FreshpayTest::add_administration($node, name => 'nov3', freshportal_url => $fp->url, paytrace_url => $pt->url);

my $PAYMENT = '/v3/checks/payment';
my $BY_KEY  = '/v3/checks/transactions/idempotency-keys/';
my $LIST    = '/v3/checks/transactions';
my $VOID    = '/v3/checks/void';
my $REFUND  = '/v3/checks/refund';
my $V1_ACH  = '/v1/checks/sale/by_customer';
my $UUID    = qr/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
my $POLL    = 30;

# --- Helpers -------------------------------------------------------------------

sub sql { return $node->safe_psql('freshpay', shift); }

sub call { return FreshpayTest::call($node, $_[0]); }

sub poll_until { return FreshpayTest::poll_true($node, $_[0], $_[2] // $POLL, $_[1]); }

# The rows of a query as one JSON object of text values (a hashref; {} when
# it has no row), and psql's stderr.
sub row_of
{
	my ($query) = @_;
	my ($out, $err) = call("SELECT json_object_agg(key, value) FROM ($query) r, json_each_text(row_to_json(r))");
	my $row = length($out) ? eval { JSON::PP->new->decode($out) } : undef;
	return (ref $row eq 'HASH' ? $row : {}, $err);
}

sub payment { return (row_of("SELECT * FROM freshpay.payments WHERE id = " . ($_[0] || 0)))[0]; }

# A money function's row, e.g. money('capture(12)'): (hashref, stderr).
# (Its id is 0 when there is no row, so that later queries still run.)
sub money
{
	my ($row, $err) = row_of("SELECT * FROM freshpay_$_[0]");
	$row->{id} //= 0;
	return ($row, $err);
}

# The local id of a FreshPortal invoice in an administration.
sub inv
{
	my ($fp_id, $admin) = @_;
	return sql("SELECT id FROM freshpay.invoices WHERE administration = '" . ($admin // 'main') . "' AND freshportal_id = $fp_id")
	  || 0;
}

sub header_of
{
	my ($request, $name) = @_;
	my ($key) = grep { lc $_ eq lc $name } keys %{ $request->{headers} // {} };
	return defined $key ? $request->{headers}{$key} : undef;
}

sub query_of { my ($request, $name) = @_; return ($request->{query}{$name} // [])->[0]; }

# PayTrace requests since $seq: to a path (exact), or starting with a prefix.
sub pt_calls
{
	my ($method, $path, $since) = @_;
	return grep { $_->{method} eq $method && $_->{path} eq $path } @{ $pt->requests(since => $since // 0) };
}

sub pt_v3_calls { return grep { $_->{path} =~ m{^/v3/} } @{ $pt->requests(since => $_[0] // 0) }; }

# The POST /v3/checks/payment requests for an invoice number (since $seq).
sub debit_posts
{
	my ($number, $since) = @_;
	return grep { (FreshpayTest::request_body($_)->{invoice_number} // '') eq $number }
	  pt_calls('POST', $PAYMENT, $since);
}

# The key lookups PayTrace received for an idempotency key (since $seq).
sub key_lookups
{
	my ($key, $since) = @_;
	return grep { $_->{method} eq 'GET' && lc($_->{path}) eq lc($BY_KEY . $key) } @{ $pt->requests(since => $since // 0) };
}

# The v3 ACH debits PayTrace holds for an invoice number.
sub pt_debits
{
	my ($number) = @_;
	return grep { $_->{invoice_number} eq $number && $_->{transaction_type} eq 'PAYMENT' }
	  @{ $pt->state->{ach_transactions} // [] };
}

sub fp_payments { my ($fp_id) = @_; return grep { ($_->{invoice_id} // 0) == $fp_id } @{ $fp->state->{payments} }; }

sub fp_summary { return join(',', sort map { "$_->{status}:$_->{amount}" } fp_payments($_[0])); }

# POST /v1/payments/{id}/reverse requests FreshPortal received.
sub fp_reversals
{
	my ($fp_payment) = @_;
	return grep { $_->{method} eq 'POST' && $_->{path} eq "/v1/payments/$fp_payment/reverse" }
	  @{ $fp->requests(path_prefix => '/v1/payments/') };
}

sub registered
{
	my ($payment, $what) = @_;
	return poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = " . ($payment || 0),
		"registration of $what");
}

sub sync_main { return sql("SELECT count(*) FROM freshpay_sync('main')"); }

# A PayTrace admin call playing the bank (settle, return) on an ACH id; a
# refusal (or no id) is a failed check here, not the end of the file.
sub bank
{
	my ($ach_id, $what, $body) = @_;
	my $answer = eval { $pt->admin_post('/_standin/ach/' . ($ach_id // 'none') . "/$what", $body // {}) };
	ok($answer, "setup: PayTrace's bank does $what on ACH transaction " . ($ach_id // '(none)')) or diag($@);
	return $answer;
}

# --- Setup -----------------------------------------------------------------------

# 1: manual ACH customer (C-ACH); 2: on_issue ACH customer (C-ACH2); 3: the
# customer of the administration without a merchant id (C-ACH3).
$pt->customers([ map { { customer_id => $_, method => 'ach', masked_number => 'xxxxx6789' } } qw(C-ACH C-ACH2 C-ACH3) ]);
$fp->seed({
	customers => [
		{ id => 1, code => 'ACH1', name => 'Check Florist',     currency => 'USD' },
		{ id => 2, code => 'ACH2', name => 'Auto Debit Blooms', currency => 'USD' },
		{ id => 3, code => 'ACH3', name => 'Old API Garden',    currency => 'USD' },
	],
	invoices => [
		{ id => 401, number => 'V3-401', customer_id => 1, amount_incl_vat => '250.00' },    # debit, settle, no void
		{ id => 402, number => 'V3-402', customer_id => 1, amount_incl_vat => '0.29' },      # declined
		{ id => 403, number => 'V3-403', customer_id => 1, amount_incl_vat => '120.00' },    # answer lost
		{ id => 404, number => 'V3-404', customer_id => 1, amount_incl_vat => '130.00' },    # request dropped
		{ id => 405, number => 'V3-405', customer_id => 1, amount_incl_vat => '150.00' },    # void
		{ id => 406, number => 'V3-406', customer_id => 1, amount_incl_vat => '400.00' },    # refund
		{ id => 411, number => 'V1-411', customer_id => 3, amount_incl_vat => '75.00' },     # nov3, v1
	] });
sync_main();
sql("SELECT count(*) FROM freshpay_sync('nov3')");
is(sql(q{SELECT count(*) FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id BETWEEN 401 AND 406}), '6',
	'setup: the six invoices are synced');
my ($out, $err) = call(q{SELECT paytrace_customer_id || '|' || collection || '|' || payment_method FROM freshpay_link_customer(
	(SELECT id FROM freshpay.customers WHERE administration = 'main' AND freshportal_id = 1), 'C-ACH', 'manual', 'ach')});
is($out, 'C-ACH|manual|ach', 'setup: customer 1 is linked to ACH profile C-ACH, manual') or diag($err);
# on_issue before its first invoice: the worker makes the first debit itself.
($out, $err) = call(q{SELECT paytrace_customer_id || '|' || collection || '|' || payment_method FROM freshpay_link_customer(
	(SELECT id FROM freshpay.customers WHERE administration = 'main' AND freshportal_id = 2), 'C-ACH2', 'on_issue', 'ach')});
is($out, 'C-ACH2|on_issue|ach', 'setup: customer 2 is linked to ACH profile C-ACH2, on_issue') or diag($err);
($out, $err) = call(q{SELECT paytrace_customer_id || '|' || payment_method FROM freshpay_link_customer(
	(SELECT id FROM freshpay.customers WHERE administration = 'nov3' AND freshportal_id = 3), 'C-ACH3', 'manual', 'ach')});
is($out, 'C-ACH3|ach', "setup: administration nov3's customer 3 is linked to ACH profile C-ACH3") or diag($err);

# --- 11. Without a merchant id: v1, no v3 call ----------------------------------------
#
# First, while nothing else talks to PayTrace: any /v3 call now would be this one's.

my $seq = $pt->last_seq;
my ($v1, $v1_err) = money('capture(' . inv(411, 'nov3') . ')');
is(($v1->{kind} // '') . '|' . ($v1->{status} // ''), 'ach_sale|captured',
	'nov3 (no merchant id): an ACH customer is debited, captured') or diag($v1_err);
my @v1_sales = grep { (FreshpayTest::request_body($_)->{invoice_id} // '') eq 'V1-411' } pt_calls('POST', $V1_ACH, $seq);
is(scalar @v1_sales, 1, 'nov3: through one POST /v1/checks/sale/by_customer');
is(FreshpayTest::request_body($v1_sales[0] // {})->{customer_id} // '', 'C-ACH3', 'nov3: against the customer\'s ACH profile');
is(join(',', map { "$_->{method} $_->{path}" } pt_v3_calls($seq)), '', 'nov3: no /v3 call at all');
is($v1->{idempotency_key}, undef, 'nov3: the v1 debit has no idempotency key');

# --- 2. A debit through v3 ----------------------------------------------------------

$seq = $pt->last_seq;
my ($d401, $d401_err) = money('capture(' . inv(401) . ')');
is(($d401->{kind} // '') . '|' . ($d401->{status} // ''), 'ach_sale|captured', 'v3 debit: an ach_sale, captured')
  or diag($d401_err);
unlike($d401_err, qr/WARNING|ERROR/, 'v3 debit: without a warning or error');
my @posts = pt_calls('POST', $PAYMENT, $seq);
is(scalar @posts, 1, 'v3 debit: exactly one POST /v3/checks/payment');
my $post = $posts[0] // {};
my $body = FreshpayTest::request_body($post);
like($post->{body} // '', qr/"merchant_id"\s*:\s*\Q$MERCHANT\E\s*[,}]/, "v3 debit: merchant_id is the JSON integer $MERCHANT");
is($body->{customer_id} // '', 'C-ACH', 'v3 debit: customer_id is the vault profile');
like($post->{body} // '', qr/"amount"\s*:\s*"250\.00"/, 'v3 debit: amount is the string "250.00"');
is($body->{invoice_number} // '', 'V3-401', 'v3 debit: invoice_number is the FreshPortal number');
like($body->{idempotency_key} // '', $UUID, 'v3 debit: idempotency_key is a UUID');
is(header_of($post, 'X-Integrator-Id') // '', $FreshpayTest::PT_INTEGRATOR_ID, 'v3 debit: header X-Integrator-Id is sent');
like(header_of($post, 'Authorization') // '', qr/^Bearer \S+$/, 'v3 debit: with a bearer token');
my ($ach401) = map { $_->{ach_transaction_id} } pt_debits('V3-401');
like($ach401 // '', qr/^\d+$/, 'v3 debit: PayTrace holds the debit');
my @reads = pt_calls('GET', "$LIST/" . ($ach401 // 'none'), $seq);
is(scalar @reads, 1, 'v3 debit: then one GET /v3/checks/transactions/{ach id} reads its status');
is(query_of($reads[0] // {}, 'merchant_id') // '', "$MERCHANT", 'v3 debit: the status read carries merchant_id');
ok(@reads && $reads[0]{seq} > ($post->{seq} // 0), 'v3 debit: the status is read after the debit');
is($d401->{paytrace_transaction_id} // '', $ach401 // 'none', "v3 debit: paytrace_transaction_id is PayTrace's ach_transaction_id");
is(lc($d401->{idempotency_key} // ''), lc($body->{idempotency_key} // 'none'), 'v3 debit: the row keeps the key it sent');
is($d401->{ach_status} // '', 'ACCEPTED', 'v3 debit: ach_status ACCEPTED');
ok(registered($d401->{id}, 'V3-401'), 'v3 debit: registered in FreshPortal');
my @fp401 = fp_payments(401);
is(scalar @fp401, 1, 'v3 debit: FreshPortal holds exactly one payment for the invoice');
is(($fp401[0]{method} // '') . '|' . ($fp401[0]{status} // ''), 'ach|registered', 'v3 debit: registered with method ach');
is($fp401[0]{provider_transaction_id} // '', $ach401 // 'none', 'v3 debit: provider_transaction_id is the ach id');

# --- 3. A decline -------------------------------------------------------------------

$seq = $pt->last_seq;
my ($d402, $d402_err) = money('capture(' . inv(402) . ')');
unlike($d402_err, qr/ERROR/, 'decline: no error') or diag($d402_err);
is($d402->{status} // '', 'failed', 'decline: the debit is failed');
is($d402->{ach_status} // '', 'DECLINED', 'decline: ach_status DECLINED');
is(scalar(debit_posts('V3-402', $seq)), 1, 'decline: one POST /v3/checks/payment was sent');
is(join(',', map { $_->{transaction_status} } pt_debits('V3-402')), 'DECLINED', 'decline: PayTrace recorded it DECLINED');

# --- Debits for the void (8) and the refund (9) ---------------------------------------

my ($d405, $d405_err) = money('capture(' . inv(405) . ')');
is($d405->{status} // '', 'captured', 'setup: V3-405 debited (to void)') or diag($d405_err);
my ($d406, $d406_err) = money('capture(' . inv(406) . ')');
is($d406->{status} // '', 'captured', 'setup: V3-406 debited (to refund)') or diag($d406_err);
ok(registered($d405->{id}, 'V3-405'), 'setup: V3-405 registered in FreshPortal');
ok(registered($d406->{id}, 'V3-406'), 'setup: V3-406 registered in FreshPortal');

# --- 7a. The worker debits an on_issue customer's invoice --------------------------------

$seq = $pt->last_seq;
$fp->seed({ invoices => [ { id => 407, number => 'V3-407', customer_id => 2, amount_incl_vat => '500.00' } ] });
sync_main();
my $i407 = inv(407);
ok( poll_until("SELECT count(*) = 1 FROM freshpay.payments WHERE invoice_id = $i407 AND kind = 'ach_sale' AND status = 'captured'",
		'the on_issue debit'),
	'on_issue: the worker debits the synced invoice by itself, captured');
my $d407 = payment(sql("SELECT min(id) FROM freshpay.payments WHERE invoice_id = $i407") || 0);
is(scalar(debit_posts('V3-407', $seq)), 1, 'on_issue: through one POST /v3/checks/payment');
like($d407->{idempotency_key} // '', $UUID, 'on_issue: with an idempotency key');
ok(registered($d407->{id}, 'V3-407'), 'on_issue: the debit is registered in FreshPortal');
# (Kept now: the reversal after the return moves it to no row.)
my $fp407 = sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = " . ($d407->{id} || 0)) || 0;
sync_main();
is(sql("SELECT status FROM freshpay.invoices WHERE id = $i407"), 'paid', 'on_issue: after a sync the invoice is paid');
my ($ach407) = map { $_->{ach_transaction_id} } pt_debits('V3-407');

# --- 4 and 5 start: a lost answer, a dropped request ----------------------------------

# 4: PayTrace makes the debit, its answer is lost.
my $seq4 = $pt->last_seq;
$pt->faults([ { method => 'POST', path => $PAYMENT, action => 'close_after', times => 1, name => 'lost answer' } ]);
my ($d403, $d403_err) = money('capture(' . inv(403) . ')');
$pt->faults([]);
is($d403->{status} // '', 'unknown', 'lost answer: freshpay_capture returns status unknown') or diag($d403_err);
like($d403_err, qr/WARNING/, 'lost answer: with a WARNING');
unlike($d403_err, qr/ERROR/, 'lost answer: not an error');
my ($post403) = debit_posts('V3-403', $seq4);
my $key403 = FreshpayTest::request_body($post403 // {})->{idempotency_key} // 'none';
is(lc($d403->{idempotency_key} // ''), lc($key403), 'lost answer: the row has the key that was sent');
is(($post403 // {})->{fault} // '', 'close_after', 'lost answer: the stand-in processed it and dropped the answer');

# 5: the request is dropped before PayTrace processes it.
my $seq5 = $pt->last_seq;
$pt->faults([ { method => 'POST', path => $PAYMENT, action => 'close_before', times => 1, name => 'dropped request' } ]);
my ($d404, $d404_err) = money('capture(' . inv(404) . ')');
$pt->faults([]);
is($d404->{status} // '', 'unknown', 'dropped request: freshpay_capture returns status unknown') or diag($d404_err);
like($d404_err, qr/WARNING/, 'dropped request: with a WARNING');
my ($post404) = debit_posts('V3-404', $seq5);
my $key404 = FreshpayTest::request_body($post404 // {})->{idempotency_key} // 'none';
like($key404, $UUID, 'dropped request: it carried an idempotency key');
is(lc($d404->{idempotency_key} // ''), lc($key404), 'dropped request: the row has the key that was sent');
is(scalar(pt_debits('V3-404')), 0, 'dropped request: PayTrace holds no debit for it');

# --- 8. Void before settlement (while 4 and 5 wait) ------------------------------------

# (Read before the void: a reversal moves the registration id to the void row.)
my $fp405 = sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = $d405->{id}") || 0;
$seq = $pt->last_seq;
my ($void, $void_err) = money("void($d405->{id})");
is(($void->{kind} // '') . '|' . ($void->{status} // ''), 'void|voided', 'void: an unsettled v3 debit is voided')
  or diag($void_err);
my @voids = pt_calls('POST', $VOID, $seq);
is(scalar @voids, 1, 'void: through one POST /v3/checks/void');
my $void_body = FreshpayTest::request_body($voids[0] // {});
my ($ach405) = map { $_->{ach_transaction_id} } pt_debits('V3-405');
like($voids[0]{body} // '', qr/"merchant_id"\s*:\s*\Q$MERCHANT\E\s*[,}]/, 'void: with merchant_id (integer)');
is("" . ($void_body->{ach_transaction_id} // ''), $ach405 // 'none', 'void: naming the ach_transaction_id');
is(scalar(pt_calls('POST', '/v1/checks/manage/void', $seq)), 0, 'void: not through v1');
is(join(',', map { $_->{transaction_status} } pt_debits('V3-405')), 'VOIDED', 'void: PayTrace shows the debit VOIDED');
is(payment($d405->{id})->{status} // '', 'voided', 'void: the debit is voided');
ok(FreshpayTest::wait_for(sub { ($fp->item('payments', $fp405)->{status} // '') eq 'reversed' }, $POLL, 'the void\'s reversal'),
	'void: the FreshPortal registration is reversed');
is($fp->item('payments', $fp405)->{reversal}{reason} // '', 'voided', 'void: with reason voided');
is(scalar(fp_reversals($fp405)), 1, 'void: through one POST /v1/payments/{id}/reverse');

# --- 4. The lost answer is looked up by key --------------------------------------------

ok(poll_until("SELECT status = 'captured' FROM freshpay.payments WHERE id = " . ($d403->{id} || 0), 'the lost answer to resolve', 60),
	'lost answer: the worker resolves the payment to captured');
my @lookups403 = key_lookups($key403, $seq4);
ok(scalar @lookups403, 'lost answer: by GET /v3/checks/transactions/idempotency-keys/{key}');
is(query_of($lookups403[0] // {}, 'merchant_id') // '', "$MERCHANT", 'lost answer: the lookup carries merchant_id');
my @debits403 = pt_debits('V3-403');
is(scalar @debits403, 1, 'lost answer: PayTrace holds exactly one debit for the invoice');
is(scalar(debit_posts('V3-403')), 1, 'lost answer: exactly one POST /v3/checks/payment for it was ever sent');
is(payment($d403->{id})->{paytrace_transaction_id} // '', $debits403[0]{ach_transaction_id} // 'none',
	"lost answer: the payment has PayTrace's ach id");
ok(registered($d403->{id}, 'V3-403'), 'lost answer: then registered in FreshPortal');
is(scalar(fp_payments(403)), 1, 'lost answer: exactly once');

# --- 7b. The on_issue debit comes back ----------------------------------------------------

bank($ach407, 'return', { status => 'NSF_DECLINED', reason => 'R01' });
sync_main();
my $t_reopened;
my $r407 = payment($d407->{id});
is($r407->{status} // '', 'returned', 'return: after a sync the debit is returned');
is($r407->{return_reason} // '', 'R01', 'return: return_reason R01');
is($r407->{ach_status} // '', 'NSF_DECLINED', 'return: ach_status NSF_DECLINED');
ok(FreshpayTest::wait_for(sub { ($fp->item('payments', $fp407)->{status} // '') eq 'reversed' }, $POLL, 'the return\'s reversal'),
	'return: the worker reverses the FreshPortal registration');
my @rev407 = fp_reversals($fp407);
is(scalar @rev407, 1, 'return: through one POST /v1/payments/{id}/reverse');
is(FreshpayTest::request_body($rev407[0] // {})->{reason} // '', 'chargeback', 'return: with reason chargeback');
my $fp_inv407 = $fp->item('invoices', 407);
is(($fp_inv407->{status} // '') . '|' . ($fp_inv407->{open_amount} // ''), 'open|500.00',
	'return: FreshPortal shows the invoice open again, for its full amount');
sync_main();
$t_reopened = time;
is(sql("SELECT status FROM freshpay.invoices WHERE id = $i407"), 'open', 'return: after another sync the invoice is open');
like(sql("SELECT detail FROM freshpay.exceptions WHERE kind = 'ach_returned' AND payment_id = $d407->{id}"), qr/R01/,
	'return: exceptions show ach_returned for the debit, with reason R01');
sync_main();
sync_main();

# --- 6. Settlement --------------------------------------------------------------------

$seq = $pt->last_seq;
bank($ach401, 'settle');
my ($ach406) = map { $_->{ach_transaction_id} } pt_debits('V3-406');
bank($ach406, 'settle');
sync_main();
my $s401 = payment($d401->{id});
is($s401->{ach_status} // '', 'SETTLED', 'settlement: after a sync ach_status is SETTLED');
ok(defined $s401->{settled_at}, 'settlement: settled_at is set');
is($s401->{status} // '', 'captured', 'settlement: the debit stays captured');
my @lists = pt_calls('GET', $LIST, $seq);
ok(scalar(grep { (query_of($_, 'date_type') // '') eq 'PROCESSED' } @lists),
	'settlement: the sync read GET /v3/checks/transactions with date_type=PROCESSED');
my @full = grep {
	my $r = $_;
	(query_of($r, 'merchant_id') // '') eq "$MERCHANT" && !grep { !defined query_of($r, $_) } qw(start_date end_date limit offset)
} @lists;
ok(scalar @full, 'settlement: with merchant_id, start_date, end_date, limit and offset');

# --- 10. A debit known settled cannot be voided ---------------------------------------------

$seq = $pt->last_seq;
(undef, $err) = call("SELECT freshpay_void($d401->{id})");
like($err, qr/ERROR:\s+55000: .*settled/, 'void of a settled debit: refused with 55000, saying it is settled');
like($err, qr/HINT:.*refund/, 'void of a settled debit: the hint says to refund it');
is(scalar(pt_calls('POST', $VOID, $seq)), 0, 'void of a settled debit: no POST /v3/checks/void');
is(payment($d401->{id})->{status} // '', 'captured', 'void of a settled debit: it stays captured');

# --- 9. Refund after settlement ---------------------------------------------------------

is(payment($d406->{id})->{ach_status} // '', 'SETTLED', 'refund: setup: V3-406 is known settled');
$seq = $pt->last_seq;
my ($refund, $refund_err) = money("refund($d406->{id}, 100.00)");
is(($refund->{kind} // '') . '|' . ($refund->{status} // '') . '|' . ($refund->{amount} // ''), 'refund|refunded|100.00',
	'refund: 100.00 of the 400.00 debit is refunded') or diag($refund_err);
my @refunds = pt_calls('POST', $REFUND, $seq);
is(scalar @refunds, 1, 'refund: through one POST /v3/checks/refund');
my $refund_body = FreshpayTest::request_body($refunds[0] // {});
like($refunds[0]{body} // '', qr/"merchant_id"\s*:\s*\Q$MERCHANT\E\s*[,}]/, 'refund: with merchant_id (integer)');
is("" . ($refund_body->{ach_transaction_id} // ''), $ach406 // 'none', 'refund: naming the debit\'s ach_transaction_id');
like($refunds[0]{body} // '', qr/"amount"\s*:\s*"100\.00"/, 'refund: amount is the string "100.00"');
like($refund_body->{idempotency_key} // '', $UUID, 'refund: with an idempotency key');
my ($refund_key, $debit_key) = (lc($refund_body->{idempotency_key} // ''), lc($d406->{idempotency_key} // ''));
ok($refund_key =~ $UUID && $debit_key =~ $UUID && $refund_key ne $debit_key, "refund: not the debit's key")
  or diag("refund key '$refund_key', debit key '$debit_key'");
is(lc($refund->{idempotency_key} // ''), lc($refund_body->{idempotency_key} // 'none'), 'refund: the refund row has its own key, the one sent');
is(scalar(pt_calls('POST', '/v1/checks/refund/by_transaction', $seq)), 0, 'refund: not through v1');
my $p406 = payment($d406->{id});
is(($p406->{status} // '') . '|' . ($p406->{refunded_amount} // ''), 'captured|100.00',
	'refund: the debit stays captured, refunded_amount 100.00');
ok(FreshpayTest::wait_for(sub { fp_summary(406) eq 'registered:300.00,reversed:400.00' }, $POLL, 'the refund\'s correction'),
	'refund: FreshPortal is corrected');
is(fp_summary(406), 'registered:300.00,reversed:400.00',
	'refund: the 400.00 registration reversed, 300.00 registered anew, each once');

# --- 5. The dropped request stays unknown ---------------------------------------------------

ok(FreshpayTest::wait_for(sub { key_lookups($key404, $seq5) >= 2 }, 60, 'two lookups of the dropped request'),
	'dropped request: the worker looks it up by key at least twice');
my @lookups404 = key_lookups($key404, $seq5);
is(join(',', map { $_->{status} // 'dropped' } @lookups404), join(',', map { '404' } @lookups404),
	'dropped request: every lookup gets 404');
is(payment($d404->{id})->{status} // '', 'unknown', 'dropped request: after them it is still unknown');
($out, $err) = call('SELECT status FROM freshpay_capture(' . inv(404) . ')');
like($err, qr/ERROR/, 'dropped request: a capture meanwhile is refused');
is(scalar(debit_posts('V3-404')), 1, 'dropped request: there was never a second POST /v3/checks/payment for it');
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE kind = 'unknown_outcome' AND payment_id = $d404->{id}"), '1',
	'dropped request: exceptions show unknown_outcome for it');
($out, $err) = call("SELECT status FROM freshpay_resolve($d404->{id}, 'not_processed')");
is($out, 'failed', 'dropped request: freshpay_resolve(id, not_processed) makes it failed') or diag($err);
my ($again, $again_err) = money('capture(' . inv(404) . ')');
is($again->{status} // '', 'captured', 'dropped request: a new capture then succeeds') or diag($again_err);
like($again->{idempotency_key} // '', $UUID, 'dropped request: the new debit has a key');
my $key_again = lc($again->{idempotency_key} // '');
ok($key_again =~ $UUID && $key404 =~ $UUID && $key_again ne lc($key404), 'dropped request: a NEW key, not the first one')
  or diag("first key '$key404', new key '$key_again'");
my @posts404 = debit_posts('V3-404');
is(scalar @posts404, 2, 'dropped request: two POST /v3/checks/payment in all');
is(lc(FreshpayTest::request_body($posts404[1] // {})->{idempotency_key} // ''), lc($again->{idempotency_key} // 'none'),
	'dropped request: the second one with the new key');
is(scalar(pt_debits('V3-404')), 1, 'dropped request: PayTrace holds exactly one debit for it');

# --- 7c. Automatic collection of the returned invoice has stopped -------------------------

# Not happening: let the worker have 15 s since the invoice reopened.
my $left = 15 - (time - $t_reopened);
sleep $left if $left > 0;
sync_main();
sleep 2;
is(scalar(debit_posts('V3-407')), 1, 'return: no new debit of the returned invoice by itself, after 15 s and syncs');
is(sql("SELECT count(*) FROM freshpay.payments WHERE invoice_id = $i407"), '1', 'return: no new payment row either');
is(scalar(fp_reversals($fp407)), 1, 'return: syncing again sent no second reversal');
my ($re, $re_err) = money("capture($i407)");
is(($re->{kind} // '') . '|' . ($re->{status} // ''), 'ach_sale|captured', 'return: a manual capture collects it again')
  or diag($re_err);
ok($re->{id} && $re->{id} != $d407->{id}, 'return: as a new payment');
is(scalar(debit_posts('V3-407')), 2, 'return: through a second POST /v3/checks/payment');
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE kind = 'ach_returned' AND payment_id = $d407->{id}"), '0',
	'return: the ach_returned exception is gone');

# --- In the end ---------------------------------------------------------------------------

is(scalar(fp_payments(402)), 0, 'decline: nothing was registered in FreshPortal');
is(scalar(fp_reversals($fp405)), 1, 'in the end: the void\'s registration was reversed once');
is(scalar(fp_reversals($fp407)), 1, 'in the end: the returned debit\'s registration was reversed once');
is(fp_summary(406), 'registered:300.00,reversed:400.00', 'in the end: the refund was corrected once');
is(fp_summary(403), 'registered:120.00', 'in the end: the lost answer\'s debit registered once');

$node->stop;
done_testing();
