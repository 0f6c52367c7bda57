# Exactly once under chaos (issue 7, item 4): a few hundred invoices of
# on_issue customers arrive in waves and are collected by the worker while
# both stand-ins inject faults at random positions and the worker is killed
# with SIGKILL and the server stopped with -m immediate several times.
#
# PayTrace: answers lost after the sale was made (close_after), connections
# dropped before it (close_before), 500 (HTML) / 503 / 429, requests
# processed after the client gave up (delay > request_timeout), slow answers
# of processed requests (delay_after), unreadable answers of processed ones
# (malformed_after), failing token calls and lookups.  FreshPortal: 500s on
# auth, lists, re-reads (GET /v1/invoices/{id}) and payment lookups; on
# registrations (POST /v1/invoices/{id}/payments) 500, close_before,
# close_after and a malformed body after committing.
#
# Then, once quiet, with the stand-ins' own records as ground truth: a
# payment still 'unknown' must be one PayTrace never processed; the test
# settles each such payment as a person would (freshpay_resolve(id,
# 'not_processed')), waits until quiet again, and checks that every invoice
# was charged exactly once (one approved PayTrace sale), that freshpay
# recorded that sale captured with PayTrace's transaction id, that it is
# registered in FreshPortal exactly once (the registration freshpay
# recorded), that nothing is pending or unknown and that no job is dead.
#
# The randomness is seeded: FRESHPAY_CHAOS_SEED=n replays a run's faults and
# crash schedule (the arrival order of concurrent requests, and so the exact
# positions of the faults, can still differ).  FRESHPAY_CHAOS_INVOICES
# changes the number of invoices (default 240).
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
FreshpayTest::add_administration($node, freshportal_url => $fp->url, paytrace_url => $pt->url);

my $SALE   = '/v1/transactions/sale/by_customer';
my $EXPORT = '/v1/transactions/export/by_date_range';

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

my @profiles = map { "C-CHAOS-$_" } 1 .. 4;
$pt->customers([ map { { customer_id => $_, method => 'card' } } @profiles ]);
$fp->seed({ customers => [ map { +{ id => $_, code => "CHAOS$_", name => "Chaos Florist $_", currency => 'USD' } } 1 .. 4 ] });
sql("SELECT count(*) FROM freshpay_sync('main')");
for my $id (1 .. 4)
{
	sql("SELECT 1 FROM freshpay_link_customer((SELECT id FROM freshpay.customers WHERE freshportal_id = $id),"
		  . " 'C-CHAOS-$id', 'on_issue', 'card')");
}
is(sql("SELECT count(*) FROM freshpay.customers WHERE collection = 'on_issue'"), '4',
	'setup: 4 customers collected on_issue');

my $today = strftime('%Y-%m-%d', localtime);
my @ids = map { 5000 + $_ } 1 .. $N;
# (never 0.29, PayTrace's decline trigger)
my %amount = map { $_ => sprintf('%d.%02d', 20 + ($_ * 37) % 700, ($_ * 13) % 100) } @ids;
sub number_of { return "CH-$_[0]"; }

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

my $pt_set = $pt->set_faults(\@pt_rules, $SEED);
my $fp_set = $fp->set_faults(\@fp_rules, $SEED + 1);
is_deeply([ scalar @{ $pt_set->{rules} }, $pt_set->{seed}, scalar @{ $fp_set->{rules} }, $fp_set->{seed} ],
	[ scalar @pt_rules, $SEED, scalar @fp_rules, $SEED + 1 ], 'chaos: random faults set on both stand-ins, seeded');

# --- The run ------------------------------------------------------------------------

my ($kills, $stops, $t_start) = (0, 0, time);
my @events = sort { $a->[0] <=> $b->[0] } ((map { [ $_->[0], 'wave', $_->[1] ] } @waves), @crashes);
for my $event (@events)
{
	my ($at, $kind, $arg) = @$event;
	my $wait = $t_start + $at - time;
	sleep $wait if $wait > 0;
	if ($kind eq 'wave')
	{
		$fp->seed({ invoices => [ map { +{ id => $_, number => number_of($_), customer_id => 1 + $_ % 4,
						invoice_date => $today, amount_incl_vat => $amount{$_} } } @$arg ] });
		note(elapsed() . ': ' . scalar(@$arg) . " invoices arrive at FreshPortal ($arg->[0]..$arg->[-1])");
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
my %hits;
for my $rule (@{ $pt->admin_get('/_standin/requests')->{requests} }, @{ $fp->admin_get('/_standin/requests')->{requests} })
{
	$hits{ $rule->{fault_name} }++ if defined $rule->{fault_name};
}
note(elapsed() . ': faults off; faults met: ' . join(', ', map { "$_ $hits{$_}" } sort keys %hits));
cmp_ok(scalar(keys %hits), '>=', 10, 'chaos: at least 10 kinds of fault were met (' . scalar(keys %hits) . ')');
ok(scalar(grep { /^sale (?:close_after|processed|answered)/ } keys %hits), 'chaos: some sale was processed while its answer was lost or late');

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
        FROM (SELECT kind, state, count(*) n FROM freshpay.jobs GROUP BY 1, 2) j), '')
SQL

sub standin_snapshot
{
	my $txns = $pt->state->{transactions};
	my $pays = $fp->state->{payments};
	return scalar(@$txns) . '/' . scalar(grep { $_->{status} eq 'registered' } @$pays) . '/' . scalar(@$pays);
}

sub wait_quiet
{
	my ($what, $timeout) = @_;
	my ($last, $since) = ('', time);
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		my $local = try_sql($SNAPSHOT);
		# The worker's scheduled sync brings what has not arrived yet; a
		# sync of our own as well, in case a FreshPortal stream is stuck.
		if (defined $local && $local =~ m{^(\d+)/} && $1 < $N)
		{
			try_sql("SELECT count(*) FROM freshpay_sync('main')");
		}
		my $now = ($local // 'down') . ' | ' . standin_snapshot();
		if ($now ne $last)
		{
			($last, $since) = ($now, time);
		}
		elsif (defined $local && $local =~ m{^$N/0/0/} && time - $since >= 6)
		{
			note(elapsed() . ": quiet ($what): $now");
			return 1;
		}
		sleep 0.5;
	}
	diag("not quiet after $timeout s ($what): $last (invoices/pending/busy jobs/statuses/registered/jobs | PayTrace transactions/FreshPortal registered/all)");
	diag('queued jobs: ' . (try_sql("SELECT string_agg(id || ' ' || kind || ' payment ' || coalesce(payment_id::text, '-') || ' invoice '"
		  . " || coalesce(invoice_id::text, '-') || ' attempts ' || attempts || ' next_run_at +' || round(extract(epoch FROM next_run_at - now())) || 's: '"
		  . " || coalesce(last_error, ''), E'\\n') FROM freshpay.jobs WHERE state = 'queued'") // '?'));
	return 0;
}

# Delayed requests may still be processed for $TIMEOUT + 9 s.
ok(wait_quiet('after the chaos', 150), 'quiet after the chaos: every invoice synced, nothing pending, no job left but for unknown outcomes');

# --- Ground truth ---------------------------------------------------------------------

my %is_ours = map { number_of($_) => $_ } @ids;

# PayTrace: approved sales per invoice number (a declined one is no charge).
sub pt_sales_by_number
{
	my %sales;
	for my $t (@{ $pt->state->{transactions} })
	{
		next unless $t->{kind} eq 'SALE' && $t->{state} ne 'declined';
		push @{ $sales{ $t->{invoice_id} } }, $t;
	}
	return \%sales;
}

# All transactions per invoice number, whatever their kind or state.
sub pt_transactions_by_number
{
	my %txns;
	push @{ $txns{ $_->{invoice_id} } }, $_ for @{ $pt->state->{transactions} };
	return \%txns;
}

# The payments, history, jobs and stand-in records of some invoices.
sub explain_invoices
{
	my ($why, @fp_ids) = @_;
	my $shown = 0;
	my $txns = pt_transactions_by_number();
	my @fp_payments = @{ $fp->state->{payments} };
	my @pt_log = @{ $pt->requests };
	my @fp_log = @{ $fp->requests };
	for my $fp_id (@fp_ids)
	{
		last if ++$shown > 6;
		my $number = number_of($fp_id);
		my $text = "--- $why: invoice $number (FreshPortal $fp_id, amount $amount{$fp_id})\n";
		$text .= "freshpay.payments:\n" . (try_sql(
			"SELECT string_agg(format('  #%s %s %s %s pt=%s fp=%s code=%s by=%s msg=%s', p.id, p.kind, p.amount, p.status,"
			  . " p.paytrace_transaction_id, p.freshportal_payment_id, p.response_code, p.requested_by, p.message), E'\\n' ORDER BY p.id)"
			  . " FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE i.freshportal_id = $fp_id") // '?') . "\n";
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
		$text .= "PayTrace transactions:\n";
		$text .= sprintf("  %s %s %s %s created %s\n", $_->{id}, $_->{kind}, $_->{amount}, $_->{state}, $_->{created})
		  for @{ $txns->{$number} // [] };
		$text .= "PayTrace requests:\n";
		for my $r (@pt_log)
		{
			my $body = FreshpayTest::request_body($r);
			next unless ($body->{invoice_id} // $body->{including_text} // '') eq $number;
			$text .= sprintf("  %s %s %s -> %s%s\n", strftime('%H:%M:%S', localtime $r->{time}) . sprintf('.%03d', ($r->{time} * 1000) % 1000),
				$r->{method}, $r->{path}, $r->{status} // 'dropped', $r->{fault_name} ? " (fault: $r->{fault_name})" : '');
		}
		$text .= "FreshPortal payments:\n";
		$text .= sprintf("  %s %s %s provider_transaction_id=%s\n", $_->{id}, $_->{amount}, $_->{status}, $_->{provider_transaction_id} // '')
		  for grep { $_->{invoice_id} == $fp_id } @fp_payments;
		$text .= "FreshPortal requests:\n";
		for my $r (@fp_log)
		{
			next unless $r->{path} =~ m{^/v1/invoices/$fp_id(?:/|$)};
			$text .= sprintf("  %s %s %s -> %s%s\n", strftime('%H:%M:%S', localtime $r->{time}), $r->{method}, $r->{path},
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

# --- (a) What is still unknown was never processed by PayTrace ------------------

my $unknown = rows("SELECT p.id, i.freshportal_id, p.invoice_number FROM freshpay.payments p"
	  . " JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE p.status = 'unknown' ORDER BY p.id");
my $txns = pt_transactions_by_number();
my @processed_unknown = map { $_->[1] } grep { @{ $txns->{ $_->[2] } // [] } } @$unknown;
note(elapsed() . ': ' . scalar(@$unknown) . ' payments are unknown once quiet');
none_of(\@processed_unknown, 'unknown once quiet: only attempts PayTrace never processed (no transaction with the invoice number)')
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

my $sales = pt_sales_by_number();
my %fp_regs;
for my $p (@{ $fp->state->{payments} })
{
	push @{ $fp_regs{ $p->{invoice_id} } }, $p if $p->{status} eq 'registered';
}
my %fp_invoice = map { $_->{id} => $_ } @{ $fp->state->{invoices} };
my %local;    # FreshPortal id -> [captured sales of freshpay]
for my $r (@{ rows("SELECT i.freshportal_id, p.id, p.kind, p.status, coalesce(p.paytrace_transaction_id::text, ''),"
		  . " coalesce(p.freshportal_payment_id::text, ''), p.requested_by FROM freshpay.payments p"
		  . " JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE i.freshportal_id BETWEEN 5001 AND " . (5000 + $N)) })
{
	my ($fp_id, $id, $kind, $status, $txn, $reg, $by) = @$r;
	push @{ $local{$fp_id} }, { id => $id, kind => $kind, status => $status, txn => $txn, reg => $reg, by => $by }
	  if $status eq 'captured';
}

my (@not_once, @not_captured, @wrong_txn, @not_registered, @wrong_registration, @still_open);
for my $fp_id (@ids)
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
none_of(\@not_once, 'every invoice was charged exactly once (one approved PayTrace sale)')
  or explain_invoices('not charged exactly once', grep { my $x = $_; !grep { $_ == $x } @double } @not_once);
none_of(\@not_captured, 'freshpay records exactly one captured sale per invoice')
  or explain_invoices('not one captured sale in freshpay', @not_captured);
none_of(\@wrong_txn, "every captured sale carries PayTrace's transaction id of the invoice's sale")
  or explain_invoices('transaction id differs from PayTrace', grep { my $x = $_; !grep { $_ == $x } @not_once, @not_captured } @wrong_txn);
none_of(\@not_registered, 'every invoice is registered in FreshPortal exactly once (one live registration)')
  or explain_invoices('not registered exactly once', @not_registered);
none_of(\@wrong_registration, "that registration is the one freshpay recorded, under PayTrace's transaction id")
  or explain_invoices('registration differs', grep { my $x = $_; !grep { $_ == $x } @not_registered, @not_captured } @wrong_registration);
is_deeply(\@still_open, [], 'FreshPortal shows every invoice paid (open amount 0.00)')
  or diag('still open: ' . join(', ', @still_open[ 0 .. ($#still_open < 19 ? $#still_open : 19) ]));

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
is(sql("SELECT count(*) FROM freshpay.payments WHERE kind = 'sale' AND requested_by = 'paytrace'"), '0',
	'no sale had to be adopted from PayTrace as made outside freshpay')
  or diag(sql("SELECT string_agg(format('payment %s %s of %s for invoice %s (%s), transaction %s, FreshPortal %s', id, status, amount,"
		  . " coalesce(invoice_number, '-'), coalesce(invoice_id::text, 'unmatched'), paytrace_transaction_id, freshportal_payment_id), E'\n' ORDER BY id)"
		  . " FROM freshpay.payments WHERE kind = 'sale' AND requested_by = 'paytrace'"));
is(sql("SELECT count(*) FROM freshpay.payment_history WHERE message ~ $FreshpayTest::TOKEN_PATTERN_SQL"),
	'0', 'no history message contains a token');

note('chaos test took ' . elapsed() . " (seed $SEED)");
$node->stop;
done_testing();
