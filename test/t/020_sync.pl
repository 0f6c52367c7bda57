# freshpay_sync(): FreshPortal customers and invoices land in the tables
# exactly as FreshPortal has them, incrementally, through paging, empty
# answers, token expiry and server errors.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
$fp->reset;

my $node = FreshpayTest::new_node('sync', extension => 1);
FreshpayTest::add_administration($node);

sub sql { return $node->safe_psql('freshpay', shift); }

sub sync_counts
{
	my ($administration, $settings) = @_;
	$settings //= '';
	return sql("$settings SELECT stream, fetched, inserted, updated"
		  . " FROM freshpay_sync('$administration')"
		  . " WHERE stream IN ('customers', 'invoices') ORDER BY stream");
}

# The stand-in's objects as raw JSON, and the rows' raw payloads, by id.
sub standin_objects
{
	my ($kind) = @_;
	return { map { $_->{id} => $_ } @{ $fp->state->{$kind} } };
}

sub stored_raw
{
	my ($table, $administration) = @_;
	$administration //= 'main';
	my %raw;
	for my $line (split /\n/,
		sql("SELECT freshportal_id, raw FROM freshpay.$table WHERE administration = '$administration'"))
	{
		my ($id, $json) = split /\|/, $line, 2;
		$raw{$id} = decode_json($json);
	}
	return \%raw;
}

# --- Full load -------------------------------------------------------------

$fp->seed(
	{
		customers => [
			{ id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', email => 'ap@bloom.example',
			  currency => 'USD', payment_term_days => 14, blocked => JSON::PP::false },
			{ id => 2, code => 'PETAL', name => 'Petal Pushers Inc.', email => undef,
			  currency => 'USD', payment_term_days => 30, blocked => JSON::PP::false },
			{ id => 3, code => 'STEM', name => 'Stem & Vine Wholesale', email => 'billing@stem.example',
			  currency => 'USD', payment_term_days => 7, blocked => JSON::PP::true },
			{ id => 4, code => 'ROSA', name => 'Rosa Ecuador Imports', email => 'cxp@rosa.example',
			  currency => 'EUR', payment_term_days => 30, blocked => JSON::PP::false },
		],
		invoices => [
			{ id => 101, number => '2026-0101', type => 'invoice', customer_id => 1,
			  invoice_date => '2026-11-02', due_date => '2026-11-16', currency => 'USD',
			  amount_excl_vat => '1000.00', vat_amount => '90.00', amount_incl_vat => '1090.00',
			  amount_paid => '0.00', open_amount => '1090.00', status => 'open',
			  lines => [ { description => 'Rosa Pink Mondial 60cm', quantity => 2000,
						   unit_price => '0.50', vat_rate => '9.00', amount_excl_vat => '1000.00',
						   product_id => 501 } ] },
			{ id => 102, number => '2026-0102', type => 'invoice', customer_id => 1,
			  invoice_date => '2026-11-03', due_date => '2026-11-17', currency => 'USD',
			  amount_excl_vat => '200.00', vat_amount => '18.00', amount_incl_vat => '218.00',
			  amount_paid => '100.00', open_amount => '118.00', status => 'partially_paid' },
			{ id => 103, number => '2026-0103', type => 'credit_note', customer_id => 1,
			  invoice_date => '2026-11-04', due_date => '2026-11-18', currency => 'USD',
			  amount_excl_vat => '-50.00', vat_amount => '-4.50', amount_incl_vat => '-54.50',
			  amount_paid => '0.00', open_amount => '-54.50', status => 'open' },
			{ id => 104, number => '2026-0104', type => 'invoice', customer_id => 2,
			  invoice_date => '2026-11-05', due_date => undef, currency => 'USD',
			  amount_excl_vat => '75.10', vat_amount => '6.76', amount_incl_vat => '81.86',
			  amount_paid => '0.00', open_amount => '81.86', status => 'concept' },
			{ id => 105, number => '2026-0105', type => 'invoice', customer_id => 3,
			  invoice_date => '2026-10-01', due_date => '2026-10-08', currency => 'USD',
			  amount_excl_vat => '0.01', vat_amount => '0.00', amount_incl_vat => '0.01',
			  amount_paid => '0.01', open_amount => '0.00', status => 'paid' },
			{ id => 106, number => '2026-0106', type => 'invoice', customer_id => 4,
			  invoice_date => '2026-11-06', due_date => '2026-12-06', currency => 'EUR',
			  amount_excl_vat => '99999999.99', vat_amount => '0.00', amount_incl_vat => '99999999.99',
			  amount_paid => '0.00', open_amount => '99999999.99', status => 'open' },
		]
	});

is(sync_counts('main'), "customers|4|4|0\ninvoices|6|6|0", 'full load: every row fetched and inserted');

is_deeply(stored_raw('customers'), standin_objects('customers'),
	'every stored customer payload equals the stand-in object, field by field');
is_deeply(stored_raw('invoices'), standin_objects('invoices'),
	'every stored invoice payload equals the stand-in object, field by field');

# The typed columns say the same as the payload.
my $customers = standin_objects('customers');
my $expected = join "\n", map {
	my $c = $customers->{$_};
	join '|', $c->{id}, $c->{code}, $c->{name}, $c->{email} // '', $c->{currency},
	  $c->{payment_term_days}, ($c->{blocked} ? 't' : 'f'), $c->{mutation_date_time}
} sort { $a <=> $b } keys %$customers;
is( sql(q{SELECT freshportal_id, code, name, coalesce(email, ''), currency, payment_term_days, blocked,
				 to_char(mutation_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
			FROM freshpay.customers ORDER BY freshportal_id}),
	$expected, 'customer columns equal the stand-in, field by field');

my $invoices = standin_objects('invoices');
$expected = join "\n", map {
	my $i = $invoices->{$_};
	join '|', $i->{id}, $i->{number}, $i->{type}, $i->{customer_id}, $i->{invoice_date},
	  $i->{due_date} // '', $i->{currency},
	  @{$i}{qw(amount_excl_vat vat_amount amount_incl_vat amount_paid open_amount status)},
	  $i->{mutation_date_time}
} sort { $a <=> $b } keys %$invoices;
is( sql(q{SELECT i.freshportal_id, i.number, i.type, c.freshportal_id, i.invoice_date,
				 coalesce(i.due_date::text, ''), i.currency, i.amount_excl_vat, i.vat_amount,
				 i.amount_incl_vat, i.amount_paid, i.open_amount, i.status,
				 to_char(i.mutation_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
			FROM freshpay.invoices i JOIN freshpay.customers c ON c.id = i.customer_id
		   ORDER BY i.freshportal_id}),
	$expected, 'invoice columns (amounts exact, credit note negative) equal the stand-in, field by field');
is(sql("SELECT pg_typeof(amount_incl_vat) FROM freshpay.invoices LIMIT 1"), 'numeric', 'amounts are numeric');

# --- Incremental: 3 changed, 2 new ----------------------------------------

my $cursor_before = sql("SELECT cursor FROM freshpay.sync_state WHERE stream = 'invoices'");
$fp->admin_post('/_standin/invoices/101', { amount_paid => '1090.00', open_amount => '0.00', status => 'paid' });
$fp->admin_post('/_standin/invoices/102', { amount_paid => '218.00', open_amount => '0.00', status => 'paid' });
$fp->admin_post('/_standin/invoices/104', { status => 'open' });
$fp->seed(
	{
		invoices => [
			{ id => 107, number => '2026-0107', customer_id => 2, invoice_date => '2026-11-20',
			  currency => 'USD', amount_excl_vat => '300.00', vat_amount => '27.00',
			  amount_incl_vat => '327.00' },
			{ id => 108, number => '2026-0108', customer_id => 1, invoice_date => '2026-11-21',
			  currency => 'USD', amount_excl_vat => '10.00', vat_amount => '0.90',
			  amount_incl_vat => '10.90' },
		]
	});
$fp->clear_requests;
is( sync_counts('main', 'SET freshpay.sync_overlap = 0;'),
	"customers|0|0|0\ninvoices|5|2|3",
	'incremental sync (no overlap) fetches exactly the 3 changed and 2 new invoices');
is_deeply(stored_raw('invoices'), standin_objects('invoices'), 'after it, every invoice equals the stand-in');
my ($first_invoice_call) = grep { $_->{path} eq '/v1/invoices' } @{ $fp->requests };
my $asked = $first_invoice_call->{query}{mutation_datetime};
$asked = $asked->[0] if ref $asked;
is($asked, sql(qq{SELECT to_char('$cursor_before'::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')}),
	'the incremental pull asked for changes since the stored cursor');
isnt(sql("SELECT cursor FROM freshpay.sync_state WHERE stream = 'invoices'"), $cursor_before, 'the cursor moved');

# The default overlap re-reads recent rows without writing them twice.
is(sql("SELECT inserted, updated FROM freshpay_sync('main') WHERE stream = 'invoices'"), '0|0',
	'an overlapping re-read inserts and updates nothing');

# --- Empty answers ---------------------------------------------------------

my $cursors = sql('SELECT stream, cursor FROM freshpay.sync_state ORDER BY 1');
$fp->clear_requests;
is(sync_counts('main', 'SET freshpay.sync_overlap = 0;'), "customers|0|0|0\ninvoices|0|0|0",
	'nothing changed: nothing fetched');
my @statuses = map { $_->{status} } grep { $_->{path} =~ m{^/v1/(customers|invoices)$} } @{ $fp->requests };
is_deeply(\@statuses, [ 204, 204 ], 'FreshPortal answered both lists with 204 No Content');
is(sql('SELECT stream, cursor FROM freshpay.sync_state ORDER BY 1'), $cursors,
	'an empty answer leaves the cursors where they were');

# --- Many pages ------------------------------------------------------------

$fp->admin_post('/_standin/generate',
	{ customers => 20, invoices => 2100, start_customer_id => 1000, start_invoice_id => 10000 });
$fp->clear_requests;
is( sync_counts('main', 'SET freshpay.sync_overlap = 0; SET freshpay.sync_page_size = 100;'),
	"customers|20|20|0\ninvoices|2100|2100|0",
	'2,100 new invoices arrive across many pages');
my $invoice_pages = grep { $_->{path} eq '/v1/invoices' } @{ $fp->requests };
cmp_ok($invoice_pages, '>=', 21, "they took at least 21 requests of 100 ($invoice_pages)");
my $standin_invoices = standin_objects('invoices');
is(sql("SELECT count(*), count(DISTINCT freshportal_id) FROM freshpay.invoices"),
	scalar(keys %$standin_invoices) . '|' . scalar(keys %$standin_invoices),
	'as many invoices as the stand-in holds, each once');
is( sql("SELECT string_agg(freshportal_id || ':' || amount_incl_vat || ':' || status, ',' ORDER BY freshportal_id)"
		  . " FROM freshpay.invoices"),
	join(',', map { "$_:$standin_invoices->{$_}{amount_incl_vat}:$standin_invoices->{$_}{status}" }
		  sort { $a <=> $b } keys %$standin_invoices),
	'every amount and status matches the stand-in');
is(sql('SELECT count(*) FROM freshpay.invoices WHERE customer_id IS NULL'), '0', 'every invoice is linked to its customer');

# --- Token expiry mid-sync -------------------------------------------------

# A second administration on the same tenant pulls everything from scratch
# while tokens live one second and every invoice page takes a quarter.
FreshpayTest::add_administration($node, name => 'tokens');
$fp->config({ token_ttl => 1 });
$fp->faults([ { action => 'delay', seconds => 0.25, path => '/v1/invoices', times => -1 } ]);
$fp->clear_requests;
is( sync_counts('tokens', 'SET freshpay.sync_page_size = 400;'),
	sprintf("customers|24|24|0\ninvoices|%d|%d|0", scalar(keys %$standin_invoices), scalar(keys %$standin_invoices)),
	'a sync whose token expires on the way completes');
my @requests = @{ $fp->requests };
my $auths = grep { $_->{path} eq '/v1/auth' } @requests;
my $rejected = grep { $_->{path} ne '/v1/auth' && ($_->{status} // 0) == 401 } @requests;
cmp_ok($rejected, '>=', 1, "FreshPortal rejected an expired token mid-sync ($rejected times)");
is($auths, $rejected + 1, 'freshpay authenticated once at the start and once per rejection');
is_deeply(stored_raw('invoices', 'tokens'), standin_objects('invoices'), 'and stored every invoice exactly');
$fp->faults([]);
$fp->config({ token_ttl => 3600 });

# --- A server error mid-sync -----------------------------------------------

my @changed = (10005, 10010, 10015, 10020, 10025);
$fp->admin_post("/_standin/invoices/$_", { status => 'paid', amount_paid => '1.00' }) for @changed;
my $state_before = sql('SELECT stream, cursor, last_fetched FROM freshpay.sync_state WHERE administration = \'main\' ORDER BY 1');
my $rows_before = sql("SELECT md5(string_agg(raw::text, ',' ORDER BY id)) FROM freshpay.invoices WHERE administration = 'main'");
$fp->faults([ { action => 'status', status => 500, body => '{"message":"Server Error"}',
				path => '/v1/invoices', skip => 1, times => 1 } ]);
my ($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay',
	"SET freshpay.sync_overlap = 0; SET freshpay.sync_page_size = 2; SELECT * FROM freshpay_sync('main')");
isnt($rc, 0, 'a 500 on the second page fails the sync');
like($err, qr/FreshPortal answered GET \/v1\/invoices with HTTP 500 for administration "main"/, 'with a clear error');
is(sql('SELECT stream, cursor, last_fetched FROM freshpay.sync_state WHERE administration = \'main\' ORDER BY 1'),
	$state_before, 'the cursor stayed where it was');
is(sql("SELECT md5(string_agg(raw::text, ',' ORDER BY id)) FROM freshpay.invoices WHERE administration = 'main'"),
	$rows_before, 'and no invoice was written, not even the first page');

is( sync_counts('main', 'SET freshpay.sync_overlap = 0; SET freshpay.sync_page_size = 2;'),
	"customers|0|0|0\ninvoices|5|0|5", 'the re-run picks up exactly the 5 changes');
is(sql("SELECT count(*) FROM (SELECT freshportal_id FROM freshpay.invoices GROUP BY administration, freshportal_id HAVING count(*) > 1) d"),
	'0', 'no duplicates');
is_deeply(stored_raw('invoices'), standin_objects('invoices'), 'and every invoice equals the stand-in');

# --- Progress and readers --------------------------------------------------

is(sql('SELECT count(*) FROM freshpay.sync_progress'), '0', 'no sync is running now');
$node->safe_psql('freshpay', 'CREATE ROLE bi_tool LOGIN IN ROLE freshpay_reader');
is($node->safe_psql('freshpay', 'SELECT count(*) > 0 FROM freshpay.invoices', extra_params => [ '-U', 'bi_tool' ]),
	't', 'a freshpay_reader member reads invoices');
($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay',
	'SET ROLE bi_tool; SELECT freshportal_api_key FROM freshpay.administration_secrets');
like($err, qr/permission denied for table administration_secrets/, 'but no secret');

$node->stop;
done_testing();
