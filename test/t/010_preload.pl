# Loading rules: freshpay needs shared_preload_libraries, lives in the
# database named by freshpay.database_name, and its worker starts there.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

# Without preloading, both ways in are refused with a hint, even when
# freshpay.database_name is set (new_node sets it).
my $bare = FreshpayTest::new_node('bare', preload => 0);
my ($out, $err, $rc) = FreshpayTest::psql_result($bare, 'postgres', "LOAD 'freshpay'");
isnt($rc, 0, 'LOAD without preloading fails');
like($err, qr/freshpay must be loaded via shared_preload_libraries/, 'LOAD names the problem');
like($err, qr/HINT:\s+Add freshpay to shared_preload_libraries in postgresql.conf and restart the server/,
	'LOAD hints at the fix');

($out, $err, $rc) = FreshpayTest::psql_result($bare, 'postgres', 'CREATE EXTENSION freshpay');
isnt($rc, 0, 'CREATE EXTENSION without preloading fails');
like($err, qr/freshpay must be loaded via shared_preload_libraries/, 'CREATE EXTENSION names the problem');
like($err, qr/HINT:\s+Add freshpay to shared_preload_libraries/, 'CREATE EXTENSION hints at the fix');
is($bare->safe_psql('postgres', "SELECT count(*) FROM pg_namespace WHERE nspname = 'freshpay'"),
	'0', 'nothing was created');
$bare->stop;

# Preloaded with database_name = 'erp': other databases are refused.
my $node = FreshpayTest::new_node('erp', database => 'erp');
($out, $err, $rc) = FreshpayTest::psql_result($node, 'postgres', 'CREATE EXTENSION freshpay');
isnt($rc, 0, 'CREATE EXTENSION in another database fails');
like($err, qr/can only create extension freshpay in database "erp"/, 'the error names the configured database');
like($err, qr/HINT:\s+Set freshpay.database_name = 'postgres'/, 'the hint names the setting to change');

($out, $err, $rc) = FreshpayTest::psql_result($node, 'erp', 'CREATE EXTENSION freshpay');
is($rc, 0, 'CREATE EXTENSION in the configured database succeeds') or diag($err);
# (TESTDIR: where make installcheck runs; plain prove runs in the checkout)
my $makedir = $ENV{TESTDIR} // '.';
is($node->safe_psql('erp', "SELECT extversion FROM pg_extension WHERE extname = 'freshpay'"),
	`make -s -C '$makedir' print-version 2>/dev/null` =~ s/\s+$//r || '0.2',
	'the default version is the one the Makefile builds');

# The worker runs in that database and names itself in pg_stat_activity.
ok( $node->poll_query_until(
		'erp',
		"SELECT count(*) = 1 FROM pg_stat_activity"
		  . " WHERE backend_type = 'freshpay worker' AND datname = 'erp'"
		  . " AND application_name = 'freshpay worker'"),
	'the freshpay worker is connected to the configured database');

$node->stop;
done_testing();
