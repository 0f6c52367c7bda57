# Operations (issue 11): pg_dump of a freshpay database and pg_restore into
# a fresh cluster with the extension gives the same rows; the dump holds no
# secret value (the env: references survive); the restored cluster's worker
# resumes the work that was queued (a registration FreshPortal had refused)
# and collects anew, with ids after the restored ones.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

my $old = FreshpayTest::new_node('dumped', extension => 1);
FreshpayTest::add_administration($old);

sub sql_on { my ($node, $sql) = @_; return $node->safe_psql('freshpay', $sql); }

$pt->customers([ { customer_id => 'C-DUMP', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'DUMP', name => 'Dump Daffodils', currency => 'USD' } ],
		invoices  => [
			map { { id => $_, number => "DR-$_", customer_id => 1, currency => 'USD', amount_incl_vat => "$_.00" } }
			  (101 .. 104)
		]
	});
sql_on($old, 'SELECT count(*) FROM freshpay_sync()');
sql_on($old, q{SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-DUMP', 'manual', 'card')});
sql_on($old, 'UPDATE freshpay.administrations SET level3_enabled = false');
for my $id (101, 102)
{
	is(sql_on($old, "SELECT status FROM freshpay_capture((SELECT id FROM freshpay.invoices WHERE freshportal_id = $id))"),
		'captured', "setup: DR-$id captured");
}
ok( FreshpayTest::poll_true($old, 'SELECT count(*) = 2 FROM freshpay.payments WHERE freshportal_payment_id IS NOT NULL', 30,
		'registrations'),
	'setup: both registered in FreshPortal');

# FreshPortal refuses registrations: DR-103's stays queued in freshpay.jobs.
$fp->faults([ { action => 'status', status => 500, method => 'POST', path => '/v1/invoices/103/payments', times => -1 } ]);
is(sql_on($old, 'SELECT status FROM freshpay_capture((SELECT id FROM freshpay.invoices WHERE freshportal_id = 103))'),
	'captured', 'setup: DR-103 captured');
ok( FreshpayTest::poll_true($old,
		"SELECT count(*) = 1 FROM freshpay.jobs WHERE kind = 'register_payment' AND state = 'queued' AND attempts > 0", 30,
		'a failed registration'),
	'setup: its registration failed and is queued for a retry');

# The rows of every table of the extension, as text, in a fixed order; and
# customer_summary's.  (customer_figures and its marks are derived data, not
# dumped: the restored cluster computes them again.)
my @derived = qw(customer_figures customer_figures_stale);
my @tables = split /\n/, sql_on($old,
	q{SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	   WHERE n.nspname = 'freshpay' AND c.relkind = 'r' ORDER BY 1});
ok(scalar(grep { $_ eq 'payments' } @tables), 'the extension\'s tables are listed (' . scalar(@tables) . ')');
is(scalar(grep { my $t = $_; grep { $_ eq $t } @derived } @tables), scalar(@derived), 'the derived tables are among them');
@tables = grep { my $t = $_; !grep { $_ eq $t } @derived } @tables;
sub fingerprint
{
	my ($node) = @_;
	return join("\n", map {
		"$_: " . sql_on($node, "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM freshpay.$_ t")
	} @tables);
}
sub summary
{
	my ($node) = @_;
	return sql_on($node, q{SELECT string_agg(s::text, E'\n' ORDER BY s.customer_id) FROM freshpay.customer_summary s});
}

# The worker is stopped first, so that nothing changes between the
# fingerprint and the dump (the dump itself is one snapshot).
sql_on($old, 'ALTER SYSTEM SET freshpay.worker_enabled = off');
$old->reload;
ok(FreshpayTest::poll_true($old, "SELECT current_setting('freshpay.worker_enabled') = 'off'", 30, 'the reload'),
	'the old cluster\'s worker is turned off');
sleep 1;
my $before = fingerprint($old);
my $summary_before = summary($old);

my $dir = PostgreSQL::Test::Utils::tempdir();
command_ok([ 'pg_dump', '-Fc', '-f', "$dir/freshpay.dump", '-d', $old->connstr('freshpay') ], 'pg_dump -Fc of the database');
command_ok([ 'pg_dump', '-Fp', '-f', "$dir/freshpay.sql", '-d', $old->connstr('freshpay') ], 'pg_dump as SQL text');
my $text = slurp_file("$dir/freshpay.sql");
like($text, qr/\Q$FreshpayTest::FP_API_KEY_REF\E/, 'the dump holds the env: reference of the FreshPortal key');
unlike($text, qr/\Q$FreshpayTest::FP_API_KEY\E(?!\w)/, 'the dump holds no FreshPortal key');
unlike($text, qr/\Q$FreshpayTest::PT_PASSWORD\E(?!\w)/, 'the dump holds no PayTrace password');
like($text, qr/COPY freshpay\.payments /, 'the dump holds freshpay.payments\' rows');
unlike($text, qr/COPY freshpay\.customer_figures/, 'the dump holds no derived figures');
$old->stop;

# A fresh cluster with freshpay preloaded, an empty database, the dump
# restored; its worker is off until the rows are compared (it would work
# the queued job at once).
my $new = FreshpayTest::new_node('restored', extension => 0, conf => 'freshpay.worker_enabled = off');
command_ok([ 'pg_restore', '--exit-on-error', '-d', $new->connstr('freshpay'), "$dir/freshpay.dump" ],
	'pg_restore into a fresh cluster');
is(fingerprint($new), $before, 'every table of the extension has the same rows');
is(summary($new), $summary_before, 'customer_summary has the same rows (computed anew)');
$new->append_conf('postgresql.conf', "freshpay.worker_enabled = on\n");
$new->reload;
is(sql_on($new, q{SELECT freshportal_api_key FROM freshpay.administration_secrets WHERE administration = 'main'}),
	$FreshpayTest::FP_API_KEY_REF, 'the secret reference survives');

# The worker resumes: FreshPortal takes the registration now.
$fp->faults([]);
ok( FreshpayTest::poll_true($new, 'SELECT count(*) = 3 FROM freshpay.payments WHERE freshportal_payment_id IS NOT NULL', 60,
		'the queued registration'),
	'the restored worker runs the queued registration');
is(scalar(grep { ($_->{invoice_id} // 0) == 103 && $_->{status} eq 'registered' } @{ $fp->state->{payments} }), 1,
	'FreshPortal holds DR-103 registered once');

# The sync worker keeps every customer's figures again, and they are what
# is computed over all the rows.
ok( FreshpayTest::poll_true($new,
		'SELECT (SELECT count(*) FROM freshpay.customer_figures) = (SELECT count(*) FROM freshpay.customers)'
		  . ' AND NOT EXISTS (SELECT FROM freshpay.customer_figures_stale)', 30, 'the figures'),
	'the restored sync worker keeps every customer\'s figures');
is(sql_on($new, q{SELECT count(*) FROM freshpay.customer_figures f
				   JOIN freshpay._customer_figures(ARRAY(SELECT id FROM freshpay.customers)) l USING (customer_id)
				  WHERE (f.invoices, f.billed, f.open_amount, f.collected, f.unregistered, f.avg_days, f.p90_days,
						 f.declines, f.last_payment_at)
						IS DISTINCT FROM (l.invoices, l.billed, l.open_amount, l.collected, l.unregistered, l.avg_days,
										  l.p90_days, l.declines, l.last_payment_at)}),
	'0', 'the kept figures are those computed over all the rows');
my $max_before = sql_on($new, q{SELECT max(id) FROM freshpay.payments});
is(sql_on($new, 'SELECT status FROM freshpay_capture((SELECT id FROM freshpay.invoices WHERE freshportal_id = 104))'),
	'captured', 'a new capture in the restored cluster succeeds');
ok(sql_on($new, 'SELECT max(id) FROM freshpay.payments') > $max_before, 'its id comes after the restored ones');
is(scalar($pt->sales('DR-104')), 1, 'PayTrace charged DR-104 once');
is(scalar(grep { $_->{invoice_id} =~ /^DR-10[1-3]$/ && $_->{kind} eq 'SALE' } @{ $pt->state->{transactions} }), 3,
	'nothing restored was charged again');

$new->stop;
done_testing();
