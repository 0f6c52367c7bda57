# Run last: the server logs of the whole suite (pg_regress's instance and
# every TAP node) contain no API key, password or OAuth token.  It reads what
# the other files left behind, so make installcheck runs it after all of them
# (prove's --rules in the Makefile); alone, it reads what an earlier run left.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $log_path = $PostgreSQL::Test::Utils::log_path;

# Server logs: pg_regress's postmaster log (log/ where make installcheck
# runs, TESTDIR), and the TAP nodes' logs (tmp_check/log/<test>_<node>.log;
# regress_log_* are the tests' own logs).
my $regress_log = ($ENV{TESTDIR} // '.') . '/log/postmaster.log';
my @logs;
push @logs, $regress_log if -f $regress_log;
opendir(my $dh, $log_path) or die "cannot open $log_path: $!";
my @names = readdir($dh);
closedir($dh);
push @logs, map { "$log_path/$_" } sort grep { /^\d{3}_.+\.log$/ && !/^regress_log_/ } @names;

# Every token the stand-ins of the run issued (FreshpayTest writes them to
# standin_*.tokens when a stand-in stops).
my @tokens;
for my $file (map { "$log_path/$_" } sort grep { /^standin_.+\.tokens$/ } @names)
{
	open(my $fh, '<', $file) or die "cannot read $file: $!";
	chomp(my @lines = <$fh>);
	close $fh;
	push @tokens, grep { length } @lines;
}
note(scalar(@logs) . ' server logs, ' . scalar(@tokens) . ' tokens');

cmp_ok(scalar(@logs), '>=', 5, 'the server logs of the suite are there to read: ' . scalar(@logs));
my $bytes = 0;
$bytes += -s $_ for @logs;
cmp_ok($bytes, '>', 10_000, "and they are not empty ($bytes bytes)");

# What must never appear: the keys and passwords the suite used, every token
# the stand-ins issued, and the stand-ins' token prefixes.
my @secrets = ('fp-test-key', 'pt-pass', 'not-the-right-key', 'fptok_', 'pttok', @tokens);

my %found;
for my $log (@logs)
{
	open(my $fh, '<', $log) or die "cannot read $log: $!";
	while (my $line = <$fh>)
	{
		for my $secret (@secrets)
		{
			push @{ $found{$secret} }, "$log:$.: $line" if index($line, $secret) >= 0;
		}
	}
	close $fh;
}
for my $secret ('fp-test-key', 'pt-pass', 'not-the-right-key', 'fptok_', 'pttok')
{
	ok(!$found{$secret}, "no server log contains \"$secret\"")
	  or diag(join '', @{ $found{$secret} }[ 0 .. 2 ]);
}
my @leaked = grep { $found{$_} } @tokens;
is(scalar(@leaked), 0, 'no server log contains any of the ' . scalar(@tokens) . ' tokens issued');

done_testing();
