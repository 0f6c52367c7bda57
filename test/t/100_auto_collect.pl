# freshpay collects by itself (issue 4): an open invoice of an on_issue
# customer, arriving through a sync (called by hand or scheduled by
# freshpay.sync_interval) or inserted by hand, is queued in the inserting
# transaction and collected by the worker, woken at commit, with no money
# function called; manual customers, credit notes, concepts, blocked
# customers and rolled-back inserts are left alone; on_due_date customers
# are collected once the due date has come; every payment status change is
# announced on channel freshpay_payment.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use POSIX qw(strftime);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

# The default interval, spelt out: no scheduled sync comes within this test
# unless it is reloaded below.
my $node = FreshpayTest::new_node('auto', extension => 1, conf => "freshpay.sync_interval = '5min'");
FreshpayTest::add_administration($node);

my $json = JSON::PP->new;
my $SALE = '/v1/transactions/sale/by_customer';
my $POLL = 20;

# --- Helpers ---------------------------------------------------------------

sub sql { return $node->safe_psql('freshpay', shift); }

sub poll_until { return FreshpayTest::poll_true($node, $_[0], $_[2] // $POLL, $_[1]); }

sub body_of { return FreshpayTest::request_body($_[0]); }

# The local id of a FreshPortal invoice ('' while it is not synced).
sub local_invoice
{
	return sql("SELECT id FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id = $_[0]");
}

# Sale requests PayTrace received for an invoice number (since $seq), and
# the sales it holds for it (declined ones are no charge).
sub pt_sale_requests { return $pt->requests_for($SALE, @_); }

sub pt_sales { return $pt->sales($_[0]); }

sub fp_registrations { return $fp->registrations($_[0]); }

# Waits for a captured sale of FreshPortal invoice $fp_id; returns its id.
sub wait_captured
{
	my ($fp_id, $what, $timeout) = @_;
	ok( poll_until(
			"SELECT count(*) = 1 FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id"
			  . " WHERE i.administration = 'main' AND i.freshportal_id = $fp_id AND p.kind = 'sale' AND p.status = 'captured'",
			"$what: a captured sale", $timeout),
		"$what: the worker collects the invoice (a sale, captured) without any money function being called");
	return sql("SELECT p.id FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id"
		  . " WHERE i.administration = 'main' AND i.freshportal_id = $fp_id AND p.status = 'captured' LIMIT 1") || 0;
}

# One sale at PayTrace, registered once in FreshPortal.
sub collected_once
{
	my ($fp_id, $payment, $what) = @_;
	my @sales = pt_sales("A-$fp_id");
	is(scalar @sales, 1, "$what: PayTrace holds exactly one sale for invoice A-$fp_id");
	is(sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE id = $payment"),
		join(',', map { $_->{id} } @sales), "$what: the payment carries PayTrace's transaction id");
	ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $payment",
			"$what: registration"),
		"$what: the payment is registered in FreshPortal (freshportal_payment_id set)");
	is(scalar(fp_registrations($fp_id)), 1, "$what: FreshPortal holds exactly one registration");
}

# Nothing happened for FreshPortal invoice $fp_id: no job, no payment, no
# sale request at PayTrace.
sub left_alone
{
	my ($fp_id, $what) = @_;
	my $invoice = local_invoice($fp_id);
	like($invoice, qr/^\d+$/, "$what: the invoice is synced");
	$invoice ||= 0;
	is(sql("SELECT count(*) FROM freshpay.jobs WHERE invoice_id = $invoice"), '0', "$what: no job is queued");
	is(sql("SELECT count(*) FROM freshpay.payments WHERE invoice_id = $invoice"), '0', "$what: no payment");
	is(scalar(pt_sale_requests("A-$fp_id")), 0, "$what: PayTrace received no sale for it");
}

sub fp_invoice_seed
{
	my ($id, $customer, $amount, %extra) = @_;
	return { id => $id, number => "A-$id", customer_id => $customer, amount_incl_vat => $amount,
		invoice_date => strftime('%Y-%m-%d', gmtime(time - 20 * 86400)), %extra };
}

# --- Setup -------------------------------------------------------------------

# 1 on_issue, 2 manual, 3 on_issue but blocked in FreshPortal, 4 on_due_date.
$pt->customers([ map { { customer_id => $_, method => 'card' } } qw(C-ISSUE C-MANUAL C-BLOCKED C-DUE) ]);
$fp->seed(
	{
		customers => [
			{ id => 1, code => 'BLOOM', name => 'Bloom & Co Florists',   currency => 'USD' },
			{ id => 2, code => 'PETAL', name => 'Petal Pushers Inc.',    currency => 'USD' },
			{ id => 3, code => 'STEM',  name => 'Stem & Vine Wholesale', currency => 'USD', blocked => JSON::PP::true },
			{ id => 4, code => 'FERN',  name => 'Fern Gully Garden Ctr', currency => 'USD' },
		]
	});
sql("SELECT * FROM freshpay_sync('main')");
my %customer = map { split /\|/ } split /\n/, sql("SELECT freshportal_id, id FROM freshpay.customers");
is(scalar keys %customer, 4, 'setup: 4 customers synced');
is(sql("SELECT blocked FROM freshpay.customers WHERE freshportal_id = 3"), 't', 'setup: customer 3 is blocked');
for my $link ([ 1, 'C-ISSUE', 'on_issue' ], [ 2, 'C-MANUAL', 'manual' ], [ 3, 'C-BLOCKED', 'on_issue' ],
	[ 4, 'C-DUE', 'on_due_date' ])
{
	my ($id, $profile, $rule) = @$link;
	my ($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay',
		"SELECT collection FROM freshpay_link_customer($customer{$id}, '$profile', '$rule', 'card')");
	is($out, $rule, "setup: customer $id linked to $profile, collection $rule") or diag($err);
}

# --- New invoices arrive through a sync ---------------------------------------

my $listener = FreshpayTest::start_listener($node, 'freshpay_payment');
$fp->seed(
	{
		invoices => [
			fp_invoice_seed(1001, 1, '590.00'),                          # on_issue: collected
			fp_invoice_seed(1002, 2, '410.00'),                          # manual
			fp_invoice_seed(1003, 2, '-54.50', type => 'credit_note'),  # manual credit note
			fp_invoice_seed(1004, 1, '81.86', status => 'concept'),      # on_issue concept
			fp_invoice_seed(1005, 3, '230.00'),                          # blocked customer
			fp_invoice_seed(1006, 1, '-20.00', type => 'credit_note'),  # on_issue credit note
		]
	});
my $seq = $pt->last_seq;
my ($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay', "SELECT count(*) FROM freshpay_sync('main')");
is($rc, 0, 'sync: freshpay_sync(\'main\') succeeds') or diag($err);

my $p1001 = wait_captured(1001, 'on_issue');
collected_once(1001, $p1001, 'on_issue');
my $i1001 = local_invoice(1001) || 0;
is(sql("SELECT kind FROM freshpay.payments WHERE id = $p1001"), 'sale', 'on_issue: the payment is a sale');
is(sql("SELECT amount FROM freshpay.payments WHERE id = $p1001"), '590.00', 'on_issue: for the open amount');
is(scalar(pt_sale_requests('A-1001', $seq)), 1, 'on_issue: PayTrace received exactly one sale request');
is(sql("SELECT count(*) FROM freshpay.jobs WHERE kind = 'collect_invoice' AND invoice_id = $i1001"), '1',
	'on_issue: the sync queued one collect_invoice job for the invoice');
ok(poll_until("SELECT bool_and(state = 'done') FROM freshpay.jobs WHERE kind = 'collect_invoice' AND invoice_id = $i1001",
		'collect job done'),
	'on_issue: the collect_invoice job ends done');

# NOTIFY: the listener learnt of the payment.
my $payloads = FreshpayTest::notified($listener);
ok(scalar(grep { $_ eq $p1001 } @$payloads), "NOTIFY: a LISTENing session received payload $p1001 on freshpay_payment")
  or diag("received: @$payloads\n$listener->{err}");
FreshpayTest::stop_listener($listener);

# Left alone: the same sync brought them, the on_issue invoice beside them
# has been collected, so the worker has been through its queue.
left_alone(1002, 'manual invoice');
left_alone(1003, 'manual credit note');
left_alone(1004, 'on_issue concept invoice');
left_alone(1005, 'blocked on_issue customer');
left_alone(1006, 'on_issue credit note');

# --- A concept becoming open is collected --------------------------------------

$fp->admin_post('/_standin/invoices/1004', { status => 'open' });
sql("SELECT count(*) FROM freshpay_sync('main')");
# (The worker may have collected it already: then FreshPortal says paid.)
like(sql("SELECT status FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id = 1004"), qr/^(?:open|paid)$/,
	'concept → open: the sync brings the invoice open (or, collected already, paid)');
my $p1004 = wait_captured(1004, 'concept → open');
collected_once(1004, $p1004, 'concept → open');
is(sql("SELECT count(*) FROM freshpay.jobs WHERE kind = 'collect_invoice' AND invoice_id = " . (local_invoice(1004) || 0)),
	'1', 'concept → open: one collect_invoice job was queued');

# --- A hand insert rolled back queues nothing -------------------------------------

my $insert_values = sub {
	my ($fp_id, $inv, $status) = @_;
	return "('main', $fp_id, '$inv->{number}', $customer{1}, 1, '$inv->{invoice_date}', '$inv->{due_date}', 'USD',"
	  . " $inv->{amount_excl_vat}, $inv->{vat_amount}, $inv->{amount_incl_vat}, $inv->{open_amount}, '$status')";
};
my $INSERT = 'INSERT INTO freshpay.invoices (administration, freshportal_id, number, customer_id,'
  . ' freshportal_customer_id, invoice_date, due_date, currency, amount_excl_vat, vat_amount,'
  . ' amount_incl_vat, open_amount, status) VALUES ';
my $hand = { number => 'A-1010', invoice_date => strftime('%Y-%m-%d', gmtime), due_date => strftime('%Y-%m-%d', gmtime),
	amount_excl_vat => '100.00', vat_amount => '9.00', amount_incl_vat => '109.00', open_amount => '109.00' };
my $jobs_before = sql("SELECT count(*) FROM freshpay.jobs WHERE kind = 'collect_invoice'");
my ($seq_pt, $seq_fp) = ($pt->last_seq, $fp->last_seq);
($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay',
	"BEGIN;\n$INSERT" . $insert_values->(1010, $hand, 'open') . ";\n"
	  . "SELECT count(*) FROM freshpay.jobs j JOIN freshpay.invoices i ON i.id = j.invoice_id"
	  . " WHERE j.kind = 'collect_invoice' AND i.administration = 'main' AND i.freshportal_id = 1010;\n"
	  . "ROLLBACK;");
is($rc, 0, 'rollback: the hand insert runs') or diag($err);
is($out, '1', 'rollback: inside the transaction the insert has queued its collection');
sleep 2;
is(sql("SELECT count(*) FROM freshpay.jobs WHERE kind = 'collect_invoice'"), $jobs_before,
	'rollback: after ROLLBACK no collect_invoice job is left');
is(sql("SELECT count(*) FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE i.number = 'A-1010'"),
	'0', 'rollback: no payment');
is(scalar(pt_sale_requests('A-1010', $seq_pt)), 0, 'rollback: PayTrace received nothing for it');
is(scalar(grep { $_->{path} eq '/v1/invoices/1010' } @{ $fp->requests(since => $seq_fp) }), 0,
	'rollback: the worker did not even re-read it from FreshPortal');

# --- A hand insert committed wakes the worker at once ------------------------------

# FreshPortal must know the invoice: freshpay re-reads it before charging.
my ($seeded) = @{ $fp->seed({ invoices => [ fp_invoice_seed(1011, 1, '215.00', invoice_date => strftime('%Y-%m-%d', gmtime)) ] })->{invoices} };
($seq_pt, $seq_fp) = ($pt->last_seq, $fp->last_seq);
my $t_commit = time;
($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay',
	"BEGIN;\n$INSERT" . $insert_values->(1011, $seeded, 'open') . ";\nCOMMIT;");
my $t_committed = time;
is($rc, 0, 'wake at commit: the hand insert commits') or diag($err);
my $sale_request;
FreshpayTest::wait_for(sub { ($sale_request) = pt_sale_requests('A-1011', $seq_pt); $sale_request }, 10,
	'the sale of A-1011');
ok($sale_request, 'wake at commit: the worker sends the sale without a sync or money function call');
my $latency = ($sale_request // { time => $t_commit + 999 })->{time} - $t_commit;
note(sprintf('commit took %.3f s; the sale reached PayTrace %.3f s after the commit began', $t_committed - $t_commit, $latency));
cmp_ok($latency, '<', 1, 'wake at commit: the sale reaches PayTrace within 1 s of the COMMIT (interval 5min)');
my @rereads = grep { $_->{method} eq 'GET' && $_->{path} eq '/v1/invoices/1011' } @{ $fp->requests(since => $seq_fp) };
ok(@rereads && $sale_request && $rereads[0]{time} <= $sale_request->{time},
	'wake at commit: FreshPortal\'s invoice was re-read (GET /v1/invoices/1011) before the sale');
my $p1011 = wait_captured(1011, 'wake at commit');
collected_once(1011, $p1011, 'wake at commit');

# --- The scheduled sync: freshpay.sync_interval = 1s, reloaded ----------------------

$node->append_conf('postgresql.conf', "freshpay.sync_interval = '1s'\n");
$node->reload;
ok(poll_until("SELECT current_setting('freshpay.sync_interval') = '1s'", 'the reload'),
	'scheduled: freshpay.sync_interval = 1s is in effect');

# An on_issue invoice, and two of the on_due_date customer: one due since
# yesterday, one due in ten days.
my $yesterday = strftime('%Y-%m-%d', gmtime(time - 86400));
my $in_ten_days = strftime('%Y-%m-%d', gmtime(time + 10 * 86400));
$seq_pt = $pt->last_seq;
$fp->seed(
	{
		invoices => [
			fp_invoice_seed(1020, 1, '333.00'),
			fp_invoice_seed(1030, 4, '144.00', due_date => $yesterday),
			fp_invoice_seed(1031, 4, '155.00', due_date => $in_ten_days),
		]
	});
my $p1020 = wait_captured(1020, 'scheduled sync', 30);
collected_once(1020, $p1020, 'scheduled sync');
ok(poll_until('SELECT last_sync_at IS NOT NULL FROM freshpay.worker_status', 'last_sync_at'),
	'scheduled sync: freshpay.worker_status.last_sync_at is set');

my $p1030 = wait_captured(1030, 'on_due_date, due yesterday', 30);
collected_once(1030, $p1030, 'on_due_date, due yesterday');

# The one due in ten days stays alone, through the worker's passes and a
# sync of our own.
sql("SELECT count(*) FROM freshpay_sync('main')");
sleep 3;
my $i1031 = local_invoice(1031) || 0;
like($i1031, qr/^[1-9]\d*$/, 'on_due_date, due in 10 days: the invoice is synced');
is(sql("SELECT count(*) FROM freshpay.payments WHERE invoice_id = $i1031"), '0', 'on_due_date, due in 10 days: no payment');
is(scalar(pt_sale_requests('A-1031')), 0, 'on_due_date, due in 10 days: PayTrace received no sale');
is(sql("SELECT count(*) FROM freshpay.jobs j JOIN freshpay.invoices i ON i.id = j.invoice_id"
		  . " WHERE j.invoice_id = $i1031 AND (j.state <> 'queued' OR j.next_run_at < i.due_date)"),
	'0', 'on_due_date, due in 10 days: no job runs before the due date');

# --- In the end --------------------------------------------------------------------

# Many scheduled syncs later, what was to be left alone still is.
for my $case ([ 1002, 'manual invoice' ], [ 1003, 'manual credit note' ], [ 1005, 'blocked customer' ],
	[ 1006, 'credit note' ])
{
	my ($fp_id, $what) = @$case;
	is(scalar(pt_sale_requests("A-$fp_id")), 0, "in the end: the $what was never charged");
	is(sql("SELECT count(*) FROM freshpay.payments WHERE invoice_id = " . (local_invoice($fp_id) || 0)), '0',
		"in the end: the $what has no payment");
}
my %sales;
$sales{ $_->{invoice_id} }++ for grep { $_->{kind} eq 'SALE' } @{ $pt->state->{transactions} };
is_deeply(\%sales, { map { ("A-$_" => 1) } 1001, 1004, 1011, 1020, 1030 },
	'in the end: PayTrace holds one sale each for the five invoices to collect, and no other');
is(sql("SELECT count(*) FROM freshpay.payments WHERE status IN ('pending', 'unknown')"), '0',
	'in the end: no payment is pending or unknown');

$node->stop;
done_testing();
