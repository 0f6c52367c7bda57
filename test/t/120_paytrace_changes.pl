# Changes made in PayTrace flow back (issue 4): freshpay_sync also pulls
# PayTrace's transactions and settlement batches.  A sale voided in
# PayTrace's own terminal becomes voided in freshpay.payments and reversed
# in FreshPortal; a settlement fills batch_number/settled_at and
# freshpay.settlements; a sale made directly at PayTrace for an invoice
# number freshpay knows is recorded against that invoice and registered in
# FreshPortal once.  Each status change leaves one history row and a NOTIFY.
use strict;
use warnings;

use HTTP::Tiny;
use IPC::Run;
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

my $node = FreshpayTest::new_node('ptchanges', extension => 1);
FreshpayTest::add_administration($node);

my $json = JSON::PP->new->canonical;
my $POLL = 30;

# --- Helpers ---------------------------------------------------------------

sub sql { return $node->safe_psql('freshpay', shift); }

sub poll_until { return FreshpayTest::poll_true($node, $_[0], $_[2] // $POLL, $_[1]); }

sub sync { return FreshpayTest::psql_result($node, 'freshpay', "SELECT administration || '|' || stream FROM freshpay_sync('main')"); }

# PayTrace's own terminal: a token with the account's credentials, then
# JSON calls with integrator_id.
my $http = HTTP::Tiny->new(timeout => 30, keep_alive => 0);
my $pt_token;

sub paytrace
{
	my ($path, $body) = @_;
	if (!defined $pt_token)
	{
		my $res = $http->post_form($pt->url . '/oauth/token',
			{ grant_type => 'password', username => $FreshpayTest::PT_USERNAME,
			  password => $ENV{FRESHPAY_TEST_PT_PASSWORD} // 'pt-pass' });
		$pt_token = eval { $json->decode($res->{content})->{access_token} } // 'none';
	}
	my $res = $http->request('POST', $pt->url . $path,
		{ headers => { 'Content-Type' => 'application/json', Authorization => "Bearer $pt_token" },
		  content => $json->encode({ integrator_id => $FreshpayTest::PT_INTEGRATOR_ID, %$body }) });
	my $answer = eval { $json->decode($res->{content}) };
	return ref $answer eq 'HASH' ? $answer : { http_status => $res->{status}, content => $res->{content} };
}

# freshpay_capture: (id, status, PayTrace transaction id).
sub capture
{
	my ($invoice) = @_;
	my ($out, $err) = FreshpayTest::psql_result($node, 'freshpay',
		"SELECT id || '|' || status || '|' || coalesce(paytrace_transaction_id::text, '') FROM freshpay_capture($invoice)");
	diag($err) if $err =~ /ERROR/;
	return split /\|/, $out;
}

sub fp_registrations { return $fp->registrations($_[0]); }

sub wait_registered
{
	my ($payment, $what) = @_;
	ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = " . ($payment || 0),
			"$what registration"),
		"$what: registered in FreshPortal");
	return sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = " . ($payment || 0));
}

sub history_count
{
	my ($payment, $status) = @_;
	return sql("SELECT count(*) FROM freshpay.payment_history WHERE payment_id = " . ($payment || 0)
		  . " AND new_status = '$status' AND old_status IS DISTINCT FROM '$status'");
}

# --- Setup -------------------------------------------------------------------

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' } ],
		invoices  => [
			{ id => 3001, number => '2026-3001', customer_id => 1, amount_incl_vat => '590.00' },   # voided at PayTrace
			{ id => 3002, number => '2026-3002', customer_id => 1, amount_incl_vat => '120.00' },   # settled
			{ id => 3003, number => '2026-3003', customer_id => 1, amount_incl_vat => '80.00' },    # settled
			{ id => 3004, number => '2026-3004', customer_id => 1, amount_incl_vat => '75.00' },    # sold at PayTrace
		]
	});

# --- freshpay_sync pulls four streams ---------------------------------------------

my ($out, $err, $rc) = sync();
is($rc, 0, 'streams: freshpay_sync(\'main\') succeeds') or diag($err);
my %streams = map { $_ => 1 } split /\n/, $out;
ok($streams{$_}, "streams: freshpay_sync returns a row for stream $_") or diag("rows: $out")
  for map { "main|$_" } qw(customers invoices paytrace_transactions settlements);
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-BLOOM', 'manual', 'card')");
my %inv = map { split /\|/ } split /\n/, sql('SELECT freshportal_id, id FROM freshpay.invoices');
is(scalar keys %inv, 4, 'setup: 4 invoices synced');

# --- A sale voided in PayTrace's own terminal ---------------------------------------

my ($sale, $status, $txn) = capture($inv{3001});
is($status, 'captured', 'void at PayTrace: freshpay made the sale');
$sale ||= 0;
my $registration = wait_registered($sale, 'void at PayTrace: the sale');

my $listener = FreshpayTest::start_listener($node, 'freshpay_payment');
my $voided = paytrace('/v1/transactions/void', { transaction_id => $txn });
is($voided->{response_code}, 109, 'void at PayTrace: PayTrace voided the sale (109)') or diag(explain($voided));
($out, $err, $rc) = sync();
is($rc, 0, 'void at PayTrace: freshpay_sync succeeds') or diag($err);
is(sql("SELECT status FROM freshpay.payments WHERE id = $sale"), 'voided',
	'void at PayTrace: after freshpay_sync the payment is voided');
my ($voids, $void_statuses) = split /\|/,
  sql("SELECT count(*) || '|' || coalesce(string_agg(status, ','), '') FROM freshpay.payments WHERE parent_id = $sale");
cmp_ok($voids, '<=', 1, 'void at PayTrace: at most one void row is recorded for it');
is($void_statuses, $voids ? 'voided' : '', 'void at PayTrace: a void row, if recorded, is voided');
is(history_count($sale, 'voided'), '1', 'void at PayTrace: one history row records the change to voided');
my $payloads = FreshpayTest::notified($listener);
FreshpayTest::stop_listener($listener);
ok(scalar(grep { $_ eq $sale } @$payloads), "void at PayTrace: the change was NOTIFYed with payload $sale")
  or diag("received: @$payloads");
ok( FreshpayTest::wait_for(sub { ($fp->item('payments', $registration || 0)->{status} // '') eq 'reversed' }, $POLL,
		'the FreshPortal reversal'),
	'void at PayTrace: the FreshPortal registration becomes reversed');
is($fp->item('payments', $registration || 0)->{reversal}{reason} // '', 'voided', 'void at PayTrace: with reason voided');
is($fp->item('invoices', 3001)->{open_amount}, '590.00', 'void at PayTrace: FreshPortal shows the invoice open again');

# Pulling again changes nothing.
sync();
is(sql("SELECT status FROM freshpay.payments WHERE id = $sale"), 'voided', 'void at PayTrace: a second sync keeps it voided');
is(history_count($sale, 'voided'), '1', 'void at PayTrace: and adds no second history row');
is(sql("SELECT count(*) FROM freshpay.payments WHERE parent_id = $sale"), $voids, 'void at PayTrace: nor a void row');

# --- A sale made directly at PayTrace for an invoice freshpay knows --------------------

my $direct = paytrace('/v1/transactions/sale/by_customer',
	{ customer_id => 'C-BLOOM', amount => '75.00', invoice_id => '2026-3004' });
is($direct->{response_code}, 101, 'direct sale: PayTrace approved a sale for invoice 2026-3004') or diag(explain($direct));
my $direct_txn = $direct->{transaction_id} // 0;
($out, $err, $rc) = sync();
is($rc, 0, 'direct sale: freshpay_sync succeeds') or diag($err);
my $row = sql("SELECT id || '|' || coalesce(invoice_id::text, '') || '|' || kind || '|' || status || '|' || amount"
	  . " FROM freshpay.payments WHERE paytrace_transaction_id = $direct_txn");
my ($direct_payment, @direct) = split /\|/, $row;
is(join('|', @direct), "$inv{3004}|sale|captured|75.00",
	'direct sale: it appears in freshpay.payments against the invoice, a sale of 75.00, captured');
$direct_payment ||= 0;
cmp_ok(history_count($direct_payment, 'captured'), '>=', 1, 'direct sale: a history row records it captured');
wait_registered($direct_payment, 'direct sale');
is(scalar(fp_registrations(3004)), 1, 'direct sale: FreshPortal holds exactly one registration for the invoice');
sync();
is(sql("SELECT count(*) FROM freshpay.payments WHERE paytrace_transaction_id = $direct_txn"), '1',
	'direct sale: a second sync does not record it twice');
sleep 1;
is(scalar(fp_registrations(3004)), 1, 'direct sale: nor register it twice');

# --- A settlement ----------------------------------------------------------------------

for my $fp_id (3002, 3003)
{
	my (undef, $st) = capture($inv{$fp_id});
	is($st, 'captured', "settlement: freshpay sold invoice $fp_id");
}
my $settle = $pt->settle;
my $batch = $settle->{batch} // {};
is($batch->{number}, 571, 'settlement: PayTrace settled batch 571');
my @batch_txns = @{ $settle->{transaction_ids} // [] };
is(scalar @batch_txns, 3, 'settlement: holding the two sales and the direct sale (the voided sale is not settled)');
($out, $err, $rc) = sync();
is($rc, 0, 'settlement: freshpay_sync succeeds') or diag($err);
my $ids = join(',', @batch_txns, 0);
is( sql("SELECT count(*) FROM freshpay.payments WHERE paytrace_transaction_id IN ($ids)"
		  . " AND batch_number = 571 AND settled_at IS NOT NULL"),
	'3', 'settlement: each settled payment has batch_number 571 and settled_at');
is(sql("SELECT string_agg(DISTINCT status, ',') FROM freshpay.payments WHERE paytrace_transaction_id IN ($ids)"),
	'captured', 'settlement: settling is no status change: they stay captured');
is(sql("SELECT batch_number IS NULL AND settled_at IS NULL FROM freshpay.payments WHERE id = $sale"), 't',
	'settlement: the voided sale is not in a batch');
my $settlement = sql("SELECT json_build_object('transaction_count', transaction_count, 'sales_amount', sales_amount,"
	  . " 'refund_amount', refund_amount, 'net_amount', net_amount, 'settled', settled_at IS NOT NULL)"
	  . " FROM freshpay.settlements WHERE administration = 'main' AND batch_number = 571");
my $local = $settlement =~ /^\{/ ? $json->decode($settlement) : {};
ok(%$local, 'settlement: freshpay.settlements has batch 571');
is($local->{transaction_count}, $batch->{transaction_count}, "settlement: transaction_count is PayTrace's");
for my $amount (qw(sales_amount refund_amount net_amount))
{
	is(sprintf('%.2f', $local->{$amount} // -1), sprintf('%.2f', $batch->{$amount} // -2),
		"settlement: $amount is PayTrace's");
}
is(sprintf('%.2f', $batch->{sales_amount} // 0), '275.00', 'settlement: (the batch is 120.00 + 80.00 + 75.00)');
ok($local->{settled}, 'settlement: settled_at is set');

# --- No token in what was stored ----------------------------------------------------------

for my $table (qw(payment_history payments settlements jobs))
{
	is(sql("SELECT count(*) FROM freshpay.$table t WHERE t::text ~ $FreshpayTest::TOKEN_PATTERN_SQL"),
		'0', "no row of freshpay.$table contains a token");
}

$node->stop;
done_testing();
