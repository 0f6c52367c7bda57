# Scheduling for real (issue 11): pg_cron, preloaded beside freshpay, runs
# freshpay_sync() as the README shows (freshpay.sync_interval = 0, a
# cron.schedule in the database pg_cron runs jobs in), and the rows arrive:
# the customers and invoices FreshPortal has, and an on_issue invoice
# collected by the worker once the scheduled sync brought it.
#
# pg_cron 1.4 (Debian bookworm's postgresql-15-cron) schedules by the
# minute: the test waits for up to two of its runs.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

# The PostgreSQL the tests run (a private copy in the sanitized pass) has
# its own library directory: pg_cron must be there.
my $libdir = `pg_config --pkglibdir`;
chomp $libdir;
plan skip_all => "pg_cron is not installed in $libdir (Debian package postgresql-15-cron)"
  unless -e "$libdir/pg_cron.so";

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

my $node = FreshpayTest::new_node('cron', extension => 1,
	conf => join("\n",
		"shared_preload_libraries = 'freshpay,pg_cron'",
		"cron.database_name = 'freshpay'",
		"cron.use_background_workers = on",
		"max_worker_processes = 16",
		"freshpay.sync_interval = 0"));
FreshpayTest::add_administration($node);

sub sql { return $node->safe_psql('freshpay', shift); }

$pt->customers([ { customer_id => 'C-CRON', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'CRON', name => 'Cron Cosmos', currency => 'USD' } ],
		invoices  => [ { id => 901, number => 'CR-901', customer_id => 1, currency => 'USD', amount_incl_vat => '64.00' } ]
	});

is(sql("SELECT current_setting('freshpay.sync_interval')"), '0', 'the worker does not sync by itself');
is(sql('SELECT count(*) FROM freshpay.invoices'), '0', 'nothing is synced yet');

sql('CREATE EXTENSION pg_cron');
my $job = sql(q{SELECT cron.schedule('freshpay-sync', '* * * * *', $$SELECT freshpay_sync()$$)});
like($job, qr/^\d+$/, 'cron.schedule takes the README\'s freshpay_sync() job');

ok( FreshpayTest::poll_true($node, "SELECT count(*) = 1 FROM freshpay.invoices WHERE number = 'CR-901'", 150,
		'the scheduled sync'),
	'pg_cron runs freshpay_sync(): the invoice arrives');
like(sql(q{SELECT string_agg(status, ',') FROM cron.job_run_details WHERE jobid = } . $job),
	qr/succeeded/, 'cron.job_run_details records the run as succeeded');
ok(sql('SELECT count(*) FROM freshpay.sync_state WHERE last_synced_at IS NOT NULL') > 0,
	'freshpay.sync_state records the pull');

# An on_issue customer's next invoice: collected once the next scheduled sync brings it.
sql(q{SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-CRON', 'on_issue', 'card')});
sql('UPDATE freshpay.administrations SET level3_enabled = false');
$fp->seed({ invoices => [ { id => 902, number => 'CR-902', customer_id => 1, currency => 'USD', amount_incl_vat => '36.00' } ] });
ok( FreshpayTest::poll_true($node,
		"SELECT count(*) = 1 FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id"
		  . " WHERE i.number = 'CR-902' AND p.status = 'captured' AND p.freshportal_payment_id IS NOT NULL", 150,
		'the collection'),
	'the next scheduled sync brings the on_issue invoice and the worker collects and registers it');
is(scalar($pt->sales('CR-902')), 1, 'PayTrace charged it once');

$node->stop;
done_testing();
