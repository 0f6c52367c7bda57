# Run last: the server logs of the whole suite (pg_regress's instance and
# every TAP node) contain no API key, password or OAuth token.
use strict;
use warnings;

use File::Find;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

# Server logs: pg_regress's postmaster log, and the TAP nodes' logs
# (tmp_check/log/<test>_<node>.log; regress_log_* are the tests' own logs).
my @logs;
push @logs, $ENV{FRESHPAY_REGRESS_LOG} if $ENV{FRESHPAY_REGRESS_LOG} && -f $ENV{FRESHPAY_REGRESS_LOG};
if ($ENV{FRESHPAY_REGRESS_LOG} && -d $ENV{FRESHPAY_REGRESS_LOG})
{
	find(sub { push @logs, $File::Find::name if -f && /\.log$/ }, $ENV{FRESHPAY_REGRESS_LOG});
}
opendir(my $dh, $PostgreSQL::Test::Utils::log_path) or die "cannot open $PostgreSQL::Test::Utils::log_path: $!";
push @logs, map { "$PostgreSQL::Test::Utils::log_path/$_" }
  grep { /^\d{3}_.+\.log$/ && !/^regress_log_/ } readdir($dh);
closedir($dh);

cmp_ok(scalar(@logs), '>=', 5, 'the server logs of the suite are there to read: ' . scalar(@logs));
my $bytes = 0;
$bytes += -s $_ for @logs;
cmp_ok($bytes, '>', 10_000, "and they are not empty ($bytes bytes)");

# What must never appear: the keys and passwords the suite used, every token
# the shared stand-ins issued, and the stand-ins' token prefixes.
my @tokens = (@{ FreshpayTest::standin('fp')->tokens }, @{ FreshpayTest::standin('pt')->tokens });
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
