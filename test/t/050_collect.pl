# The money functions: freshpay_capture, freshpay_authorize, freshpay_void,
# freshpay_refund and freshpay_reverse collect and undo against PayTrace
# vault profiles, return the freshpay.payments row, refuse bad input
# without touching PayTrace, and every outcome is written back to
# FreshPortal by the worker.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

my $node = FreshpayTest::new_node('collect', extension => 1);
FreshpayTest::add_administration($node);

my $json = JSON::PP->new;
my $POLL = 30;    # seconds any background step (write-back, reversal) may take

# --- Helpers ---------------------------------------------------------------

sub sql { return $node->safe_psql('freshpay', shift); }

# True once $query answers 't' (errors count as "not yet").
sub poll_until { return FreshpayTest::poll_true($node, $_[0], $_[2] // $POLL, $_[1]); }

# The query of one row as { column => text }, numerics with their two
# decimals ("590.00"); $source is a FROM item aliased p.
sub row_sql
{
	my ($source, $where) = @_;
	return "SELECT json_object_agg(e.key, e.value) FROM $source, json_each_text(row_to_json(p)) e"
	  . (defined $where ? " WHERE $where" : '');
}

sub payment
{
	my ($id) = @_;
	return {} unless defined $id && $id =~ /^\d+$/;
	my $out = sql(row_sql('freshpay.payments p', "p.id = $id"));
	return $out =~ /^\{/ ? $json->decode($out) : {};
}

# Call a money function (SQLSTATEs shown): (returned row or undef, stderr, rc).
sub money
{
	my ($call, %opt) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql(
		'freshpay', "\\set VERBOSITY verbose\n" . row_sql("$call p"),
		stdout        => \$out,
		stderr        => \$err,
		on_error_stop => 1,
		extra_params  => $opt{role} ? [ '-U', $opt{role} ] : []);
	my $row = $rc == 0 && $out =~ /^\{/ ? $json->decode($out) : undef;
	return ($row, $err, $rc);
}

# The PayTrace stand-in: request log position, requests to a path (for one
# invoice number), its transactions for one invoice number.
sub pt_seq { return $pt->last_seq; }
sub fp_seq { return $fp->last_seq; }

sub body_of { return FreshpayTest::request_body($_[0]); }

sub header_of
{
	my ($request, $name) = @_;
	my ($key) = grep { lc $_ eq lc $name } keys %{ $request->{headers} };
	return defined $key ? $request->{headers}{$key} : '';
}

sub pt_calls
{
	my ($path, %f) = @_;
	return [
		grep {
			$_->{path} eq $path
			  && (!defined $f{invoice} || (body_of($_)->{invoice_id} // '') eq $f{invoice})
			  && (!defined $f{transaction} || (body_of($_)->{transaction_id} // '') eq $f{transaction})
		} @{ $pt->requests(since => $f{since} // 0) }
	];
}

sub pt_transactions
{
	my ($number) = @_;
	return [ grep { $_->{invoice_id} eq $number } @{ $pt->state->{transactions} } ];
}

sub pt_transaction
{
	my ($id) = @_;
	my ($txn) = grep { "$_->{id}" eq "$id" } @{ $pt->state->{transactions} };
	return $txn // {};
}

# The FreshPortal stand-in: payments registered against one of its invoices,
# one payment by id, one invoice.
sub fp_payments
{
	my ($fp_invoice) = @_;
	return [ grep { $_->{invoice_id} == $fp_invoice } @{ $fp->state->{payments} } ];
}

sub fp_payment { return $fp->item('payments', $_[0]); }

sub fp_invoice { return $fp->item('invoices', $_[0]); }

# Waits for the worker to register a payment in FreshPortal; returns the
# FreshPortal payment object it points at.
sub wait_registered
{
	my ($payment_id, $what) = @_;
	$payment_id //= 0;
	ok( poll_until(
			"SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $payment_id",
			"$what to be registered"),
		"$what: the worker registers it in FreshPortal (freshportal_payment_id set)");
	return fp_payment(sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = $payment_id"));
}

sub wait_fp_reversed
{
	my ($fp_payment_id, $what) = @_;
	ok( FreshpayTest::wait_for(sub { (fp_payment($fp_payment_id)->{status} // '') eq 'reversed' },
			$POLL, "$what: FreshPortal payment $fp_payment_id reversed"),
		"$what: the FreshPortal registration becomes reversed");
}

# The local invoice follows FreshPortal's amounts and status.
sub local_invoice_follows
{
	my ($fp_id, $paid, $open, $status, $what) = @_;
	ok( poll_until(
			"SELECT amount_paid = $paid AND open_amount = $open AND status = '$status'"
			  . " FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id = $fp_id",
			"local invoice $fp_id: $paid paid, $open open, $status"),
		"$what: the local invoice shows $paid paid, $open open, $status");
}

sub payments_fingerprint
{
	return sql(q{SELECT count(*) || '/' || coalesce(string_agg(id || ':' || kind || ':' || status
		|| ':' || amount || ':' || refunded_amount, ',' ORDER BY id), '') FROM freshpay.payments});
}

# A call refused as bad input: an ERROR with this SQLSTATE and message,
# nothing sent to PayTrace, no payment row added or changed.
sub refused
{
	my ($call, $sqlstate, $message, $what, %opt) = @_;
	my $seq = pt_seq();
	my $before = payments_fingerprint();
	my ($row, $err, $rc) = money($call);
	isnt($rc, 0, "$what: $call fails");
	like($err, qr/ERROR:\s+$sqlstate:/, "$what: with SQLSTATE $sqlstate") or diag($err);
	like($err, $message, "$what: the message says why");
	like($err, qr/HINT:\s+\S/, "$what: and a hint") if $opt{hint};
	is(scalar @{ $pt->requests(since => $seq) }, 0, "$what: no request reached PayTrace");
	is(payments_fingerprint(), $before, "$what: freshpay.payments is unchanged");
	return;
}

# --- Setup: customers, invoices, vault profiles, links ---------------------

sub fp_invoice_seed
{
	my ($id, $customer, $amount, %extra) = @_;
	return { id => $id, number => "2026-0$id", customer_id => $customer, currency => 'USD',
		invoice_date => '2026-11-02', amount_incl_vat => $amount, %extra };
}

$pt->customers([
	{ customer_id => 'C-BLOOM', method => 'card' },
	{ customer_id => 'C-PETAL', method => 'ach' },
	{ customer_id => 'C-ROSA',  method => 'card' },
]);
$fp->seed(
	{
		customers => [
			{ id => 1, code => 'BLOOM', name => 'Bloom & Co Florists',   currency => 'USD' },
			{ id => 2, code => 'PETAL', name => 'Petal Pushers Inc.',    currency => 'USD' },
			{ id => 3, code => 'STEM',  name => 'Stem & Vine Wholesale', currency => 'USD' },
			{ id => 4, code => 'ROSA',  name => 'Rosa Ecuador Imports',  currency => 'EUR' },
		],
		invoices => [
			fp_invoice_seed(201, 1, '590.00'),     # sale, write-back, void
			fp_invoice_seed(202, 1, '0.29'),       # declined by PayTrace
			fp_invoice_seed(203, 2, '250.00'),     # ACH
			fp_invoice_seed(204, 1, '400.00'),     # authorization, partial capture
			fp_invoice_seed(205, 1, '1000.00'),    # settled, partial refund
			fp_invoice_seed(206, 1, '120.00'),     # settled: void refused, reversed by refund
			fp_invoice_seed(207, 1, '80.00'),      # unsettled: reversed by void
			fp_invoice_seed(208, 1, '60.00'),      # unsettled: refund refused
			fp_invoice_seed(209, 1, '70.00'),      # approved, then auto-voided (103)
			fp_invoice_seed(210, 1, '100.00'),     # amount rules
			fp_invoice_seed(211, 4, '300.00', currency => 'EUR'),
			fp_invoice_seed(212, 3, '90.00'),      # customer without vault profile
			fp_invoice_seed(213, 1, '-54.50', type => 'credit_note'),
			fp_invoice_seed(214, 1, '81.86', status => 'concept'),
			fp_invoice_seed(215, 1, '50.00', amount_paid => '50.00'),
			fp_invoice_seed(216, 1, '45.00'),      # collected by a freshpay_operator
			fp_invoice_seed(217, 1, '75.00'),      # paid in FreshPortal after the sync
		]
	});
sql("SELECT * FROM freshpay_sync('main')");
is(sql("SELECT count(*) FROM freshpay.invoices WHERE administration = 'main'"), '17', 'setup: 17 invoices synced');

my %customer = map { split /\|/ } split /\n/, sql('SELECT freshportal_id, id FROM freshpay.customers');
my %inv = map { split /\|/ } split /\n/, sql('SELECT freshportal_id, id FROM freshpay.invoices');

sub link_customer
{
	my ($fp_customer, $profile, $method) = @_;
	sql("SELECT 1 FROM freshpay_link_customer($customer{$fp_customer}, '$profile', 'manual', '$method')");
}
link_customer(1, 'C-BLOOM', 'card');
link_customer(2, 'C-PETAL', 'ach');
link_customer(4, 'C-ROSA',  'card');    # so that only its currency is wrong

# --- Bad input: a clear error, nothing sent, nothing recorded ---------------

refused('freshpay_capture(999999)', 'P0002', qr/999999/, 'an unknown invoice');
refused("freshpay_capture($inv{210}, 0)", '22023', qr/amount/i, 'a zero amount', hint => 1);
refused("freshpay_capture($inv{210}, -5.00)", '22023', qr/amount/i, 'a negative amount', hint => 1);
refused("freshpay_authorize($inv{210}, 0)", '22023', qr/amount/i, 'a zero authorization', hint => 1);
refused("freshpay_capture($inv{210}, 100.01)", '22023', qr/open amount|100\.00/i,
	'an amount above the open amount');
refused("freshpay_capture($inv{211})", '0A000', qr/EUR|USD|currenc/i, 'a non-USD invoice', hint => 1);
refused("freshpay_capture($inv{212})", '55000', qr/vault|profile|PayTrace customer|link/i,
	'a customer without a vault profile', hint => 1);
refused("freshpay_capture($inv{213})", '55000', qr/credit note/i, 'a credit note', hint => 1);
refused("freshpay_capture($inv{214})", '55000', qr/concept/i, 'a concept invoice');
refused("freshpay_capture($inv{215})", '55000', qr/paid/i, 'a paid invoice', hint => 1);

# --- Permissions: readers cannot move money, operators can -----------------

sql('CREATE ROLE clerk LOGIN IN ROLE freshpay_reader');
sql('CREATE ROLE cashier LOGIN IN ROLE freshpay_operator');
for my $call ("freshpay_capture($inv{216})", "freshpay_authorize($inv{216})", 'freshpay_void(1)',
	'freshpay_refund(1)', "freshpay_reverse($inv{216})")
{
	my ($function) = $call =~ /^(\w+)/;
	my $seq = pt_seq();
	my ($row, $err, $rc) = money($call, role => 'clerk');
	like($err, qr/ERROR:\s+42501:\s+permission denied for function $function/,
		"a freshpay_reader cannot execute $function");
	is(scalar @{ $pt->requests(since => $seq) }, 0, "$function by a reader sends nothing");
}
my ($by_operator, $err, $rc) = money("freshpay_capture($inv{216})", role => 'cashier');
is($rc, 0, 'a freshpay_operator can collect') or diag($err);
is($by_operator->{status}, 'captured', 'the operator\'s sale is captured');
is($by_operator->{requested_by}, 'cashier', 'and requested_by names the operator');

# --- A card sale ------------------------------------------------------------

my ($seq_pt, $seq_fp) = (pt_seq(), fp_seq());
my $sale;
($sale, $err, $rc) = money("freshpay_capture($inv{201})");
is($rc, 0, 'card sale: freshpay_capture succeeds') or diag($err);
is($sale->{kind}, 'sale', 'card sale: a card customer without authorization gets a sale');
is($sale->{status}, 'captured', 'card sale: status captured');
is($sale->{amount}, '590.00', 'card sale: for the open amount by default');
is($sale->{invoice_id}, $inv{201}, 'card sale: for the invoice');
is($sale->{customer_id}, $customer{1}, 'card sale: of its customer');
is($sale->{response_code}, '101', 'card sale: PayTrace response code 101 recorded');
like($sale->{approval_code} // '', qr/\S/, 'card sale: approval code recorded');
like($sale->{paytrace_transaction_id} // '', qr/^\d+$/, 'card sale: PayTrace transaction id recorded');

my $txns = pt_transactions('2026-0201');
is(scalar @$txns, 1, 'card sale: PayTrace holds exactly one transaction for the invoice');
is("$txns->[0]{id}", $sale->{paytrace_transaction_id} // '', 'card sale: the recorded id is PayTrace\'s');
is($txns->[0]{kind}, 'SALE', 'card sale: a SALE at PayTrace');
cmp_ok($txns->[0]{amount}, '==', 590, 'card sale: of 590.00 at PayTrace');
is($txns->[0]{customer_id}, 'C-BLOOM', 'card sale: against the linked vault profile');
is($txns->[0]{approval_code}, $sale->{approval_code}, 'card sale: the approval code is PayTrace\'s');

my $calls = pt_calls('/v1/transactions/sale/by_customer', since => $seq_pt, invoice => '2026-0201');
is(scalar @$calls, 1, 'card sale: one POST transactions/sale/by_customer carrying invoice_id = the invoice number');
my $request = $calls->[0] // { headers => {}, body => '{}', time => 0 };
is($request->{method}, 'POST', 'card sale: sent as POST');
is(body_of($request)->{integrator_id}, 'pt-integrator', 'card sale: the body carries integrator_id');
is(body_of($request)->{customer_id}, 'C-BLOOM', 'card sale: the body names the vault profile');
my ($token) = header_of($request, 'Authorization') =~ /^Bearer (\S+)$/;
ok(defined $token && scalar(grep { $_ eq $token } @{ $pt->tokens }),
	'card sale: Authorization is "Bearer <token>" (capital B) with a token PayTrace issued');
my @reads = grep { $_->{method} eq 'GET' && $_->{path} eq '/v1/invoices/201' && $_->{time} <= $request->{time} }
  @{ $fp->requests(since => $seq_fp) };
ok(scalar @reads, 'card sale: FreshPortal\'s invoice was re-read (GET /v1/invoices/201) before the charge');

# --- Write-back of the sale -------------------------------------------------

my $registration = wait_registered($sale->{id}, 'card sale');
my $sale_regs = fp_payments(201);
is(scalar @$sale_regs, 1, 'write-back: FreshPortal has exactly one payment for the invoice');
is("" . ($registration->{provider_transaction_id} // ''), $sale->{paytrace_transaction_id},
	'write-back: its provider_transaction_id is the PayTrace transaction id');
is($registration->{status}, 'registered', 'write-back: status registered');
is($registration->{amount}, '590.00', 'write-back: for the captured amount');
is($registration->{provider}, 'paytrace', 'write-back: provider paytrace');
is($registration->{currency}, 'USD', 'write-back: in USD');
is($registration->{method}, 'card', 'write-back: method card');
my ($post) = grep { $_->{method} eq 'POST' && $_->{path} eq '/v1/invoices/201/payments' } @{ $fp->requests };
like($post->{body} // '', qr/"provider_transaction_id"\s*:\s*"\Q$sale->{paytrace_transaction_id}\E"/,
	'write-back: provider_transaction_id is sent as a JSON string');
my $fp_201 = fp_invoice(201);
is(join('|', @{$fp_201}{qw(amount_paid open_amount status)}), '590.00|0.00|paid',
	'write-back: FreshPortal now shows the invoice paid');
local_invoice_follows(201, '590.00', '0.00', 'paid', 'write-back');

# --- Void of an unsettled sale ----------------------------------------------

$seq_pt = pt_seq();
my $void;
($void, $err, $rc) = money("freshpay_void($sale->{id})");
is($rc, 0, 'void: freshpay_void succeeds on an unsettled sale') or diag($err);
is($void->{kind}, 'void', 'void: returns a void row');
is($void->{parent_id}, $sale->{id}, 'void: whose parent is the sale');
is($void->{status}, 'voided', 'void: status voided');
is(payment($sale->{id})->{status}, 'voided', 'void: the sale itself is now voided');
is(scalar @{ pt_calls('/v1/transactions/void', since => $seq_pt, transaction => $sale->{paytrace_transaction_id}) },
	1, 'void: one POST transactions/void for the sale\'s transaction');
is(pt_transaction($sale->{paytrace_transaction_id})->{state}, 'voided', 'void: PayTrace shows the sale voided');
wait_fp_reversed($registration->{id}, 'void');
is(fp_payment($registration->{id})->{reversal}{reason}, 'voided', 'void: reversed with reason voided');
is(fp_invoice(201)->{open_amount}, '590.00', 'void: FreshPortal shows the invoice open again');
local_invoice_follows(201, '0.00', '590.00', 'open', 'void');

# --- A decline is an outcome, not an error ----------------------------------

my $declined;
($declined, $err, $rc) = money("freshpay_capture($inv{202})");
is($rc, 0, 'decline: no error is raised') or diag($err);
unlike($err, qr/ERROR/, 'decline: nothing on stderr says ERROR');
is($declined->{status}, 'failed', 'decline: status failed');
is($declined->{response_code}, '102', 'decline: response code 102');
like($declined->{message} // '', qr/EXPIRED CARD/, 'decline: PayTrace\'s message is kept');
is(pt_transactions('2026-0202')->[0]{state}, 'declined', 'decline: PayTrace declined it');

# --- Approved, then voided by PayTrace's AVS/CSC rules (103) ----------------

$pt->config({ auto_void => JSON::PP::true });
my $auto_voided;
($auto_voided, $err, $rc) = money("freshpay_capture($inv{209})");
$pt->config({ auto_void => JSON::PP::false });
is($rc, 0, 'auto-void: no error is raised') or diag($err);
is($auto_voided->{status}, 'failed', 'auto-void: 103 is not money: status failed');
is($auto_voided->{response_code}, '103', 'auto-void: response code 103');

# --- ACH --------------------------------------------------------------------

$seq_pt = pt_seq();
my $ach;
($ach, $err, $rc) = money("freshpay_capture($inv{203})");
is($rc, 0, 'ACH: freshpay_capture succeeds') or diag($err);
is($ach->{kind}, 'ach_sale', 'ACH: an ACH customer gets an ach_sale');
is($ach->{status}, 'captured', 'ACH: status captured');
is($ach->{amount}, '250.00', 'ACH: for the open amount');
$calls = pt_calls('/v1/checks/sale/by_customer', since => $seq_pt, invoice => '2026-0203');
is(scalar @$calls, 1, 'ACH: one POST checks/sale/by_customer');
is(body_of($calls->[0] // {})->{customer_id}, 'C-PETAL', 'ACH: against the ACH vault profile');
is(scalar @{ pt_calls('/v1/transactions/sale/by_customer', since => $seq_pt, invoice => '2026-0203') }, 0,
	'ACH: no card sale');
is("" . (pt_transactions('2026-0203')->[0]{id} // ''), $ach->{paytrace_transaction_id},
	'ACH: the check transaction id is recorded');
my $ach_registration = wait_registered($ach->{id}, 'ACH');
is($ach_registration->{method}, 'ach', 'ACH: registered in FreshPortal with method ach');
is($ach_registration->{amount}, '250.00', 'ACH: for 250.00');

# --- Authorization, then a partial capture of it ----------------------------

$seq_pt = pt_seq();
my $authorization;
($authorization, $err, $rc) = money("freshpay_authorize($inv{204}, 300.00)");
is($rc, 0, 'authorization: freshpay_authorize succeeds') or diag($err);
is($authorization->{kind}, 'authorization', 'authorization: kind authorization');
is($authorization->{status}, 'authorized', 'authorization: status authorized');
is($authorization->{amount}, '300.00', 'authorization: for the amount asked');
is(scalar @{ pt_calls('/v1/transactions/authorization/by_customer', since => $seq_pt, invoice => '2026-0204') },
	1, 'authorization: one POST transactions/authorization/by_customer');
is(pt_transaction($authorization->{paytrace_transaction_id})->{state}, 'authorized',
	'authorization: PayTrace holds an open authorization');

refused("freshpay_capture($inv{204}, 350.00)", '22023', qr/amount|authori/i,
	'a capture above the authorized amount (though below the open amount)');

$seq_pt = pt_seq();
my $capture;
($capture, $err, $rc) = money("freshpay_capture($inv{204}, 250.00)");
is($rc, 0, 'capture: freshpay_capture succeeds') or diag($err);
is($capture->{kind}, 'capture', 'capture: the open authorization is captured, not a new sale');
is($capture->{parent_id}, $authorization->{id}, 'capture: its parent is the authorization');
is($capture->{amount}, '250.00', 'capture: partial, for the amount asked');
is($capture->{status}, 'captured', 'capture: status captured');
is($capture->{paytrace_transaction_id}, $authorization->{paytrace_transaction_id},
	'capture: PayTrace keeps the authorization\'s transaction id');
is(payment($authorization->{id})->{status}, 'captured', 'capture: the authorization is now captured');
$calls = pt_calls('/v1/transactions/authorization/capture', since => $seq_pt,
	transaction => $authorization->{paytrace_transaction_id});
is(scalar @$calls, 1, 'capture: one POST transactions/authorization/capture for the authorization');
cmp_ok(body_of($calls->[0] // {})->{amount} // 0, '==', 250, 'capture: of 250.00');
is(scalar @{ pt_calls('/v1/transactions/sale/by_customer', invoice => '2026-0204') }, 0,
	'capture: no sale was made for the invoice');
my $capture_registration = wait_registered($capture->{id}, 'capture');
is($capture_registration->{amount}, '250.00', 'capture: registered in FreshPortal for 250.00');
is(join('|', @{ fp_invoice(204) }{qw(amount_paid open_amount status)}), '250.00|150.00|partially_paid',
	'capture: FreshPortal shows the invoice partially paid');
local_invoice_follows(204, '250.00', '150.00', 'partially_paid', 'capture');

# --- Settled sales: void refused, partial refund, reversal by refund ---------

my ($sale_205, $sale_206);
($sale_205, $err, $rc) = money("freshpay_capture($inv{205})");
is($sale_205->{status}, 'captured', 'settled: sale of 1000.00 captured') or diag($err);
($sale_206, $err, $rc) = money("freshpay_capture($inv{206})");
is($sale_206->{status}, 'captured', 'settled: sale of 120.00 captured') or diag($err);
my $registration_205 = wait_registered($sale_205->{id}, 'sale of 1000.00');
my $registration_206 = wait_registered($sale_206->{id}, 'sale of 120.00');
my $settled = $pt->settle;
my %in_batch = map { ("$_" => 1) } @{ $settled->{transaction_ids} };
ok($in_batch{ $sale_205->{paytrace_transaction_id} } && $in_batch{ $sale_206->{paytrace_transaction_id} },
	'settled: PayTrace settles both sales into a batch');

# A settled sale cannot be voided: PayTrace voids nothing, the sale stays.
$seq_pt = pt_seq();
my $before = payments_fingerprint();
my $row;
($row, $err, $rc) = money("freshpay_void($sale_206->{id})");
isnt($rc, 0, 'void of a settled sale fails');
like($err, qr/ERROR:\s+55000:/, 'void of a settled sale: SQLSTATE 55000') or diag($err);
is( scalar(grep { ($_->{status} // 0) == 200 }
		  @{ pt_calls('/v1/transactions/void', since => $seq_pt, transaction => $sale_206->{paytrace_transaction_id}) }),
	0, 'void of a settled sale: PayTrace voided nothing');
is(payment($sale_206->{id})->{status}, 'captured', 'void of a settled sale: the sale stays captured');
like(pt_transaction($sale_206->{paytrace_transaction_id})->{status_code} // '', qr/^GB\d+$/,
	'void of a settled sale: PayTrace still has it settled');

# Partial refund: its own row; the sale stays captured with refunded_amount.
$seq_pt = pt_seq();
my $refund;
($refund, $err, $rc) = money("freshpay_refund($sale_205->{id}, 250.00)");
is($rc, 0, 'partial refund: freshpay_refund succeeds on a settled sale') or diag($err);
is($refund->{kind}, 'refund', 'partial refund: a refund row');
is($refund->{parent_id}, $sale_205->{id}, 'partial refund: whose parent is the sale');
is($refund->{amount}, '250.00', 'partial refund: for 250.00');
is($refund->{status}, 'refunded', 'partial refund: status refunded');
my $after = payment($sale_205->{id});
is($after->{status}, 'captured', 'partial refund: the sale stays captured');
is($after->{refunded_amount}, '250.00', 'partial refund: the sale\'s refunded_amount is 250.00');
$calls = pt_calls('/v1/transactions/refund/for_transaction', since => $seq_pt,
	transaction => $sale_205->{paytrace_transaction_id});
is(scalar @$calls, 1, 'partial refund: one POST transactions/refund/for_transaction for the sale');
cmp_ok(body_of($calls->[0] // {})->{amount} // 0, '==', 250, 'partial refund: of 250.00');
my $refund_txn = pt_transaction($refund->{paytrace_transaction_id});
is($refund_txn->{kind} // '', 'REFUND', 'partial refund: the refund row holds PayTrace\'s new REFUND transaction');
is("" . ($refund_txn->{parent_id} // ''), $sale_205->{paytrace_transaction_id},
	'partial refund: PayTrace refunded the sale');
wait_fp_reversed($registration_205->{id}, 'partial refund');
ok( FreshpayTest::wait_for(
		sub {
			my @registered = grep { $_->{status} eq 'registered' } @{ fp_payments(205) };
			return @registered == 1 && $registered[0]{amount} eq '750.00';
		},
		$POLL, 'a registration of the remaining 750.00'),
	'partial refund: FreshPortal has one registration for the remaining 750.00');
is(fp_invoice(205)->{amount_paid}, '750.00', 'partial refund: FreshPortal shows 750.00 paid');
local_invoice_follows(205, '750.00', '250.00', 'partially_paid', 'partial refund');

refused("freshpay_refund($sale_205->{id}, 1000.01)", '22023', qr/amount|refund/i,
	'a refund above the captured amount');
refused("freshpay_refund($sale_205->{id}, 750.01)", '22023', qr/amount|refund/i,
	'a refund above what remains after a partial refund');

# freshpay_reverse of a settled sale refunds it in full.
my $reversal;
($reversal, $err, $rc) = money("freshpay_reverse($inv{206})");
is($rc, 0, 'reverse (settled): freshpay_reverse succeeds') or diag($err);
is($reversal->{kind}, 'refund', 'reverse (settled): a settled sale is refunded');
is($reversal->{parent_id}, $sale_206->{id}, 'reverse (settled): the refund\'s parent is the sale');
is($reversal->{amount}, '120.00', 'reverse (settled): in full');
is($reversal->{status}, 'refunded', 'reverse (settled): status refunded');
$after = payment($sale_206->{id});
is($after->{status}, 'refunded', 'reverse (settled): a full refund makes the sale refunded');
is($after->{refunded_amount}, '120.00', 'reverse (settled): refunded_amount is the whole sale');
wait_fp_reversed($registration_206->{id}, 'reverse (settled)');
is(fp_payment($registration_206->{id})->{reversal}{reason}, 'refunded', 'reverse (settled): reason refunded');
is(fp_invoice(206)->{open_amount}, '120.00', 'reverse (settled): FreshPortal shows the invoice open again');

# --- Unsettled sales: reversal by void; refund refused ----------------------

my $sale_207;
($sale_207, $err, $rc) = money("freshpay_capture($inv{207})");
is($sale_207->{status}, 'captured', 'reverse (unsettled): sale captured') or diag($err);
my $registration_207 = wait_registered($sale_207->{id}, 'reverse (unsettled) sale');
($reversal, $err, $rc) = money("freshpay_reverse($inv{207})");
is($rc, 0, 'reverse (unsettled): freshpay_reverse succeeds') or diag($err);
is($reversal->{kind}, 'void', 'reverse (unsettled): an unsettled sale is voided');
is($reversal->{parent_id}, $sale_207->{id}, 'reverse (unsettled): the void\'s parent is the sale');
is($reversal->{status}, 'voided', 'reverse (unsettled): status voided');
is(payment($sale_207->{id})->{status}, 'voided', 'reverse (unsettled): the sale is voided');
is(pt_transaction($sale_207->{paytrace_transaction_id})->{state}, 'voided', 'reverse (unsettled): PayTrace voided it');
wait_fp_reversed($registration_207->{id}, 'reverse (unsettled)');

my $sale_208;
($sale_208, $err, $rc) = money("freshpay_capture($inv{208})");
is($sale_208->{status}, 'captured', 'refund of an unsettled sale: sale captured') or diag($err);
($row, $err, $rc) = money("freshpay_refund($sale_208->{id})");
isnt($rc, 0, 'refund of an unsettled sale fails');
like($err, qr/ERROR:\s+55000:/, 'refund of an unsettled sale: SQLSTATE 55000') or diag($err);
like($err, qr/could not be refunded|void/i, 'refund of an unsettled sale: the error says to void it instead');
$after = payment($sale_208->{id});
is($after->{status}, 'captured', 'refund of an unsettled sale: the sale stays captured');
is($after->{refunded_amount}, '0.00', 'refund of an unsettled sale: nothing counts as refunded');
is(pt_transaction($sale_208->{paytrace_transaction_id})->{state}, 'pending',
	'refund of an unsettled sale: PayTrace still has it pending settlement');

# --- Paid in FreshPortal after the last sync: not charged -------------------

$fp->admin_post('/_standin/invoices/217', { amount_paid => '75.00' });
$seq_pt = pt_seq();
($row, $err, $rc) = money("freshpay_capture($inv{217})");
isnt($rc, 0, 'paid meanwhile: freshpay_capture fails');
like($err, qr/ERROR:\s+55000:/, 'paid meanwhile: SQLSTATE 55000') or diag($err);
is(scalar @{ pt_calls('/v1/transactions/sale/by_customer', since => $seq_pt, invoice => '2026-0217') }, 0,
	'paid meanwhile: no sale was sent to PayTrace');
is(scalar @{ pt_transactions('2026-0217') }, 0, 'paid meanwhile: PayTrace holds no transaction for it');

# --- What never reaches FreshPortal ------------------------------------------

# By now the worker has finished the write-backs queued after them.
is(scalar @{ fp_payments(202) }, 0, 'a declined sale is not registered in FreshPortal');
is(scalar @{ fp_payments(209) }, 0, 'an auto-voided sale is not registered in FreshPortal');
is(scalar @{ fp_payments(217) }, 0, 'an invoice paid meanwhile gets no registration from freshpay');
is(scalar @{ fp_payments(204) }, 1, 'an authorization is not registered, only its capture');
is( sql("SELECT count(*) FROM freshpay.payments WHERE status = 'failed' AND freshportal_payment_id IS NOT NULL"),
	'0', 'no failed payment points at a FreshPortal registration');

# --- Every money request carried invoice_id, integrator_id and Bearer --------

my %money_path = map { ("/v1/$_" => 1) } qw(transactions/sale/by_customer
  transactions/authorization/by_customer transactions/authorization/capture transactions/void
  transactions/refund/for_transaction checks/sale/by_customer);
my @money_requests = grep { $money_path{ $_->{path} } } @{ $pt->requests };
my @offenders = grep {
	my $body = body_of($_);
	($body->{integrator_id} // '') ne 'pt-integrator'
	  || ($body->{invoice_id} // '') !~ /^2026-02\d\d$/
	  || header_of($_, 'Authorization') !~ /^Bearer \S+$/
} @money_requests;
cmp_ok(scalar @money_requests, '>=', 12, 'PayTrace received the money requests made above');
is(scalar @offenders, 0, 'every one carried integrator_id, invoice_id = the invoice number and "Bearer <token>"')
  or diag(explain([ map { "$_->{path} $_->{body}" } @offenders ]));

# --- History ---------------------------------------------------------------

is( sql('SELECT count(*) FROM freshpay.payments p'
		  . ' WHERE NOT EXISTS (SELECT 1 FROM freshpay.payment_history h WHERE h.payment_id = p.id)'),
	'0', 'history: every payment has events');
like(sql("SELECT string_agg(new_status, ',' ORDER BY at, id) FROM freshpay.payment_history WHERE payment_id = " . ($sale->{id} // 0)),
	qr/captured.*voided/, 'history: the voided sale\'s events run from captured to voided');
like(sql("SELECT string_agg(new_status, ',' ORDER BY at, id) FROM freshpay.payment_history WHERE payment_id = " . ($declined->{id} // 0)),
	qr/failed/, 'history: the decline is recorded');
ok(scalar @{ $pt->tokens } && scalar @{ $fp->tokens }, 'both stand-ins issued tokens during this test');
is(sql("SELECT count(*) FROM freshpay.payment_history WHERE message ~ $FreshpayTest::TOKEN_PATTERN_SQL"),
	'0', 'history: no message contains a token');
for my $table (qw(payment_history payments jobs))
{
	is(sql("SELECT count(*) FROM freshpay.$table t WHERE t::text ~ $FreshpayTest::TOKEN_PATTERN_SQL"),
		'0', "no column of freshpay.$table contains a token");
}

$node->stop;
done_testing();
