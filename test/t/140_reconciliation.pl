# The BI views: freshpay.invoice_status per invoice and
# freshpay.reconciliation per settled transaction, with their verdicts.
use strict;
use warnings;

use HTTP::Tiny;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

my $node = FreshpayTest::new_node('recon', extension => 1);
FreshpayTest::add_administration($node);

sub sql { return $node->safe_psql('freshpay', shift); }
sub poll_until { return FreshpayTest::poll_true($node, $_[0], 60, $_[1]); }
sub invoice { return sql("SELECT id FROM freshpay.invoices WHERE number = '$_[0]'"); }

$pt->customers([ { customer_id => 'C-BLOOM', method => 'card' } ]);
$fp->seed(
	{
		customers => [ { id => 1, code => 'BLOOM', name => 'Bloom & Co Florists', currency => 'USD' } ],
		invoices => [
			map { { id => $_->[0], number => "R-$_->[0]", customer_id => 1, invoice_date => '2026-11-02',
					amount_excl_vat => $_->[1], vat_amount => '0.00', amount_incl_vat => $_->[1] } }
			  ([ 701, '500.00' ], [ 702, '300.00' ], [ 703, '80.00' ])
		]
	});
sql("SELECT count(*) FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE code = 'BLOOM'), 'C-BLOOM')");

# Collected and registered: all of R-701, part of R-702.
my $sale701 = sql("SELECT id FROM freshpay_capture(" . invoice('R-701') . ")");
my $sale702 = sql("SELECT id FROM freshpay_capture(" . invoice('R-702') . ", 100.00)");
ok(poll_until("SELECT count(*) = 2 FROM freshpay.payments WHERE id IN ($sale701, $sale702) AND freshportal_payment_id IS NOT NULL",
		'two registrations'), 'both captures are registered in FreshPortal');

# R-703 is captured but FreshPortal refuses every registration.
$fp->faults([ { action => 'status', status => 500, body => '{"message":"down"}', method => 'POST',
				path => '/v1/invoices/703/payments', times => -1 } ]);
my $sale703 = sql("SELECT id FROM freshpay_capture(" . invoice('R-703') . ")");

# A sale made at PayTrace for an invoice number freshpay does not know.
my $http = HTTP::Tiny->new;
my $token = FreshpayTest::request_body({ body => $http->post_form($pt->url . "/oauth/token",
	{ grant_type => 'password', username => 'pt-user', password => 'pt-pass' })->{content} })->{access_token};
my $outside = $http->post($pt->url . "/v1/transactions/sale/by_customer",
	{ headers => { 'Content-Type' => 'application/json', Authorization => "Bearer $token" },
	  content => '{"integrator_id":"pt-integrator","customer_id":"C-BLOOM","amount":42.00,"invoice_id":"ZZ-999"}' });
is($outside->{status}, 200, 'a sale is made directly at PayTrace for unknown invoice ZZ-999');

# The batch settles; the next sync learns of it.
$pt->settle;
sql("SELECT count(*) FROM freshpay_sync('main')");

is( sql(q{SELECT invoice_number || ':' || kind || ':' || amount || ':' || batch_number || ':' || COALESCE(customer_code, '-') || ':' || match
			FROM freshpay.reconciliation WHERE invoice_id IS NOT NULL ORDER BY paytrace_transaction_id}),
	join("\n", 'R-701:sale:500.00:571:BLOOM:matched', 'R-702:sale:100.00:571:BLOOM:matched',
		'R-703:sale:80.00:571:BLOOM:not_registered_in_freshportal'),
	'reconciliation: batch 571 → payment → invoice → customer, with a verdict per transaction');
is(sql(q{SELECT count(*) FROM freshpay.reconciliation WHERE match = 'no_invoice' AND invoice_id IS NULL AND amount = 42.00}),
	'1', 'the sale made at PayTrace for an unknown invoice is no_invoice');
like(sql(q{SELECT match_reason FROM freshpay.reconciliation WHERE match = 'not_registered_in_freshportal'}),
	qr/not registered in FreshPortal/, 'each verdict gives its reason');
is(sql(q{SELECT count(*) FROM freshpay.reconciliation WHERE settled_at IS NULL}), '0', 'every row has its settlement time');
is(sql(q{SELECT count(*) FROM freshpay.exceptions WHERE kind = 'settled_without_invoice' AND detail LIKE '%42.00%'}),
	'1', 'the unmatched settled sale is an exception too');

# invoice_status, per invoice.
is( sql(q{SELECT number || ':' || billed || ':' || captured || ':' || refunded || ':' || outstanding || ':'
				 || freshportal_open_amount || ':' || latest_payment_status || ':' || freshportal_agrees
			FROM freshpay.invoice_status WHERE number LIKE 'R-%' ORDER BY number}),
	join("\n", 'R-701:500.00:500.00:0.00:0.00:0.00:captured:true', 'R-702:300.00:100.00:0.00:200.00:200.00:captured:true',
		'R-703:80.00:80.00:0.00:0.00:80.00:captured:false'),
	'invoice_status: billed, captured, refunded, outstanding, FreshPortal\'s open amount, latest status, agreement');

# A partial refund: captured stays, refunded grows, FreshPortal follows.
sql("SELECT 1 FROM freshpay_refund($sale701, 50.00)");
ok( poll_until(
		q{SELECT refunded = 50.00 AND outstanding = 50.00 AND freshportal_agrees FROM freshpay.invoice_status WHERE number = 'R-701'},
		'R-701 to follow the refund'),
	'after a partial refund: refunded 50.00, outstanding 50.00, and FreshPortal agrees');

# FreshPortal comes back: the registration goes through and the verdicts turn.
$fp->faults([]);
ok(poll_until("SELECT freshportal_payment_id IS NOT NULL FROM freshpay.payments WHERE id = $sale703", 'R-703 registered'),
	'once FreshPortal answers again, R-703 is registered');
ok(poll_until(q{SELECT freshportal_agrees FROM freshpay.invoice_status WHERE number = 'R-703'}, 'R-703 agreed'),
	'and FreshPortal agrees on R-703');
is(sql(q{SELECT match FROM freshpay.reconciliation WHERE invoice_number = 'R-703'}), 'matched', 'its settled sale is matched');

# Readers see the views.
$node->safe_psql('freshpay', 'CREATE ROLE bi LOGIN IN ROLE freshpay_reader');
is($node->safe_psql('freshpay', 'SELECT count(*) > 0 FROM freshpay.reconciliation', extra_params => [ '-U', 'bi' ]),
	't', 'a freshpay_reader reads the reconciliation');

$node->stop;
done_testing();
