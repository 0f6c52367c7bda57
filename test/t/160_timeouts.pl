# When PayTrace is slower than freshpay waits: an outcome freshpay could not
# learn stays unknown until PayTrace shows it, nothing charges the invoice
# again meanwhile, a late answer is recorded even over a person's
# conclusion, and each finding of the money-safety review (H1–H3, M1, M5,
# M6, M7, L1, L2, L5, L6) holds as the README says.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX ();
use Time::HiRes qw(time sleep);

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

# freshpay gives up on PayTrace after 3 s; PayTrace takes longer below.
my $node = FreshpayTest::new_node('timeouts', extension => 1, conf => "freshpay.request_timeout = '3s'");
FreshpayTest::add_administration($node);
# These cases count PayTrace's calls (tokens, lookups); Level 3's own calls
# after each card sale (260 tests them) would mingle with them.
$node->safe_psql('freshpay', "UPDATE freshpay.administrations SET level3_enabled = false WHERE name = 'main'");

my $SALE = '/v1/transactions/sale/by_customer';
my $POLL = 90;

sub sql { return $node->safe_psql('freshpay', shift); }
sub poll_until { return FreshpayTest::poll_true($node, $_[0], $POLL, $_[1]); }
sub pt_seq { return $pt->last_seq; }
sub pt_calls { return $pt->requests_for(@_); }
sub pt_sales { return $pt->sales($_[0]); }
sub fp_registrations { return $fp->registrations($_[0]); }

# A money call with SQLSTATEs shown: (stdout, stderr).
sub call { return FreshpayTest::call($node, $_[0]); }

sub statuses_of
{
	return sql("SELECT coalesce(string_agg(status, ',' ORDER BY id), '') FROM freshpay.payments WHERE invoice_id = $_[0]");
}

sub set_conf
{
	my ($setting, $value) = @_;
	sql("ALTER SYSTEM SET $setting = '$value'");
	sql('SELECT pg_reload_conf()');
	sleep 0.5;
}

sub wait_pt_sale
{
	my ($number, $what) = @_;
	ok(FreshpayTest::wait_for(sub { scalar(pt_sales($number)) >= 1 }, $POLL, "$what: PayTrace to process the sale"),
		"$what: PayTrace processed the sale late");
}

# --- Setup -----------------------------------------------------------------

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' }, { customer_id => 'C-FERN', method => 'card' } ]);
my @manual = (601 .. 613);
$fp->seed(
	{
		customers => [
			{ id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' },
			{ id => 2, code => 'FERN',  name => 'Fern Wholesale',      currency => 'USD' },
		],
		invoices => [
			(map { +{ id => $_, number => "2026-$_", customer_id => 1, invoice_date => '2026-11-02',
					  amount_incl_vat => '100.00' } } @manual),
			{ id => 620, number => '2026-620', customer_id => 1, invoice_date => '2026-11-02', amount_incl_vat => '400.00' },
			{ id => 630, number => 'X' x 60,  customer_id => 1, invoice_date => '2026-11-02', amount_incl_vat => '10.00' },
		]
	});
sql("SELECT * FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-BLOOM', 'manual', 'card')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 2), 'C-FERN', 'on_issue', 'card')");
my %inv;

sub refresh_ids { %inv = map { split /\|/ } split /\n/, sql('SELECT freshportal_id, id FROM freshpay.invoices'); }
refresh_ids();

# An open invoice of the on_issue customer appears in FreshPortal and is synced.
sub issue
{
	my ($id, $amount) = @_;
	$fp->seed({ invoices => [ { id => $id, number => "2026-$id", customer_id => 2, invoice_date => '2026-11-02',
								amount_incl_vat => $amount // '100.00' } ] });
	sql("SELECT * FROM freshpay_sync('main')");
	refresh_ids();
	return $inv{$id};
}

# --- H2: a sale PayTrace processes after freshpay gave up, no scheduled sync ---

{
	$pt->faults([ { action => 'delay', method => 'POST', path => $SALE, seconds => 10, times => 1 } ]);
	my $seq = pt_seq();
	my $invoice = issue(701);
	ok(poll_until("SELECT status = 'unknown' FROM freshpay.payments WHERE invoice_id = $invoice",
			'the slow sale to become unknown'),
		'slow sale: the on_issue collection times out and is unknown');

	# An operator's capture meanwhile is refused and sends nothing.
	my ($out, $err) = call("SELECT status FROM freshpay_capture($invoice)");
	like($err, qr/ERROR:\s+55006: the outcome of payment \d+ of invoice 2026-701 is unknown/,
		'slow sale: capturing again while unknown is refused (55006)');
	like($err, qr/freshpay_resolve/, 'slow sale: the hint names freshpay_resolve');

	wait_pt_sale('2026-701', 'slow sale');
	ok(poll_until("SELECT status = 'captured' FROM freshpay.payments WHERE invoice_id = $invoice",
			'the late sale to be recorded'),
		'slow sale: the late sale is found by a lookup and recorded captured');
	# Past the old "conclusive" time and a collect-job recheck: nothing more is sent.
	sleep 16;
	is(scalar(pt_calls($SALE, '2026-701', $seq)), 1, 'slow sale: PayTrace received one sale request, never a second');
	is(scalar(pt_sales('2026-701')), 1, 'slow sale: PayTrace holds exactly one sale');
	is(statuses_of($invoice), 'captured', 'slow sale: one payment row, captured');
	is(sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE invoice_id = $invoice"),
		join(',', map { $_->{id} } pt_sales('2026-701')), 'slow sale: with PayTrace\'s transaction id');
	ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE invoice_id = $invoice",
			'the late sale to be registered'),
		'slow sale: registered in FreshPortal');
	is(scalar(fp_registrations(701)), 1, 'slow sale: registered exactly once');
	is(sql("SELECT count(*) FROM freshpay.jobs WHERE state = 'dead'"), '0', 'slow sale: no job is dead');
	$pt->faults([]);
}

# --- H2 with a scheduled sync: the PayTrace pull adopts the late sale --------

{
	set_conf('freshpay.sync_interval', '2s');
	$pt->faults([ { action => 'delay', method => 'POST', path => $SALE, seconds => 8, times => 1 } ]);
	my $seq = pt_seq();
	my $invoice = issue(702);
	wait_pt_sale('2026-702', 'slow sale, scheduled sync');
	ok(poll_until("SELECT status = 'captured' FROM freshpay.payments WHERE invoice_id = $invoice",
			'the late sale to be recorded'),
		'slow sale, scheduled sync: the late sale is recorded captured');
	is(scalar(pt_calls($SALE, '2026-702', $seq)), 1, 'slow sale, scheduled sync: one sale request');
	is(scalar(pt_sales('2026-702')), 1, 'slow sale, scheduled sync: PayTrace holds exactly one sale');
	is(statuses_of($invoice), 'captured',
		'slow sale, scheduled sync: one payment row (the pull did not add the sale as an outside one)');
	$pt->faults([]);
	set_conf('freshpay.sync_interval', '0');
}

# --- M6: freshpay_sync() while a sale of freshpay's is in flight -------------

{
	# PayTrace makes the sale at once and answers 2 s later (within the timeout).
	$pt->config({ approval_delay => 2 });
	my $session = FreshpayTest::start_psql($node, "SELECT status FROM freshpay_capture($inv{601})");
	ok(FreshpayTest::wait_for(sub { scalar(pt_sales('2026-601')) >= 1 }, 10, 'the sale to be processed'),
		'sync in flight: PayTrace made the sale; its answer is still on the way');
	my ($out, $err) = call("SELECT count(*) FROM freshpay_sync('main')");
	unlike($err, qr/ERROR/, 'sync in flight: freshpay_sync() succeeds meanwhile (no 23505)') or diag($err);
	eval { $session->{handle}->finish };
	is($session->{out}, "captured\n", 'sync in flight: the capture ends captured') or diag($session->{err});
	is(statuses_of($inv{601}), 'captured', 'sync in flight: one payment row');
	$pt->config({ approval_delay => 0 });
}

# --- H1: a slow token fetch and a slow sale ----------------------------------

{
	set_conf('freshpay.request_timeout', '10s');
	call("SELECT status FROM freshpay_capture($inv{602})");
	# A new PayTrace password: the cached token is not for it, the next money
	# call must fetch one, and every token request now takes 8 s.
	# (A file: reference keeps the new secret out of the statement log.)
	my $secret_file = $node->data_dir . '/rotated_paytrace_password';
	PostgreSQL::Test::Utils::append_to_file($secret_file, 'rotated-h1-secret');
	$pt->config({ password => 'rotated-h1-secret' });
	sql("UPDATE freshpay.administration_secrets SET paytrace_password = 'file:$secret_file' WHERE administration = 'main'");
	$pt->faults([
		# every token request meanwhile, whoever makes it
		{ action => 'delay', method => 'POST', path => '/oauth/token', seconds => 8, times => -1 },
		{ action => 'delay', method => 'POST', path => $SALE, seconds => 9, times => 1 } ]);
	my $seq = pt_seq();
	my ($out, $err) = call("SELECT status FROM freshpay_capture($inv{603})");
	is($out, 'captured', 'slow token and slow sale: the capture returns captured') or diag($err);
	is(scalar(pt_calls($SALE, '2026-603', $seq)), 1, 'slow token and slow sale: one sale request');
	my @history = split /\n/, sql("SELECT event || ':' || new_status FROM freshpay.payment_history"
		  . " WHERE payment_id = (SELECT id FROM freshpay.payments WHERE invoice_id = $inv{603})"
		  . " AND event <> 'registered' ORDER BY at, id");
	is_deeply(\@history, [ 'recorded:pending', 'answered:captured' ],
		'slow token and slow sale: recorded, then answered; no lookup raced the request');
	cmp_ok(scalar(grep { $_->{path} eq '/oauth/token' } @{ $pt->requests(since => $seq) }), '>=', 1,
		'slow token and slow sale: a token was fetched for it');
	$pt->faults([]);
	set_conf('freshpay.request_timeout', '3s');
}

# --- H3: an authorization that has a capture is no longer actionable --------

{
	my ($out, $err) = call("SELECT id FROM freshpay_authorize($inv{620}, 300)");
	my $auth = $out;
	like($auth, qr/^\d+$/, 'captured authorization: authorized 300.00') or diag($err);
	($out, $err) = call("SELECT status FROM freshpay_capture($inv{620}, 200)");
	is($out, 'captured', 'captured authorization: captured 200.00 of it') or diag($err);
	my $seq = pt_seq();
	($out, $err) = call("SELECT status FROM freshpay_void($auth)");
	like($err, qr/ERROR:\s+55000: authorization $auth has been captured/, 'captured authorization: voiding it is refused');
	like($err, qr/HINT:.*its capture, payment \d+/, 'captured authorization: the hint names the capture');
	($out, $err) = call("SELECT status FROM freshpay_refund($auth)");
	like($err, qr/ERROR:\s+55000: authorization $auth has been captured/, 'captured authorization: refunding it is refused');
	is(scalar @{ $pt->requests(since => $seq) }, 0, 'captured authorization: nothing reached PayTrace');
	($out, $err) = call("SELECT count(*) FROM freshpay_sync('main')");
	unlike($err, qr/ERROR/, 'captured authorization: freshpay_sync() still works') or diag($err);
	ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments"
			  . " WHERE invoice_id = $inv{620} AND kind = 'capture'", 'the capture to be registered'),
		'captured authorization: the capture is registered');
	($out, $err) = call("SELECT kind || ':' || amount || ':' || status FROM freshpay_capture($inv{620})");
	is($out, 'sale:200.00:captured', 'partial capture: the rest of the invoice (200.00) is collected by a sale')
	  or diag($err);
}

# --- An unknown that stays unknown blocks re-collection until a person acts --

{
	$pt->faults([ { action => 'close_before', method => 'POST', path => $SALE, times => 1 } ]);
	my $seq = pt_seq();
	my $invoice = issue(703);
	ok(poll_until("SELECT status = 'unknown' FROM freshpay.payments WHERE invoice_id = $invoice",
			'the dropped sale to be unknown'),
		'dropped sale: the on_issue collection is unknown');
	$pt->faults([]);
	# Well past request_timeout + the old 5 s of grace, and a collect-job recheck.
	sleep 15;
	is(statuses_of($invoice), 'unknown', 'dropped sale: still unknown (absence at PayTrace proves nothing)');
	is(scalar(pt_calls($SALE, '2026-703', $seq)), 1, 'dropped sale: no second sale was sent by itself');
	is(sql("SELECT count(*) FROM freshpay.jobs WHERE invoice_id = $invoice AND state = 'dead'"), '0',
		'dropped sale: its collection is waiting, not dead');
	my $payment = sql("SELECT id FROM freshpay.payments WHERE invoice_id = $invoice");
	like(sql("SELECT detail FROM freshpay.exceptions WHERE kind = 'unknown_outcome' AND payment_id = $payment"),
		qr/freshpay_resolve\($payment, 'not_processed'\)/, 'dropped sale: an exception says how to settle it');

	my ($out, $err) = call("SELECT status FROM freshpay_resolve($payment, 'maybe')");
	like($err, qr/ERROR:\s+22023:/, 'freshpay_resolve: a bad verdict is refused (22023)');
	($out, $err) = call("SELECT status FROM freshpay_resolve($payment)");
	is($out, 'unknown', 'freshpay_resolve(id): looks it up again, still unknown') or diag($err);
	($out, $err) = call("SELECT status FROM freshpay_resolve($payment, 'not_processed')");
	is($out, 'failed', 'freshpay_resolve(id, not_processed): the person settles it as failed') or diag($err);
	($out, $err) = call("SELECT status FROM freshpay_resolve($payment, 'not_processed')");
	like($err, qr/ERROR:\s+55000: payment $payment is failed, not unknown/, 'freshpay_resolve: only an unknown can be settled');
	ok(poll_until("SELECT count(*) = 1 FROM freshpay.payments WHERE invoice_id = $invoice AND status = 'captured'",
			'the invoice to be collected again'),
		'dropped sale: then the collection goes on and captures');
	is(scalar(pt_sales('2026-703')), 1, 'dropped sale: PayTrace holds exactly one sale');
	is(statuses_of($invoice), 'failed,captured', 'dropped sale: the settled attempt and the sale');
}

# --- A late answer is recorded over a person's earlier conclusion ------------

{
	$pt->faults([ { action => 'delay', method => 'POST', path => $SALE, seconds => 8, times => 1 } ]);
	my ($out, $err) = call("SELECT id || '|' || status FROM freshpay_capture($inv{604})");
	my ($payment, $status) = split /\|/, $out // '';
	is($status, 'unknown', 'late answer: the capture times out, unknown') or diag($err);
	like($err, qr/WARNING/, 'late answer: with a WARNING');
	($out, $err) = call("SELECT status FROM freshpay_resolve($payment, 'not_processed')");
	is($out, 'failed', 'late answer: a person (wrongly) settles it as not processed');
	wait_pt_sale('2026-604', 'late answer');
	my $seq = pt_seq();
	($out, $err) = call("SELECT status FROM freshpay_capture($inv{604})");
	like($err, qr/ERROR:\s+55000: PayTrace already holds transaction \d+ for invoice 2026-604/,
		'late answer: a new capture looks PayTrace up first and is refused');
	is(scalar(pt_calls($SALE, '2026-604', $seq)), 0, 'late answer: no second sale was sent');
	is(statuses_of($inv{604}), 'captured', 'late answer: the settled attempt is recorded captured after all');
	like(sql("SELECT string_agg(event, ',' ORDER BY at, id) FROM freshpay.payment_history WHERE payment_id = $payment"),
		qr/settled,late answer/, 'late answer: the history shows the person\'s conclusion, then the late answer');
	is(scalar(pt_sales('2026-604')), 1, 'late answer: PayTrace holds exactly one sale');
	$pt->faults([]);
}

# --- M7: a second partial collection before the first is registered ----------

{
	$fp->faults([ { action => 'status', status => 503, method => 'POST', path => '/v1/invoices/605/payments', times => -1 } ]);
	my ($out, $err) = call("SELECT status FROM freshpay_capture($inv{605}, 40)");
	is($out, 'captured', 'two partial collections: 40.00 captured') or diag($err);
	($out, $err) = call("SELECT status FROM freshpay_capture($inv{605}, 60)");
	is($out, 'captured', 'two partial collections: 60.00 captured before the first is registered') or diag($err);
	($out, $err) = call("SELECT status FROM freshpay_capture($inv{605}, 1)");
	like($err, qr/ERROR:\s+55000: invoice 2026-605 is already paid/, 'two partial collections: nothing more to collect');
	$fp->faults([]);
	ok(poll_until("SELECT count(*) = 2 FROM freshpay.payments WHERE invoice_id = $inv{605}"
			  . " AND freshportal_payment_id IS NOT NULL", 'both to be registered'),
		'two partial collections: both registered once FreshPortal accepts');
	is(sql("SELECT outstanding FROM freshpay.invoice_status WHERE invoice_id = $inv{605}"), '0.00',
		'two partial collections: nothing outstanding');
}

# --- M1: a partial refund whose remainder cannot be registered yet -----------

{
	my ($out, $err) = call("SELECT id FROM freshpay_capture($inv{606})");
	my $sale = $out;
	ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $sale",
			'the sale to be registered'), 'partial refund: the sale is registered');
	my $registration = sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = $sale");
	$pt->settle;
	sql("SELECT count(*) FROM freshpay_sync('main')");
	$fp->faults([ { action => 'status', status => 500, method => 'POST', path => '/v1/invoices/606/payments', times => -1 } ]);
	($out, $err) = call("SELECT status FROM freshpay_refund($sale, 30)");
	is($out, 'refunded', 'partial refund: 30.00 refunded') or diag($err);
	ok(FreshpayTest::wait_for(sub { ($fp->item('payments', $registration)->{status} // '') eq 'reversed' },
			$POLL, 'the registration to be reversed'),
		'partial refund: the sale\'s registration is reversed in FreshPortal');
	sql("SELECT count(*) FROM freshpay_sync('main')");
	my $seq = pt_seq();
	($out, $err) = call("SELECT amount FROM freshpay_capture($inv{606})");
	ok($out eq '' || $out <= 30, 'partial refund: a capture meanwhile takes at most the refunded 30.00')
	  or diag("got $out; $err");
	$fp->faults([]);
	ok(poll_until("SELECT freshportal_payment_id IS NOT NULL AND freshportal_payment_id <> $registration"
			  . " FROM freshpay.payments WHERE id = $sale", 'the remainder to be registered'),
		'partial refund: the remainder is registered once FreshPortal accepts');
}

# --- L2: an approval whose answer cannot be read: unknown + WARNING ----------

{
	$pt->faults([ { action => 'malformed', method => 'POST', path => $SALE, times => 1,
					body => '{"success":true,"response_code":101,"transaction_id":""}' } ]);
	my ($out, $err) = call("SELECT id || '|' || status FROM freshpay_capture($inv{607})");
	my ($payment, $status) = split /\|/, $out // '';
	is($status, 'unknown', 'unreadable approval: returned as unknown') or diag($err);
	like($err, qr/WARNING/, 'unreadable approval: with a WARNING');
	unlike($err, qr/ERROR/, 'unreadable approval: not an ERROR');
	$pt->faults([]);
	call("SELECT 1 FROM freshpay_resolve($payment, 'not_processed')") if $payment;
}

# --- L1: a 401 with an unreadable body never re-sends a money request --------

{
	$pt->faults([ { action => 'status', status => 401, method => 'POST', path => $SALE, times => 1,
					body => '<html><body>401 Authorization Required</body></html>',
					headers => { 'Content-Type' => 'text/html' } } ]);
	my $seq = pt_seq();
	my ($out, $err) = call("SELECT id || '|' || status FROM freshpay_capture($inv{608})");
	my ($payment, $status) = split /\|/, $out // '';
	is($status, 'unknown', 'unreadable 401: the outcome is unknown') or diag($err);
	is(scalar(pt_calls($SALE, '2026-608', $seq)), 1, 'unreadable 401: the sale was sent once, not again');
	$pt->faults([]);
	call("SELECT 1 FROM freshpay_resolve($payment, 'not_processed')") if $payment;
}

# --- L5, L6: the re-read and the invoice number are checked ------------------

{
	$fp->admin_post('/_standin/invoices/609', { currency => 'EUR' });
	my $seq = pt_seq();
	my ($out, $err) = call("SELECT status FROM freshpay_capture($inv{609})");
	like($err, qr/ERROR:\s+55000: invoice 2026-609 changed in FreshPortal: it is now a open invoice in EUR/,
		'changed invoice: FreshPortal\'s re-read in another currency is refused');
	($out, $err) = call("SELECT status FROM freshpay_capture($inv{630})");
	my $long = $inv{630};
	like($err, qr/ERROR:\s+22023: invoice number of invoice $long cannot be sent to PayTrace/,
		'long invoice number: refused before sending');
	is(scalar @{ $pt->requests(since => $seq) }, 0, 'changed invoice, long number: nothing reached PayTrace');
}

# --- L4: a FreshPortal that ignores the lookup's filter ----------------------

{
	$fp->config({ ignore_payment_filters => JSON::PP::true });
	my ($out, $err) = call("SELECT id FROM freshpay_capture($inv{613})");
	my $payment = $out;
	ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = " . ($payment || 0),
			'the sale to be registered'), 'unfiltered lookup: the sale is registered');
	my $registration = $fp->item('payments', sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = " . ($payment || 0)));
	is($registration->{invoice_id}, 613, 'unfiltered lookup: under its own invoice, not another payment found by the lookup');
	is($registration->{provider_transaction_id}, sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE id = " . ($payment || 0)),
		'unfiltered lookup: with its own provider transaction id');
	is(scalar(fp_registrations(613)), 1, 'unfiltered lookup: registered exactly once');
	$fp->config({ ignore_payment_filters => JSON::PP::false });
}

# --- L7: Retry-After as an HTTP-date is honoured ----------------------------

{
	my $at = POSIX::strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime(time + 4));
	$pt->faults([ { action => 'status', status => 429, method => 'POST', path => $SALE, times => 1,
					body => '{"error":"too many requests"}', headers => { 'Retry-After' => $at } } ]);
	my $seq = pt_seq();
	my $invoice = issue(704);
	ok(poll_until("SELECT count(*) = 1 FROM freshpay.payments WHERE invoice_id = $invoice AND status = 'captured'",
			'the rate-limited sale to be collected'),
		'Retry-After date: the collection succeeds after the 429');
	my @sent = grep { $_->{path} eq $SALE } @{ $pt->requests(since => $seq) };
	my $gap = @sent >= 2 ? $sent[1]{time} - $sent[0]{time} : 0;
	cmp_ok($gap, '>=', 2.5, sprintf('Retry-After date: the retry waited for the date (%.2f s later)', $gap));
	$pt->faults([]);
}

# --- M5: a user's open transaction holding rows the worker needs -------------

{
	set_conf('freshpay.sync_interval', '2s');
	# Session A pulls in a transaction it keeps open: it holds the sync state.
	my $a = FreshpayTest::start_psql($node, "BEGIN; SELECT count(*) FROM freshpay_sync('main'); SELECT pg_sleep(25); COMMIT;");
	sleep 4;
	my $t0 = time;
	my ($out, $err) = call("SELECT status FROM freshpay_capture($inv{610})");
	is($out, 'captured', 'open transaction: another capture goes through meanwhile') or diag($err);
	cmp_ok(time - $t0, '<', 20, 'open transaction: without waiting for that transaction');
	eval { $a->{handle}->finish };
	set_conf('freshpay.sync_interval', '0');

	# One session: it pulled (locking the invoice it changed), then captures it.
	$fp->admin_post('/_standin/invoices/611', { amount_incl_vat => '101.00' });
	$t0 = time;
	($out, $err) = call("BEGIN;\nSELECT count(*) FROM freshpay_sync('main');\nSELECT status FROM freshpay_capture($inv{611});\nROLLBACK;");
	like($err, qr/ERROR:\s+55P03:/, 'self-lock: a capture of a row the caller\'s own transaction holds fails (55P03)');
	cmp_ok(time - $t0, '<', 30, 'self-lock: in seconds, not a stalled worker');
	($out, $err) = call("SELECT status FROM freshpay_capture($inv{612})");
	is($out, 'captured', 'self-lock: the worker goes on serving') or diag($err);
}

# --- In the end: nothing was charged twice -----------------------------------

# 2026-605 was collected in two parts on purpose, and 2026-606 had 30.00
# refunded and collected again; every other invoice has at most one sale.
my %sales;
$sales{ $_->{invoice_id} }++ for grep { $_->{kind} eq 'SALE' && $_->{state} ne 'declined' } @{ $pt->state->{transactions} };
is($sales{'2026-605'}, 2, 'two partial collections: two sales, 40.00 and 60.00');
cmp_ok($sales{'2026-606'} // 0, '<=', 2, 'partial refund: at most the sale and one of at most 30.00');
is_deeply([ grep { $sales{$_} > 1 && $_ ne '2026-605' && $_ ne '2026-606' } sort keys %sales ], [],
	'no other invoice was charged twice');
is(sql("SELECT count(*) FROM freshpay.jobs WHERE state = 'dead'"), '0', 'no job is dead');

$node->stop;
done_testing();
