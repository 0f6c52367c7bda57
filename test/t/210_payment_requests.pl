# Payment requests (issue 9, contract section 10): a customer without a
# vault profile gets PayTrace's hosted payment page by e-mail, through API
# v3.  This file covers sending them: the request PayTrace receives, one
# open request per invoice, a lost answer left unknown and never re-sent, a
# refusal, and every bad input a clear error that sends nothing.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);
my $MERCHANT = $pt->config->{merchant_id};
my $INVOICE = '/v3/invoice';

my $node = FreshpayTest::new_node('requests', extension => 1);
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url,
	paytrace_merchant_id => $MERCHANT);
FreshpayTest::add_administration($node, name => 'nov3', freshportal_url => $fp->url, paytrace_url => $pt->url);

sub sql { return $node->safe_psql('freshpay', shift); }

sub call { return FreshpayTest::call($node, $_[0]); }

sub v3_invoices { return grep { $_->{path} eq $INVOICE } @{ $pt->requests(since => $_[0] // 0) }; }

sub inv { return sql("SELECT id FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id = $_[0]"); }

# --- Setup -------------------------------------------------------------------

$fp->seed({
	customers => [
		{ id => 1, code => 'REQ1', name => 'Petal & Stem', currency => 'USD', email => 'ap@petal.example' },
		{ id => 2, code => 'REQ2', name => 'No Mail Florist', currency => 'USD' },
	],
	invoices => [
		{ id => 901, number => 'RQ-901', customer_id => 1, amount_incl_vat => '612.00' },
		{ id => 902, number => 'RQ-902', customer_id => 1, amount_incl_vat => '88.50' },
		{ id => 903, number => 'RQ-903', customer_id => 1, amount_incl_vat => '40.00' },
		{ id => 904, number => 'RQ-904', customer_id => 2, amount_incl_vat => '25.00' },
		{ id => 905, number => 'RQ-905', customer_id => 1, amount_incl_vat => '30.00', currency => 'EUR' },
		{ id => 906, number => 'RQ-906', customer_id => 1, amount_incl_vat => '-30.00', type => 'credit_note' },
		{ id => 907, number => 'RQ-907', customer_id => 1, amount_incl_vat => '55.00' },
		{ id => 910, number => 'RQ-910', customer_id => 1, amount_incl_vat => '20.00', amount_paid => '20.00' },
	] });
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql(q{SELECT count(*) FROM freshpay.invoices WHERE administration = 'main'}), '8', 'setup: eight invoices synced');
is(sql(q{SELECT status FROM freshpay.invoices WHERE number = 'RQ-910'}), 'paid', 'setup: one of them is paid');
# The stand-in gives every customer an address; this one has none here.
sql(q{UPDATE freshpay.customers SET email = NULL WHERE administration = 'main' AND freshportal_id = 2});
is(sql(q{SELECT count(*) FROM freshpay.customers WHERE paytrace_customer_id IS NOT NULL}), '0',
	'setup: no customer has a vault profile');

# --- A request, as PayTrace receives it ----------------------------------------

my $seq = $pt->last_seq;
my ($out, $err) = call("SELECT status || '|' || mode || '|' || amount || '|' || email || '|'"
	  . " || coalesce(paytrace_request_id, '') || '|' || (expires_at - created_at BETWEEN interval '13 days 23 hours' AND interval '14 days 1 hour')"
	  . " FROM freshpay_request_payment(" . inv(901) . ")");
my ($status, $mode, $amount, $email, $request_id, $expiry) = split /\|/, $out // '';
is($status, 'sent', 'a request is sent') or diag($err);
is($mode, 'sale_and_onboard', 'by default it asks to pay and store the card');
is($amount, '612.00', 'for the open amount');
is($email, 'ap@petal.example', "to the customer's e-mail address");
like($request_id, qr/^\S+$/, "with PayTrace's id of it");
is($expiry, 'true', 'valid for 14 days by default');

my @sent = v3_invoices($seq);
is(scalar @sent, 1, 'PayTrace received one POST /v3/invoice');
my $body = FreshpayTest::request_body($sent[0] // {});
is_deeply(
	{ map { $_ => $body->{$_} } qw(merchant_id transaction_type invoice_number invoice_amount is_amount_editable
		  is_invoice_number_editable email email_required customer_label) },
	{ merchant_id => $MERCHANT, transaction_type => 'SALE_AND_CUSTOMER', invoice_number => 'RQ-901',
	  invoice_amount => '612.00', is_amount_editable => JSON::PP::false, is_invoice_number_editable => JSON::PP::false,
	  email => 'ap@petal.example', email_required => JSON::PP::true, customer_label => 'Petal & Stem' },
	'with the fields of contract section 11');
like($body->{expire_at} // '', qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, 'expire_at in UTC, to the second');
my %headers = map { lc($_) => $sent[0]{headers}{$_} } keys %{ $sent[0]{headers} // {} };
is($headers{'x-integrator-id'}, $FreshpayTest::PT_INTEGRATOR_ID, 'the X-Integrator-Id header is sent');
like($headers{authorization} // '', qr/^Bearer pttokv3\S+$/, 'with a bearer token of API v3');
# (the first v3 call was the pull's ACH list, in the setup's sync)
is(scalar(grep { $_->{path} eq '/v3/token' } @{ $pt->requests }), 1, 'one v3 token was fetched, and is reused');

($out, $err) = call('SELECT status FROM freshpay_request_payment(' . inv(901) . ')');
like($err, qr/ERROR:\s+55006: a payment request for invoice RQ-901 is already open/, 'a second request while one is open is refused');
like($err, qr/HINT:.*payment_requests/, 'the hint says where to look');
is(scalar(v3_invoices($seq)), 1, 'and nothing more reached PayTrace');

# A mode and address of the caller's choice; the token is reused.
$seq = $pt->last_seq;
($out, $err) = call("SELECT status || '|' || amount FROM freshpay_request_payment(" . inv(902)
	  . ", mode => 'sale', email => 'owner\@petal.example', expires_in => '2 days')");
is($out, 'sent|88.50', 'a sale request to another address')
  or diag($err, sql('SELECT string_agg(mode || \' \' || email, \', \') FROM freshpay.payment_requests'),
	explain([ map { $_->{body} } v3_invoices($seq) ]));
$body = FreshpayTest::request_body((v3_invoices($seq))[0] // {});
is_deeply([ $body->{transaction_type}, $body->{email} ], [ 'SALE', 'owner@petal.example' ], 'as asked');
is(scalar(grep { $_->{path} eq '/v3/token' } @{ $pt->requests(since => $seq) }), 0, 'with the cached token');

# --- Bad input: a clear error, nothing sent --------------------------------------

$seq = $pt->last_seq;
my @bad = (
	[ 'SELECT freshpay_request_payment(999999)', qr/ERROR:\s+P0002: invoice 999999 does not exist/, 'an unknown invoice' ],
	[ 'SELECT freshpay_request_payment(' . inv(905) . ')', qr/ERROR:\s+0A000: invoice RQ-905 is in EUR/, 'an invoice in euros' ],
	[ 'SELECT freshpay_request_payment(' . inv(906) . ')', qr/ERROR:\s+55000: invoice RQ-906 is a credit note/, 'a credit note' ],
	[ 'SELECT freshpay_request_payment(' . inv(910) . ')', qr/ERROR:\s+55000: invoice RQ-910 is already paid/, 'a paid invoice' ],
	[ 'SELECT freshpay_request_payment(' . inv(904) . ')', qr/ERROR:\s+22023: customer of invoice RQ-904 has no e-mail address/, 'a customer without e-mail' ],
	[ 'SELECT freshpay_request_payment(' . inv(903) . ", email => 'not an address')", qr/ERROR:\s+22023: "not an address" is not a valid e-mail address/, 'an invalid address' ],
	[ 'SELECT freshpay_request_payment(' . inv(903) . ", mode => 'steal')", qr/ERROR:\s+22023: invalid payment request mode "steal"/, 'an unknown mode' ],
	[ 'SELECT freshpay_request_payment(' . inv(903) . ", expires_in => '-1 day')", qr/ERROR:\s+22023: expires_in must be positive/, 'an expiry in the past' ],
	[ 'SELECT freshpay_request_payment(' . inv(903) . ", mode => NULL)", qr/ERROR:\s+22004: mode must not be null/, 'a null mode' ],
	[ 'SELECT freshpay_request_payment(NULL)', qr/ERROR:\s+22004: invoice_id must not be null/, 'a null invoice' ],
);
for my $case (@bad)
{
	my (undef, $e) = call($case->[0]);
	like($e, $case->[1], "refused: $case->[2]");
}
is(scalar(v3_invoices($seq)), 0, 'none of them reached PayTrace');
is(sql(q{SELECT count(*) FROM freshpay.payment_requests WHERE invoice_id IN (SELECT id FROM freshpay.invoices WHERE freshportal_id IN (903, 904, 905, 906, 910))}),
	'0', 'and none was recorded');

# An administration without a merchant id does not use API v3.
$fp->seed({ invoices => [ { id => 950, number => 'RQ-950', customer_id => 1, amount_incl_vat => '10.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('nov3')");
(undef, $err) = call(q{SELECT freshpay_request_payment((SELECT id FROM freshpay.invoices WHERE administration = 'nov3' AND freshportal_id = 950))});
like($err, qr/ERROR:\s+55000: a payment request needs PayTrace API v3, and administration "nov3" has no PayTrace merchant id/,
	'refused: an administration without a merchant id');
like($err, qr/HINT:.*paytrace_merchant_id/, 'the hint names the setting');
is(scalar(v3_invoices($seq)), 0, 'nothing reached PayTrace');

# --- PayTrace refuses it ------------------------------------------------------------

$seq = $pt->last_seq;
$pt->faults([ { method => 'POST', path => $INVOICE, action => 'status', status => 422, times => 1,
				body => '{"message":"The given data was invalid.","data":[{"field":"email","detail":"The email domain does not accept mail."}]}',
				headers => { 'Content-Type' => 'application/json' } } ]);
(undef, $err) = call('SELECT freshpay_request_payment(' . inv(903) . ')');
like($err, qr/ERROR:\s+22023: PayTrace refused the payment request: email: The email domain does not accept mail\./,
	"PayTrace's 422 is the caller's error, with PayTrace's field and reason");
is(sql('SELECT status FROM freshpay.payment_requests WHERE invoice_id = ' . inv(903)), 'failed', 'the request is recorded failed');
($out, $err) = call('SELECT status FROM freshpay_request_payment(' . inv(903) . ')');
is($out, 'sent', 'and may be asked again') or diag($err);

# --- The answer is lost --------------------------------------------------------------

$seq = $pt->last_seq;
$pt->faults([ { method => 'POST', path => $INVOICE, action => 'close_after', times => 1 } ]);
($out, $err) = call("SELECT status || '|' || coalesce(paytrace_request_id, '') FROM freshpay_request_payment(" . inv(907) . ')');
is($out, 'unknown|', 'an answer lost after PayTrace made the request leaves it unknown') or diag($err);
is(scalar(v3_invoices($seq)), 1, 'it was sent once');
is(scalar @{ $pt->state->{payment_requests} // [] } >= 1 ? 'made' : 'none', 'made', 'PayTrace made it');
$pt->faults([]);
(undef, $err) = call('SELECT freshpay_request_payment(' . inv(907) . ')');
like($err, qr/ERROR:\s+55006: a payment request for invoice RQ-907 is already open \(unknown/,
	'it is never sent again by itself: a new request is refused while it may be open');
is(scalar(v3_invoices($seq)), 1, 'still one request at PayTrace');

# Once it has expired, another may be sent.
sql('UPDATE freshpay.payment_requests SET expires_at = now() - interval \'1 second\' WHERE invoice_id = ' . inv(907));
($out, $err) = call('SELECT status FROM freshpay_request_payment(' . inv(907) . ')');
is($out, 'sent', 'after its expiry a new request is sent') or diag($err);
is(sql('SELECT string_agg(status, \',\' ORDER BY id) FROM freshpay.payment_requests WHERE invoice_id = ' . inv(907)),
	'expired,sent', 'the lost one is recorded expired');

# --- The payer pays: the pull learns it ----------------------------------------------------

# RQ-901 (sale_and_onboard): the payer pays and stores the card.
my $paid = $pt->admin_post("/_standin/payment_requests/$request_id/pay", {});
my $profile = $paid->{customer_id} // '';
like($profile, qr/^\S+$/, 'setup: the payer paid on the hosted page and stored a card');
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql("SELECT status || '|' || (payment_id IS NOT NULL) FROM freshpay.payment_requests WHERE paytrace_request_id = '$request_id'"),
	'onboarded|true', 'the pull finds the payment: the request is onboarded, with its payment');
is(sql('SELECT kind || \'|\' || status || \'|\' || amount || \'|\' || requested_by FROM freshpay.payments WHERE invoice_id = ' . inv(901)),
	'sale|captured|612.00|payment request', 'the payment is recorded once, as paid through the request');
is(sql(q{SELECT paytrace_customer_id || '|' || payment_method FROM freshpay.customers WHERE administration = 'main' AND freshportal_id = 1}),
	"$profile|card", 'the customer is linked to the stored card');
ok( FreshpayTest::poll_true($node,
		'SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE invoice_id = ' . inv(901), 30, 'registration'),
	'the payment is registered in FreshPortal');
is(scalar(grep { ($_->{invoice_id} // 0) == 901 && $_->{status} eq 'registered' } @{ $fp->state->{payments} }), 1,
	'exactly once');
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql('SELECT count(*) FROM freshpay.payments WHERE invoice_id = ' . inv(901)), '1', 'a second pull records nothing more');

# The customer's next invoice is charged against the stored card.
$fp->seed({ invoices => [ { id => 908, number => 'RQ-908', customer_id => 1, amount_incl_vat => '17.25' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
($out, $err) = call('SELECT status FROM freshpay_capture(' . inv(908) . ')');
is($out, 'captured', "the customer's next invoice is charged against the stored card") or diag($err);

# RQ-902 (sale): paid without storing a card.
my $request_902 = sql('SELECT paytrace_request_id FROM freshpay.payment_requests WHERE status = \'sent\' AND invoice_id = ' . inv(902));
$pt->admin_post("/_standin/payment_requests/$request_902/pay", { store_card => JSON::PP::false });
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql('SELECT status FROM freshpay.payment_requests WHERE paytrace_request_id = ' . FreshpayTest::quote_literal($request_902)),
	'paid', 'a request paid without storing a card is paid');

# RQ-907: past its expiry without a payment, the pull expires it.
sql('UPDATE freshpay.payment_requests SET expires_at = now() - interval \'1 second\' WHERE status = \'sent\' AND invoice_id = ' . inv(907));
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql('SELECT string_agg(status, \',\' ORDER BY id) FROM freshpay.payment_requests WHERE invoice_id = ' . inv(907)),
	'expired,expired', 'the pull expires a request past its expires_at');

# --- The collection rules: a customer without a vault profile is asked ------------------------

$fp->seed({ customers => [ { id => 3, code => 'REQ3', name => 'Rule Florist', currency => 'USD', email => 'pay@rule.example' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
my $rule_customer = sql(q{SELECT id FROM freshpay.customers WHERE administration = 'main' AND freshportal_id = 3});
($out, $err) = call("SELECT collection FROM freshpay_link_customer($rule_customer, NULL, 'on_issue')");
is($out, 'on_issue', 'a card customer without a vault profile may be put on a collection rule') or diag($err);
(undef, $err) = call("SELECT freshpay_link_customer($rule_customer, NULL, 'on_issue', 'ach')");
like($err, qr/ERROR:\s+22023: collection rule on_issue needs a PayTrace vault profile for ACH/, 'an ACH customer still needs one');

$seq = $pt->last_seq;
$fp->seed({ invoices => [ { id => 960, number => 'RQ-960', customer_id => 3, amount_incl_vat => '420.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
ok( FreshpayTest::poll_true($node,
		'SELECT count(*) = 1 FROM freshpay.payment_requests WHERE status = \'sent\' AND invoice_id = ' . inv(960), 30, 'the rule\'s request'),
	'an invoice of an on_issue customer without a vault profile gets a payment request');
is(sql('SELECT mode || \'|\' || amount || \'|\' || email || \'|\' || requested_by FROM freshpay.payment_requests WHERE invoice_id = ' . inv(960)),
	'sale_and_onboard|420.00|pay@rule.example|freshpay worker', 'to pay and store the card, for the open amount, to the customer');
ok( FreshpayTest::poll_true($node,
		q{SELECT bool_and(state = 'done') FROM freshpay.jobs j JOIN freshpay.invoices i ON i.id = j.invoice_id
		  WHERE i.freshportal_id = 960 AND j.kind = 'collect_invoice'}, 30, 'the collect job'),
	'its collect job is done');
is(scalar(grep { $_->{path} eq '/v3/transactions/sale/by_customer' || $_->{path} eq '/v1/transactions/sale/by_customer' } @{ $pt->requests(since => $seq) }), 0,
	'and no charge was tried');

my $rule_request = sql('SELECT paytrace_request_id FROM freshpay.payment_requests WHERE invoice_id = ' . inv(960));
my $stored = $pt->admin_post("/_standin/payment_requests/$rule_request/pay", {})->{customer_id} // '';
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql('SELECT status FROM freshpay.payment_requests WHERE invoice_id = ' . inv(960)), 'onboarded', 'the payer pays and stores the card');
is(sql("SELECT paytrace_customer_id FROM freshpay.customers WHERE id = $rule_customer"), $stored, 'the customer is linked to it');

# Its next invoice is charged by itself.
$fp->seed({ invoices => [ { id => 961, number => 'RQ-961', customer_id => 3, amount_incl_vat => '99.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
ok( FreshpayTest::poll_true($node,
		'SELECT count(*) = 1 FROM freshpay.payments WHERE kind = \'sale\' AND status = \'captured\' AND invoice_id = ' . inv(961), 30, 'the next charge'),
	"the customer's next invoice is charged by itself against the stored card");
is(sql('SELECT count(*) FROM freshpay.payment_requests WHERE invoice_id = ' . inv(961)), '0', 'without a request');

# --- In the finance surface: invoice_status and exceptions ----------------------------------

is(sql('SELECT payment_request_status FROM freshpay.invoice_status WHERE invoice_id = ' . inv(960)), 'onboarded',
	"invoice_status shows the invoice's latest request");
$fp->seed({ invoices => [ { id => 909, number => 'RQ-909', customer_id => 1, amount_incl_vat => '12.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
$pt->faults([ { method => 'POST', path => $INVOICE, action => 'close_after', times => 1 } ]);
call('SELECT freshpay_request_payment(' . inv(909) . ')');
$pt->faults([]);
sql('UPDATE freshpay.payment_requests SET created_at = now() - interval \'8 days\' WHERE status = \'sent\' AND invoice_id = ' . inv(903));
is(sql(q{SELECT string_agg(kind || ':' || i.number, ',' ORDER BY kind) FROM freshpay.exceptions e
	JOIN freshpay.invoices i ON i.id = e.invoice_id WHERE kind LIKE 'payment_request%'}),
	'payment_request_expired:RQ-907,payment_request_open_long:RQ-903,payment_request_unknown:RQ-909',
	'exceptions: a lost answer, a request open for more than a week, an expired request on an open invoice');

# --- PayTrace's v3 token cannot be had: nothing is left pending ----------------------------

$fp->seed({ invoices => [ { id => 911, number => 'RQ-911', customer_id => 1, amount_incl_vat => '31.00' },
	{ id => 912, number => 'RQ-912', customer_id => 1, amount_incl_vat => '32.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
my $token_down = [ { method => 'POST', path => '/v3/token', action => 'status', status => 500, times => -1,
	body => '{"message":"Server Error"}' } ];

# No token cached (a restart empties the cache), and none to be had.
$node->restart;
$pt->faults($token_down);
my $seq_911 = $pt->last_seq;
my ($out_911, $err_911) = call('SELECT status FROM freshpay_request_payment(' . inv(911) . ')');
like($err_911, qr/ERROR:.*token/, 'no v3 token to be had: the call fails, saying so');
is(sql('SELECT count(*) FROM freshpay.payment_requests WHERE invoice_id = ' . inv(911)), '0',
	'and records no request: nothing was sent');
is(scalar(v3_invoices($seq_911)), 0, 'PayTrace received no request');
$pt->faults([]);
is((call('SELECT status FROM freshpay_request_payment(' . inv(911) . ')'))[0], 'sent', 'once PayTrace is back, it is sent');

# The token cached is refused (401) and a new one cannot be had: the request never left.
$pt->expire_tokens;
$pt->faults($token_down);
my ($out_912, $err_912) = call('SELECT status FROM freshpay_request_payment(' . inv(912) . ')');
like($err_912, qr/ERROR:.*token/, 'the cached token refused and no new one: the call fails');
is(sql('SELECT string_agg(status, \',\') FROM freshpay.payment_requests WHERE invoice_id = ' . inv(912)), 'failed',
	'the request is recorded failed, not left pending');
$pt->faults([]);
is((call('SELECT status FROM freshpay_request_payment(' . inv(912) . ')'))[0], 'sent', 'and may be asked again');

# --- The pull reads no ACH list where there is no ACH debit through v3 ---------------------

is(scalar(grep { $_->{path} eq '/v3/checks/transactions' } @{ $pt->requests }), 0,
	'in all these syncs the pull read no ACH list: the administration has no ACH debit through v3');

# --- Visible to a reader, never to PUBLIC ------------------------------------------------

sql('CREATE ROLE regress_req_reader IN ROLE freshpay_reader');
sql('CREATE ROLE regress_req_nobody');
is($node->safe_psql('freshpay', 'SET ROLE regress_req_reader; SELECT count(*) > 0 FROM freshpay.payment_requests'),
	't', 'freshpay_reader reads freshpay.payment_requests');
(undef, $err) = call('SET ROLE regress_req_nobody; SELECT freshpay_request_payment(' . inv(902) . ')');
like($err, qr/ERROR:\s+42501/, 'a role without freshpay_operator may not send requests');

$node->stop;
done_testing();
