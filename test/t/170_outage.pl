# A 3-minute FreshPortal outage and a 3-minute PayTrace export outage at
# once: write-back and lookups keep retrying (backoff capped by
# freshpay.max_retry_delay), are an alert past freshpay.max_attempts and
# never die; once both APIs are back everything is registered and resolved.
#
# FRESHPAY_OUTAGE_SECONDS shortens the outage (default 180).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

use FreshpayTest;

my $OUTAGE = $ENV{FRESHPAY_OUTAGE_SECONDS} // 180;
# Its own stand-ins, as every test file has (they stop when it ends).
my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);

my $node = FreshpayTest::new_node('outage', extension => 1,
	conf => "freshpay.request_timeout = '3s'\nfreshpay.max_attempts = 3\nfreshpay.max_retry_delay = '10s'");
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url);
# The fault schedule below counts PayTrace's exports; Level 3's own export of
# each card sale (260 tests it) would take one of them.
$node->safe_psql('freshpay', "UPDATE freshpay.administrations SET level3_enabled = false WHERE name = 'main'");

my $SALE = '/v1/transactions/sale/by_customer';

sub sql { return $node->safe_psql('freshpay', shift); }
sub poll_until { return FreshpayTest::poll_true($node, $_[0], $_[2] // 90, $_[1]); }

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' } ],
		invoices  => [ map { +{ id => $_, number => "2026-$_", customer_id => 1, invoice_date => '2026-11-02',
								amount_incl_vat => '250.00' } } 801 .. 802 ]
	});
sql("SELECT * FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-BLOOM', 'manual', 'card')");
my %inv = map { split /\|/ } split /\n/, sql('SELECT freshportal_id, id FROM freshpay.invoices');

# FreshPortal refuses every registration; a sale is captured meanwhile.
$fp->faults([ { action => 'status', status => 503, method => 'POST', path_prefix => '/v1/invoices/', times => -1 } ]);
my $started = time;
is(sql("SELECT status FROM freshpay_capture($inv{801})"), 'captured', 'outage: a sale is captured while FreshPortal is down');

# PayTrace makes the next sale but its answer is lost, and from then on its
# exports fail (the one export let through is the lookup before that sale).
$pt->faults([ { action => 'close_after', method => 'POST', path => $SALE, times => 1 },
			  { action => 'status', status => 503, method => 'POST', path_prefix => '/v1/transactions/export/',
				skip => 1, times => -1 } ]);
my ($out, $err) = FreshpayTest::psql_result($node, 'freshpay', "SELECT status FROM freshpay_capture($inv{802})");
is($out, 'unknown', 'outage: the next sale\'s answer is lost (unknown)') or diag($err);

my $payment_801 = sql("SELECT id FROM freshpay.payments WHERE invoice_id = $inv{801}");
my $payment_802 = sql("SELECT id FROM freshpay.payments WHERE invoice_id = $inv{802}");
ok(poll_until("SELECT count(*) = 2 FROM freshpay.exceptions WHERE kind = 'failing_job'"
		  . " AND payment_id IN ($payment_801, $payment_802)", 'both jobs to fail past max_attempts', $OUTAGE),
	'outage: past freshpay.max_attempts the write-back and the lookup are an alert in freshpay.exceptions');

my $left = $OUTAGE - (time - $started);
note(sprintf('outage: %.0f s more of it', $left));
sleep $left if $left > 0;
is(sql("SELECT count(*) FROM freshpay.jobs WHERE state = 'dead'"), '0', "outage: after $OUTAGE s no job is dead");
cmp_ok(sql("SELECT max(attempts) FROM freshpay.jobs WHERE payment_id IN ($payment_801, $payment_802)"), '>', 3,
	'outage: the jobs kept retrying past max_attempts');
is(sql("SELECT string_agg(status, ',' ORDER BY id) FROM freshpay.payments WHERE id IN ($payment_801, $payment_802)"),
	'captured,unknown', 'outage: the sale is captured, the lost one still unknown');

# Both APIs come back.
$fp->faults([]);
$pt->faults([]);
my $back = time;
ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $payment_801",
		'the write-back after the outage', 60),
	'recovery: the sale is registered in FreshPortal');
ok(poll_until("SELECT status = 'captured' AND freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $payment_802",
		'the lookup after the outage', 60),
	'recovery: the lost sale is found, captured and registered');
note(sprintf('recovery took %.1f s', time - $back));
cmp_ok(time - $back, '<', 40, 'recovery: within seconds of the APIs coming back (backoff capped at 10 s)');
is(scalar($fp->registrations(801)), 1, 'recovery: invoice 801 registered once');
is(scalar($fp->registrations(802)), 1, 'recovery: invoice 802 registered once');
is(scalar($pt->sales('2026-802')), 1, 'recovery: invoice 802 charged once');
is(sql("SELECT count(*) FROM freshpay.jobs WHERE state IN ('dead') OR (state = 'queued' AND payment_id IS NOT NULL)"), '0',
	'recovery: nothing dead, nothing left queued');
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE kind IN ('failing_job', 'dead_job', 'unknown_outcome')"), '0',
	'recovery: the alerts are gone');

$node->stop;
done_testing();
