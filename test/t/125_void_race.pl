# The PayTrace pull meets a void of freshpay's own while its answer is being
# recorded: PayTrace already shows the sale voided, freshpay's void row is
# still pending.  The pull must not take the void for one made outside
# freshpay (a second void row, a second reversal): the void in flight is the
# one, and its answer records it.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);

use FreshpayTest;

my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);

my $node = FreshpayTest::new_node('voidrace', extension => 1,
	conf => "freshpay.sync_interval = '5min'\nfreshpay.request_timeout = '3s'");
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url);

sub sql { return $node->safe_psql('freshpay', shift); }

$pt->customers([ { customer_id => 'C-RACE', method => 'card' } ]);
$fp->seed({ customers => [ { id => 1, code => 'RACE', name => 'Racing Stems', currency => 'USD' } ],
	invoices => [ { id => 51, number => 'VR-51', customer_id => 1, amount_incl_vat => '120.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-RACE', 'manual', 'card')");
sql("UPDATE freshpay.administrations SET level3_enabled = false");
my $sale = sql("SELECT id FROM freshpay_capture((SELECT id FROM freshpay.invoices WHERE freshportal_id = 51))");
ok(FreshpayTest::poll_true($node, "SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $sale", 30, 'registration'),
	'setup: a sale, captured and registered');

# The void is made at PayTrace; the worker holds its answer before recording it.
FreshpayTest::set_pause($node, 'after_answer');
my $offset = -s $node->logfile;
my $void = FreshpayTest::start_psql($node, "SELECT status FROM freshpay_void($sale)");
ok(FreshpayTest::wait_for_pause($node, 'after_answer', $offset),
	'the worker holds the void\'s answer');
is(scalar(grep { $_->{state} eq 'voided' } @{ $pt->state->{transactions} }), 1, 'PayTrace shows the sale voided');

# The pull runs meanwhile.
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql("SELECT count(*) FROM freshpay.payments WHERE parent_id = $sale AND kind = 'void'"), '1',
	'the pull records no second void: the one in flight is freshpay\'s');

FreshpayTest::set_pause($node, '');
$void->{handle}->finish;
is($void->{out} =~ s/\s+$//r, 'voided', 'the void\'s answer is recorded: voided');
ok(FreshpayTest::poll_true($node, "SELECT count(*) = 0 FROM freshpay.jobs WHERE state = 'queued' AND kind = 'reverse_payment'", 30, 'reversal'),
	'the reversal is done');
# requested_by is the role that called freshpay_void (the cluster's superuser,
# named after whoever runs the tests: freshpay_test under root, else the user).
my $me = sql("SELECT current_user");
is(sql("SELECT string_agg(kind || ':' || status || ':' || requested_by, ',' ORDER BY id) FROM freshpay.payments"),
	"sale:voided:$me,void:voided:$me", 'one sale, one void (freshpay\'s own)');
is(scalar(grep { $_->{status} eq 'reversed' } @{ $fp->state->{payments} }), 1, 'FreshPortal: the registration reversed once');
is(scalar(grep { $_->{path} =~ m{^/v1/payments/\d+/reverse$} } @{ $fp->requests }), 1, 'one reversal sent to FreshPortal');

# --- A void recorded while the sale's registration is in flight ---------------
#
# FreshPortal takes the registration but answers late: the void's reversal
# finds the sale not registered yet.  Whether the answer comes (within the
# request timeout, 3 s) or is lost (after it), the registration of the
# voided sale must end reversed, once.

sub late_registration
{
	my ($fp_id, $delay, $what) = @_;
	$fp->seed({ invoices => [ { id => $fp_id, number => "VR-$fp_id", customer_id => 1, amount_incl_vat => '80.00' } ] });
	sql("SELECT count(*) FROM freshpay_sync('main')");
	$fp->faults([ { action => 'delay_after', method => 'POST', path => "/v1/invoices/$fp_id/payments", seconds => $delay,
		times => 1, name => 'registration answered late' } ]);
	my $late = sql("SELECT id FROM freshpay_capture((SELECT id FROM freshpay.invoices WHERE freshportal_id = $fp_id))");
	ok(FreshpayTest::wait_for(sub { scalar(grep { ($_->{invoice_id} // 0) == $fp_id } @{ $fp->state->{payments} }) == 1 }, 30,
			'the registration at FreshPortal'),
		"$what: FreshPortal has taken the registration, its answer is held back");
	is(sql("SELECT freshportal_payment_id IS NULL FROM freshpay.payments WHERE id = $late"), 't',
		"$what: freshpay has not recorded it yet");
	is(sql("SELECT status FROM freshpay_void($late)"), 'voided', "$what: the sale is voided meanwhile");
	ok( FreshpayTest::wait_for(
			sub { my @r = grep { ($_->{invoice_id} // 0) == $fp_id } @{ $fp->state->{payments} }; @r == 1 && $r[0]{status} eq 'reversed' },
			30, 'the reversal'),
		"$what: FreshPortal's one registration of the voided sale is reversed");
	my ($reg) = grep { ($_->{invoice_id} // 0) == $fp_id } @{ $fp->state->{payments} };
	is(scalar(grep { $_->{path} eq '/v1/payments/' . ($reg->{id} // 0) . '/reverse' } @{ $fp->requests }), 1,
		"$what: by one reversal");
	is($fp->item('invoices', $fp_id)->{status} // '', 'open', "$what: FreshPortal shows the invoice open");
	ok(FreshpayTest::poll_true($node,
			"SELECT count(*) = 0 FROM freshpay.jobs WHERE state = 'queued' AND kind IN ('register_payment', 'reverse_payment')"
			  . " AND payment_id IN (SELECT id FROM freshpay.payments WHERE $late IN (id, parent_id))", 30, 'quiet'),
		"$what: the write-back is done");
	return;
}

late_registration(52, 2, 'answer late');
late_registration(53, 5, 'answer lost');

$node->stop;
done_testing();
