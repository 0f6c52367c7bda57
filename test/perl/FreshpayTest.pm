
=pod

=head1 NAME

FreshpayTest - helpers for freshpay's TAP tests

=head1 SYNOPSIS

  use PostgreSQL::Test::Utils;
  use Test::More;
  use FreshpayTest;

  my $fp   = FreshpayTest::standin('fp');      # this file's FreshPortal stand-in
  my $pt   = FreshpayTest::standin('pt');      # this file's PayTrace stand-in
  $fp->seed({ customers => [...], invoices => [...] });

  my $node = FreshpayTest::new_node('main');   # preloaded, database "freshpay"
  FreshpayTest::add_administration($node);
  my ($out, $err, $rc) = FreshpayTest::psql_result($node, 'freshpay',
      'SELECT * FROM freshpay_sync()');

=head1 DESCRIPTION

Every test file runs alone: C<make installcheck> runs them all (several at
once with C<PROVE_FLAGS=-j2>), and one runs with plain prove, e.g.

  PG_REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress \
  prove -I test/perl -I /usr/lib/postgresql/15/lib/pgxs/src/test/perl test/t/050_collect.pl

A file shares nothing with the others: C<standin()> starts the file's own
FreshPortal or PayTrace stand-in the first time it is asked for one, and
C<start_standin> any further ones (TLS, a stand-in to redirect secrets to);
all of them stop when the file ends.  Loading this module sets the secrets
the servers resolve through C<env:> references in the environment the nodes
inherit: FRESHPAY_TEST_SECRET (the FreshPortal API key) and
FRESHPAY_TEST_PT_PASSWORD (the PayTrace password).

Only Perl core modules and what PostgreSQL's test framework provides
(PostgreSQL::Test::Cluster, PostgreSQL::Test::Utils, IPC::Run) are used.

=cut

package FreshpayTest;

use strict;
use warnings;

use Carp;
use Cwd ();
use File::Basename ();
use File::Path qw(make_path);
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);

# Credentials the stand-ins accept by default (see their CONFIG_DEFAULTS).
# freshpay reads the secrets through env: references from the server's
# environment, which the nodes a test starts inherit from this process.
our $FP_API_KEY          = 'fp-test-key';
our $PT_PASSWORD         = 'pt-pass';
$ENV{FRESHPAY_TEST_SECRET}       = $FP_API_KEY;
$ENV{FRESHPAY_TEST_PT_PASSWORD}  = $PT_PASSWORD;
our $FP_API_KEY_REF      = 'env:FRESHPAY_TEST_SECRET';
our $PT_USERNAME         = 'pt-user';
our $PT_PASSWORD_REF     = 'env:FRESHPAY_TEST_PT_PASSWORD';
our $PT_INTEGRATOR_ID    = 'pt-integrator';

# An SQL expression matching the stand-ins' token prefixes, spelled in pieces:
# the test clusters log every statement, and 990_no_secrets_in_logs.pl greps
# the server logs for those prefixes, so a statement must not contain them.
our $TOKEN_PATTERN_SQL = q{('(pt' || 'tok|fp' || 'tok_)')};

my %SCRIPT = (fp => 'freshportal.py', pt => 'paytrace.py');
my @started;    # stand-ins started by start_standin, stopped in END
my $started_count = 0;
my %own;        # the stand-in of each kind standin() started

# test/standin/, next to this module's test/perl/.
my $STANDIN_DIR = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../standin');

=pod

=head1 FUNCTIONS

=over

=item new_node($name, %opts)

Create, configure and start a PostgreSQL node for freshpay and return it
(a PostgreSQL::Test::Cluster).  The configuration added:

  shared_preload_libraries = 'freshpay'     (unless preload => 0)
  freshpay.database_name = 'freshpay'       (or $opts{database})
  freshpay.allow_plain_http = on
  freshpay.sync_interval = 0
  $opts{conf}                               (extra text, verbatim)

Options: C<start =E<gt> 0> leaves the node stopped; C<create_db =E<gt> 0>
skips CREATE DATABASE (also skipped when C<preload =E<gt> 0> or not started);
C<extension =E<gt> 1> also runs CREATE EXTENSION freshpay in the database;
C<init =E<gt> {...}> is passed to C<< $node->init >> (e.g. allows_streaming).

=cut

sub new_node
{
	my ($name, %opts) = @_;
	my $db      = $opts{database} // 'freshpay';
	my $preload = $opts{preload}  // 1;
	my $start   = $opts{start}    // 1;

	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opts{init} // {} });

	my $conf = "\n# Added by FreshpayTest::new_node\n";
	$conf .= "shared_preload_libraries = 'freshpay'\n" if $preload;
	$conf .= "freshpay.database_name = '$db'\n";
	$conf .= "freshpay.allow_plain_http = on\n";
	$conf .= "freshpay.sync_interval = 0\n";
	$conf .= "$opts{conf}\n" if defined $opts{conf};
	$node->append_conf('postgresql.conf', $conf);

	return $node unless $start;
	$node->start;
	if ($preload && ($opts{create_db} // 1))
	{
		$node->safe_psql('postgres', 'CREATE DATABASE ' . quote_ident($db));
		$node->safe_psql($db, 'CREATE EXTENSION freshpay') if $opts{extension};
	}
	return $node;
}

=pod

=item call($node, $sql)

A money call (or any SQL) in database freshpay with errors shown verbosely
(their SQLSTATE): returns (stdout without its last newline, stderr).

=cut

sub call
{
	my ($node, $sql) = @_;
	my ($out, $err) = psql_result($node, 'freshpay', "\\set VERBOSITY verbose\n$sql");
	chomp $out;
	return ($out, $err);
}

=pod

=item psql_result($node, $db, $sql)

Run $sql with psql (ON_ERROR_STOP) and return (stdout, stderr, exit code);
never dies.  Exit code 0 means every statement succeeded, 3 that one failed.

=cut

sub psql_result
{
	my ($node, $db, $sql) = @_;
	my ($stdout, $stderr) = ('', '');
	my $rc = $node->psql(
		$db, $sql,
		stdout        => \$stdout,
		stderr        => \$stderr,
		on_error_stop => 1);
	return ($stdout, $stderr, $rc);
}

=pod

=item add_administration($node, %opts)

Run freshpay_add_administration() in database C<$opts{database}> (default
"freshpay") with the URLs of this file's stand-ins (C<standin()>) and the
secrets as C<env:> references; any argument can be overridden by name (C<name>,
C<freshportal_url>, C<freshportal_api_key>, C<paytrace_url>,
C<paytrace_username>, C<paytrace_password>, C<paytrace_integrator_id>).
Dies when the call fails; returns psql's output.

=cut

sub add_administration
{
	my ($node, %opts) = @_;
	my $db = delete $opts{database} // 'freshpay';
	# (a stand-in is started only for a URL not given)
	$opts{freshportal_url} = standin('fp')->url unless exists $opts{freshportal_url};
	$opts{paytrace_url}    = standin('pt')->url unless exists $opts{paytrace_url};
	my %args = (
		name                   => 'main',
		freshportal_api_key    => $FP_API_KEY_REF,
		paytrace_username      => $PT_USERNAME,
		paytrace_password      => $PT_PASSWORD_REF,
		paytrace_integrator_id => $PT_INTEGRATOR_ID,
		%opts);
	my @order = qw(name freshportal_url freshportal_api_key paytrace_url
	  paytrace_username paytrace_password paytrace_integrator_id);
	my %known = map { $_ => 1 } @order;
	push @order, sort grep { !$known{$_} } keys %args;
	my $call = join(",\n  ",
		map { "$_ => " . quote_literal($args{$_}) } grep { defined $args{$_} } @order);
	return $node->safe_psql($db, "SELECT freshpay_add_administration(\n  $call)");
}

=pod

=item standin($kind)

This test file's stand-in of a kind: C<'fp'> (FreshPortal) or C<'pt'>
(PayTrace), started (quiet: no request lines in its log) the first time it is
asked for, and the same one every time after; it stops when the file ends.
Returns a FreshpayTest::Standin (methods below).

=cut

sub standin
{
	my ($kind) = @_;
	croak "standin: kind must be 'fp' or 'pt'" unless $kind && $SCRIPT{$kind};
	$own{$kind} //= start_standin($kind, args => ['--quiet']);
	return $own{$kind};
}

=pod

=item standin_dir()

The directory of the stand-in scripts, test/standin/.

=cut

sub standin_dir { return $STANDIN_DIR; }

=pod

=item start_standin($kind, %opts)

Start a new stand-in process of its own (C<'fp'> or C<'pt'>) on a free port
and return a FreshpayTest::Standin for it, which also has C<stop>.  Options:

  tls_cert, tls_key   serve https with this certificate and key
  host_name           host name to put in url() (default 127.0.0.1), e.g.
                      "localhost" to match a certificate's DNS name
  args                arrayref of extra command-line arguments (e.g. ['--replay'])

Admin calls to an https stand-in go through the curl command line
(certificate checks off); url() and stop() work in every case.  The output
of the process goes to tmp_check/log/standin_<test>_<kind>_<n>.log, and
when it stops, the tokens it issued to ...<n>.tokens beside it (one a line,
for 990_no_secrets_in_logs.pl).  Every stand-in started this way is stopped
when the test script ends.

=cut

sub start_standin
{
	my ($kind, %opts) = @_;
	croak "start_standin: kind must be 'fp' or 'pt'" unless $kind && $SCRIPT{$kind};
	my $dir = $STANDIN_DIR;
	my $tls = defined $opts{tls_cert};

	$started_count++;
	my $portfile = PostgreSQL::Test::Utils::tempdir() . "/$kind.port";
	# Named after the test file too: files that run side by side (prove -j)
	# must not write one log.
	my $test = File::Basename::basename($0, '.pl');
	my $log = "$PostgreSQL::Test::Utils::log_path/standin_${test}_${kind}_$started_count.log";
	my @cmd = ('python3', "$dir/$SCRIPT{$kind}", '--port', '0', '--port-file', $portfile);
	push @cmd, '--tls-cert', $opts{tls_cert} if $tls;
	push @cmd, '--tls-key', $opts{tls_key} if defined $opts{tls_key};
	push @cmd, @{ $opts{args} } if $opts{args};

	note "starting stand-in: @cmd";
	my $pid = fork() // croak "fork failed: $!";
	if ($pid == 0)
	{
		# The child: output to the log, then become the stand-in.  Never
		# return into the test script (no END blocks, no TAP output).
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>', $log) or POSIX::_exit(126);
		open(STDERR, '>&', \*STDOUT) or POSIX::_exit(126);
		exec({ $cmd[0] } @cmd) or POSIX::_exit(127);
	}

	my $port;
	my $deadline = time + 15;
	while (time < $deadline)
	{
		if (-s $portfile && open(my $fh, '<', $portfile))
		{
			my $text = <$fh> // '';
			close $fh;
			if ($text =~ /^\s*(\d+)\s*$/) { $port = $1; last; }
		}
		if (waitpid($pid, POSIX::WNOHANG()) == $pid)
		{
			my $output = -f $log ? PostgreSQL::Test::Utils::slurp_file($log) : '';
			croak "stand-in @cmd exited (status $?) before it was ready:\n$output";
		}
		sleep 0.05;
	}
	if (!defined $port)
	{
		kill 'KILL', $pid;
		waitpid($pid, 0);
		croak "stand-in @cmd wrote no port file within 15 s";
	}

	my $host = $opts{host_name} // '127.0.0.1';
	my $self = FreshpayTest::Standin->_new(
		kind    => $kind,
		url     => ($tls ? 'https' : 'http') . "://$host:$port",
		pid     => $pid,
		port    => $port,
		log     => $log,
		ca_cert => $opts{ca_cert});
	push @started, $self;
	note "stand-in $kind listening at " . $self->url . " (pid $pid)";
	return $self;
}

=pod

=item make_test_ca($dir)

With the openssl command line, create in $dir (made if missing) a test CA and
two server certificates signed by it: one for C<IP:127.0.0.1, DNS:localhost>
and one for the wrong host (C<DNS:wrong.example.test> only).  Returns a
hashref of file names: C<ca_cert>, C<ca_key>, C<server_cert>, C<server_key>,
C<wrong_cert>, C<wrong_key>.  Keys are EC P-256 (quick to make).

=cut

sub make_test_ca
{
	my ($dir) = @_;
	make_path($dir);
	my %f = (
		ca_cert     => "$dir/ca.crt",
		ca_key      => "$dir/ca.key",
		server_cert => "$dir/server.crt",
		server_key  => "$dir/server.key",
		wrong_cert  => "$dir/wrong.crt",
		wrong_key   => "$dir/wrong.key");
	my @ec = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes');

	_openssl('req', '-x509', @ec, '-keyout', $f{ca_key}, '-out', $f{ca_cert},
		'-days', '3650', '-subj', '/CN=freshpay test CA',
		'-addext', 'basicConstraints=critical,CA:TRUE',
		'-addext', 'keyUsage=critical,keyCertSign,cRLSign');

	for my $leaf (['server', 'localhost', 'IP:127.0.0.1,DNS:localhost'],
		['wrong', 'wrong.example.test', 'DNS:wrong.example.test'])
	{
		my ($name, $cn, $san) = @$leaf;
		my $csr = "$dir/$name.csr";
		my $ext = "$dir/$name.ext";
		open(my $fh, '>', $ext) or croak "cannot write $ext: $!";
		print $fh "basicConstraints = CA:FALSE\n",
		  "keyUsage = critical, digitalSignature, keyEncipherment\n",
		  "extendedKeyUsage = serverAuth\n",
		  "subjectAltName = $san\n";
		close $fh;
		_openssl('req', '-new', @ec, '-keyout', $f{"${name}_key"}, '-out', $csr,
			'-subj', "/CN=$cn");
		_openssl('x509', '-req', '-in', $csr, '-CA', $f{ca_cert}, '-CAkey', $f{ca_key},
			'-CAcreateserial', '-out', $f{"${name}_cert"}, '-days', '3650',
			'-sha256', '-extfile', $ext);
	}
	chmod 0600, $f{ca_key}, $f{server_key}, $f{wrong_key};
	return \%f;
}

sub _openssl
{
	my @cmd = ('openssl', @_);
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err)
	  or croak "command failed: @cmd\n$err$out";
	return;
}

=pod

=item wait_for($code, $timeout, $what)

Call $code every 0.1 s until it returns true or $timeout seconds (default:
the framework's timeout, 180 s) pass; returns the true value, or undef after
a diag naming $what.  For "the worker has sent the request" checks.

=cut

sub wait_for
{
	my ($code, $timeout, $what) = @_;
	$timeout //= $PostgreSQL::Test::Utils::timeout_default;
	my $deadline = time + $timeout;
	while (1)
	{
		my $value = $code->();
		return $value if $value;
		last if time > $deadline;
		sleep 0.1;
	}
	diag('timed out after ' . $timeout . ' s waiting for ' . ($what // 'a condition'));
	return undef;
}

=pod

=item poll_true($node, $query, $timeout, $what)

Wait until $query (in database freshpay) returns C<t>.  A failed connection
counts as "not yet", so polls survive a server restart: also one where psql
gave up before it read the query (IPC::Run then dies of the broken pipe).
Returns true, or undef (with a diagnostic) after $timeout seconds.

=cut

sub poll_true
{
	my ($node, $query, $timeout, $what) = @_;
	return wait_for(
		sub {
			my ($out, $err, $rc) = eval { psql_result($node, 'freshpay', $query) };
			return defined $rc && $rc == 0 && $out eq 't';
		},
		$timeout, $what);
}

=pod

=item start_listener($node, $channel), notified($listener), stop_listener($listener)

A psql session (database freshpay) LISTENing on $channel, driven through its
stdin.  notified() returns the payloads received so far (it flushes the
session with a query first); stop_listener() ends the session.

=cut

sub _listener_pump
{
	my ($s, $until) = @_;
	return wait_for(sub { $s->{handle}->pump_nb; $s->{out} =~ $until }, 30, "psql output $until");
}

sub start_listener
{
	my ($node, $channel) = @_;
	my $s = { in => '', out => '', err => '', n => 0, channel => $channel };
	$s->{handle} = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('freshpay') ],
		'<', \$s->{in}, '>', \$s->{out}, '2>', \$s->{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	$s->{in} .= "LISTEN $channel;\nSELECT 'listening';\n";
	_listener_pump($s, qr/^listening$/m);
	return $s;
}

sub notified
{
	my ($s) = @_;
	my $mark = 'flushed-' . ++$s->{n};
	$s->{in} .= "SELECT '$mark';\n";
	_listener_pump($s, qr/^\Q$mark\E$/m);
	return [ $s->{out} =~ /Asynchronous notification "\Q$s->{channel}\E" with payload "([^"]*)"/g ];
}

sub stop_listener
{
	my ($s) = @_;
	$s->{in} .= "\\q\n";
	eval { $s->{handle}->finish; 1 } or $s->{handle}->kill_kill;
	return;
}

=pod

=item start_psql($node, $sql)

Run $sql in a psql session of its own (database freshpay) without waiting;
the returned hashref has the IPC::Run handle and its out and err.

=cut

sub start_psql
{
	my ($node, $sql) = @_;
	my $session = { out => '', err => '' };
	$session->{handle} = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('freshpay'), '-c', $sql ],
		'>', \$session->{out}, '2>', \$session->{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return $session;
}

=pod

=item request_body($request)

The JSON body of a request from a stand-in's log, as a hashref ({} when it
has none or it is not a JSON object).

=cut

sub request_body
{
	my ($request) = @_;
	my $body = eval { JSON::PP->new->decode($request->{body} // '') };
	return ref $body eq 'HASH' ? $body : {};
}

=pod

=item quote_literal($text), quote_ident($name)

SQL quoting, as PostgreSQL's functions of the same names do.

=back

=cut

sub quote_literal
{
	my ($text) = @_;
	return 'NULL' unless defined $text;
	(my $quoted = $text) =~ s/'/''/g;
	return $quoted =~ /\\/ ? "E'" . ($quoted =~ s/\\/\\\\/gr) . "'" : "'$quoted'";
}

sub quote_ident
{
	my ($name) = @_;
	return $name if $name =~ /^[a-z_][a-z0-9_]*$/;
	(my $quoted = $name) =~ s/"/""/g;
	return "\"$quoted\"";
}

END
{
	local $?;
	$_->stop for grep { $_->{pid} } @started;
}

package FreshpayTest::Standin;

=pod

=head1 FreshpayTest::Standin METHODS

Admin calls die (croak) when the stand-in answers anything but 2xx; they
return the decoded JSON answer.

=over

=item url()

The base URL, e.g. C<http://127.0.0.1:41234>, to give freshpay.

=item reset()

Back to the start: no data, no faults, default config, empty request log,
no tokens.

=item seed(\%data)

FreshPortal only: create or replace customers and invoices
(C<< { customers => [...], invoices => [...] } >>, money as strings).

=item customers(\@profiles), settle()

PayTrace only: add vault profiles (C<< [{ customer_id => 'C-BLOOM', method => 'card' }] >>);
settle pending transactions into a batch.

=item admin_post($path, \%json), admin_get($path)

Any admin endpoint, e.g. C<< admin_post('/_standin/invoices/5', {...}) >>.

=item requests(%filter), clear_requests()

The request log (arrayref of {seq, method, path, query, headers, body,
status, fault}); C<since =E<gt> $seq> and C<path_prefix =E<gt> '/v1/invoices'>
filter it.

=item faults(\@rules), config(\%settings), state()

Replace the fault rules; change config keys (returns the config; without an
argument just returns it); the whole stand-in state.

=item expire_tokens(), tokens()

Expire every issued OAuth token; the list of all tokens ever issued
(arrayref), e.g. to check that none appears in a log.

=item stop()

Stop the process (TERM, then KILL), after writing the tokens it issued to
its .tokens file (see start_standin).

=back

=cut

use Carp;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(sleep time);

my $json = JSON::PP->new->utf8->canonical->allow_nonref;

sub _new
{
	my ($class, %fields) = @_;
	return bless {%fields}, $class;
}

sub url  { return $_[0]{url}; }
sub kind { return $_[0]{kind}; }
sub log_file { return $_[0]{log}; }

sub admin_get
{
	my ($self, $path) = @_;
	return $self->_admin('GET', $path);
}

sub admin_post
{
	my ($self, $path, $body) = @_;
	return $self->_admin('POST', $path, $body // {});
}

sub _admin
{
	my ($self, $method, $path, $body) = @_;
	my $url = $self->{url} . $path;
	my $content = defined $body ? $json->encode($body) : undef;
	my ($status, $answer);
	if ($url =~ /^https:/)
	{
		# HTTP::Tiny needs IO::Socket::SSL for https, which is not a core
		# module; curl is installed with the test dependencies.
		my @cmd = ('curl', '-sS', '-k', '-X', $method, '-w', '\n%{http_code}',
			'-H', 'Content-Type: application/json');
		push @cmd, '--data-binary', '@-' if defined $content;
		push @cmd, $url;
		my ($out, $err) = ('', '');
		IPC::Run::run(\@cmd, '<', \($content // ''), '>', \$out, '2>', \$err)
		  or croak "admin $method $url failed: $err";
		($answer, $status) = $out =~ /\A(.*)\n(\d+)\z/s
		  or croak "admin $method $url: unexpected curl output: $out";
	}
	else
	{
		my $http = HTTP::Tiny->new(timeout => 60, keep_alive => 0);
		my $res = $http->request($method, $url,
			defined $content
			? { content => $content, headers => { 'Content-Type' => 'application/json' } }
			: {});
		($status, $answer) = ($res->{status}, $res->{content} // '');
		croak "admin $method $url failed: $answer" if $status == 599;
	}
	croak "admin $method $url answered $status: $answer" unless $status =~ /^2/;
	return length($answer) ? $json->decode($answer) : undef;
}

sub reset { return $_[0]->admin_post('/_standin/reset'); }

sub seed
{
	my ($self, $data) = @_;
	croak 'seed() is for the FreshPortal stand-in' unless $self->{kind} eq 'fp';
	return $self->admin_post('/_standin/seed', $data);
}

sub customers
{
	my ($self, $profiles) = @_;
	croak 'customers() is for the PayTrace stand-in' unless $self->{kind} eq 'pt';
	return $self->admin_post('/_standin/customers', { customers => $profiles });
}

sub settle
{
	my ($self) = @_;
	croak 'settle() is for the PayTrace stand-in' unless $self->{kind} eq 'pt';
	return $self->admin_post('/_standin/settle');
}

# PayTrace's own terminal (a person in the Virtual Terminal): a v1 call with
# the account's credentials, outside freshpay.  Returns the decoded answer.
sub terminal
{
	my ($self, $path, $body) = @_;
	croak 'terminal() is for the PayTrace stand-in' unless $self->{kind} eq 'pt';
	my $http = HTTP::Tiny->new(timeout => 30, keep_alive => 0);
	my $json = JSON::PP->new;
	if (!defined $self->{terminal_token})
	{
		my $res = $http->post_form($self->url . '/oauth/token',
			{ grant_type => 'password', username => $FreshpayTest::PT_USERNAME,
			  password => $FreshpayTest::PT_PASSWORD });
		$self->{terminal_token} = eval { $json->decode($res->{content})->{access_token} } // 'none';
	}
	my $res = $http->request('POST', $self->url . $path,
		{ headers => { 'Content-Type' => 'application/json', Authorization => "Bearer $self->{terminal_token}" },
		  content => $json->encode({ integrator_id => $FreshpayTest::PT_INTEGRATOR_ID, %$body }) });
	my $answer = eval { $json->decode($res->{content}) };
	return ref $answer eq 'HASH' ? $answer : { http_status => $res->{status}, content => $res->{content} };
}

sub requests
{
	my ($self, %filter) = @_;
	my @query;
	push @query, 'since=' . int($filter{since}) if defined $filter{since};
	push @query, 'path_prefix=' . _uri_escape($filter{path_prefix})
	  if defined $filter{path_prefix};
	my $path = '/_standin/requests' . (@query ? '?' . join('&', @query) : '');
	return $self->admin_get($path)->{requests};
}

sub clear_requests { return $_[0]->admin_post('/_standin/requests/clear'); }

sub faults
{
	my ($self, $rules) = @_;
	return $self->admin_post('/_standin/faults', { rules => $rules // [] });
}

sub config
{
	my ($self, $settings) = @_;
	return $self->admin_get('/_standin/config') unless defined $settings;
	return $self->admin_post('/_standin/config', $settings);
}

sub state { return $_[0]->admin_get('/_standin/state'); }

# One object of the state by id (e.g. ->item('payments', 7001)), or {}.
sub item
{
	my ($self, $table, $id) = @_;
	my ($found) = grep { "$_->{id}" eq "$id" } @{ $self->state->{$table} // [] };
	return $found // {};
}

# Logged requests to $path whose JSON body has invoice_id $number, since seq $since.
sub requests_for
{
	my ($self, $path, $number, $since) = @_;
	return grep {
		$_->{path} eq $path && (FreshpayTest::request_body($_)->{invoice_id} // '') eq $number
	} @{ $self->requests(since => $since // 0) };
}

# PayTrace: the sales it holds for an invoice number (a decline is no charge).
sub sales
{
	my ($self, $number) = @_;
	return grep { $_->{invoice_id} eq $number && $_->{kind} eq 'SALE' && $_->{state} ne 'declined' }
	  @{ $self->state->{transactions} };
}

# FreshPortal: the live registrations of an invoice (by FreshPortal's id).
sub registrations
{
	my ($self, $fp_invoice) = @_;
	return grep { $_->{invoice_id} == $fp_invoice && $_->{status} eq 'registered' }
	  @{ $self->state->{payments} };
}

# The sequence number of the newest logged request (0 when none).
sub last_seq
{
	my ($self) = @_;
	my $requests = $self->requests;
	return @$requests ? $requests->[-1]{seq} : 0;
}

sub expire_tokens { return $_[0]->admin_post('/_standin/expire_tokens'); }

sub tokens { return $_[0]->admin_get('/_standin/tokens')->{issued}; }

sub stop
{
	my ($self) = @_;
	return unless $self->{pid};
	$self->_save_tokens;
	my $pid = delete $self->{pid};
	kill 'TERM', $pid;
	my $deadline = time + 10;
	while (time < $deadline)
	{
		return if waitpid($pid, POSIX::WNOHANG()) == $pid;
		sleep 0.05;
	}
	kill 'KILL', $pid;
	waitpid($pid, 0);
	return;
}

# Write the tokens this stand-in issued next to its log, one a line; a
# stand-in that does not answer leaves no file (990_no_secrets_in_logs.pl
# still greps for the token prefixes).
sub _save_tokens
{
	my ($self) = @_;
	return unless defined $self->{log};
	(my $file = $self->{log}) =~ s/\.log\z/.tokens/;
	my $tokens = eval { $self->tokens };
	return unless ref $tokens eq 'ARRAY';
	open(my $fh, '>', $file) or return;
	print $fh map { "$_\n" } @$tokens;
	close $fh;
	return;
}

sub _uri_escape
{
	my ($text) = @_;
	$text =~ s/([^A-Za-z0-9\-._~\/])/sprintf('%%%02X', ord($1))/ge;
	return $text;
}

1;

# ---------------------------------------------------------------------------
# Helpers added for the chaos test (test/t/200_chaos.pl).
# ---------------------------------------------------------------------------

package FreshpayTest::Standin;

=pod

=head2 set_faults(\@rules, $seed)

Replace the fault rules like C<faults>, and with $seed (an integer) also
seed the stand-in's random generator of C<probability> rules, so that a run
of random faults can be replayed.  Returns the answer (C<rules>, C<seed>,
C<draws>).

=cut

sub set_faults
{
	my ($self, $rules, $seed) = @_;
	my %body = (rules => $rules // []);
	$body{seed} = $seed + 0 if defined $seed;
	return $self->admin_post('/_standin/faults', \%body);
}

package FreshpayTest;

=pod

=head2 set_pause($node, $point)

Set the hidden test hook freshpay.debug_pause_at to $point ('' = never)
and wait until new sessions see it (the postmaster has reloaded and
signalled the worker); one check.

=cut

sub set_pause
{
	my ($node, $point) = @_;
	$node->append_conf('postgresql.conf', "freshpay.debug_pause_at = '$point'\n");
	$node->reload;
	ok(poll_true($node, "SELECT current_setting('freshpay.debug_pause_at', true) = '$point'",
			$PostgreSQL::Test::Utils::timeout_default, "pause point '$point'"),
		"freshpay.debug_pause_at = '$point' is in effect");
	sleep 0.5;    # the worker handles its SIGHUP at its next wakeup
	return;
}

=head2 wait_for_pause($node, $point, $offset)

True once the worker logged that it pauses at $point (in the server log
after byte $offset), within 60 seconds.

=cut

sub wait_for_pause
{
	my ($node, $point, $offset) = @_;
	return wait_for(sub { slurp_file($node->logfile, $offset) =~ /freshpay worker: pausing at \Q$point\E/ },
		60, "the worker to pause at $point");
}

=head2 kill_worker($node, $case)

kill -9 the freshpay worker of $node and return its pid once the
postmaster has restarted (the node needs restart_after_crash = on); four
checks named after $case.

=cut

sub kill_worker
{
	my ($node, $case) = @_;
	my $pid = worker_pid($node) // '';
	like($pid, qr/^\d+$/, "$case: the freshpay worker is running");
	my $offset = -s $node->logfile;
	ok(kill('KILL', $pid), "$case: kill -9 the worker (pid $pid)");
	ok( wait_for(
			sub {
				slurp_file($node->logfile, $offset)
				  =~ /background worker "freshpay worker" \(PID $pid\) was terminated by signal 9/;
			},
			60, 'the postmaster to notice the crash'),
		"$case: the postmaster saw the worker die by signal 9");
	ok( poll_true($node,
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'freshpay worker' AND pid <> $pid",
			$PostgreSQL::Test::Utils::timeout_default, 'a new worker'),
		"$case: after the crash restart a new worker runs");
	return $pid;
}

=head2 worker_pid($node, $timeout)

The pid of the freshpay worker of $node, waiting up to $timeout seconds
(default 10) for one to run (e.g. during a crash restart); undef if none.

=cut

sub worker_pid
{
	my ($node, $timeout) = @_;
	my $pid;
	wait_for(
		sub {
			# (during a restart psql may give up before it reads the query; see poll_true)
			my ($out, $err, $rc) = eval { psql_result($node, 'freshpay',
				q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'freshpay worker'}) };
			$pid = $out if defined $rc && $rc == 0 && $out =~ /^\d+$/;
			return defined $pid;
		},
		$timeout // 10, 'a freshpay worker');
	return $pid;
}

1;
