# No include circle among freshpay's C modules.
#
# A module x is src/x.c plus src/x.h, and src/x_int.h when there is one (a
# subsystem's private header, shared by its files; PostgreSQL's idiom).
# Module x needs module y when one of x's files has #include "y.h" (or
# "y_int.h") and that header exists in src/ (a quoted include without a
# directory, which the compiler finds in src/; "utils/x.h" and the like are
# PostgreSQL's).  Two modules that need each other, directly or through
# others, are a circle: the test fails and names every one, e.g.
# "attempt -> worker -> attempt".  Needs no server.
use strict;
use warnings;

use Cwd ();
use File::Basename ();
use PostgreSQL::Test::Utils;
use Test::More;

my $src = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../../src');

opendir(my $dh, $src) or die "cannot open $src: $!";
my @files = sort grep { /^[^.].*\.[ch]\z/ && -f "$src/$_" } readdir($dh);
closedir($dh);

# module => { module it includes => "file:line" of the first such include }
my %needs;
for my $file (@files)
{
	(my $module = $file) =~ s/(_int)?\.[ch]\z//;
	$needs{$module} //= {};
	open(my $fh, '<', "$src/$file") or die "cannot read $src/$file: $!";
	while (my $line = <$fh>)
	{
		next unless $line =~ /^\s*#\s*include\s+"([^"\/]+)\.h"/;
		my $header = $1;
		next unless -f "$src/$header.h";
		(my $other = $header) =~ s/_int\z//;
		next if $other eq $module;
		$needs{$module}{$other} //= "$file:$.";
	}
	close $fh;
}
my @modules = sort keys %needs;
cmp_ok(scalar(@modules), '>', 1, 'src/ has modules to check: ' . join(' ', @modules));

# Every elementary circle, once: each is found from its smallest module
# (by name), going only through modules greater than that one.
my @circles;
for my $start (@modules)
{
	my @path = ($start);
	my %on_path = ($start => 1);
	my $walk;
	$walk = sub {
		my ($at) = @_;
		for my $next (sort keys %{ $needs{$at} })
		{
			if ($next eq $start)
			{
				push @circles, [ @path, $start ];
			}
			elsif ($next gt $start && !$on_path{$next} && exists $needs{$next})
			{
				push @path, $next;
				$on_path{$next} = 1;
				$walk->($next);
				delete $on_path{$next};
				pop @path;
			}
		}
	};
	$walk->($start);
	undef $walk;
}

is(scalar(@circles), 0, 'no include circle among freshpay\'s C modules')
  or diag(join '',
	map {
		my @c = @$_;
		join(' -> ', @c) . '   ('
		  . join(', ', map { $needs{ $c[$_] }{ $c[ $_ + 1 ] } } 0 .. $#c - 1) . ")\n"
	} @circles);

done_testing();
