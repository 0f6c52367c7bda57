# The stand-in servers behave as the other tests assume.
#
# Runs the stand-ins' own self-test (test/standin/selftest.py, which speaks
# TAP) and turns each of its results into an assertion of this file, so that
# prove counts them and a broken stand-in is reported before the tests that
# depend on it.  The self-test also fails this file by exiting non-zero, or
# by running fewer tests than it planned.

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $selftest = FreshpayTest::standin_dir() . '/selftest.py';
if (!-f $selftest)
{
	fail("stand-in self-test $selftest exists");
	done_testing();
	exit;
}

my ($out, $err) = ('', '');
my $timeout = IPC::Run::timeout(600);
my $ran = eval {
	IPC::Run::run([ 'python3', $selftest ], '<', \undef, '>', \$out, '2>', \$err, $timeout);
	1;
};
my $exit = $ran ? $? >> 8 : -1;
diag("selftest.py did not finish: $@") unless $ran;
note("selftest.py stderr:\n$err") if $err ne '';

my ($planned, $seen) = (undef, 0);
for my $line (split /\n/, $out)
{
	if ($line =~ /^1\.\.(\d+)/)
	{
		$planned = $1;
		next;
	}
	if ($line =~ /^(not )?ok\b\s*(?:\d+)?\s*(?:-\s*)?(.*)$/)
	{
		my ($not, $rest) = ($1, $2);
		$seen++;
		my ($desc, $directive, $reason) = ($rest, '', '');
		if ($rest =~ /^(.*?)\s*(?<!\\)#\s*(SKIP|TODO)\b\s*(.*)$/i)
		{
			($desc, $directive, $reason) = ($1, uc $2, $3);
		}
		$desc = "selftest: $desc";
		if ($directive eq 'SKIP')
		{
		  SKIP: { skip($reason || $desc, 1); }
		}
		elsif ($directive eq 'TODO')
		{
		  TODO: {
				local $TODO = $reason || 'todo';
				ok(!$not, $desc);
			}
		}
		else
		{
			ok(!$not, $desc);
		}
		next;
	}
	if ($line =~ /^Bail out!\s*(.*)/)
	{
		fail("selftest.py bailed out: $1");
		next;
	}
	# comments and diagnostics of the self-test
	note($line) if $line =~ /\S/;
}

ok($seen > 0, 'selftest.py reported results');
if (defined $planned)
{
	is($seen, $planned, "selftest.py ran all $planned planned tests");
}
is($exit, 0, 'selftest.py exited with status 0')
  or diag("selftest.py stderr:\n$err");

done_testing();
