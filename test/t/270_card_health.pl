# Card health (issue 10, item 4; contract section 13): once a customer is
# linked to a card profile, and daily after that, the PayTrace pull reads
# the vault profiles (customer/export) for each card's last four digits and
# expiry month and year — never more — and a card that expires before the
# customer's next due invoice is an exception (card_expiring), so that
# finance can ask for a new card before a charge fails.
use strict;
use warnings;

use JSON::PP;
use POSIX qw(strftime);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);
my $EXPORT = '/v1/customer/export';

my $node = FreshpayTest::new_node('cards', extension => 1, conf => "freshpay.sync_interval = '5min'");
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url);

sub sql { return $node->safe_psql('freshpay', shift); }

sub exports { return scalar grep { $_->{path} eq $EXPORT } @{ $pt->requests }; }

sub link_customer
{
	my ($fp_id, $profile, $method) = @_;
	sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = $fp_id), '$profile', 'on_due_date', '$method')");
}

# This month's card expires at its end; the invoice is due next month.
my @now = localtime;
my ($month, $year) = ($now[4] + 1, $now[5] + 1900);
my ($next_month, $next_year) = $month == 12 ? (1, $year + 1) : ($month + 1, $year);
my $due = sprintf('%04d-%02d-15', $next_year, $next_month);

# --- Setup -------------------------------------------------------------------------

$pt->customers([
	{ customer_id => 'C-OLD', method => 'card', masked_number => 'xxxxxxxxxxxx1881', expiration_month => $month, expiration_year => $year },
	{ customer_id => 'C-NEW', method => 'card', masked_number => 'xxxxxxxxxxxx4242', expiration_month => 12, expiration_year => $year + 3 },
	{ customer_id => 'C-ACH', method => 'ach' } ]);
$fp->seed({
	customers => [ map { +{ id => $_->[0], code => $_->[1], name => "$_->[1] Florist", currency => 'USD' } } [ 1, 'OLD' ], [ 2, 'NEW' ], [ 3, 'ACH' ] ],
	invoices => [ map { +{ id => 10 + $_, number => "CH-$_", customer_id => $_, amount_incl_vat => '80.00', due_date => $due } } 1 .. 3 ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
is(exports(), 0, 'no customer is linked: no profile is read');

link_customer(1, 'C-OLD', 'card');
link_customer(2, 'C-NEW', 'card');
link_customer(3, 'C-ACH', 'ach');
sql("SELECT count(*) FROM freshpay_sync('main')");
is(exports(), 1, 'linked customers: the pull reads the vault profiles once');
is(sql("SELECT freshportal_id || '|' || coalesce(card_last4, '-') || '|' || coalesce(card_expiry_month::text, '-') || '/' || coalesce(card_expiry_year::text, '-')"
	  . " || '|' || (card_checked_at IS NOT NULL) FROM freshpay.customers ORDER BY freshportal_id"),
	join("\n", "1|1881|$month/$year|true", "2|4242|12/" . ($year + 3) . '|true', '3|-|-/-|false'),
	'each card customer gets its last four digits and expiry month and year; ACH none');

# Nothing more of a card is stored: no longer run of digits in the customers' rows.
is(sql("SELECT count(*) FROM freshpay.customers c WHERE row_to_json(c)::text ~ '[0-9*x]{6,}1881|[0-9]{7,}'"), '0',
	'no card number or longer masked number is stored');

# --- The exception ----------------------------------------------------------------------

my $row = sql("SELECT kind || '|' || (SELECT freshportal_id FROM freshpay.invoices WHERE id = e.invoice_id) || '|' || detail"
	  . " FROM freshpay.exceptions e WHERE kind = 'card_expiring'");
like($row, qr/^card_expiring\|11\|/, 'card_expiring: the customer whose card expires before its next due invoice, with that invoice');
like($row, qr/OLD Florist.*ending 1881.*expires at the end of \Q@{[sprintf('%02d', $month)]}\E\/$year.*CH-1.*due on $due/,
	'the detail names the customer, the card, its expiry and the invoice with its due date');
like($row, qr/freshpay_request_payment\(\d+, 'onboard'\)/, 'and how to ask for a new card');
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE kind = 'card_expiring'"), '1', 'the card that lasts is no exception');
is(sql("SELECT string_agg(code || '|' || coalesce(card_last4, '-') || '|' || coalesce(card_expiry, '-') || '|' || open_invoices || '|' || next_due_date, E'\n' ORDER BY code)"
	  . " FROM freshpay.customer_status"),
	join("\n", "ACH|-|-|1|$due", sprintf('NEW|4242|12/%d|1|%s', $year + 3, $due), sprintf('OLD|1881|%02d/%d|1|%s', $month, $year, $due)),
	'customer_status: each customer\'s card on file, open invoices and next due date');
is(sql("SELECT card_expiry FROM freshpay.invoice_status WHERE number = 'CH-1'"), sprintf('%02d/%d', $month, $year),
	'invoice_status shows the card\'s expiry beside the invoice');

# --- Daily: no second read the same day; a new link is read at once ----------------------

sql("SELECT count(*) FROM freshpay_sync('main')");
is(exports(), 1, 'a second pull the same day does not read the profiles again');

$pt->admin_post('/_standin/customers/C-OLD', { expiration_month => 12, expiration_year => $year + 4 });
sql("UPDATE freshpay.customers SET card_checked_at = now() - interval '25 hours' WHERE freshportal_id = 1");
sql("SELECT count(*) FROM freshpay_sync('main')");
is(exports(), 2, 'a day later the profiles are read again');
is(sql("SELECT card_expiry_month || '/' || card_expiry_year FROM freshpay.customers WHERE freshportal_id = 1"), '12/' . ($year + 4),
	'the customer takes the new card\'s expiry');
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE kind = 'card_expiring'"), '0', 'and the exception is gone');

$pt->customers([ { customer_id => 'C-OLD2', method => 'card', masked_number => 'xxxxxxxxxxxx7777', expiration_month => $month, expiration_year => $year } ]);
link_customer(1, 'C-OLD2', 'card');
is(sql("SELECT coalesce(card_last4, '-') || '|' || (card_checked_at IS NULL) FROM freshpay.customers WHERE freshportal_id = 1"), '-|true',
	'linking another profile forgets the old card');
sql("SELECT count(*) FROM freshpay_sync('main')");
is(exports(), 3, 'and the next pull reads the profiles at once');
is(sql("SELECT card_last4 FROM freshpay.customers WHERE freshportal_id = 1"), '7777', 'the new card is known');
is(sql("SELECT count(*) FROM freshpay.exceptions WHERE kind = 'card_expiring'"), '1', 'and expires before the invoice is due again');

$node->stop;
done_testing();
