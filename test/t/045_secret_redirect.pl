# A freshpay_admin cannot send a secret a superuser stored as an env: or
# file: reference to a host of its choosing: not by changing a URL of the
# administration, not by moving the secrets row to an administration of its
# own, not by deleting it.  Each is refused with SQLSTATE 42501 and changes
# nothing, and the attacker's server never hears of the secret.  A literal
# secret, a role that could have stored the reference, and a superuser may
# still move things.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FreshpayTest;

my $fp = FreshpayTest::standin('fp');
my $pt = FreshpayTest::standin('pt');
$fp->reset;
$pt->reset;

# The attacker's servers: stand-ins of their own, which log what they get.
my $evil_pt = FreshpayTest::start_standin('pt');
my $evil_fp = FreshpayTest::start_standin('fp');

my $node = FreshpayTest::new_node('redirect', extension => 1);

# The superuser stores the PayTrace password in a file the server reads,
# and the FreshPortal key as a reference to the server's environment.
my $marker = 'file-secret-' . join('', map { ('a' .. 'z')[ int(rand(26)) ] } 1 .. 16);
my $secret_file = PostgreSQL::Test::Utils::tempdir() . '/paytrace_password';
PostgreSQL::Test::Utils::append_to_file($secret_file, "$marker\n");
FreshpayTest::add_administration($node, paytrace_password => "file:$secret_file");
my $env_secret = $ENV{FRESHPAY_TEST_SECRET};    # behind env:FRESHPAY_TEST_SECRET

$node->safe_psql('freshpay', 'CREATE ROLE mallory LOGIN IN ROLE freshpay_admin');
$node->safe_psql('freshpay', 'CREATE ROLE filer LOGIN IN ROLE freshpay_admin, pg_read_server_files');

sub sql { return $node->safe_psql('freshpay', shift); }

# As a login role: (stdout, stderr, rc); SQLSTATEs shown.
sub as_role
{
	my ($role, $sql) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql(
		'freshpay', "\\set VERBOSITY verbose\n$sql",
		stdout        => \$out,
		stderr        => \$err,
		on_error_stop => 1,
		extra_params  => [ '-U', $role ]);
	return ($out, $err, $rc);
}

sub fingerprint
{
	return sql(
		q{SELECT string_agg(concat_ws('|', a.name, a.freshportal_url, a.paytrace_url,
				s.administration, s.freshportal_api_key, s.paytrace_password), E'\n' ORDER BY a.name)
			FROM freshpay.administrations a
			LEFT JOIN freshpay.administration_secrets s ON s.administration = a.name});
}

# What of the secrets the attacker's servers received: 'none', or which
# secret in how many requests.
sub leaked
{
	my @bodies = map { $_->{body} // '' } @{ $evil_pt->requests }, @{ $evil_fp->requests };
	my $file = grep { index($_, $marker) >= 0 } @bodies;
	my $env  = grep { index($_, $env_secret) >= 0 } @bodies;
	return 'none' unless $file || $env;
	return "the file: secret's content in $file request(s), the env: secret in $env request(s)";
}

# mallory's attempt: refused with 42501 and the message, nothing changed;
# then mallory syncs the administration the secret would have gone with, and
# the attacker has heard nothing.
sub refused
{
	my ($what, $attack, $message, $sync) = @_;
	my $before = fingerprint();
	my ($out, $err, $rc) = as_role('mallory', "BEGIN;\n$attack\nCOMMIT;");
	isnt($rc, 0, "$what: refused");
	like($err, qr/ERROR:\s+42501:\s+$message/, "$what: SQLSTATE 42501 and a message naming the change")
	  or diag($err);
	like($err, qr/DETAIL:\s+Its \w+ is an? (env|file): reference/, "$what: the detail names the reference kind");
	like($err, qr/HINT:\s+Ask a superuser/, "$what: the hint says who may");
	unlike($err, qr/\Q$marker\E|\Q$env_secret\E/, "$what: the error shows no secret");
	is(fingerprint(), $before, "$what: administrations and secrets are unchanged");

	# The next token request sends the secrets wherever the row points now.
	as_role('mallory', "SELECT * FROM freshpay_sync('$sync')");
	is(leaked(), 'none', "$what: no secret reached the attacker's server");
	return;
}

# --- The attacks -------------------------------------------------------------

my $evil_pt_url = $evil_pt->url;
my $evil_fp_url = $evil_fp->url;

refused('paytrace_url moved to the attacker',
	"UPDATE freshpay.administrations SET paytrace_url = '$evil_pt_url' WHERE name = 'main';",
	qr/permission denied to change paytrace_url of administration "main"/, 'main');

refused('freshportal_url moved to the attacker',
	"UPDATE freshpay.administrations SET freshportal_url = '$evil_fp_url' WHERE name = 'main';",
	qr/permission denied to change freshportal_url of administration "main"/, 'main');

# An administration of mallory's own, with literal secrets, at the attacker.
my ($out, $err, $rc) = as_role('mallory',
	"SELECT freshpay_add_administration('mine', '$evil_fp_url', 'k', '$evil_pt_url', 'u', 'p', 'i')");
is($rc, 0, 'mallory may add an administration with literal secrets') or diag($err);

refused('the secrets row moved to an administration of the attacker',
	"DELETE FROM freshpay.administration_secrets WHERE administration = 'mine';\n"
	  . "UPDATE freshpay.administration_secrets SET administration = 'mine' WHERE administration = 'main';",
	qr/permission denied to move the secrets of administration "main"/, 'mine');

refused('the secrets row deleted',
	"DELETE FROM freshpay.administration_secrets WHERE administration = 'main';",
	qr/permission denied to delete the secrets of administration "main"/, 'main');

# --- What stays allowed --------------------------------------------------------

# Literal secrets are mallory's own to send anywhere.
($out, $err, $rc) = as_role('mallory',
	"UPDATE freshpay.administrations SET paytrace_url = '$evil_fp_url' WHERE name = 'mine';");
is($rc, 0, 'a URL of an administration with literal secrets can be changed') or diag($err);

# A role that could store a file: reference may redirect one, but not an
# env: reference (the FreshPortal key of main).  Literals here are not the
# stand-ins' real secrets, which 990_no_secrets_in_logs.pl looks for in the
# statement logs.
($out, $err, $rc) = as_role('filer',
	"UPDATE freshpay.administrations SET paytrace_url = 'http://127.0.0.1:9' WHERE name = 'main';");
like($err, qr/ERROR:\s+42501:.*\n.*DETAIL:\s+Its freshportal_api_key is an env: reference/,
	'pg_read_server_files does not allow redirecting an env: reference');
sql(q{UPDATE freshpay.administration_secrets SET freshportal_api_key = 'a-literal-key' WHERE administration = 'main'});
($out, $err, $rc) = as_role('filer',
	"UPDATE freshpay.administrations SET paytrace_url = 'http://127.0.0.1:9' WHERE name = 'main';");
is($rc, 0, 'pg_read_server_files allows redirecting a file: reference') or diag($err);

# The hint's way out: replace the reference with the secret itself.
($out, $err, $rc) = as_role('mallory',
	"UPDATE freshpay.administration_secrets SET paytrace_password = 'a-literal-password' WHERE administration = 'main';\n"
	  . "UPDATE freshpay.administrations SET paytrace_url = '" . $pt->url . "' WHERE name = 'main';");
is($rc, 0, 'with the reference replaced by a literal, freshpay_admin may move the URL') or diag($err);

# A superuser may do anything.
sql(qq{UPDATE freshpay.administration_secrets SET paytrace_password = 'file:$secret_file' WHERE administration = 'main'});
sql(q{UPDATE freshpay.administrations SET paytrace_url = 'http://127.0.0.1:9' WHERE name = 'main'});
is(sql(q{SELECT paytrace_url FROM freshpay.administrations WHERE name = 'main'}),
	'http://127.0.0.1:9', 'a superuser may redirect a file: reference');

# A rename moves the secrets together with their URLs: allowed.
($out, $err, $rc) = as_role('mallory',
	"UPDATE freshpay.administrations SET name = 'renamed' WHERE name = 'main';");
is($rc, 0, 'freshpay_admin may rename an administration with references') or diag($err);
is(sql(q{SELECT paytrace_password FROM freshpay.administration_secrets WHERE administration = 'renamed'}),
	"file:$secret_file", 'its secrets follow the rename');

is(leaked(), 'none', 'in the end, no secret ever reached the attacker');

done_testing();
