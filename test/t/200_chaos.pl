# Exactly once under chaos (issue 7, item 4; issue 9): a few hundred
# invoices of on_issue customers arrive in waves and are collected by the
# worker while both stand-ins inject faults at random positions and the
# worker is killed with SIGKILL and the server stopped with -m immediate
# several times.  Invoice 5000+k belongs to customer 1 + k % 6: customers
# 1-4 pay by card (sales against their vault profiles, API v1), customer 5
# by ACH (debits through PayTrace API v3, each with an idempotency key) and
# customer 6 has no vault profile (each invoice gets a payment request,
# POST /v3/invoice).
#
# PayTrace: answers lost after the sale or debit was made (close_after),
# connections dropped before it (close_before), 500 (HTML) / 503 / 429,
# requests processed after the client gave up (delay > request_timeout),
# slow answers of processed requests (delay_after), unreadable answers of
# processed ones (malformed_after), failing token calls (v1 and v3) and
# lookups (the v1 export; the v3 ACH reads by id, by key and the pull's
# list); payment requests lost after or before PayTrace made them, or a 500.
# FreshPortal: 500s on auth, lists, re-reads (GET /v1/invoices/{id}) and
# payment lookups; on registrations (POST /v1/invoices/{id}/payments) 500,
# close_before, close_after and a malformed body after committing; on
# reversals 500 and close_after.
#
# Meanwhile the test plays the payers and the bank: payers pay some of the
# payment requests on PayTrace's page (without storing a card, so customer 6
# keeps getting requests), the bank settles some accepted ACH debits and
# returns 1-3 debits already registered in FreshPortal.
#
# Then, once quiet, with the stand-ins' own records as ground truth: a
# payment still 'unknown' must be one PayTrace never processed (a card
# attempt: no transaction with the invoice number; an ACH debit: no debit
# with its idempotency key); the test settles each such payment as a person
# would (freshpay_resolve(id, 'not_processed')), waits until quiet again, and
# checks, per kind of customer:
# - card: every invoice charged exactly once (one approved PayTrace sale),
#   recorded captured with PayTrace's transaction id, registered in
#   FreshPortal exactly once (the registration freshpay recorded);
# - ACH: every invoice debited exactly once (a returned debit counts), no key
#   sent twice, every key PayTrace got recorded by freshpay, the freshpay row
#   with the debit's id and key, captured and registered exactly once; a
#   returned debit 'returned' with the bank's reason, its registration
#   reversed exactly once, the invoice open again, an ach_returned exception
#   and no second debit; settlements followed;
# - payment requests: at most one request per invoice at PayTrace, none sent
#   twice; a paid request's sale recorded once (requested_by 'payment
#   request'), registered once, the request paid with that payment; an
#   unpaid one sent or unknown, a lost one unknown or failed; nothing of
#   these customers charged by freshpay;
# and that nothing is pending or unknown and that no job is dead.
#
# The randomness is seeded: FRESHPAY_CHAOS_SEED=n replays a run's faults,
# crash schedule and the payers' and bank's choices (the arrival order of
# concurrent requests, and so the exact positions of the faults and what is
# there to choose from, can still differ).  FRESHPAY_CHAOS_INVOICES changes
# the number of invoices (default 240).
use strict;
use warnings;

use JSON::PP;
use POSIX qw(strftime);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

use FreshpayTest;

my $SEED = $ENV{FRESHPAY_CHAOS_SEED} // int(rand(2**31));
my $N    = $ENV{FRESHPAY_CHAOS_INVOICES} // 240;
srand($SEED);
diag("chaos seed $SEED, $N invoices (replay: FRESHPAY_CHAOS_SEED=$SEED test/run tap test/t/200_chaos.pl)");

my $T0 = time;
sub elapsed { return sprintf('%.1f s', time - $T0); }

# Its own stand-ins, as every test file has (they stop when it ends).
my $fp = FreshpayTest::start_standin('fp', args => ['--quiet']);
my $pt = FreshpayTest::start_standin('pt', args => ['--quiet']);

my $TIMEOUT = 3;    # freshpay.request_timeout, seconds
my $node = FreshpayTest::new_node('chaos', extension => 1,
	conf => join("\n",
		'restart_after_crash = on',
		"freshpay.request_timeout = '${TIMEOUT}s'",
		"freshpay.connect_timeout = '2s'",
		"freshpay.sync_interval = '2s'",
		'log_min_messages = warning'));
# A merchant id: ACH goes through API v3, and payment requests can be sent.
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url,
	paytrace_merchant_id => $pt->config->{merchant_id});

my $SALE    = '/v1/transactions/sale/by_customer';
my $EXPORT  = '/v1/transactions/export/by_date_range';
my $ACH     = '/v3/checks/payment';
my $ACH_GET = '/v3/checks/transactions';    # by id, by idempotency key, and the pull's list
my $REQUEST = '/v3/invoice';

# --- Helpers -----------------------------------------------------------------

sub sql { return $node->safe_psql('freshpay', shift); }

# A query that may meet a server being restarted: undef instead of dying.
sub try_sql
{
	my ($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay', shift);
	return $rc == 0 ? $out : undef;
}

sub rows
{
	my ($query) = @_;
	return [ map { [ split /\|/, $_, -1 ] } grep { length } split /\n/, sql($query) ];
}

# --- Setup: customers linked on_issue, no faults yet ----------------------------

# Customer 1 + k % 6 of invoice 5000+k: 1-4 card, 5 ACH, 6 no vault profile.
my %KIND = ((map { $_ => 'card' } 1 .. 4), 5 => 'ach', 6 => 'request');
sub customer_of { return 1 + $_[0] % 6; }
sub kind_of     { return $KIND{ customer_of($_[0]) }; }
my $ACH_PROFILE = 'C-CHAOS-ACH-5';

$pt->customers([ (map { { customer_id => "C-CHAOS-$_", method => 'card' } } 1 .. 4),
	{ customer_id => $ACH_PROFILE, method => 'ach' } ]);
$fp->seed({ customers => [ map { +{ id => $_, code => "CHAOS$_", name => "Chaos Florist $_", currency => 'USD',
				email => "ap$_\@chaos.example" } } 1 .. 6 ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
for my $id (1 .. 4)
{
	sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = $id),"
		  . " 'C-CHAOS-$id', 'on_issue', 'card')");
}
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 5),"
	  . " '$ACH_PROFILE', 'on_issue', 'ach')");
sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = 6), NULL, 'on_issue')");
is(sql("SELECT string_agg(freshportal_id || ':' || collection || ':' || payment_method || ':' || coalesce(paytrace_customer_id, '-'), ','"
		  . " ORDER BY freshportal_id) FROM freshpay.customers"),
	join(',', (map { "$_:on_issue:card:C-CHAOS-$_" } 1 .. 4), "5:on_issue:ach:$ACH_PROFILE", '6:on_issue:card:-'),
	'setup: 6 customers collected on_issue: 4 by card, 1 by ACH, 1 without a vault profile');

my $today = strftime('%Y-%m-%d', localtime);
my @ids = map { 5000 + $_ } 1 .. $N;
my @card_ids    = grep { kind_of($_) eq 'card' } @ids;
my @ach_ids     = grep { kind_of($_) eq 'ach' } @ids;
my @request_ids = grep { kind_of($_) eq 'request' } @ids;
# (never 0.29, PayTrace's decline trigger)
my %amount = map { $_ => sprintf('%d.%02d', 20 + ($_ * 37) % 700, ($_ * 13) % 100) } @ids;
sub number_of { return "CH-$_[0]"; }
my %is_ours = map { number_of($_) => $_ } @ids;
note(sprintf('%d card invoices, %d ACH invoices, %d invoices of the customer without a vault profile',
	scalar @card_ids, scalar @ach_ids, scalar @request_ids));

# --- The faults ---------------------------------------------------------------------

my $html500 = '<html><body><h1>500 Internal Server Error</h1></body></html>';
my @pt_rules = (
	{ name => 'sale close_after', method => 'POST', path => $SALE, action => 'close_after', probability => 0.05 },
	{ name => 'sale close_before', method => 'POST', path => $SALE, action => 'close_before', probability => 0.04 },
	{ name => 'sale 500 html', method => 'POST', path => $SALE, action => 'status', status => 500,
	  body => $html500, headers => { 'Content-Type' => 'text/html' }, probability => 0.03 },
	{ name => 'sale 503', method => 'POST', path => $SALE, action => 'status', status => 503,
	  body => '<html><body>503 Service Temporarily Unavailable</body></html>',
	  headers => { 'Content-Type' => 'text/html', 'Retry-After' => '1' }, probability => 0.03 },
	{ name => 'sale 429', method => 'POST', path => $SALE, action => 'status', status => 429,
	  body => '{"message":"Too Many Attempts."}', headers => { 'Retry-After' => '1' }, probability => 0.04 },
	# processed after the client gave up: before the lookups conclude, and after
	{ name => 'sale processed late', method => 'POST', path => $SALE, action => 'delay',
	  seconds => $TIMEOUT + 2, probability => 0.03 },
	{ name => 'sale processed very late', method => 'POST', path => $SALE, action => 'delay',
	  seconds => $TIMEOUT + 9, probability => 0.02 },
	{ name => 'sale answered late', method => 'POST', path => $SALE, action => 'delay_after',
	  seconds => $TIMEOUT + 2, probability => 0.03 },
	{ name => 'sale malformed_after', method => 'POST', path => $SALE, action => 'malformed_after', probability => 0.02 },
	{ name => 'token 500', path => '/oauth/token', action => 'status', status => 500,
	  body => $html500, headers => { 'Content-Type' => 'text/html' }, probability => 0.1 },
	{ name => 'export 503', path => $EXPORT, action => 'status', status => 503,
	  body => '{"message":"down"}', probability => 0.1 },
	{ name => 'export slow', path => $EXPORT, action => 'delay', seconds => $TIMEOUT + 1, probability => 0.03 },

	# API v3: ACH debits (one per idempotency key at PayTrace)
	{ name => 'ach close_after', method => 'POST', path => $ACH, action => 'close_after', probability => 0.06 },
	{ name => 'ach close_before', method => 'POST', path => $ACH, action => 'close_before', probability => 0.05 },
	{ name => 'ach 500 html', method => 'POST', path => $ACH, action => 'status', status => 500,
	  body => $html500, headers => { 'Content-Type' => 'text/html' }, probability => 0.04 },
	{ name => 'ach 429', method => 'POST', path => $ACH, action => 'status', status => 429,
	  body => '{"message":"Too Many Attempts."}', headers => { 'Retry-After' => '1' }, probability => 0.05 },
	{ name => 'ach processed late', method => 'POST', path => $ACH, action => 'delay',
	  seconds => $TIMEOUT + 2, probability => 0.04 },
	{ name => 'ach processed very late', method => 'POST', path => $ACH, action => 'delay',
	  seconds => $TIMEOUT + 9, probability => 0.02 },
	{ name => 'ach answered late', method => 'POST', path => $ACH, action => 'delay_after',
	  seconds => $TIMEOUT + 2, probability => 0.04 },
	{ name => 'ach malformed_after', method => 'POST', path => $ACH, action => 'malformed_after', probability => 0.03 },
	{ name => 'ach lookup 503', method => 'GET', path_prefix => $ACH_GET, action => 'status', status => 503,
	  body => '{"message":"Service Unavailable"}', probability => 0.08 },
	{ name => 'ach lookup slow', method => 'GET', path_prefix => $ACH_GET, action => 'delay',
	  seconds => $TIMEOUT + 1, probability => 0.03 },
	{ name => 'v3 token 500', path => '/v3/token', action => 'status', status => 500,
	  body => $html500, headers => { 'Content-Type' => 'text/html' }, probability => 0.1 },

	# API v3: payment requests
	{ name => 'request close_after', method => 'POST', path => $REQUEST, action => 'close_after', probability => 0.08 },
	{ name => 'request close_before', method => 'POST', path => $REQUEST, action => 'close_before', probability => 0.06 },
	{ name => 'request 500 html', method => 'POST', path => $REQUEST, action => 'status', status => 500,
	  body => $html500, headers => { 'Content-Type' => 'text/html' }, probability => 0.06 },
);
my @fp_rules = (
	{ name => 'auth 500', method => 'POST', path => '/v1/auth', action => 'status', status => 500,
	  body => '{"message":"Server Error"}', probability => 0.1 },
	{ name => 'register 500', method => 'POST', path_prefix => '/v1/invoices/', action => 'status', status => 500,
	  body => '{"message":"Server Error"}', probability => 0.05 },
	{ name => 'register close_before', method => 'POST', path_prefix => '/v1/invoices/', action => 'close_before',
	  probability => 0.05 },
	{ name => 'register close_after', method => 'POST', path_prefix => '/v1/invoices/', action => 'close_after',
	  probability => 0.05 },
	{ name => 'register malformed_after', method => 'POST', path_prefix => '/v1/invoices/',
	  action => 'malformed_after', probability => 0.05 },
	# reversals of returned ACH debits (POST /v1/payments/{id}/reverse): few, so often
	{ name => 'reverse 500', method => 'POST', path_prefix => '/v1/payments/', action => 'status', status => 500,
	  body => '{"message":"Server Error"}', probability => 0.2 },
	{ name => 'reverse close_after', method => 'POST', path_prefix => '/v1/payments/', action => 'close_after',
	  probability => 0.25 },
	{ name => 're-read 500', method => 'GET', path_prefix => '/v1/invoices/', action => 'status', status => 500,
	  body => '{"message":"Server Error"}', probability => 0.08 },
	{ name => 'payment lookup 500', method => 'GET', path => '/v1/payments', action => 'status', status => 500,
	  body => '{"message":"Server Error"}', probability => 0.06 },
	{ name => 'list 503', method => 'GET', path_prefix => '/v1/', action => 'status', status => 503,
	  body => '{"message":"Service Unavailable"}', probability => 0.03 },
);
$_->{times} = -1 for @pt_rules, @fp_rules;

# --- The crash schedule (seeded) ----------------------------------------------------

my $CHAOS = 45;    # seconds of faults and crashes
my @waves = map { [ $_ * 9, [ @ids[ int($_ * $N / 4) .. int(($_ + 1) * $N / 4) - 1 ] ] ] } 0 .. 3;
my @crashes;
for my $kind (qw(kill kill kill stop stop))
{
	my $at;
	for (1 .. 100)
	{
		$at = 3 + rand($CHAOS - 6);
		last unless grep { abs($_->[0] - $at) < 5 } @crashes;
	}
	push @crashes, [ $at, $kind ];
}
@crashes = sort { $a->[0] <=> $b->[0] } @crashes;
note('crash schedule: ' . join(', ', map { sprintf('%s at +%.1f s', $_->[1] eq 'kill' ? 'kill -9 worker' : 'stop -m immediate', $_->[0]) } @crashes));

# --- The payers and the bank (seeded) -------------------------------------------------

# Every 3 s or so the payers pay some of the requests they have had for a
# few seconds, and the bank settles some accepted debits and returns a few
# that are registered in FreshPortal.
my @acts = map { [ 4 + 3 * $_ + rand(1), 'act' ] } 0 .. 13;
my $PAY_SHARE    = 0.6;
my $SETTLE_SHARE = 0.4;
my $RETURNS      = 1 + int(rand(3));
my @RETURN_AS    = ([ 'NSF_DECLINED', 'R01' ], [ 'RETURNED', 'R02' ], [ 'REJECTED', 'R03' ]);
my (%request_seen, %request_decided, %paid_request, %debit_seen, %debit_decided, %settled_debit, %returned_debit);
my $t_start;

sub act
{
	my $now   = time;
	my $state = $pt->state;

	for my $r (sort { $a->{invoice_id} <=> $b->{invoice_id} } @{ $state->{payment_requests} // [] })
	{
		next unless $is_ours{ $r->{invoice_number} } && $r->{status} eq 'open';
		my $first = $request_seen{ $r->{invoice_id} } //= $now;
		next if $now - $first < 3 || $request_decided{ $r->{invoice_id} }++;
		next unless rand() < $PAY_SHARE;
		my $paid = eval {
			$pt->admin_post("/_standin/payment_requests/$r->{invoice_id}/pay", { store_card => JSON::PP::false });
		};
		if ($paid && $paid->{transaction}{success})
		{
			$paid_request{ $r->{invoice_id} } = { number => $r->{invoice_number}, transaction_id => $paid->{transaction}{transaction_id} };
			note(elapsed() . ": the payer of $r->{invoice_number} pays request $r->{invoice_id} (transaction $paid->{transaction}{transaction_id})");
		}
		else
		{
			diag(elapsed() . ": could not pay request $r->{invoice_id} of $r->{invoice_number}: " . ($@ || 'declined'));
		}
	}

	my @debits = sort { $a->{ach_transaction_id} <=> $b->{ach_transaction_id} }
	  grep { $_->{transaction_type} eq 'PAYMENT' && $is_ours{ $_->{invoice_number} } } @{ $state->{ach_transactions} // [] };
	for my $t (@debits)
	{
		my $id = $t->{ach_transaction_id};
		next unless $t->{transaction_status} eq 'ACCEPTED';
		my $first = $debit_seen{$id} //= $now;
		next if $now - $first < 2 || $debit_decided{$id}++;
		next unless rand() < $SETTLE_SHARE;
		if (eval { $pt->admin_post("/_standin/ach/$id/settle"); 1 })
		{
			$settled_debit{$id} = $t->{invoice_number};
		}
		else
		{
			diag(elapsed() . ": could not settle ACH debit $id: $@");
		}
	}

	if (keys(%returned_debit) < $RETURNS && $now - $t_start > 12)
	{
		my %registered = map { ($_->{provider_transaction_id} // '') => 1 } grep { $_->{status} eq 'registered' } @{ $fp->state->{payments} };
		my @candidates = grep { $registered{ $_->{ach_transaction_id} } && $_->{transaction_status} =~ /^(?:ACCEPTED|SETTLED)$/ } @debits;
		if (@candidates)
		{
			my $t = $candidates[ int(rand(@candidates)) ];
			my ($status, $reason) = @{ $RETURN_AS[ scalar keys %returned_debit ] };
			if (eval { $pt->admin_post("/_standin/ach/$t->{ach_transaction_id}/return", { status => $status, reason => $reason }); 1 })
			{
				$returned_debit{ $t->{ach_transaction_id} } = { number => $t->{invoice_number}, status => $status, reason => $reason,
					was => $t->{transaction_status}, at => time };
				note(elapsed() . ": the bank returns ACH debit $t->{ach_transaction_id} of $t->{invoice_number} ($t->{transaction_status}) as $status $reason");
			}
			else
			{
				diag(elapsed() . ": could not return ACH debit $t->{ach_transaction_id}: $@");
			}
		}
	}
	return;
}

my $pt_set = $pt->set_faults(\@pt_rules, $SEED);
my $fp_set = $fp->set_faults(\@fp_rules, $SEED + 1);
is_deeply([ scalar @{ $pt_set->{rules} }, $pt_set->{seed}, scalar @{ $fp_set->{rules} }, $fp_set->{seed} ],
	[ scalar @pt_rules, $SEED, scalar @fp_rules, $SEED + 1 ], 'chaos: random faults set on both stand-ins, seeded');

# --- The run ------------------------------------------------------------------------

my ($kills, $stops) = (0, 0);
$t_start = time;
my @events = sort { $a->[0] <=> $b->[0] } ((map { [ $_->[0], 'wave', $_->[1] ] } @waves), @crashes, @acts);
for my $event (@events)
{
	my ($at, $kind, $arg) = @$event;
	my $wait = $t_start + $at - time;
	sleep $wait if $wait > 0;
	if ($kind eq 'wave')
	{
		$fp->seed({ invoices => [ map { +{ id => $_, number => number_of($_), customer_id => customer_of($_),
						invoice_date => $today, amount_incl_vat => $amount{$_} } } @$arg ] });
		note(elapsed() . ': ' . scalar(@$arg) . " invoices arrive at FreshPortal ($arg->[0]..$arg->[-1])");
	}
	elsif ($kind eq 'act')
	{
		act();
	}
	elsif ($kind eq 'kill')
	{
		my $pid = FreshpayTest::worker_pid($node, 10);
		if ($pid && kill('KILL', $pid))
		{
			$kills++;
			note(elapsed() . ": kill -9 the freshpay worker (pid $pid)");
		}
		else
		{
			note(elapsed() . ': no worker to kill');
		}
	}
	else
	{
		$node->stop('immediate');
		$node->start;
		$stops++;
		note(elapsed() . ': pg_ctl stop -m immediate, then start');
	}
}
my $rest = $t_start + $CHAOS - time;
sleep $rest if $rest > 0;
cmp_ok($kills, '>=', 2, "chaos: the worker was killed with SIGKILL $kills times");
is($stops, 2, 'chaos: the server was stopped with -m immediate and started twice');

# Faults off: from now on the stand-ins answer every request.
my $pt_faults = $pt->set_faults([]);
my $fp_faults = $fp->set_faults([]);
my $faults_off = time;
my %hits;
for my $rule (@{ $pt->admin_get('/_standin/requests')->{requests} }, @{ $fp->admin_get('/_standin/requests')->{requests} })
{
	$hits{ $rule->{fault_name} }++ if defined $rule->{fault_name};
}
note(elapsed() . ': faults off; faults met: ' . join(', ', map { "$_ $hits{$_}" } sort keys %hits));
cmp_ok(scalar(keys %hits), '>=', 10, 'chaos: at least 10 kinds of fault were met (' . scalar(keys %hits) . ')');
ok(scalar(grep { /^sale (?:close_after|processed|answered)/ } keys %hits), 'chaos: some sale was processed while its answer was lost or late');
ok(scalar(grep { /^ach (?:close_after|processed|answered|malformed_after)/ } keys %hits),
	'chaos: some ACH debit was processed while its answer was lost, late or unreadable');
ok(scalar(grep { /^request / } keys %hits), 'chaos: some payment request was lost (after or before PayTrace made it, or a 500)');
note(sprintf('the payers paid %d requests; the bank settled %d debits and returned %d (%s)', scalar(keys %paid_request),
	scalar(keys %settled_debit), scalar(keys %returned_debit),
	join(', ', map { "$_ of $returned_debit{$_}{number}" } sort keys %returned_debit)));
cmp_ok(scalar(keys %paid_request), '>=', 1, 'chaos: payers paid some payment requests (' . scalar(keys %paid_request) . ')');
cmp_ok(scalar(keys %returned_debit), '>=', 1, 'chaos: the bank returned some registered ACH debits (' . scalar(keys %returned_debit) . ')');

# --- Quiet -----------------------------------------------------------------------

my $local_ids = "SELECT id FROM freshpay.invoices WHERE administration = 'main' AND freshportal_id BETWEEN 5001 AND " . (5000 + $N);

# Nothing left to do by itself: every invoice synced, nothing pending, and
# no job queued but for an outcome that is still unknown (which waits for a
# person); and nothing changed for a few seconds.
my $SNAPSHOT = <<"SQL";
SELECT (SELECT count(*) FROM ($local_ids) i) || '/'
  || (SELECT count(*) FROM freshpay.payments WHERE status = 'pending') || '/'
  || (SELECT count(*) FROM freshpay.jobs j WHERE j.state = 'queued'
        AND NOT EXISTS (SELECT FROM freshpay.payments p WHERE p.status = 'unknown'
                          AND (p.id = j.payment_id OR p.invoice_id = j.invoice_id))) || '/'
  || coalesce((SELECT string_agg(status || ':' || n, ',' ORDER BY status)
        FROM (SELECT status, count(*) n FROM freshpay.payments GROUP BY status) s), '') || '/'
  || (SELECT count(*) FROM freshpay.payments WHERE freshportal_payment_id IS NOT NULL) || '/'
  || coalesce((SELECT string_agg(kind || ':' || state || ':' || n, ',' ORDER BY kind, state)
        FROM (SELECT kind, state, count(*) n FROM freshpay.jobs GROUP BY 1, 2) j), '') || '/'
  || coalesce((SELECT string_agg('request ' || status || ':' || n, ',' ORDER BY status)
        FROM (SELECT status, count(*) n FROM freshpay.payment_requests GROUP BY status) q), '') || '/'
  || (SELECT count(*) FROM freshpay.payments WHERE settled_at IS NOT NULL)
SQL

sub standin_snapshot
{
	my ($pts, $fps) = @_;
	my (%ach, %req, %reg);
	$ach{ $_->{transaction_status} }++ for @{ $pts->{ach_transactions} };
	$req{ $_->{status} }++ for @{ $pts->{payment_requests} };
	$reg{ $_->{status} }++ for @{ $fps->{payments} };
	my $agg = sub { my ($h) = @_; return join(',', map { "$_:$h->{$_}" } sort keys %$h); };
	return join('/', scalar(@{ $pts->{transactions} }), 'ach ' . $agg->(\%ach), 'requests ' . $agg->(\%req),
		'FreshPortal ' . $agg->(\%reg));
}

# What the payers and the bank did has reached freshpay: each paid request
# is paid there, each returned debit returned, each settled debit settled.
sub converged
{
	my ($pts) = @_;
	my $settled = grep { $_->{transaction_type} eq 'PAYMENT' && defined $_->{settled_at} && $is_ours{ $_->{invoice_number} } }
	  @{ $pts->{ach_transactions} };
	my $want = scalar(keys %paid_request) . '/' . scalar(keys %returned_debit) . "/$settled";
	my $have = try_sql("SELECT (SELECT count(*) FROM freshpay.payment_requests WHERE status IN ('paid', 'onboarded')) || '/'"
		  . " || (SELECT count(*) FROM freshpay.payments WHERE kind = 'ach_sale' AND status = 'returned') || '/'"
		  . " || (SELECT count(*) FROM freshpay.payments WHERE kind = 'ach_sale' AND status IN ('captured', 'returned') AND settled_at IS NOT NULL)");
	return (defined $have && $have eq $want, "wanted $want (paid requests/returned debits/settled debits), freshpay has " . ($have // '?'));
}

sub wait_quiet
{
	my ($what, $timeout, $not_before) = @_;
	my ($last, $since) = ('', time);
	my $deadline = time + $timeout;
	my $why = '';
	while (time < $deadline)
	{
		my $local = try_sql($SNAPSHOT);
		# The worker's scheduled sync brings what has not arrived yet; a
		# sync of our own as well, in case a FreshPortal stream is stuck.
		if (defined $local && $local =~ m{^(\d+)/} && $1 < $N)
		{
			try_sql("SELECT count(*) FROM freshpay_sync('main')");
		}
		my $pts = $pt->state;
		my $now = ($local // 'down') . ' | ' . standin_snapshot($pts, $fp->state);
		if ($now ne $last)
		{
			($last, $since) = ($now, time);
		}
		elsif (defined $local && $local =~ m{^$N/0/0/} && time - $since >= 6 && time >= ($not_before // 0))
		{
			# Converged, or nothing changes any more (the checks say what is wrong).
			my ($done, $state) = converged($pts);
			$why = $state;
			if ($done || time - $since >= 20)
			{
				note(elapsed() . ": quiet ($what): $now" . ($done ? '' : "; not converged: $state"));
				return 1;
			}
		}
		sleep 0.5;
	}
	diag("not quiet after $timeout s ($what): $last (invoices/pending/busy jobs/statuses/registered/jobs/requests/settled"
		  . " | PayTrace transactions/ACH/requests/FreshPortal payments) $why");
	diag('queued jobs: ' . (try_sql("SELECT string_agg(id || ' ' || kind || ' payment ' || coalesce(payment_id::text, '-') || ' invoice '"
		  . " || coalesce(invoice_id::text, '-') || ' attempts ' || attempts || ' next_run_at +' || round(extract(epoch FROM next_run_at - now())) || 's: '"
		  . " || coalesce(last_error, ''), E'\\n') FROM freshpay.jobs WHERE state = 'queued'") // '?'));
	return 0;
}

# Delayed requests may still be processed for $TIMEOUT + 9 s after the
# faults went off: wait for them, so that what is unknown then was never made.
ok(wait_quiet('after the chaos', 150, $faults_off + $TIMEOUT + 10),
	'quiet after the chaos: every invoice synced, nothing pending, no job left but for unknown outcomes');

# --- Ground truth ---------------------------------------------------------------------

# PayTrace: approved sales per invoice number (a declined one is no charge).
sub pt_sales_by_number
{
	my ($pts) = @_;
	my %sales;
	for my $t (@{ ($pts // $pt->state)->{transactions} })
	{
		next unless $t->{kind} eq 'SALE' && $t->{state} ne 'declined';
		push @{ $sales{ $t->{invoice_id} } }, $t;
	}
	return \%sales;
}

# All transactions per invoice number, whatever their kind or state.
sub pt_transactions_by_number
{
	my ($pts) = @_;
	my %txns;
	push @{ $txns{ $_->{invoice_id} } }, $_ for @{ ($pts // $pt->state)->{transactions} };
	return \%txns;
}

# PayTrace: the ACH debits per invoice number that charged the customer: all
# but those declined at once (a returned debit did charge, then came back).
sub pt_debits_by_number
{
	my ($pts) = @_;
	my %debits;
	for my $t (@{ ($pts // $pt->state)->{ach_transactions} })
	{
		next unless $t->{transaction_type} eq 'PAYMENT';
		next if $t->{transaction_status} eq 'DECLINED' && !defined $t->{return_reason};
		push @{ $debits{ $t->{invoice_number} } }, $t;
	}
	return \%debits;
}

sub pt_requests_by_number
{
	my ($pts) = @_;
	my %requests;
	push @{ $requests{ $_->{invoice_number} } }, $_ for @{ ($pts // $pt->state)->{payment_requests} };
	return \%requests;
}

sub clock_of { my ($t) = @_; return strftime('%H:%M:%S', localtime $t) . sprintf('.%03d', ($t * 1000) % 1000); }

# The payments, requests, history, jobs and stand-in records of some invoices.
sub explain_invoices
{
	my ($why, @fp_ids) = @_;
	my $shown = 0;
	my $pts = $pt->state;
	my $txns = pt_transactions_by_number($pts);
	my %ach;
	push @{ $ach{ $_->{invoice_number} } }, $_ for @{ $pts->{ach_transactions} };
	my $requests = pt_requests_by_number($pts);
	my @fp_payments = @{ $fp->state->{payments} };
	my @pt_log = @{ $pt->requests };
	my @fp_log = @{ $fp->requests };
	for my $fp_id (@fp_ids)
	{
		last if ++$shown > 6;
		my $number = number_of($fp_id);
		my $text = "--- $why: invoice $number (FreshPortal $fp_id, " . kind_of($fp_id) . " customer " . customer_of($fp_id)
		  . ", amount $amount{$fp_id})\n";
		$text .= "freshpay.payments:\n" . (try_sql(
			"SELECT string_agg(format('  #%s %s %s %s pt=%s fp=%s code=%s by=%s key=%s ach=%s reason=%s settled=%s msg=%s', p.id, p.kind, p.amount,"
			  . " p.status, p.paytrace_transaction_id, p.freshportal_payment_id, p.response_code, p.requested_by, p.idempotency_key,"
			  . " p.ach_status, p.return_reason, p.settled_at IS NOT NULL, p.message), E'\\n' ORDER BY p.id)"
			  . " FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE i.freshportal_id = $fp_id") // '?') . "\n";
		$text .= "freshpay.payment_requests:\n" . (try_sql(
			"SELECT string_agg(format('  request %s %s %s %s pt=%s payment=%s by=%s created %s msg=%s', q.id, q.mode, q.amount, q.status,"
			  . " q.paytrace_request_id, q.payment_id, q.requested_by, to_char(q.created_at, 'HH24:MI:SS.MS'), q.message), E'\\n' ORDER BY q.id)"
			  . " FROM freshpay.payment_requests q JOIN freshpay.invoices i ON i.id = q.invoice_id WHERE i.freshportal_id = $fp_id") // '?') . "\n";
		$text .= "freshpay.payment_history:\n" . (try_sql(
			"SELECT string_agg(format('  #%s %s %s -> %s [%s] code=%s %s', h.payment_id, to_char(h.at, 'HH24:MI:SS.MS'),"
			  . " h.old_status, h.new_status, h.event, h.response_code, h.message), E'\\n' ORDER BY h.at, h.id)"
			  . " FROM freshpay.payment_history h JOIN freshpay.payments p ON p.id = h.payment_id"
			  . " JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE i.freshportal_id = $fp_id") // '?') . "\n";
		$text .= "freshpay.jobs:\n" . (try_sql(
			"SELECT string_agg(format('  job %s %s %s attempts=%s error=%s', j.id, j.kind, j.state, j.attempts, j.last_error), E'\\n' ORDER BY j.id)"
			  . " FROM freshpay.jobs j JOIN freshpay.invoices i ON i.id = j.invoice_id"
			  . "   OR i.id = (SELECT p.invoice_id FROM freshpay.payments p WHERE p.id = j.payment_id)"
			  . " WHERE i.freshportal_id = $fp_id") // '?') . "\n";
		$text .= "freshpay.exceptions:\n" . (try_sql(
			"SELECT string_agg(format('  %s payment=%s %s', e.kind, e.payment_id, e.detail), E'\\n')"
			  . " FROM freshpay.exceptions e JOIN freshpay.invoices i ON i.id = e.invoice_id WHERE i.freshportal_id = $fp_id") // '?') . "\n";
		$text .= "PayTrace transactions:\n";
		$text .= sprintf("  %s %s %s %s created %s\n", $_->{id}, $_->{kind}, $_->{amount}, $_->{state}, $_->{created})
		  for @{ $txns->{$number} // [] };
		my (%ach_ids, %keys);
		$text .= "PayTrace ACH transactions:\n";
		for my $t (@{ $ach{$number} // [] })
		{
			$ach_ids{ $t->{ach_transaction_id} } = 1;
			$keys{ lc $t->{idempotency_key} } = 1;
			$text .= sprintf("  %s %s %s %s key=%s processed %s settled %s reason %s\n", $t->{ach_transaction_id}, $t->{transaction_type},
				$t->{amount}, $t->{transaction_status}, $t->{idempotency_key}, $t->{processed_at} // '-', $t->{settled_at} // '-',
				$t->{return_reason} // '-');
		}
		$text .= "PayTrace payment requests:\n";
		$text .= sprintf("  %s %s %s %s created %s paid %s transaction %s customer %s\n", $_->{invoice_id}, $_->{transaction_type},
			$_->{invoice_amount} // '-', $_->{status}, $_->{created_at} // '-', $_->{paid_at} // '-', $_->{transaction_id} // '-',
			$_->{customer_id} // '-')
		  for @{ $requests->{$number} // [] };
		$text .= "PayTrace requests:\n";
		for my $r (@pt_log)
		{
			my $body = FreshpayTest::request_body($r);
			my $mine = ($body->{invoice_id} // $body->{including_text} // $body->{invoice_number} // '') eq $number
			  || ($r->{path} =~ m{^\Q$ACH_GET\E/(?:idempotency-keys/)?([^/]+)$} && ($ach_ids{$1} || $keys{ lc $1 }));
			next unless $mine;
			$text .= sprintf("  %s %s %s -> %s%s%s\n", clock_of($r->{time}), $r->{method}, $r->{path}, $r->{status} // 'dropped',
				$r->{fault_name} ? " (fault: $r->{fault_name})" : '', $body->{idempotency_key} ? " key=$body->{idempotency_key}" : '');
		}
		my @mine = grep { $_->{invoice_id} == $fp_id } @fp_payments;
		my %fp_payment_ids = map { $_->{id} => 1 } @mine;
		$text .= "FreshPortal payments:\n";
		$text .= sprintf("  %s %s %s provider_transaction_id=%s%s\n", $_->{id}, $_->{amount}, $_->{status}, $_->{provider_transaction_id} // '',
			$_->{reversal} ? " reversal reason=$_->{reversal}{reason}" : '')
		  for @mine;
		$text .= "FreshPortal requests:\n";
		for my $r (@fp_log)
		{
			next unless $r->{path} =~ m{^/v1/invoices/$fp_id(?:/|$)}
			  || ($r->{path} =~ m{^/v1/payments/(\d+)(?:/|$)} && $fp_payment_ids{$1});
			$text .= sprintf("  %s %s %s -> %s%s\n", clock_of($r->{time}), $r->{method}, $r->{path},
				$r->{status} // 'dropped', $r->{fault_name} ? " (fault: $r->{fault_name})" : '');
		}
		diag($text);
	}
	diag('... and ' . (@fp_ids - 6) . ' more') if @fp_ids > 6;
	return;
}

# is_deeply(\@offending, [], ...) shows only the first; this names them all.
sub none_of
{
	my ($list, $what) = @_;
	my $ok = is_deeply($list, [], $what);
	diag(scalar(@$list) . ' invoice(s): ' . join(', ', @$list)) unless $ok;
	return $ok;
}

# Those of @list not in any of the other lists (each is explained once).
sub not_in
{
	my ($list, @others) = @_;
	my %seen = map { $_ => 1 } map { @$_ } @others;
	return grep { !$seen{$_} } @$list;
}

# --- (a) What is still unknown was never processed by PayTrace ------------------

my $unknown = rows("SELECT p.id, i.freshportal_id, p.invoice_number, p.kind, coalesce(p.idempotency_key::text, '') FROM freshpay.payments p"
	  . " JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE p.status = 'unknown' ORDER BY p.id");
my $pts0 = $pt->state;
my $txns = pt_transactions_by_number($pts0);
my %debit_by_key = map { (lc($_->{idempotency_key} // '') => $_) } @{ $pts0->{ach_transactions} };
my @processed_unknown = map { $_->[1] }
  grep { $_->[3] eq 'ach_sale' ? $debit_by_key{ lc $_->[4] } : @{ $txns->{ $_->[2] } // [] } } @$unknown;
note(elapsed() . ': ' . scalar(@$unknown) . ' payments are unknown once quiet ('
	  . scalar(grep { $_->[3] eq 'ach_sale' } @$unknown) . ' ACH debits)');
none_of(\@processed_unknown, 'unknown once quiet: only attempts PayTrace never processed (card: no transaction with the invoice number;'
	  . ' ACH: no debit with the idempotency key)')
  or explain_invoices('unknown, but PayTrace has a transaction', @processed_unknown);

# --- (b) A person settles each one --------------------------------------------------------

my @resolve_failed;
for my $row (@$unknown)
{
	my ($payment) = @$row;
	my ($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay',
		"SELECT status FROM freshpay_resolve($payment, 'not_processed')");
	push @resolve_failed, "payment $payment: " . ($rc == 0 ? "status $out" : $err) if $rc != 0 || $out ne 'failed';
}
diag('settled ' . scalar(@$unknown) . " unknown payments with freshpay_resolve(id, 'not_processed')") if @$unknown;
is_deeply(\@resolve_failed, [], "freshpay_resolve(id, 'not_processed') settles each unknown payment as failed")
  or diag(join("\n", @resolve_failed[ 0 .. ($#resolve_failed < 4 ? $#resolve_failed : 4) ]));

# --- (c) Quiet again, and the invariants -------------------------------------------------

ok(wait_quiet('after settling', 90), 'quiet again after the unknown payments were settled');

my $pts   = $pt->state;
my $fps   = $fp->state;
my $sales = pt_sales_by_number($pts);
my (%fp_regs, %fp_all);
for my $p (@{ $fps->{payments} })
{
	push @{ $fp_all{ $p->{invoice_id} } }, $p;
	push @{ $fp_regs{ $p->{invoice_id} } }, $p if $p->{status} eq 'registered';
}
my %fp_invoice = map { $_->{id} => $_ } @{ $fps->{invoices} };
my (%local, %all_local);    # FreshPortal id -> [captured payments of freshpay], [all of them]
for my $r (@{ rows("SELECT i.freshportal_id, p.id, p.kind, p.status, coalesce(p.paytrace_transaction_id::text, ''),"
		  . " coalesce(p.freshportal_payment_id::text, ''), p.requested_by, coalesce(p.idempotency_key::text, ''),"
		  . " coalesce(p.ach_status, ''), coalesce(p.return_reason, ''), p.settled_at IS NOT NULL FROM freshpay.payments p"
		  . " JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE i.freshportal_id BETWEEN 5001 AND " . (5000 + $N) . ' ORDER BY p.id') })
{
	my ($fp_id, $id, $kind, $status, $txn, $reg, $by, $key, $ach_status, $reason, $settled) = @$r;
	my $row = { id => $id, kind => $kind, status => $status, txn => $txn, reg => $reg, by => $by, key => lc $key,
		ach_status => $ach_status, reason => $reason, settled => $settled eq 't' };
	push @{ $all_local{$fp_id} }, $row;
	push @{ $local{$fp_id} }, $row if $status eq 'captured';
}

# -- Card customers: each invoice charged once by a sale ---------------------------------

my (@not_once, @not_captured, @wrong_txn, @not_registered, @wrong_registration, @still_open);
for my $fp_id (@card_ids)
{
	my @s = @{ $sales->{ number_of($fp_id) } // [] };
	push @not_once, $fp_id if @s != 1;
	my @c = @{ $local{$fp_id} // [] };
	push @not_captured, $fp_id if @c != 1 || $c[0]{kind} ne 'sale';
	push @wrong_txn, $fp_id if @c != 1 || @s != 1 || $c[0]{txn} ne "$s[0]{id}";
	my @r = @{ $fp_regs{$fp_id} // [] };
	push @not_registered, $fp_id if @r != 1;
	push @wrong_registration, $fp_id
	  if @r != 1 || @c != 1 || $c[0]{reg} ne "$r[0]{id}" || @s != 1 || "$r[0]{provider_transaction_id}" ne "$s[0]{id}";
	push @still_open, $fp_id if ($fp_invoice{$fp_id}{open_amount} // '') ne '0.00';
}
my @double = grep { @{ $sales->{ number_of($_) } // [] } > 1 } @ids;
note(sprintf('%s: %d invoices; PayTrace holds %d approved sales of them; %d charged more than once; FreshPortal holds %d registrations',
	elapsed(), $N, scalar(map { @{ $sales->{ number_of($_) } // [] } } @ids), scalar(@double),
	scalar(map { @{ $fp_regs{$_} // [] } } @ids)));

none_of(\@double, 'no invoice was charged twice (PayTrace holds at most one approved sale per invoice)')
  or explain_invoices('charged more than once', @double);
none_of(\@not_once, 'every card invoice was charged exactly once (one approved PayTrace sale)')
  or explain_invoices('not charged exactly once', not_in(\@not_once, \@double));
none_of(\@not_captured, 'freshpay records exactly one captured sale per card invoice')
  or explain_invoices('not one captured sale in freshpay', @not_captured);
none_of(\@wrong_txn, "every captured sale carries PayTrace's transaction id of the invoice's sale")
  or explain_invoices('transaction id differs from PayTrace', not_in(\@wrong_txn, \@not_once, \@not_captured));
none_of(\@not_registered, 'every card invoice is registered in FreshPortal exactly once (one live registration)')
  or explain_invoices('not registered exactly once', @not_registered);
none_of(\@wrong_registration, "that registration is the one freshpay recorded, under PayTrace's transaction id")
  or explain_invoices('registration differs', not_in(\@wrong_registration, \@not_registered, \@not_captured));
is_deeply(\@still_open, [], 'FreshPortal shows every card invoice paid (open amount 0.00)')
  or diag('still open: ' . join(', ', @still_open[ 0 .. ($#still_open < 19 ? $#still_open : 19) ]));

# -- The ACH customer: each invoice debited once through v3 --------------------------------

my $debits = pt_debits_by_number($pts);
my %returned_by_number = map { $returned_debit{$_}{number} => { %{ $returned_debit{$_} }, id => $_ } } keys %returned_debit;
my @pt_log = @{ $pt->requests };
my @fp_log = @{ $fp->requests };

# What reached PayTrace: each debit's key, each request's invoice number.
my (%key_sends, %key_number, %request_sends);
for my $r (@pt_log)
{
	next if ($r->{status} // 0) == 401;    # a refused token: nothing done, sent again with a new one
	my $body = FreshpayTest::request_body($r);
	if ($r->{method} eq 'POST' && $r->{path} eq $ACH && $is_ours{ $body->{invoice_number} // '' })
	{
		my $key = lc($body->{idempotency_key} // '');
		$key_sends{$key}++;
		$key_number{$key} = $is_ours{ $body->{invoice_number} };
	}
	if ($r->{method} eq 'POST' && $r->{path} eq $REQUEST && $is_ours{ $body->{invoice_number} // '' })
	{
		$request_sends{ $is_ours{ $body->{invoice_number} } }++ unless ($r->{status} // 0) == 429;
	}
}
my %local_keys = map { $_->[0] => 1 } @{ rows("SELECT idempotency_key FROM freshpay.payments WHERE idempotency_key IS NOT NULL") };

my (@ach_double, @ach_not_once, @ach_not_recorded, @ach_wrong_txn, @ach_not_registered, @ach_wrong_registration,
	@ach_still_open, @ach_not_settled);
for my $fp_id (@ach_ids)
{
	my $number = number_of($fp_id);
	my @d = @{ $debits->{$number} // [] };
	push @ach_double, $fp_id if @d > 1;
	push @ach_not_once, $fp_id if @d != 1;
	my $returned = $returned_by_number{$number};
	my @c = grep { $_->{kind} eq 'ach_sale' && $_->{status} =~ /^(?:captured|returned)$/ } @{ $all_local{$fp_id} // [] };
	push @ach_not_recorded, $fp_id if @c != 1 || $c[0]{status} ne ($returned ? 'returned' : 'captured');
	push @ach_wrong_txn, $fp_id
	  if @c != 1 || @d != 1 || $c[0]{txn} ne "$d[0]{ach_transaction_id}" || $c[0]{key} ne lc($d[0]{idempotency_key} // '');
	push @ach_not_settled, $fp_id if @c == 1 && @d == 1 && defined $d[0]{settled_at} && !$c[0]{settled};
	next if $returned;
	my @r = @{ $fp_regs{$fp_id} // [] };
	push @ach_not_registered, $fp_id if @r != 1;
	push @ach_wrong_registration, $fp_id
	  if @r != 1 || @c != 1 || $c[0]{reg} ne "$r[0]{id}" || @d != 1 || "$r[0]{provider_transaction_id}" ne "$d[0]{ach_transaction_id}";
	push @ach_still_open, $fp_id if ($fp_invoice{$fp_id}{open_amount} // '') ne '0.00';
}
my @key_twice = sort { $a <=> $b } map { $key_number{$_} } grep { $key_sends{$_} > 1 } keys %key_sends;
my @key_unrecorded = sort { $a <=> $b } map { $key_number{$_} } grep { !$local_keys{$_} } keys %key_sends;
note(sprintf('%s: %d ACH invoices; PayTrace holds %d debits of them (%d returned, %d settled); %d keys sent',
	elapsed(), scalar @ach_ids, scalar(map { @{ $debits->{ number_of($_) } // [] } } @ach_ids), scalar(keys %returned_debit),
	scalar(grep { defined $_->{settled_at} } map { @{ $debits->{ number_of($_) } // [] } } @ach_ids), scalar(keys %key_sends)));

none_of(\@ach_double, 'no ACH invoice was debited twice (PayTrace holds at most one debit per invoice that was not declined)')
  or explain_invoices('debited more than once', @ach_double);
none_of(\@ach_not_once, 'every ACH invoice was debited exactly once (a returned debit counts)')
  or explain_invoices('not debited exactly once', not_in(\@ach_not_once, \@ach_double));
none_of(\@key_twice, 'no ACH debit was sent twice with the same idempotency key')
  or explain_invoices('a key sent twice', @key_twice);
none_of(\@key_unrecorded, 'every idempotency key PayTrace received is a freshpay payment\'s (recorded before sending)')
  or explain_invoices('a key freshpay has no record of', @key_unrecorded);
none_of(\@ach_not_recorded, 'freshpay records exactly one ACH debit per invoice: captured, or returned for those the bank returned')
  or explain_invoices('not one ACH debit in freshpay', @ach_not_recorded);
none_of(\@ach_wrong_txn, "every ACH debit of freshpay carries PayTrace's id of the invoice's debit and the same idempotency key")
  or explain_invoices('ACH id or key differs from PayTrace', not_in(\@ach_wrong_txn, \@ach_not_once, \@ach_not_recorded));
none_of(\@ach_not_settled, 'every debit PayTrace settled is settled in freshpay (settled_at)')
  or explain_invoices('settlement not followed', @ach_not_settled);
none_of(\@ach_not_registered, 'every ACH invoice not returned is registered in FreshPortal exactly once (one live registration)')
  or explain_invoices('ACH debit not registered exactly once', @ach_not_registered);
none_of(\@ach_wrong_registration, "that registration is the one freshpay recorded, under PayTrace's ACH transaction id")
  or explain_invoices('ACH registration differs', not_in(\@ach_wrong_registration, \@ach_not_registered, \@ach_not_recorded));
is_deeply(\@ach_still_open, [], 'FreshPortal shows every ACH invoice not returned paid (open amount 0.00)')
  or diag('still open: ' . join(', ', @ach_still_open[ 0 .. ($#ach_still_open < 19 ? $#ach_still_open : 19) ]));

# The returned debits: returned in freshpay, the registration reversed
# once, the invoice open again, an exception, and no collection after.
my %ach_exceptions = map { $_->[0] => $_->[1] } @{ rows(
	"SELECT p.invoice_number, e.payment_id FROM freshpay.exceptions e JOIN freshpay.payments p ON p.id = e.payment_id WHERE e.kind = 'ach_returned'") };
my (@not_returned, @not_reversed, @reversed_twice, @not_reopened, @debited_again);
for my $number (sort keys %returned_by_number)
{
	my $ret   = $returned_by_number{$number};
	my $fp_id = $is_ours{$number};
	my @rows  = @{ $all_local{$fp_id} // [] };
	my ($row) = grep { $_->{kind} eq 'ach_sale' && $_->{txn} eq "$ret->{id}" } @rows;
	push @not_returned, $fp_id
	  unless $row && $row->{status} eq 'returned' && $row->{ach_status} eq $ret->{status} && $row->{reason} eq $ret->{reason};
	# Registered once (the bank picked a registered debit), that registration reversed as a chargeback.
	my @all = @{ $fp_all{$fp_id} // [] };
	push @not_reversed, $fp_id
	  if @all != 1 || $all[0]{status} ne 'reversed' || "$all[0]{provider_transaction_id}" ne "$ret->{id}"
	  || ($all[0]{reversal}{reason} // '') ne 'chargeback';
	my %ids = map { $_->{id} => 1 } @all;
	push @reversed_twice, $fp_id
	  if grep { $_->{method} eq 'POST' && $_->{path} =~ m{^/v1/payments/(\d+)/reverse$} && $ids{$1} && ($_->{status} // 0) == 422 } @fp_log;
	push @not_reopened, $fp_id if ($fp_invoice{$fp_id}{open_amount} // '') ne $amount{$fp_id};
	# (a debit sent after the return, a payment recorded after it)
	push @debited_again, $fp_id
	  if @{ $debits->{$number} // [] } != 1 || ($row && grep { $_->{id} > $row->{id} } @rows)
	  || grep { $_->{method} eq 'POST' && $_->{path} eq $ACH && $_->{time} > $ret->{at}
		  && (FreshpayTest::request_body($_)->{invoice_number} // '') eq $number } @pt_log;
}
my @returned_ids = sort { $a <=> $b } map { $is_ours{$_} } keys %returned_by_number;
my @exception_ids = sort { $a <=> $b } map { $is_ours{$_} // 0 } keys %ach_exceptions;
none_of(\@not_returned, "every debit the bank returned is 'returned' in freshpay, with the bank's status and reason")
  or explain_invoices('return not recorded', @not_returned);
none_of(\@not_reversed, 'its FreshPortal registration is reversed (chargeback): no live registration, none made again')
  or explain_invoices('registration of a returned debit not reversed once', @not_reversed);
none_of(\@reversed_twice, 'no reversal was sent again after it was made (FreshPortal never answered "already reversed")')
  or explain_invoices('reversal sent twice', @reversed_twice);
none_of(\@not_reopened, 'FreshPortal shows every returned invoice open again (its full amount)')
  or explain_invoices('returned invoice not open again', not_in(\@not_reopened, \@not_reversed));
none_of(\@debited_again, 'no returned invoice was collected again by freshpay (one debit, no attempt after the return)')
  or explain_invoices('collected again after the return', @debited_again);
is_deeply(\@exception_ids, \@returned_ids, 'freshpay.exceptions shows ach_returned for each returned debit, and only for them')
  or explain_invoices('ach_returned exception', sort { $a <=> $b } keys %{ { map { $_ => 1 } @returned_ids, @exception_ids } });

# -- The customer without a vault profile: payment requests, paid by some payers -----------

my $pt_requests = pt_requests_by_number($pts);
my %local_requests;    # FreshPortal id -> [requests of freshpay]
for my $r (@{ rows("SELECT i.freshportal_id, q.id, q.status, coalesce(q.paytrace_request_id, ''), coalesce(q.payment_id::text, ''),"
		  . " q.mode, q.amount FROM freshpay.payment_requests q JOIN freshpay.invoices i ON i.id = q.invoice_id ORDER BY q.id") })
{
	my ($fp_id, $id, $status, $pt_id, $payment, $mode, $amount) = @$r;
	push @{ $local_requests{$fp_id} },
	  { id => $id, status => $status, pt_id => $pt_id, payment => $payment, mode => $mode, amount => $amount };
}
my (@req_twice, @req_sent_twice, @req_none, @req_local_wrong, @req_paid_not_once, @req_paid_not_recorded,
	@req_paid_not_registered, @req_paid_request_wrong, @req_unpaid_wrong, @req_lost_wrong, @req_charged);
for my $fp_id (@request_ids)
{
	my $number = number_of($fp_id);
	my @held = @{ $pt_requests->{$number} // [] };
	my @q    = @{ $local_requests{$fp_id} // [] };
	my @rows = @{ $all_local{$fp_id} // [] };
	my @s    = @{ $sales->{$number} // [] };
	push @req_twice, $fp_id if @held > 1;
	push @req_sent_twice, $fp_id if ($request_sends{$fp_id} // 0) > 1;
	push @req_none, $fp_id if !@q;
	# At most one that is not failed, none left pending, each for the open amount.
	push @req_local_wrong, $fp_id
	  if (grep { $_->{status} ne 'failed' } @q) > 1 || grep { $_->{status} eq 'pending' || $_->{mode} ne 'sale_and_onboard'
		  || $_->{amount} ne $amount{$fp_id} } @q;
	# Only the payer charged: no sale of freshpay's, no debit, no other payment row.
	my %payer_txn = map { ($_->{transaction_id} // '') => 1 } grep { $_->{status} eq 'paid' } @held;
	push @req_charged, $fp_id
	  if grep({ !$payer_txn{ $_->{id} } } @s) || @{ $debits->{$number} // [] }
	  || grep { $_->{by} ne 'payment request' } @rows;
	my ($request) = @held;
	next unless $request;
	if ($request->{status} eq 'paid')
	{
		push @req_paid_not_once, $fp_id if @s != 1 || "$s[0]{id}" ne "$request->{transaction_id}";
		my @c = grep { $_->{status} eq 'captured' && $_->{txn} eq "$request->{transaction_id}" && $_->{by} eq 'payment request' } @rows;
		push @req_paid_not_recorded, $fp_id if @c != 1 || @rows != 1;
		my @r = @{ $fp_regs{$fp_id} // [] };
		push @req_paid_not_registered, $fp_id
		  if @r != 1 || @c != 1 || $c[0]{reg} ne "$r[0]{id}" || "$r[0]{provider_transaction_id}" ne "$request->{transaction_id}"
		  || ($fp_invoice{$fp_id}{open_amount} // '') ne '0.00';
		my @p = grep { $_->{status} =~ /^(?:paid|onboarded)$/ } @q;
		push @req_paid_request_wrong, $fp_id
		  if @p != 1 || @c != 1 || $p[0]{payment} ne $c[0]{id} || ($p[0]{pt_id} ne '' && $p[0]{pt_id} ne $request->{invoice_id});
	}
	else
	{
		# Sent, or unknown (its answer was lost); not charged, still open in FreshPortal.
		my $latest = $q[-1];
		push @req_unpaid_wrong, $fp_id
		  if !$latest || $latest->{status} !~ /^(?:sent|unknown)$/
		  || ($latest->{status} eq 'sent' && $latest->{pt_id} ne $request->{invoice_id})
		  || @s || @rows || @{ $fp_all{$fp_id} // [] } || ($fp_invoice{$fp_id}{open_amount} // '') ne $amount{$fp_id};
	}
}
# A request PayTrace does not hold was lost before it was made, or never left.
for my $fp_id (grep { !@{ $pt_requests->{ number_of($_) } // [] } } @request_ids)
{
	push @req_lost_wrong, $fp_id
	  if grep { $_->{status} !~ /^(?:unknown|failed)$/ } @{ $local_requests{$fp_id} // [] };
}
my @held_ids = grep { @{ $pt_requests->{ number_of($_) } // [] } } @request_ids;
note(sprintf('%s: %d invoices of the customer without a vault profile; PayTrace holds %d requests of them, %d paid;'
	  . ' freshpay: %s', elapsed(), scalar @request_ids, scalar(map { @{ $pt_requests->{ number_of($_) } // [] } } @request_ids),
	scalar(grep { $_->{status} eq 'paid' } map { @{ $pt_requests->{ number_of($_) } // [] } } @request_ids),
	sql("SELECT coalesce(string_agg(status || ' ' || n, ', ' ORDER BY status), 'no requests')"
		  . " FROM (SELECT status, count(*) n FROM freshpay.payment_requests GROUP BY status) q")));

none_of(\@req_twice, 'PayTrace holds at most one payment request per invoice (never re-sent after a lost answer)')
  or explain_invoices('two requests at PayTrace', @req_twice);
none_of(\@req_sent_twice, 'no payment request was sent to PayTrace twice (POST /v3/invoice once per invoice)')
  or explain_invoices('request sent twice', not_in(\@req_sent_twice, \@req_twice));
none_of(\@req_none, 'every invoice of the customer without a vault profile got a payment request from the rule')
  or explain_invoices('no payment request', @req_none);
none_of(\@req_local_wrong, 'freshpay holds at most one request per invoice that did not fail, none pending, each for the open amount')
  or explain_invoices('payment requests of freshpay', @req_local_wrong);
none_of(\@req_paid_not_once, 'every invoice whose request was paid was charged exactly once: the payer\'s sale')
  or explain_invoices('paid request, not one sale', @req_paid_not_once);
none_of(\@req_paid_not_recorded, "that sale is freshpay's only payment of the invoice, captured, with PayTrace's id, requested_by 'payment request'")
  or explain_invoices('paid request, payment not recorded once', @req_paid_not_recorded);
none_of(\@req_paid_not_registered, 'and registered in FreshPortal exactly once under that id, the invoice paid there')
  or explain_invoices('paid request, not registered once', not_in(\@req_paid_not_registered, \@req_paid_not_recorded));
none_of(\@req_paid_request_wrong, "the request is paid (or onboarded) in freshpay with that payment")
  or explain_invoices('paid request, request row wrong', not_in(\@req_paid_request_wrong, \@req_paid_not_recorded));
none_of(\@req_unpaid_wrong, 'a request PayTrace holds unpaid is sent (with its id) or unknown in freshpay; nothing charged or registered')
  or explain_invoices('unpaid request', @req_unpaid_wrong);
none_of(\@req_lost_wrong, 'a request PayTrace does not hold is unknown or failed in freshpay')
  or explain_invoices('request PayTrace does not hold', @req_lost_wrong);
none_of(\@req_charged, 'no invoice of the customer without a vault profile was charged but by its payer')
  or explain_invoices('charged without a vault profile', @req_charged);

# -- Everything ---------------------------------------------------------------------------

is(sql("SELECT count(*) FROM freshpay.payments WHERE status IN ('pending', 'unknown')"), '0',
	'no payment is left pending or unknown')
  or diag(sql("SELECT string_agg(id || ' ' || status || ' ' || coalesce(invoice_number, ''), ', ') FROM freshpay.payments WHERE status IN ('pending', 'unknown')"));
my $dead = rows("SELECT j.id, j.kind, coalesce(i.freshportal_id::text, ''), j.attempts, coalesce(j.last_error, '')"
	  . " FROM freshpay.jobs j LEFT JOIN freshpay.payments p ON p.id = j.payment_id"
	  . " LEFT JOIN freshpay.invoices i ON i.id = coalesce(j.invoice_id, p.invoice_id) WHERE j.state = 'dead' ORDER BY j.id");
is(scalar @$dead, 0, 'no job is dead')
  or diag(join("\n", map { "dead job $_->[0] $_->[1] invoice $_->[2] after $_->[3] attempts: $_->[4]" } @$dead[ 0 .. ($#$dead < 9 ? $#$dead : 9) ]));
explain_invoices('dead job', do { my %seen; grep { length && !$seen{$_}++ } map { $_->[2] } @$dead })
  if @$dead && !@not_once && !@not_registered;
is(sql("SELECT count(*) FROM freshpay.payments WHERE kind IN ('sale', 'ach_sale') AND requested_by = 'paytrace'"), '0',
	'no sale or ACH debit had to be adopted from PayTrace as made outside freshpay')
  or diag(sql("SELECT string_agg(format('payment %s %s %s of %s for invoice %s (%s), transaction %s, FreshPortal %s', id, kind, status, amount,"
		  . " coalesce(invoice_number, '-'), coalesce(invoice_id::text, 'unmatched'), paytrace_transaction_id, freshportal_payment_id), E'\n' ORDER BY id)"
		  . " FROM freshpay.payments WHERE kind IN ('sale', 'ach_sale') AND requested_by = 'paytrace'"));
is(sql("SELECT count(*) FROM freshpay.payment_history WHERE message ~ $FreshpayTest::TOKEN_PATTERN_SQL"),
	'0', 'no history message contains a token');

note('chaos test took ' . elapsed() . " (seed $SEED)");
$node->stop;
done_testing();
