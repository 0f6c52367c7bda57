# Readers limited to administrations (issue 11, part 2; contract section
# 14) on a running freshpay: with freshpay.reader_scopes in use, the worker
# still syncs, collects by itself and writes back, a freshpay_operator's
# money call returns its row, and both see every administration; a reader
# logging in sees the rows of its administrations only, in the tables and in
# every view (reconciliation, exceptions, customer_summary, aging, ...),
# the union of the scopes of the roles it belongs to; without scopes it sees
# all again.
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

my $node = FreshpayTest::new_node('finance_views', extension => 1);
FreshpayTest::add_administration($node);
# A second administration nothing is sent to: its rows are written here.
FreshpayTest::add_administration($node, name => 'other', freshportal_url => 'http://127.0.0.1:9',
	paytrace_url => 'http://127.0.0.1:9');

my $POLL = 60;

sub sql { return $node->safe_psql('freshpay', shift); }
sub poll_until { return FreshpayTest::poll_true($node, $_[0], $_[2] // $POLL, $_[1]); }
sub inv { return sql("SELECT id FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id = $_[0]") || 0; }

# psql as a login role: (stdout, stderr, exit code).
sub as
{
	my ($role, $query) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('freshpay', $query, stdout => \$out, stderr => \$err, on_error_stop => 1,
		extra_params => [ '-U', $role ]);
	return ($out, $err, $rc);
}

# What a role sees: administration:rows of each relation, one line each.
my @RELATIONS = qw(administrations customers invoices payments settlements invoice_status reconciliation
  exceptions customer_status daily_cash customer_summary aging);

sub seen_by
{
	my ($role) = @_;
	my $query = join(" UNION ALL\n", map {
			my $column = $_ eq 'administrations' ? 'name' : 'administration';
			"SELECT '$_' || ' ' || coalesce((SELECT string_agg(a || ':' || n, ' ' ORDER BY a)"
			  . " FROM (SELECT $column AS a, count(*) AS n FROM freshpay.$_ GROUP BY 1) x), '-')"
	} @RELATIONS);
	my ($out, $err, $rc) = as($role, $query);
	diag($err) if $rc;
	return { map { split / /, $_, 2 } split /\n/, $out };
}

# --- Setup ---------------------------------------------------------------------------------

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' }, { customer_id => 'C-AUTO', method => 'card' } ]);
$fp->seed({
	customers => [
		{ id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' },
		{ id => 2, code => 'AUTO', name => 'Auto Anthuriums', currency => 'USD' },
	],
	invoices => [ { id => 901, number => 'M-901', customer_id => 1, amount_excl_vat => '120.00', vat_amount => '0.00',
					amount_incl_vat => '120.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE administration = 'main' AND freshportal_id = 1), 'C-BLOOM')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE administration = 'main' AND freshportal_id = 2), 'C-AUTO', 'on_issue')");

# Administration other: a customer, an open invoice, a settled sale.
sql(q{
INSERT INTO freshpay.customers (administration, freshportal_id, code, name, currency) VALUES ('other', 1, 'OTHER', 'Other Orchids', 'USD');
INSERT INTO freshpay.invoices (administration, freshportal_id, number, customer_id, freshportal_customer_id, invoice_date, due_date,
	currency, amount_excl_vat, vat_amount, amount_incl_vat, amount_paid, open_amount, status)
SELECT 'other', 1, 'O-1', id, 1, CURRENT_DATE - 40, CURRENT_DATE - 10, 'USD', 90, 0, 90, 30, 60, 'partially_paid'
  FROM freshpay.customers WHERE administration = 'other';
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, amount, status, invoice_number,
	paytrace_transaction_id, batch_number, settled_at, freshportal_payment_id)
SELECT 'other', i.id, i.customer_id, 'sale', 30.00, 'captured', 'O-1', 4001, 7, now() - interval '5 days', 9001
  FROM freshpay.invoices i WHERE administration = 'other';
INSERT INTO freshpay.settlements (administration, batch_number, settled_at, transaction_count, sales_amount, refund_amount, net_amount)
VALUES ('other', 7, now() - interval '5 days', 1, 30.00, 0, 30.00);
});

# Roles: every reader limited to other; bi_main also to main; a cashier
# (operator) listed too, which changes nothing for it.
sql(q{
CREATE ROLE bi LOGIN IN ROLE freshpay_reader;
CREATE ROLE bi_main LOGIN IN ROLE freshpay_reader;
CREATE ROLE cashier LOGIN IN ROLE freshpay_operator;
CREATE ROLE boss LOGIN IN ROLE freshpay_admin;
});
my ($out, $err, $rc) = as('boss', q{INSERT INTO freshpay.reader_scopes (role, administration)
	VALUES ('freshpay_reader', 'other'), ('bi_main', 'main'), ('cashier', 'other')});
is($rc, 0, 'freshpay_admin adds reader scopes') or diag($err);
($out, $err, $rc) = as('bi', q{DELETE FROM freshpay.reader_scopes});
like($err, qr/permission denied/, 'a reader cannot change them');

# --- The worker and an operator are not limited ---------------------------------------------

# An operator's money call on main: the worker collects, the call reads its row back.
($out, $err, $rc) = as('cashier', "SELECT kind || '|' || status || '|' || amount FROM freshpay_capture(" . inv(901) . ")");
is($out, 'sale|captured|120.00', 'an operator (listed in reader_scopes) collects an invoice of main and gets its row')
  or diag($err);
ok(poll_until(q{SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE invoice_number = 'M-901'}, 'registration'),
	'the worker registers it in FreshPortal');
# The worker collects an on_issue invoice by itself after a sync.
$fp->seed({ invoices => [ { id => 902, number => 'M-902', customer_id => 2, amount_excl_vat => '75.00',
							vat_amount => '0.00', amount_incl_vat => '75.00' } ] });
($out, $err, $rc) = as('cashier', "SELECT sum(fetched) > 0 FROM freshpay_sync('main')");
is($out, 't', 'an operator syncs main') or diag($err);
ok( poll_until(q{SELECT count(*) = 1 FROM freshpay.payments WHERE invoice_number = 'M-902' AND status = 'captured'
					AND freshportal_payment_id IS NOT NULL}, 'automatic collection'),
	'the worker collects the new on_issue invoice by itself and registers it');
$pt->settle;
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql(q{SELECT count(*) FROM freshpay.reconciliation WHERE administration = 'main' AND match = 'matched'}), '2',
	'both settle and are matched');

my $cashier = seen_by('cashier');
is($cashier->{payments}, 'main:2 other:1', 'the operator sees the payments of both administrations');
is($cashier->{reconciliation}, 'main:2 other:1', 'and the reconciliation of both');
is($cashier->{administrations}, 'main:1 other:1', 'and both administrations');

# --- Readers see their administrations ------------------------------------------------------

my $bi = seen_by('bi');
is_deeply($bi, { map { $_ => ($_ eq 'exceptions' ? '-' : $_ eq 'administrations' ? 'other:1' : 'other:1') } @RELATIONS },
	'a reader (freshpay_reader is listed for other) sees other only, in every table and view')
  or diag(explain $bi);
my $bi_main = seen_by('bi_main');
is($bi_main->{payments}, 'main:2 other:1', 'a reader listed for main too sees both (its scopes and its roles\')');
is($bi_main->{reconciliation} . ' | ' . $bi_main->{customer_summary}, 'main:2 other:1 | main:2 other:1', 'in the views as well') or diag(explain $bi_main);
($out, $err, $rc) = as('bi', q{SELECT role || ':' || administration FROM freshpay.reader_scopes ORDER BY 1});
is($out, 'freshpay_reader:other', 'a reader sees the scopes that limit it, nothing more');
($out, $err, $rc) = as('bi', q{SELECT count(*) FROM freshpay.administration_secrets});
like($err, qr/permission denied/, 'and no secret');
($out, $err, $rc) = as('bi', 'SELECT freshpay_capture(' . inv(901) . ')');
like($err, qr/permission denied for function freshpay_capture/, 'and calls no money function');
($out, $err, $rc) = as('bi', q{SELECT count(*) FROM freshpay.payment_history});
is($out, '0', 'payment_history follows the payments (other has none)');
($out, $err, $rc) = as('bi_main', q{SELECT count(*) > 0 FROM freshpay.payment_history h JOIN freshpay.payments p ON p.id = h.payment_id
	WHERE p.administration = 'main'});
is($out, 't', 'a reader of main sees its history');

# --- Without scopes, all again ----------------------------------------------------------------

($out, $err, $rc) = as('boss', q{DELETE FROM freshpay.reader_scopes});
is($rc, 0, 'freshpay_admin removes the scopes') or diag($err);
is(seen_by('bi')->{payments}, 'main:2 other:1', 'a reader sees every administration again');

$node->stop;
done_testing();
