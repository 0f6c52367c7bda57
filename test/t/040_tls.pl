# TLS for real: a FreshPortal stand-in served over https with certificates
# made now by openssl for a CA the system does not trust.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $certs = FreshpayTest::make_test_ca(PostgreSQL::Test::Utils::tempdir() . '/certs');
my $good = FreshpayTest::start_standin('fp', tls_cert => $certs->{server_cert}, tls_key => $certs->{server_key});
my $wrong = FreshpayTest::start_standin('fp', tls_cert => $certs->{wrong_cert}, tls_key => $certs->{wrong_key});
like($good->url, qr{^https://127\.0\.0\.1:\d+$}, 'the stand-in serves https');

my $node = FreshpayTest::new_node('tls', extension => 1);
# allow_plain_http stays on: these URLs are https anyway.
FreshpayTest::add_administration($node, name => 'tls', freshportal_url => $good->url);
(my $by_name = $good->url) =~ s/127\.0\.0\.1/localhost/;
FreshpayTest::add_administration($node, name => 'tls_by_name', freshportal_url => $by_name);
FreshpayTest::add_administration($node, name => 'tls_wrong_host', freshportal_url => $wrong->url);

sub sync
{
	my ($administration, $settings) = @_;
	return FreshpayTest::psql_result($node, 'freshpay',
		($settings // '') . "SELECT stream, fetched FROM freshpay_sync('$administration')"
		  . " WHERE stream IN ('customers', 'invoices') ORDER BY 1");
}

# A CA the system does not trust: refused.
my ($out, $err, $rc) = sync('tls');
isnt($rc, 0, 'a certificate from an unknown CA is refused');
like($err, qr/could not establish a verified TLS connection to FreshPortal for administration "tls"/,
	'with a clear message');
like($err, qr/DETAIL:\s+SSL certificate problem: unable to get local issuer certificate/,
	'naming the certificate problem');
like($err, qr/HINT:\s+If the server's certificate is signed by a private CA, set freshpay.ca_file/,
	'and pointing at freshpay.ca_file');

# The same CA named by freshpay.ca_file: accepted, by IP and by name.
my $ca = "SET freshpay.ca_file = '$certs->{ca_cert}';";
($out, $err, $rc) = sync('tls', $ca);
is($rc, 0, 'with freshpay.ca_file naming the CA the sync succeeds') or diag($err);
is($out, "customers|0\ninvoices|0", 'and talks to the stand-in over TLS');
($out, $err, $rc) = sync('tls_by_name', $ca);
is($rc, 0, 'the host name localhost matches the certificate too') or diag($err);

# A certificate for another host name: refused even from the trusted CA.
($out, $err, $rc) = sync('tls_wrong_host', $ca);
isnt($rc, 0, 'a certificate for the wrong host name is refused');
like($err, qr/could not establish a verified TLS connection to FreshPortal for administration "tls_wrong_host"/,
	'with a clear message');
like($err, qr/DETAIL:.*(subject name|does not match|no alternative certificate)/i, 'naming the name mismatch');

# ca_file is a superuser setting.
$node->safe_psql('freshpay', 'CREATE ROLE tls_operator LOGIN IN ROLE freshpay_operator');
($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay', "SET ROLE tls_operator; $ca");
like($err, qr/permission denied to set parameter "freshpay.ca_file"/, 'only a superuser sets freshpay.ca_file');

$node->stop;
$good->stop;
$wrong->stop;
done_testing();
