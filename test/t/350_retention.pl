# Retention (issue 11, operations): the worker drops payment history and
# finished jobs (done, dead) older than freshpay.history_retention days, when
# it starts and hourly after; it keeps newer ones, queued jobs of any age,
# and every payment.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $node = FreshpayTest::new_node('retention', extension => 1,
	conf => "freshpay.history_retention = 30\nfreshpay.worker_enabled = off");
FreshpayTest::add_administration($node, freshportal_url => 'http://127.0.0.1:9', paytrace_url => 'http://127.0.0.1:9');

sub sql { return $node->safe_psql('freshpay', shift); }

# An old payment with old and recent history; finished and queued jobs, old
# and recent (rows written directly: the worker is off).
my $payment = sql(q{INSERT INTO freshpay.payments (administration, kind, amount, status, invoice_number, requested_by, created_at)
	VALUES ('main', 'sale', 10.00, 'captured', 'RT-1', 'test', now() - interval '500 days') RETURNING id});
sql(qq{INSERT INTO freshpay.payment_history (payment_id, at, new_status, event, message) VALUES
	($payment, now() - interval '400 days', 'pending', 'recorded', 'old'),
	($payment, now() - interval '31 days', 'captured', 'answered', 'old'),
	($payment, now() - interval '29 days', 'captured', 'registered', 'recent')});
sql(qq{INSERT INTO freshpay.jobs (kind, payment_id, state, next_run_at, created_at, updated_at) VALUES
	('register_payment', $payment, 'done', now(), now() - interval '90 days', now() - interval '60 days'),
	('resolve_payment', $payment, 'dead', now(), now() - interval '90 days', now() - interval '31 days'),
	('reverse_payment', $payment, 'done', now(), now() - interval '10 days', now() - interval '10 days'),
	('resolve_payment', $payment, 'queued', now() + interval '1 year', now() - interval '90 days', now() - interval '90 days')});
is(sql("SELECT count(*) FROM freshpay.payment_history WHERE payment_id = $payment"), '3', 'setup: three history rows');
is(sql("SELECT count(*) FROM freshpay.jobs WHERE payment_id = $payment"), '4', 'setup: four jobs');

# The worker starts: its first pass prunes.
$node->append_conf('postgresql.conf', "freshpay.worker_enabled = on\n");
$node->reload;
ok( FreshpayTest::poll_true($node, "SELECT count(*) = 1 FROM freshpay.payment_history WHERE payment_id = $payment", 60,
		'the prune'),
	'history older than 30 days is dropped');
is(sql("SELECT string_agg(message, ',') FROM freshpay.payment_history WHERE payment_id = $payment"), 'recent',
	'the recent history row is kept');
is(sql("SELECT string_agg(kind || ':' || state, ',' ORDER BY id) FROM freshpay.jobs WHERE payment_id = $payment"),
	'reverse_payment:done,resolve_payment:queued', 'finished jobs older than 30 days are dropped; a recent one and a queued one stay');
is(sql("SELECT count(*) FROM freshpay.payments WHERE id = $payment"), '1', 'the payment is kept');

$node->stop;
done_testing();
