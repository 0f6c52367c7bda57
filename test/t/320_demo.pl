# The demo (./demo; issue 11, part 4): the month of a flower wholesaler,
# played in short (test/demo-run --month --short) against a node of this
# test and its own stand-ins, as ./demo plays it against its throwaway
# cluster.  The report must show every flow of the month: collected on issue
# and on the due date (card and ACH), a statement, a payment request paid
# with the card stored and the next invoice charged by itself, a decline, a
# void, a partial refund, an ACH return, settlement batches reconciled and
# the exceptions; freshpay's own records must agree, and no secret may be
# printed.
use strict;
use warnings;

use Cwd ();
use File::Basename ();
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use FreshpayTest;

my $root = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../..');
my $fp   = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt   = FreshpayTest::start_standin('pt', args => ['--quiet']);
# The demo's cluster syncs every second: the worker does the month by itself.
my $node = FreshpayTest::new_node('demo', conf => "freshpay.sync_interval = '1s'");

sub sql { return $node->safe_psql('freshpay', shift); }

# Run a command of the checkout (in its top directory) with libpq's
# environment pointing at the node; returns (exit code, stdout, stderr).
sub run_demo
{
	my (@cmd) = @_;
	my ($out, $err) = ('', '');
	local $ENV{PGHOST}     = $node->host;
	local $ENV{PGPORT}     = $node->port;
	local $ENV{PGDATABASE} = 'freshpay';
	delete local $ENV{FRESHPAY_DEMO_SHORT};
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err,
		init => sub { chdir $root or die "cannot chdir to $root: $!" },
		IPC::Run::timeout(300));
	return ($? >> 8, $out, $err);
}

# --- The scripts say how they are used --------------------------------------------

my ($rc, $out, $err) = run_demo('bash', 'test/demo-run', '--help');
is($rc, 0, 'test/demo-run --help');
like($out, qr/--keep.*--month/s, 'it names --keep and --month');
($rc, $out, $err) = run_demo('python3', 'test/demo_seed.py', 'show', '--short');
is($rc, 0, 'test/demo_seed.py show --short prints the month without a server') or diag($err);
like($out, qr/Meadowbrook Wholesale Flowers: 40 customers/, 'the wholesaler and its 40 customers');

# --- The month ------------------------------------------------------------------------

my $started = time;
($rc, $out, $err) = run_demo('bash', 'test/demo-run', '--month', '--short',
	'--fp-url', $fp->url, '--pt-url', $pt->url);
my $seconds = time - $started;
note("the short month took " . sprintf('%.1f', $seconds) . ' s');
is($rc, 0, 'test/demo-run --month --short succeeds') or diag("stderr:\n$err\nstdout:\n$out");
note($out);
is($err, '', 'and prints nothing on stderr');

# The progress, stage by stage.
my @stages = $out =~ /^--- (\d+)\. /mg;
is_deeply(\@stages, [ 1 .. 14 ], 'the progress shows the 14 stages of the month in order');
like($out, qr/^--- 14\. The month is done/m, 'to the end');
(my $flat_out = $out) =~ s/\s+/ /g;
like($flat_out, qr/charged on issue within [\d.]+ s of reaching FreshPortal/, 'today\'s orders are charged as they are issued');

# The report.  Wrapped lines are joined: the checks read it as running text.
my ($report) = $out =~ /(freshpay demo report:.*)\z/s;
ok(defined $report, 'the report is printed after the month');
$report //= '';
(my $text = $report) =~ s/\s+/ /g;
my $money = qr/\$[\d,]+\.\d\d/;

like($text, qr/invoices \d+ invoices dated \d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d, and \d+ credit notes; billed $money/,
	'report: the month\'s invoices and what was billed');
like($text, qr/collected $money of \d+ invoices/, 'report: what was collected');
for my $route ('on issue (card)', 'on due date (card)', 'on due date (ACH)', 'statement (card)', 'payment request (card)')
{
	like($text, qr/\Q$route\E │ +\d+ │ $money │ +-?[\d.]+ │/, "report: collected by route, with days to cash: $route");
}

like($text, qr/collected on issue (\d+) invoices, $money: charged by the worker as they arrived/,
	'flows: collected on issue');
my ($by_card, $by_ach) = $text =~ /collected on due date \d+ invoices, $money \((\d+) by card, (\d+) by ACH debit\)/;
ok(($by_card // 0) > 0 && ($by_ach // 0) > 0, 'flows: collected on the due date, by card and by ACH debit')
  or diag($text);
my ($in_statement) = $text =~ /statement ST-BLOSSOM-\d{8}-\d+: $money for (\d+) invoices of Blossom Market Floral Dept, one card charge, registered in FreshPortal per invoice/;
cmp_ok($in_statement // 0, '>=', 2, 'flows: a statement, one charge for several invoices');
like($text,
	qr/payment request paid, card stored Juniper & Jade Weddings paid INV-\d+ \($money\) on PayTrace's page and stored the card: linked to vault profile HP\d+; their next invoice INV-\d+ \($money\) was charged by itself/,
	'flows: a payment request paid, the card stored, the next invoice charged with it');
like($text, qr/payment request paid Silver Bell Events paid INV-\d+/, 'flows: a payment request paid without storing the card');
like($text, qr/payment request waiting Willow Creek Weddings/, 'flows: a payment request not paid yet');
like($text, qr/decline Rosewood Florist INV-\d+ \($money\): 102 Your transaction was not approved\. EXPIRED CARD - Expired card/,
	'flows: a decline, with PayTrace\'s code and reason');
like($text, qr/void Wildflower Studio INV-\d+ \($money\) voided before settlement; its FreshPortal registration reversed/,
	'flows: a void');
like($text, qr/partial refund $money of $money on Harborview Hotel Group INV-\d+, settled in batch \d+; FreshPortal keeps $money registered/,
	'flows: a partial refund of a settled charge');
like($text, qr/ACH return Greenleaf Nursery INV-\d+ \($money\) returned by the bank \(RETURNED R01\): its registration reversed, the invoice open again/,
	'flows: an ACH return');
my ($batches, $transactions) = $text =~ /settlement batches (\d+) batches, (\d+) transactions; all reconciled with their invoices and customers/;
cmp_ok($batches // 0, '>=', 2, 'flows: settlement batches, every transaction reconciled');
like($text, qr/Level 3 [1-9]\d* card charges carried their invoice lines/, 'flows: Level 3 line items sent');
my ($exceptions) = $text =~ /exceptions (\d+) to look at, listed below/;
cmp_ok($exceptions // 0, '>=', 3, 'flows: the exceptions are counted');

# The batches, each reconciled in full.
my @batch_rows = $report =~ /^ +(\d+) │ \d{4}-\d\d-\d\d │ +(\d+) │ .*│ (\d+) of (\d+) +│/mg;
my @batches;
while (my ($batch, $count, $ok, $all) = splice(@batch_rows, 0, 4)) { push @batches, [ $batch, $count, $ok, $all ]; }
is(scalar @batches, $batches // -1, 'batches: one line per batch');
ok((@batches && !grep { $_->[2] != $_->[3] || $_->[3] != $_->[1] } @batches),
	'batches: every transaction of every batch reconciled') or diag(explain(\@batches));

# The exceptions, each with its reason.
like($report, qr/^  failed_collection · INV-\d+ · Rosewood Florist\n +sale of [\d.]+ failed: .*EXPIRED CARD/m,
	'exceptions: the decline, with its reason');
like($report, qr/^  ach_returned · INV-\d+ · Greenleaf Nursery\n +ACH debit of [\d.]+ for invoice INV-\d+ came back \(RETURNED, reason R01\)/m,
	'exceptions: the ACH return, with its reason');
like($report, qr/^  card_expiring · INV-\d+ · Rosewood Florist\n/m, 'exceptions: the expired card');
like($report, qr/^  card_expiring · INV-\d+ · Daisy Chain Florist\n +the card of customer Daisy Chain Florist.*expires at the end of/m,
	'exceptions: a card that expires before its customer\'s next invoice is due');

# --- freshpay's own records agree ----------------------------------------------------

is(sql(q{SELECT count(*) FROM freshpay.payments WHERE status IN ('pending', 'unknown')}), '0',
	'records: no outcome left pending or unknown');
is(sql(q{SELECT count(*) FROM freshpay.jobs WHERE state <> 'done'}), '0', 'records: every job done, none dead');
is(sql(q{SELECT count(*) FROM freshpay.payments WHERE kind IN ('sale', 'ach_sale') AND status = 'captured'
	AND invoice_id IS NOT NULL AND freshportal_payment_id IS NULL}), '0',
	'records: every captured charge is registered in FreshPortal');
is(sql(q{SELECT count(*) FROM freshpay.invoice_status WHERE NOT freshportal_agrees}), '0',
	'records: freshpay and FreshPortal agree on every invoice');
is(sql(q{SELECT count(*) FROM freshpay.reconciliation WHERE batch_number IS NOT NULL AND match NOT IN ('matched', 'statement')}), '0',
	'records: every settled transaction reconciled');
is(sql(q{SELECT string_agg(DISTINCT status, ',' ORDER BY status) FROM freshpay.payment_requests}), 'onboarded,paid,sent',
	'records: payment requests onboarded, paid and sent');
is(sql(q{SELECT count(*) FROM freshpay.payments p JOIN freshpay.customers c ON c.id = p.customer_id
	WHERE c.code = 'BLOSSOM' AND p.invoice_id IS NULL AND p.status = 'captured'}), '1', 'records: one statement charge');
is(sql(q{SELECT string_agg(p.kind || ':' || p.status, ',' ORDER BY p.id) FROM freshpay.payments p
	JOIN freshpay.customers c ON c.id = p.customer_id WHERE c.code = 'ROSEWOOD'}), 'sale:failed',
	'records: the expired card declined once, not tried again');

# PayTrace charged no invoice twice (a statement is charged under its own number).
my %sales;
$sales{ $_->{invoice_id} }++
  for grep { ($_->{kind} eq 'SALE' || $_->{kind} eq 'AUTHORIZATION') && $_->{state} ne 'declined' } @{ $pt->state->{transactions} };
is_deeply([ grep { $sales{$_} > 1 } sort keys %sales ], [], 'PayTrace: no invoice charged twice');
cmp_ok(scalar(keys %sales), '>=', 20, 'PayTrace: ' . scalar(keys %sales) . ' invoices and statements charged by card');

# --- Nothing secret in the output ------------------------------------------------------

for my $secret ($FreshpayTest::FP_API_KEY, $FreshpayTest::PT_PASSWORD, 'fptok_', 'pttok')
{
	ok(index($out . $err, $secret) < 0, "the output contains no \"$secret\"");
}
like($flat_out, qr/env:FRESHPAY_TEST_SECRET and env:FRESHPAY_TEST_PT_PASSWORD/, 'it shows the secrets\' references only');

cmp_ok($seconds, '<', 240, 'the short month takes less than 4 minutes');

$node->stop;
done_testing();
