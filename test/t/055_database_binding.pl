# Money calls, syncs and worker wake-ups are bound to the database the worker
# serves (freshpay.database_name).  With freshpay installed in a second
# database too (contrib_regression, which the install script lets through),
# every one of them is refused there with a clear error, and nothing reaches
# PayTrace: the worker would otherwise take that database's invoice ids for
# its own and charge the wrong invoice.  Also: an amount too large for any
# invoice is refused with the whole number in the message.
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

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' } ],
		invoices  => [
			{ id => 301, number => '2026-0301', customer_id => 1, currency => 'USD',
			  invoice_date => '2026-11-02', amount_incl_vat => '590.00' }
		]
	});

# The worker serves database "freshpay".
my $node = FreshpayTest::new_node('binding', extension => 1);
FreshpayTest::add_administration($node);
$node->safe_psql('freshpay', "SELECT * FROM freshpay_sync('main')");
my $inv = $node->safe_psql('freshpay', "SELECT id FROM freshpay.invoices WHERE number = '2026-0301'");
$node->safe_psql('freshpay',
	"SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE code = 'BLOOM'), 'C-BLOOM')");

# A second installation, whose invoice of the same id is another one.
$node->safe_psql('postgres', 'CREATE DATABASE contrib_regression');
$node->safe_psql('contrib_regression', 'CREATE EXTENSION freshpay');
FreshpayTest::add_administration($node, database => 'contrib_regression');
$node->safe_psql('contrib_regression', qq{
	INSERT INTO freshpay.customers (id, administration, freshportal_id, code, name, currency, paytrace_customer_id)
	VALUES (1, 'main', 1, 'OTHER', 'Other Customer', 'USD', 'C-BLOOM');
	INSERT INTO freshpay.invoices (id, administration, freshportal_id, number, customer_id, freshportal_customer_id,
		invoice_date, currency, amount_excl_vat, vat_amount, amount_incl_vat, open_amount)
	VALUES ($inv, 'main', 999, 'OTHER-0001', 1, 1, '2026-11-02', 'USD', 10.00, 0, 10.00, 10.00);
});

sub payments_everywhere
{
	return join('/', map { $node->safe_psql($_, 'SELECT count(*) FROM freshpay.payments') }
		  qw(freshpay contrib_regression));
}

# $sql in contrib_regression is refused: SQLSTATE 55000, a message naming
# the database to use, a detail naming both; nothing reaches either
# stand-in, no payment is recorded anywhere.
sub refused_elsewhere
{
	my ($sql, $function) = @_;
	my ($pt_seq, $fp_seq) = ($pt->last_seq, $fp->last_seq);
	my $payments = payments_everywhere();
	my ($out, $err) = ('', '');
	my $rc = $node->psql(
		'contrib_regression', "\\set VERBOSITY verbose\n$sql",
		stdout        => \$out,
		stderr        => \$err,
		on_error_stop => 1);
	isnt($rc, 0, "$function in another database: refused");
	like($err, qr/ERROR:\s+55000:\s+\Q$function\E can only be called in database "freshpay"/,
		"$function in another database: SQLSTATE 55000, the message names the worker's database")
	  or diag($err);
	like($err, qr/DETAIL:.*"freshpay".*"contrib_regression"/,
		"$function in another database: the detail names both databases");
	like($err, qr/HINT:\s+Connect to database "freshpay"/, "$function in another database: the hint says where to go");
	is(scalar @{ $pt->requests(since => $pt_seq) }, 0, "$function in another database: nothing reached PayTrace");
	is(scalar @{ $fp->requests(since => $fp_seq) }, 0, "$function in another database: nothing reached FreshPortal");
	is(payments_everywhere(), $payments, "$function in another database: no payment recorded in either database");
	return;
}

refused_elsewhere("SELECT * FROM freshpay_capture($inv)",   'freshpay_capture');
refused_elsewhere("SELECT * FROM freshpay_authorize($inv)", 'freshpay_authorize');
refused_elsewhere("SELECT * FROM freshpay_reverse($inv)",   'freshpay_reverse');
refused_elsewhere('SELECT * FROM freshpay_void(1)',         'freshpay_void');
refused_elsewhere('SELECT * FROM freshpay_refund(1)',       'freshpay_refund');
refused_elsewhere("SELECT * FROM freshpay_sync('main')",    'freshpay_sync');
refused_elsewhere('SELECT * FROM freshpay_sync()',          'freshpay_sync');
refused_elsewhere('SELECT freshpay._wake_worker_at_commit()', 'freshpay._wake_worker_at_commit');
is(scalar $pt->sales('2026-0301'), 0, 'the worker\'s invoice of the same id was not charged');

# --- An amount beyond numeric(12,2): refused, the real number named ----------

my $huge = '123456789012345678901234567890123456789.00';
my $pt_seq = $pt->last_seq;
my ($out, $err) = ('', '');
my $rc = $node->psql(
	'freshpay', "\\set VERBOSITY verbose\nSELECT * FROM freshpay_capture($inv, $huge)",
	stdout        => \$out,
	stderr        => \$err,
	on_error_stop => 1);
isnt($rc, 0, 'a huge amount is refused');
like($err, qr/ERROR:\s+22003:\s+amount \Q$huge\E is out of range/,
	'a huge amount: SQLSTATE 22003, and the message names the whole amount') or diag($err);
is(scalar @{ $pt->requests(since => $pt_seq) }, 0, 'a huge amount: nothing reached PayTrace');

# --- In the worker's database the same call goes through -----------------------

my $status = $node->safe_psql('freshpay', "SELECT status FROM freshpay_capture($inv)");
is($status, 'captured', 'in the worker\'s database the invoice is collected');
is(scalar $pt->sales('2026-0301'), 1, 'PayTrace holds one sale, for the worker\'s own invoice');
is($node->safe_psql('contrib_regression', 'SELECT count(*) FROM freshpay.payments'), '0',
	'the other database records nothing');

done_testing();
