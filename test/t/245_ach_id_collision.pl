# PayTrace's v1 transaction ids and v3 ACH ids are numbers from two
# different systems, and freshpay keeps both in paytrace_transaction_id.
# The same number in both must never mix them up: the v1 pull's settlement
# or void of a card sale never lands on the ACH debit that has that number,
# and the ACH pull never on the card sale.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);
my $ID = 77000001;
$pt->config({ start_transaction_id => $ID, start_ach_id => $ID });

my $node = FreshpayTest::new_node('idclash', extension => 1, conf => "freshpay.sync_interval = '5min'");
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url,
	paytrace_merchant_id => $pt->config->{merchant_id});

sub sql { return $node->safe_psql('freshpay', shift); }

sub inv { return sql("SELECT id FROM freshpay.invoices WHERE freshportal_id = $_[0]"); }

$pt->customers([ { customer_id => 'C-CARD', method => 'card' }, { customer_id => 'C-BANK', method => 'ach' } ]);
$fp->seed({
	customers => [ { id => 1, code => 'CARD', name => 'Card Florist', currency => 'USD' },
				   { id => 2, code => 'BANK', name => 'Bank Florist', currency => 'USD' } ],
	invoices => [ { id => 21, number => 'IC-21', customer_id => 2, amount_incl_vat => '210.00' },
				  { id => 22, number => 'IC-22', customer_id => 1, amount_incl_vat => '220.00' } ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 1), 'C-CARD', 'manual', 'card')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 2), 'C-BANK', 'manual', 'ach')");
sql("UPDATE freshpay.administrations SET level3_enabled = false");

my $debit = sql("SELECT id || '|' || paytrace_transaction_id FROM freshpay_capture(" . inv(21) . ")");
my $sale  = sql("SELECT id || '|' || paytrace_transaction_id FROM freshpay_capture(" . inv(22) . ")");
my ($debit_id, $debit_txn) = split /\|/, $debit;
my ($sale_id, $sale_txn) = split /\|/, $sale;
is("$debit_txn|$sale_txn", "$ID|$ID", 'setup: the ACH debit (v3) and the card sale (v1) have the same PayTrace number');

# PayTrace settles the card sale; the ACH debit stays accepted.
$pt->settle;
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql("SELECT (settled_at IS NOT NULL) || '|' || coalesce(batch_number::text, '-') FROM freshpay.payments WHERE id = $sale_id") =~ s/\|\d+$/|batch/r,
	'true|batch', "the card sale takes its settlement and batch");
is(sql("SELECT (settled_at IS NULL) || '|' || coalesce(batch_number::text, '-') || '|' || ach_status FROM freshpay.payments WHERE id = $debit_id"),
	'true|-|ACCEPTED', 'the ACH debit with the same number does not');

# The bank returns the ACH debit: the card sale with the same number stays captured.
$pt->admin_post("/_standin/ach/$ID/return", { status => 'RETURNED', reason => 'R02' });
sql("SELECT count(*) FROM freshpay_sync('main')");
is(sql("SELECT string_agg(kind || ':' || status, ',' ORDER BY id) FROM freshpay.payments"),
	'ach_sale:returned,sale:captured', 'the return lands on the ACH debit only');

is(sql("SELECT count(*) FROM freshpay.payments WHERE kind = 'void'"), '0', 'and nothing was taken for a void');

$node->stop;
done_testing();
