# Every outcome reaches FreshPortal exactly once: the worker retries a
# registration through a 500, a 422 and an answer lost after FreshPortal
# stored it, looks the payment up before writing so that the lost answer
# does not become a second registration, and retries a reversal the same way.
use strict;
use warnings;

use JSON::PP;
use List::Util qw(max);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

my $node = FreshpayTest::new_node('writeback', extension => 1);
FreshpayTest::add_administration($node);

my $json = JSON::PP->new;
my $POLL = 60;

# --- Helpers ---------------------------------------------------------------

sub sql { return $node->safe_psql('freshpay', shift); }

sub poll_until { return FreshpayTest::poll_true($node, $_[0], $POLL, $_[1]); }

# The payment's FreshPortal id (or null) and its jobs of one kind.
sub writeback_state
{
	my ($payment_id, $kind) = @_;
	my $out = sql(qq{
		SELECT json_build_object(
			'freshportal_payment_id', p.freshportal_payment_id,
			'jobs', (SELECT coalesce(json_agg(json_build_object('attempts', j.attempts, 'state', j.state,
						'last_error', j.last_error) ORDER BY j.id), '[]')
					   FROM freshpay.jobs j WHERE j.payment_id = p.id AND j.kind = '$kind'))
		  FROM freshpay.payments p WHERE p.id = $payment_id});
	return $out =~ /^\{/ ? $json->decode($out) : { jobs => [] };
}

# Watches the jobs while waiting for $done; returns (done?, highest
# attempts seen, every last_error seen).
sub watch_jobs
{
	my ($payment_id, $kind, $done) = @_;
	my ($attempts, %errors) = (0);
	my $ok = FreshpayTest::wait_for(
		sub {
			my $state = writeback_state($payment_id, $kind);
			for my $job (@{ $state->{jobs} })
			{
				$attempts = max($attempts, $job->{attempts});
				$errors{ $job->{last_error} } = 1 if defined $job->{last_error};
			}
			return $done->($state);
		},
		$POLL, "$kind of payment $payment_id");
	return ($ok, $attempts, [ sort keys %errors ]);
}

sub fp_requests
{
	my ($method, $path_re) = @_;
	return grep { $_->{method} eq $method && $_->{path} =~ $path_re } @{ $fp->requests };
}

sub fp_payment { return $fp->item('payments', $_[0]); }

sub fp_invoice { return $fp->item('invoices', $_[0]); }

# --- Setup -----------------------------------------------------------------

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' } ],
		invoices  => [ { id => 501, number => '2026-0501', customer_id => 1, amount_incl_vat => '590.00' } ]
	});
sql("SELECT * FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-BLOOM', 'manual', 'card')");
my $invoice = sql("SELECT id FROM freshpay.invoices WHERE freshportal_id = 501");
like($invoice, qr/^\d+$/, 'setup: the invoice is synced');

# --- Registration through a 500, a 422 and a lost answer ---------------------

# Registration POSTs fail three ways, once each, in this order; the third
# is stored by FreshPortal before the connection drops.
$fp->faults([
	{ action => 'status', status => 500, body => '{"message":"Server Error"}',
	  method => 'POST', path_prefix => '/v1/invoices/', times => 1 },
	{ action => 'status', status => 422,
	  body => '{"message":"The given data was invalid.","errors":{"invoice":["The invoice is locked for booking."]}}',
	  method => 'POST', path_prefix => '/v1/invoices/', times => 1 },
	{ action => 'close_after', method => 'POST', path_prefix => '/v1/invoices/', times => 1 },
]);

my ($payment, $status, $transaction) = split /\|/, sql("SELECT id || '|' || status || '|'"
	  . " || coalesce(paytrace_transaction_id::text, '') FROM freshpay_capture($invoice)");
is($status, 'captured', 'the sale is captured');
$payment //= 0;
$transaction //= '';

my ($registered, $attempts, $errors) =
  watch_jobs($payment, 'register_payment', sub { defined $_[0]{freshportal_payment_id} });
ok($registered, 'in the end the payment is registered (freshportal_payment_id set)');
cmp_ok($attempts, '>=', 2, "the register job's attempts grew while FreshPortal failed ($attempts seen)");
ok(scalar(grep { /500/ } @$errors), 'last_error recorded the HTTP 500') or diag(explain($errors));
ok(scalar(grep { /422|locked for booking/ } @$errors), 'last_error recorded the 422') or diag(explain($errors));

my @registrations = grep { ($_->{provider_transaction_id} // '') eq $transaction } @{ $fp->state->{payments} };
is(scalar @registrations, 1, 'FreshPortal holds exactly ONE registration for the transaction');
is($registrations[0]{status} // '', 'registered', 'it is registered');
is(sql("SELECT freshportal_payment_id FROM freshpay.payments WHERE id = $payment"), "" . ($registrations[0]{id} // ''),
	'freshportal_payment_id points at it');

my @posts = fp_requests('POST', qr{^/v1/invoices/501/payments$});
is_deeply([ map { $_->{status} // 'dropped' } @posts ], [ 500, 422, 'dropped' ],
	'three POSTs: 500, 422, and the stored one whose answer was lost; no fourth');
is_deeply([ map { $_->{spent} ? 1 : 0 } @{ $fp->admin_get('/_standin/faults')->{rules} } ], [ 1, 1, 1 ],
	'each fault was met once');
my @lookups = grep { ((($_->{query}{provider_transaction_id} // [])->[0]) // '') eq $transaction }
  fp_requests('GET', qr{^/v1/payments$});
ok(@posts && scalar(grep { $_->{seq} < $posts[0]{seq} } @lookups),
	'freshpay looked the payment up (GET /v1/payments?provider_transaction_id=) before its first POST');
ok(@posts == 3 && scalar(grep { $_->{seq} > $posts[2]{seq} } @lookups),
	'and again after the lost answer, which found the stored registration');

ok( poll_until(
		"SELECT bool_and(state = 'done') AND max(attempts) >= 3 FROM freshpay.jobs"
		  . " WHERE payment_id = $payment AND kind = 'register_payment'",
		'the register job to be done'),
	'the register job ends done, after at least 3 attempts');
is(join('|', @{ fp_invoice(501) }{qw(amount_paid open_amount status)}), '590.00|0.00|paid',
	'FreshPortal shows the invoice paid once, not twice');
ok( poll_until(
		"SELECT amount_paid = 590.00 AND open_amount = 0 AND status = 'paid' FROM freshpay.invoices WHERE id = $invoice",
		'the local invoice to follow'),
	'the local invoice shows it paid');

# --- Reversal through a 500 --------------------------------------------------

$fp->faults([
	{ action => 'status', status => 500, body => '{"message":"Server Error"}',
	  method => 'POST', path_prefix => '/v1/payments/', times => 1 },
]);
my $fp_payment_id = $registrations[0]{id} // 0;
is(sql("SELECT status FROM freshpay_void($payment)"), 'voided', 'the sale is voided');
my ($void) = sql("SELECT id FROM freshpay.payments WHERE parent_id = $payment AND kind = 'void'") || 0;
ok( FreshpayTest::wait_for(sub { (fp_payment($fp_payment_id)->{status} // '') eq 'reversed' }, $POLL, 'the reversal'),
	'after a 500 the worker retries the reversal: FreshPortal shows the registration reversed');
my @reversals = fp_requests('POST', qr{^/v1/payments/\Q$fp_payment_id\E/reverse$});
is_deeply([ map { $_->{status} // 'dropped' } @reversals ], [ 500, 200 ], 'two reversal POSTs: the 500 and the one that worked');
is(fp_payment($fp_payment_id)->{reversal}{reason} // '', 'voided', 'reversed with reason voided');
is(fp_invoice(501)->{open_amount}, '590.00', 'FreshPortal shows the invoice open again');
ok( poll_until(
		"SELECT count(*) > 0 AND bool_and(state = 'done') AND max(attempts) >= 2 FROM freshpay.jobs"
		  . " WHERE kind = 'reverse_payment' AND payment_id IN ($payment, $void)",
		'the reverse job to be done'),
	'the reverse job ends done, after at least 2 attempts');
ok( poll_until("SELECT open_amount = 590.00 AND status = 'open' FROM freshpay.invoices WHERE id = $invoice",
		'the local invoice to follow'),
	'the local invoice is open again');
$fp->faults([]);

# --- Nothing secret in the queue or the history ------------------------------

ok(scalar @{ $fp->tokens }, 'FreshPortal issued tokens during this test');
is(sql("SELECT count(*) FROM freshpay.jobs j WHERE j::text ~ $FreshpayTest::TOKEN_PATTERN_SQL"), '0', 'no job row contains a token');
is(sql("SELECT count(*) FROM freshpay.payment_history WHERE message ~ $FreshpayTest::TOKEN_PATTERN_SQL"),
	'0', 'no history message contains a token');
cmp_ok(sql("SELECT count(*) FROM freshpay.payment_history WHERE payment_id = $payment"), '>=', 2,
	'the history of the sale has its events');

$node->stop;
done_testing();
