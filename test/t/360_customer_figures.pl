# customer_summary's kept figures (issue 11, the per-customer view over a
# large ledger): freshpay.customer_figures holds each customer's figures as
# last computed, freshpay.customer_figures_stale the customers changed since
# (marked by triggers in the transaction of the change), and the view uses
# what is kept only for the unmarked.  Here the races that could make it
# wrong, with real concurrent sessions:
#   - a change still uncommitted while a refresh runs keeps its mark;
#   - a change committed while another refresh holds the figures keeps its
#     mark until a refresh that saw it has committed;
#   - two refreshes one after the other, the second waiting for the first;
# and the sync worker keeping the figures by itself.  After each step the
# view must equal the figures computed over all the rows.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $node = FreshpayTest::new_node('figures', extension => 1, conf => 'freshpay.worker_enabled = off');
FreshpayTest::add_administration($node, freshportal_url => 'http://127.0.0.1:9', paytrace_url => 'http://127.0.0.1:9');

sub sql { return $node->safe_psql('freshpay', shift); }

# Customers whose customer_summary row differs from the figures computed
# over all their rows now ('' when none does).
sub wrong_rows
{
	return sql(q{SELECT coalesce(string_agg(v.code, ',' ORDER BY v.code), '')
				   FROM freshpay.customer_summary v
				   JOIN freshpay._customer_figures(ARRAY(SELECT id FROM freshpay.customers)) l USING (customer_id)
				  WHERE (v.invoices, v.billed, v.collected, v.outstanding, v.avg_days_to_cash, v.p90_days_to_cash,
						 v.declines, v.last_payment_at)
						IS DISTINCT FROM (l.invoices, l.billed, l.collected, l.open_amount - l.unregistered,
										  round(l.avg_days, 1), l.p90_days, l.declines, l.last_payment_at)});
}

# Customers whose kept figures differ from those computed now.
sub wrong_kept
{
	return sql(q{SELECT coalesce(string_agg(c.code, ',' ORDER BY c.code), '')
				   FROM freshpay.customer_figures f
				   JOIN freshpay.customers c ON c.id = f.customer_id
				   JOIN freshpay._customer_figures(ARRAY(SELECT id FROM freshpay.customers)) l USING (customer_id)
				  WHERE (f.invoices, f.billed, f.open_amount, f.collected, f.unregistered, f.avg_days, f.p90_days,
						 f.declines, f.last_payment_at)
						IS DISTINCT FROM (l.invoices, l.billed, l.open_amount, l.collected, l.unregistered, l.avg_days,
										  l.p90_days, l.declines, l.last_payment_at)});
}

sub marked { return sql(q{SELECT coalesce(string_agg(DISTINCT c.code, ',' ORDER BY c.code), '')
							FROM freshpay.customer_figures_stale s JOIN freshpay.customers c ON c.id = s.customer_id}); }

sub collected_of { return sql("SELECT collected FROM freshpay.customer_summary WHERE code = '$_[0]'"); }

# Three customers, each with a paid invoice and its sale (rows written
# directly: the worker is off).
sql(q{INSERT INTO freshpay.customers (administration, freshportal_id, code, name, currency, payment_method, paytrace_customer_id)
	  SELECT 'main', 100 + g, 'K' || g, 'Customer ' || g, 'USD', 'card', 'PT-' || g FROM generate_series(1, 3) g});
sql(q{INSERT INTO freshpay.invoices (administration, freshportal_id, number, customer_id, freshportal_customer_id, type,
		invoice_date, due_date, currency, amount_excl_vat, vat_amount, amount_incl_vat, amount_paid, open_amount, status)
	  SELECT 'main', 200 + c.freshportal_id, 'KI-' || c.code, c.id, c.freshportal_id, 'invoice', CURRENT_DATE - 10,
			 CURRENT_DATE + 20, 'USD', 100, 0, 100.00, 100.00, 0.00, 'paid' FROM freshpay.customers c});
sql(q{INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, amount, status, response_code,
		invoice_number, paytrace_transaction_id, freshportal_payment_id, created_at)
	  SELECT 'main', i.id, i.customer_id, 'sale', 100.00, 'captured', 101, i.number, 9000 + i.id, 8000 + i.id,
			 now() - interval '5 days' FROM freshpay.invoices i});
is(marked(), 'K1,K2,K3', 'the three new customers are marked');
is(collected_of('K1'), '100.00', 'K1 collected 100.00, computed anew');
is(sql('SELECT freshpay._refresh_customer_figures()'), '3', 'a refresh keeps the figures of the three');
is(marked() . '|' . wrong_kept() . '|' . wrong_rows(), '||', 'no marks left; kept figures and the view are right');

# 1. A change still uncommitted while a refresh runs: the refresh does not
# see it nor its mark, and clears only what it saw; committed afterwards,
# the mark is there and the view computes K1 anew.
my $a = $node->background_psql('freshpay');
$a->query_safe(q{BEGIN; UPDATE freshpay.payments SET refunded_amount = 30.00 WHERE customer_id = (SELECT id FROM freshpay.customers WHERE code = 'K1')});
sql(q{UPDATE freshpay.payments SET refunded_amount = 5.00 WHERE customer_id = (SELECT id FROM freshpay.customers WHERE code = 'K2')});
is(sql('SELECT freshpay._refresh_customer_figures()'), '1', 'a refresh while K1\'s change is uncommitted keeps K2 only');
is(marked(), '', 'no mark is visible (K1\'s is not committed)');
$a->query_safe('COMMIT');
is(marked(), 'K1', 'K1\'s change committed: K1 is marked');
is(collected_of('K1') . ' ' . collected_of('K2'), '70.00 95.00', 'the view shows both changes');
is(wrong_rows(), '', 'every row of the view is right');
is(wrong_kept(), 'K1', 'what is kept of K1 is out of date (and not used)');

# 2. A refresh holding the figures (its transaction open) while K3 changes
# and commits: a second refresh waits for the first, then sees K3's mark.
my $b = $node->background_psql('freshpay');
$b->query_safe('BEGIN; SELECT freshpay._refresh_customer_figures()');
sql(q{UPDATE freshpay.payments SET refunded_amount = 40.00 WHERE customer_id = (SELECT id FROM freshpay.customers WHERE code = 'K3')});
is(marked(), 'K1,K3', 'K3 is marked while the first refresh is open (its clearing of K1 is not committed)');
my $c = $node->background_psql('freshpay');
$c->query_until(qr/waiting/, "\\echo waiting\nSELECT 'second:' || freshpay._refresh_customer_figures();\n");
ok( FreshpayTest::poll_true($node,
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%second:%'}, 30,
		'the second refresh to wait'),
	'the second refresh waits for the first');
$b->query_safe('COMMIT');
my $second = $c->query_safe('SELECT 1');
like($second, qr/^second:1$/m, 'the second refresh keeps one customer: K3, committed after the first one\'s snapshot');
is(marked(), '', 'no marks left');
is(wrong_kept() . '|' . wrong_rows(), '|', 'every kept figure and every row of the view is right');
is(collected_of('K3'), '60.00', 'K3 collected 60.00 net');
$a->quit;
$b->quit;
$c->quit;

# 3. The sync worker keeps the figures by itself, every few seconds.
$node->append_conf('postgresql.conf', "freshpay.worker_enabled = on\n");
$node->reload;
sql(q{UPDATE freshpay.invoices SET open_amount = 10.00, status = 'partially_paid' WHERE number = 'KI-K2'});
is(marked(), 'K2', 'FreshPortal reopens K2\'s invoice: K2 is marked');
ok(FreshpayTest::poll_true($node, q{SELECT NOT EXISTS (SELECT FROM freshpay.customer_figures_stale)}, 30, 'the sync worker'),
	'the sync worker refreshes the marked customer');
is(sql(q{SELECT outstanding FROM freshpay.customer_summary WHERE code = 'K2'}), '10.00', 'K2 has 10.00 outstanding');
is(wrong_kept() . '|' . wrong_rows(), '|', 'every kept figure and every row of the view is right');

$node->stop;
done_testing();
