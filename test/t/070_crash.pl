# A crash at any instant of a charge ends with one charge and a consistent
# record: the background worker, which holds the PayTrace request, is killed
# with SIGKILL before the request leaves, while PayTrace is answering, and
# after the answer arrived but before it was recorded.  The postmaster
# restarts, and the new worker resolves the attempt against PayTrace.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

# PostgreSQL::Test::Cluster turns restart_after_crash off; these tests need
# the postmaster to come back.  A short request timeout lets an attempt that
# never reached PayTrace be resolved within seconds.
my $node = FreshpayTest::new_node('crash', extension => 1,
	conf => "restart_after_crash = on\nfreshpay.request_timeout = '3s'");
FreshpayTest::add_administration($node);

my $json = JSON::PP->new;
my $SALE = '/v1/transactions/sale/by_customer';

# --- Helpers ---------------------------------------------------------------

sub sql { return $node->safe_psql('freshpay', shift); }

# Polls survive the restart: a failed connection counts as "not yet".
sub poll_until { return FreshpayTest::poll_true($node, $_[0], $PostgreSQL::Test::Utils::timeout_default, $_[1]); }


# freshpay_capture in a psql of its own; the crash will cut it off.
sub start_capture { return FreshpayTest::start_psql($node, "SELECT status FROM freshpay_capture($_[0])"); }

sub finish_psql
{
	my ($session) = @_;
	eval { $session->{handle}->finish; 1 } or $session->{handle}->kill_kill;
	return $session;
}

sub pt_seq { return $pt->last_seq; }

sub body_of { return FreshpayTest::request_body($_[0]); }

# PayTrace requests since $seq to $path carrying this invoice number (in
# invoice_id, or in including_text for lookups).
sub pt_calls
{
	my ($path, $number, $since) = @_;
	return grep {
		my $body = body_of($_);
		$_->{path} eq $path && (($body->{invoice_id} // $body->{including_text} // '') eq $number)
	} @{ $pt->requests(since => $since // 0) };
}

sub pt_sales
{
	my ($number) = @_;
	return grep { $_->{invoice_id} eq $number && $_->{kind} eq 'SALE' } @{ $pt->state->{transactions} };
}

sub attempt_of
{
	my ($invoice) = @_;
	return split /\|/, sql("SELECT id || '|' || status FROM freshpay.payments WHERE invoice_id = $invoice ORDER BY id LIMIT 1");
}

# After a case: one captured payment carrying PayTrace's id, a history, and
# one registration in FreshPortal.
sub consistent
{
	my ($case, $fp_id, $invoice) = @_;
	my @sales = pt_sales("2026-0$fp_id");
	is(scalar @sales, 1, "$case: PayTrace holds exactly one sale for the invoice");
	is(sql("SELECT count(*) FROM freshpay.payments WHERE invoice_id = $invoice AND status = 'captured'"),
		'1', "$case: exactly one captured payment for the invoice");
	is(sql("SELECT count(*) FROM freshpay.payments WHERE invoice_id = $invoice AND status IN ('pending', 'unknown')"),
		'0', "$case: no attempt left pending or unknown");
	my $captured = sql("SELECT id FROM freshpay.payments WHERE invoice_id = $invoice AND status = 'captured'") || 0;
	is(sql("SELECT paytrace_transaction_id FROM freshpay.payments WHERE id = $captured"),
		join(',', map { $_->{id} } @sales), "$case: its paytrace_transaction_id is PayTrace's");
	cmp_ok(sql("SELECT count(*) FROM freshpay.payment_history WHERE payment_id = $captured"), '>=', 2,
		"$case: its history records the attempt and its outcome");
	ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $captured",
			"$case registration"),
		"$case: the worker registers it in FreshPortal");
	is(scalar(grep { $_->{invoice_id} == $fp_id && $_->{status} eq 'registered' } @{ $fp->state->{payments} }),
		1, "$case: FreshPortal has exactly one registration");
}

# --- Setup -----------------------------------------------------------------

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' } ],
		invoices  => [ map { +{ id => $_, number => "2026-0$_", customer_id => 1, amount_incl_vat => '590.00' } }
			  701 .. 703 ]
	});
sql("SELECT * FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-BLOOM', 'manual', 'card')");
my %inv = map { split /\|/ } split /\n/, sql('SELECT freshportal_id, id FROM freshpay.invoices');
is(scalar keys %inv, 3, 'setup: 3 invoices synced');

# --- (a) Killed before the sale left: nothing is charged, the retry is -----

FreshpayTest::set_pause($node, 'before_send');
my $offset = -s $node->logfile;
my $seq = pt_seq();
my $caller = start_capture($inv{701});
ok(FreshpayTest::wait_for_pause($node, 'before_send', $offset), '(a) the worker pauses before sending the sale');
my ($attempt, $status) = attempt_of($inv{701});
is($status, 'pending', '(a) the attempt is already recorded, pending');
is(scalar(pt_calls($SALE, '2026-0701', $seq)), 0, '(a) PayTrace has not seen the sale');
FreshpayTest::kill_worker($node, '(a)');
finish_psql($caller);    # cut off by the crash restart; its outcome is not the point
FreshpayTest::set_pause($node, '');
# The new worker cannot know whether the sale left before the crash, and
# absence at PayTrace proves nothing: the attempt is unknown until a person,
# having seen no transaction in PayTrace's Virtual Terminal, settles it.
ok(poll_until("SELECT status = 'unknown' FROM freshpay.payments WHERE id = " . ($attempt // 0), '(a) lookup'),
	'(a) after the restart the attempt is looked up at PayTrace and is unknown');
ok(FreshpayTest::wait_for(sub {
			scalar grep { $_->{path} eq '/v1/transactions/export/by_date_range'
				  && (body_of($_)->{including_text} // '') eq '2026-0701' } @{ $pt->requests(since => $seq) } },
		30, '(a) the lookup'),
	'(a) the new worker looked it up at PayTrace (export by invoice number)');
is(scalar(pt_sales('2026-0701')), 0, '(a) nothing was charged');
is(scalar(pt_calls($SALE, '2026-0701', $seq)), 0, '(a) the sale was not sent after the restart either');
my ($out, $err) = FreshpayTest::psql_result($node, 'freshpay', "SELECT status FROM freshpay_capture($inv{701})");
like($err, qr/the outcome of payment \d+ of invoice 2026-0701 is unknown/, '(a) capturing again is refused while unknown');
is(sql("SELECT status FROM freshpay_resolve(" . ($attempt // 0) . ", 'not_processed')"), 'failed',
	'(a) a person settles it as not processed');
($out, $err) = FreshpayTest::psql_result($node, 'freshpay', "SELECT status FROM freshpay_capture($inv{701})");
is($out, 'captured', '(a) capturing again succeeds') or diag($err);
consistent('(a)', 701, $inv{701});

# --- (b) Killed while PayTrace is answering: found by lookup ----------------

# PayTrace records the sale at once and answers 8 s later.
$pt->config({ approval_delay => 8 });
$seq = pt_seq();
$caller = start_capture($inv{702});
ok(FreshpayTest::wait_for(sub { scalar(pt_calls($SALE, '2026-0702', $seq)) }, 60, 'the sale request'),
	'(b) the sale request reached PayTrace');
($attempt, $status) = attempt_of($inv{702});
like($status // '', qr/^(?:pending|unknown)$/, '(b) its outcome is not recorded yet');
FreshpayTest::kill_worker($node, '(b)');
$pt->config({ approval_delay => 0 });
finish_psql($caller);
ok(poll_until("SELECT status = 'captured' FROM freshpay.payments WHERE id = " . ($attempt // 0), '(b) resolution'),
	'(b) after the restart the attempt is resolved: captured');
ok(scalar(pt_calls('/v1/transactions/export/by_date_range', '2026-0702', $seq)),
	'(b) by looking the invoice number up at PayTrace');
is(scalar(pt_calls($SALE, '2026-0702', $seq)), 1, '(b) the sale was never sent again');
consistent('(b)', 702, $inv{702});

# --- (c) Killed after the answer arrived, before it was recorded ------------

FreshpayTest::set_pause($node, 'after_answer');
$offset = -s $node->logfile;
$seq = pt_seq();
$caller = start_capture($inv{703});
ok(FreshpayTest::wait_for_pause($node, 'after_answer', $offset), '(c) the worker pauses with the answer in hand');
is(scalar(pt_sales('2026-0703')), 1, '(c) PayTrace has made the sale');
($attempt, $status) = attempt_of($inv{703});
like($status // '', qr/^(?:pending|unknown)$/, '(c) freshpay has not recorded the answer');
FreshpayTest::kill_worker($node, '(c)');
finish_psql($caller);
FreshpayTest::set_pause($node, '');
ok(poll_until("SELECT status = 'captured' FROM freshpay.payments WHERE id = " . ($attempt // 0), '(c) resolution'),
	'(c) after the restart the attempt is resolved: captured');
is(scalar(pt_calls($SALE, '2026-0703', $seq)), 1, '(c) the sale was never sent again');
consistent('(c)', 703, $inv{703});

is(sql("SELECT count(*) FROM freshpay.payment_history WHERE message ~ $FreshpayTest::TOKEN_PATTERN_SQL"),
	'0', 'no history message contains a token');

$node->stop;
done_testing();
