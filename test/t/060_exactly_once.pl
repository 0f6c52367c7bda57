# An invoice is charged once: one PayTrace token serves many charges,
# concurrent and repeated calls make one sale, a rolled-back caller keeps
# its durable record, and a lost answer is looked up at PayTrace instead of
# being sent again.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

# A short request timeout: a lost answer is looked up within seconds.
my $node = FreshpayTest::new_node('once', extension => 1, conf => "freshpay.request_timeout = '3s'");
FreshpayTest::add_administration($node);

my $json = JSON::PP->new;
my $SALE = '/v1/transactions/sale/by_customer';
my $POLL = 60;

# --- Helpers ---------------------------------------------------------------

sub sql { return $node->safe_psql('freshpay', shift); }

sub poll_until { return FreshpayTest::poll_true($node, $_[0], $POLL, $_[1]); }

# freshpay_capture with SQLSTATEs shown: ("id|status" or '', stderr).
sub capture
{
	my ($invoice) = @_;
	my ($out, $err) = FreshpayTest::psql_result($node, 'freshpay',
		"\\set VERBOSITY verbose\nSELECT id || '|' || status FROM freshpay_capture($invoice)");
	return ($out, $err);
}

# The same in a psql of its own, started now and collected by finish_psql.
sub start_capture
{
	my ($invoice) = @_;
	my $session = { out => '', err => '' };
	$session->{handle} = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('freshpay'),
		  '-c', '\set VERBOSITY verbose', '-c', "SELECT status FROM freshpay_capture($invoice)" ],
		'>', \$session->{out}, '2>', \$session->{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return $session;
}

sub finish_psql { my ($session) = @_; eval { $session->{handle}->finish }; return $session; }

sub pt_seq { return $pt->last_seq; }

sub body_of { return FreshpayTest::request_body($_[0]); }

sub authorization_of
{
	my ($request) = @_;
	my ($name) = grep { lc $_ eq 'authorization' } keys %{ $request->{headers} // {} };
	return defined $name ? $request->{headers}{$name} : '';
}

# PayTrace requests to $path since $seq, for one invoice number.
sub pt_calls { return $pt->requests_for(@_); }

# Sales PayTrace holds for an invoice number (declined ones are no charge).
sub pt_sales { return $pt->sales($_[0]); }

sub fp_registrations { return $fp->registrations($_[0]); }

sub wait_registered
{
	my ($payment_id, $what) = @_;
	ok( poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = " . ($payment_id // 0),
			"$what to be registered"),
		"$what: registered in FreshPortal by the worker");
}

sub statuses_of
{
	my ($invoice) = @_;
	return sql("SELECT string_agg(status, ',' ORDER BY id) FROM freshpay.payments WHERE invoice_id = $invoice");
}

# --- Setup -----------------------------------------------------------------

my @batch = map { 400 + $_ } 1 .. 50;
$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' } ],
		invoices  => [
			(map { +{ id => $_, number => "2026-0$_", customer_id => 1, amount_incl_vat => '590.00' } }
				  301 .. 306),
			(map { +{ id => $_, number => "T-$_", customer_id => 1, amount_incl_vat => sprintf('%d.50', $_ - 390) } }
				  @batch),
		]
	});
sql("SELECT * FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-BLOOM', 'manual', 'card')");
my %inv = map { split /\|/ } split /\n/, sql('SELECT freshportal_id, id FROM freshpay.invoices');
is(scalar keys %inv, 56, 'setup: 56 invoices synced');

# --- One token serves many charges ------------------------------------------

my ($out, $err) = FreshpayTest::psql_result($node, 'freshpay',
	join('', map { "SELECT status FROM freshpay_capture($inv{$_});\n" } @batch));
is(scalar(grep { $_ eq 'captured' } split /\n/, $out), 50, 'tokens: 50 invoices captured one after another')
  or diag($err);
my @token_requests = grep { $_->{path} eq '/oauth/token' } @{ $pt->requests };
is(scalar @token_requests, 1, 'tokens: PayTrace issued exactly one token for all 50 charges');

# PayTrace forgets the token freshpay holds: the next charge gets a new
# one and succeeds, and the rejected call (401 = not processed) is no sale.
$pt->config({ token_ttl => 1 });
my $issued_before = scalar @{ $pt->tokens };
$pt->expire_tokens;
my $seq = pt_seq();
($out, $err) = capture($inv{305});
like($out, qr/\|captured$/, 'expired token: the next capture still succeeds') or diag($err);
my @since = @{ $pt->requests(since => $seq) };
my ($new_token) = grep { $_->{path} eq '/oauth/token' && ($_->{status} // 0) == 200 } @since;
ok($new_token, 'expired token: freshpay asked PayTrace for a new token');
my @rejected = grep { $_->{path} eq $SALE && ($_->{status} // 0) == 401 } @since;
ok(!@rejected || $rejected[0]{seq} < ($new_token // { seq => 0 })->{seq},
	'expired token: a 401 invalid_token, if any, came before the new token');
my ($approved) = grep { $_->{path} eq $SALE && ($_->{status} // 0) == 200 } @since;
# (one issued after the expiry: Level 3's calls in the background may fetch
# tokens of their own meanwhile)
my @new_tokens = map { "Bearer $_" } @{ $pt->tokens }[ $issued_before .. $#{ $pt->tokens } ];
ok(scalar(grep { $_ eq authorization_of($approved // {}) } @new_tokens),
	'expired token: the sale went through with a new token');
is(scalar(pt_sales('2026-0305')), 1, 'expired token: exactly one sale for the invoice');

# Tokens now live one second: after two, the next charge needs another.
sleep 2;
$seq = pt_seq();
($out, $err) = capture($inv{306});
like($out, qr/\|captured$/, 'short-lived token: a capture 2 s later succeeds') or diag($err);
ok(scalar(grep { $_->{path} eq '/oauth/token' && ($_->{status} // 0) == 200 } @{ $pt->requests(since => $seq) }),
	'short-lived token: with a token requested anew');
is(scalar(pt_sales('2026-0306')), 1, 'short-lived token: exactly one sale for the invoice');
$pt->config({ token_ttl => 7200 });

# --- Eight sessions race for one invoice -------------------------------------

$pt->config({ approval_delay => 2 });
$seq = pt_seq();
my @sessions = map { start_capture($inv{301}) } 1 .. 8;
finish_psql($_) for @sessions;
$pt->config({ approval_delay => 0 });
my @winners = grep { $_->{out} =~ /^captured$/m } @sessions;
my @losers = grep { $_->{err} =~ /ERROR:\s+(?:55006|55000):[^\n]*already/ } @sessions;
is(scalar @winners, 1, 'race: exactly one of 8 concurrent sessions got a captured row');
is(scalar @losers, 7, 'race: the other 7 got "already in progress" (55006) or "already paid" (55000)')
  or diag(explain([ map { $_->{err} } @sessions ]));
is(scalar(pt_calls($SALE, '2026-0301', $seq)), 1, 'race: PayTrace received exactly one sale request');
is(scalar(pt_sales('2026-0301')), 1, 'race: PayTrace holds exactly one sale');
is(statuses_of($inv{301}), 'captured', 'race: freshpay recorded one payment, captured');
my $race_payment = sql("SELECT id FROM freshpay.payments WHERE invoice_id = $inv{301}");
is(sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE invoice_id = $inv{301}"),
	join(',', map { $_->{id} } pt_sales('2026-0301')), 'race: its transaction id is the sale\'s');
wait_registered($race_payment, 'race');
is(scalar(fp_registrations(301)), 1, 'race: FreshPortal has exactly one registration');

# --- A repeated call on a paid invoice is refused, nothing is sent ----------

$seq = pt_seq();
($out, $err) = capture($inv{301});
is($out, '', 'repeat: no row for a second capture of a paid invoice');
like($err, qr/ERROR:\s+55000:/, 'repeat: SQLSTATE 55000');
like($err, qr/already|paid/i, 'repeat: the message says it is paid already');
is(scalar @{ $pt->requests(since => $seq) }, 0, 'repeat: no request reached PayTrace');

# --- The record outlives the caller's transaction ----------------------------

($out, $err) = FreshpayTest::psql_result($node, 'freshpay',
	"BEGIN;\nSELECT status FROM freshpay_capture($inv{302});\nROLLBACK;");
is($out, 'captured', 'rollback: the caller saw its sale captured') or diag($err);
is(statuses_of($inv{302}), 'captured', 'rollback: after ROLLBACK the payment row is still there, captured');
is(scalar(pt_sales('2026-0302')), 1, 'rollback: and the charge is at PayTrace');
is(sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE invoice_id = $inv{302}"),
	join(',', map { $_->{id} } pt_sales('2026-0302')), 'rollback: with PayTrace\'s transaction id');
wait_registered(sql("SELECT id FROM freshpay.payments WHERE invoice_id = $inv{302}"), 'rollback');

# --- Lost answer: PayTrace made the sale, the answer never came --------------

$pt->faults([ { action => 'close_after', method => 'POST', path => $SALE, times => 1 } ]);
$seq = pt_seq();
($out, $err) = capture($inv{303});
my ($lost_id, $lost_status) = split /\|/, $out;
is($lost_status, 'unknown', 'lost answer: freshpay_capture returns status unknown');
like($err, qr/WARNING/, 'lost answer: with a WARNING');
unlike($err, qr/ERROR/, 'lost answer: not an error');
$pt->faults([]);

# Asking again while the outcome is unknown sends nothing.
my $seq_again = pt_seq();
my ($again_out, $again_err) = capture($inv{303});
like($again_err, qr/ERROR:\s+(?:55006|55000):/, 'lost answer: a second capture meanwhile is refused');
is(scalar(pt_calls($SALE, '2026-0303', $seq_again)), 0, 'lost answer: and sends no sale');

ok(poll_until("SELECT status = 'captured' FROM freshpay.payments WHERE id = " . ($lost_id // 0),
		'the lost sale to resolve'),
	'lost answer: the worker resolves the payment to captured');
my @lookups = grep {
	$_->{path} eq '/v1/transactions/export/by_date_range' && (body_of($_)->{including_text} // '') eq '2026-0303'
} @{ $pt->requests(since => $seq) };
ok(scalar @lookups, 'lost answer: by looking it up (transactions/export/by_date_range, including_text = the invoice number)');
is(scalar(pt_calls($SALE, '2026-0303', $seq)), 1, 'lost answer: the sale was never sent again');
is(scalar(pt_sales('2026-0303')), 1, 'lost answer: PayTrace holds exactly one sale');
is(sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE id = " . ($lost_id // 0)),
	join(',', map { $_->{id} } pt_sales('2026-0303')), 'lost answer: the found transaction id is recorded');
like(sql("SELECT string_agg(new_status, ',' ORDER BY at, id) FROM freshpay.payment_history WHERE payment_id = "
		  . ($lost_id // 0)),
	qr/unknown.*captured/, 'lost answer: the history shows unknown, then captured');
wait_registered($lost_id, 'lost answer');
is(scalar(fp_registrations(303)), 1, 'lost answer: registered in FreshPortal once');

# --- Lost request: dropped before PayTrace made the sale ---------------------
#
# Absence at PayTrace proves nothing (PayTrace may still process it): the
# attempt stays unknown and blocks the invoice until a person, having seen
# in PayTrace's Virtual Terminal that there is no such transaction, settles
# it with freshpay_resolve(id, 'not_processed').

$pt->faults([ { action => 'close_before', method => 'POST', path => $SALE, times => 1 } ]);
($out, $err) = capture($inv{304});
my ($dropped_id, $dropped_status) = split /\|/, $out;
is($dropped_status // '', 'unknown', 'dropped request: freshpay_capture returns unknown')
  or diag($err);
$pt->faults([]);
sleep 12;
is(statuses_of($inv{304}), 'unknown', 'dropped request: past request_timeout it is still unknown, not concluded');
($out, $err) = capture($inv{304});
like($err, qr/ERROR:\s+55006:/, 'dropped request: a capture meanwhile is refused');
is(scalar(pt_sales('2026-0304')), 0, 'dropped request: PayTrace holds no sale');
is(sql("SELECT status FROM freshpay_resolve($dropped_id, 'not_processed')"), 'failed',
	'dropped request: a person settles it as not processed');
($out, $err) = capture($inv{304});
like($out, qr/\|captured$/, 'dropped request: a later capture succeeds') or diag($err);
is(scalar(pt_sales('2026-0304')), 1, 'dropped request: exactly one sale in the end');
is(statuses_of($inv{304}), 'failed,captured', 'dropped request: one failed attempt, one captured payment');
wait_registered(sql("SELECT id FROM freshpay.payments WHERE invoice_id = $inv{304} AND status = 'captured'"),
	'dropped request');
is(scalar(fp_registrations(304)), 1, 'dropped request: registered in FreshPortal once');

# --- In the end: one charge and one registration per invoice ---------------

ok( poll_until("SELECT count(*) = 0 FROM freshpay.payments WHERE status = 'captured' AND freshportal_payment_id IS NULL",
		'every captured payment to be registered'),
	'every captured payment of this test is registered in FreshPortal');
my (%sales, %registrations);
$sales{ $_->{invoice_id} }++ for grep { $_->{kind} eq 'SALE' && $_->{state} ne 'declined' } @{ $pt->state->{transactions} };
$registrations{ $_->{invoice_id} }++ for grep { $_->{status} eq 'registered' } @{ $fp->state->{payments} };
is(scalar(keys %sales), 56, 'PayTrace holds sales for all 56 invoices');
is_deeply([ grep { $sales{$_} > 1 } sort keys %sales ], [], 'no invoice was charged twice');
is(scalar(keys %registrations), 56, 'FreshPortal has registrations for all 56 invoices');
is_deeply([ grep { $registrations{$_} > 1 } sort keys %registrations ], [], 'no invoice was registered twice');
is(sql("SELECT count(*) FROM freshpay.payment_history WHERE message ~ $FreshpayTest::TOKEN_PATTERN_SQL"),
	'0', 'no history message contains a token');

$node->stop;
done_testing();
