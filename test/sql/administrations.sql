--
-- Administrations: validation, secrets and who may see them.
--
\set SHOW_CONTEXT never
\getenv fp_url FRESHPAY_TEST_FP_URL
\getenv pt_url FRESHPAY_TEST_PT_URL

-- Secrets by reference: the server's environment (see the Makefile).
SELECT name, paytrace_username, paytrace_integrator_id,
	   freshportal_url = :'fp_url' AS freshportal_url_kept
  FROM freshpay_add_administration(
	name => 'main',
	freshportal_url => :'fp_url',
	freshportal_api_key => 'env:FRESHPAY_TEST_SECRET',
	paytrace_url => :'pt_url',
	paytrace_username => 'pt-user',
	paytrace_password => 'env:FRESHPAY_TEST_PT_PASSWORD',
	paytrace_integrator_id => 'pt-integrator');

-- The public view of an administration holds no secret.
SELECT column_name FROM information_schema.columns
 WHERE table_schema = 'freshpay' AND table_name = 'administrations' ORDER BY ordinal_position;

-- Bad input: each a clear error that writes nothing.
SELECT freshpay_add_administration('main', :'fp_url', 'k', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('Main Store', :'fp_url', 'k', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('remote', 'http://freshportal.example.com', 'k', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('ftp', 'ftp://127.0.0.1/', 'k', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('garbage', 'not a url', 'k', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('creds', 'https://user:hunter2@example.com', 'k', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('noenv', :'fp_url', 'env:FRESHPAY_NO_SUCH_VARIABLE', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('nofile', :'fp_url', 'file:/nonexistent/freshpay/secret', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('relfile', :'fp_url', 'file:secret.txt', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('empty', :'fp_url', '', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('nouser', :'fp_url', 'k', 'https://api.paytrace.com', '', 'p', 'i');
SELECT freshpay_add_administration('noint', :'fp_url', 'k', 'https://api.paytrace.com', 'u', 'p', NULL);
SELECT freshpay_add_administration('zeromerchant', :'fp_url', 'k', 'https://api.paytrace.com', 'u', 'p', 'i', 0);
SELECT freshpay_add_administration('negmerchant', :'fp_url', 'k', 'https://api.paytrace.com', 'u', 'p', 'i', -7);
SELECT name FROM freshpay.administrations ORDER BY 1;
SELECT administration FROM freshpay.administration_secrets ORDER BY 1;

-- A PayTrace merchant id (API v3): optional, positive, and changeable.
SELECT name, paytrace_merchant_id FROM freshpay_add_administration('v3', :'fp_url', 'k',
	'https://api.paytrace.com', 'pt-user', 'pt-pass', 'pt-integrator', paytrace_merchant_id => 4242);
SELECT name, paytrace_merchant_id FROM freshpay.administrations WHERE name IN ('main', 'v3') ORDER BY 1;
\set VERBOSITY terse
UPDATE freshpay.administrations SET paytrace_merchant_id = 0 WHERE name = 'v3';
\set VERBOSITY default
UPDATE freshpay.administrations SET paytrace_merchant_id = 5151 WHERE name = 'v3' RETURNING name, paytrace_merchant_id;
UPDATE freshpay.administrations SET paytrace_merchant_id = NULL WHERE name = 'v3' RETURNING name, paytrace_merchant_id;
DELETE FROM freshpay.administrations WHERE name = 'v3';

-- A file: reference is read by the server (one trailing newline dropped).
SELECT current_setting('data_directory') || '/freshpay_test_key' AS key_file \gset
COPY (SELECT 'fp-test-key') TO :'key_file';
SELECT name FROM freshpay_add_administration('byfile', :'fp_url', 'file:' || :'key_file',
	'https://api.paytrace.com', 'pt-user', 'pt-pass', 'pt-integrator');

-- Roles.  A reader sees the data and no secret.
CREATE ROLE regress_fp_reader IN ROLE freshpay_reader;
CREATE ROLE regress_fp_operator IN ROLE freshpay_operator;
CREATE ROLE regress_fp_admin IN ROLE freshpay_admin;
CREATE ROLE regress_fp_nobody;

SET ROLE regress_fp_reader;
SELECT name FROM freshpay.administrations ORDER BY 1;
SELECT count(*) FROM freshpay.customers;
SELECT count(*) FROM freshpay.invoices;
SELECT * FROM freshpay.administration_secrets;
SELECT * FROM freshpay_sync('main');
SELECT freshpay_add_administration('x', :'fp_url', 'k', 'https://api.paytrace.com', 'u', 'p', 'i');
RESET ROLE;

-- An operator may sync but not read secrets.
SET ROLE regress_fp_operator;
SELECT * FROM freshpay.administration_secrets;
SELECT has_function_privilege('freshpay_sync(text)', 'EXECUTE') AS may_sync;
RESET ROLE;

-- A role outside freshpay's three sees nothing at all.
SET ROLE regress_fp_nobody;
SELECT count(*) FROM freshpay.invoices;
SELECT * FROM freshpay_sync('main');
RESET ROLE;

-- freshpay_admin manages administrations and reads secrets, but may not
-- point freshpay at the server's environment or files: those could be sent
-- to any URL.  Direct DML is checked by the same trigger.
SET ROLE regress_fp_admin;
SELECT administration, freshportal_api_key FROM freshpay.administration_secrets WHERE administration = 'main';
SELECT freshpay_add_administration('adminenv', :'fp_url', 'env:FRESHPAY_TEST_SECRET', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('adminfile', :'fp_url', 'file:/etc/hostname', 'https://api.paytrace.com', 'u', 'p', 'i');
UPDATE freshpay.administration_secrets SET freshportal_api_key = 'file:/etc/hostname' WHERE administration = 'main';
UPDATE freshpay.administrations SET freshportal_url = 'http://10.1.2.3' WHERE name = 'main';
SELECT name FROM freshpay_add_administration('adminlit', :'fp_url', 'a-literal-key', 'https://api.paytrace.com', 'u', 'p', 'i');
DELETE FROM freshpay.administrations WHERE name = 'adminlit';
RESET ROLE;

-- Nor may freshpay_admin send a reference a superuser stored somewhere else:
-- not by changing a URL of its administration, not by moving its secrets row
-- to an administration of its own (or deleting the row).  Each is refused
-- and changes nothing.
CREATE ROLE regress_fp_filer IN ROLE freshpay_admin, pg_read_server_files;
SET ROLE regress_fp_admin;
SELECT name FROM freshpay_add_administration('mine', 'http://127.0.0.1:9', 'k', 'http://127.0.0.1:9', 'u', 'p', 'i');
UPDATE freshpay.administrations SET paytrace_url = 'http://127.0.0.1:9' WHERE name = 'main';
UPDATE freshpay.administrations SET freshportal_url = 'http://127.0.0.1:9', paytrace_url = 'http://127.0.0.1:9' WHERE name = 'byfile';
DELETE FROM freshpay.administration_secrets WHERE administration = 'mine';
UPDATE freshpay.administration_secrets SET administration = 'mine' WHERE administration = 'main';
DELETE FROM freshpay.administration_secrets WHERE administration = 'byfile';
-- Literal secrets are the admin's own to send anywhere; a rename moves the
-- secrets together with their URLs.
INSERT INTO freshpay.administration_secrets VALUES ('mine', 'k', 'p');
UPDATE freshpay.administrations SET paytrace_url = 'http://127.0.0.1:10' WHERE name = 'mine';
UPDATE freshpay.administrations SET name = 'main2' WHERE name = 'main';
UPDATE freshpay.administrations SET name = 'main' WHERE name = 'main2';
RESET ROLE;
-- pg_read_server_files may redirect file: references, but not env: ones.
SET ROLE regress_fp_filer;
UPDATE freshpay.administrations SET paytrace_url = 'http://127.0.0.1:9' WHERE name = 'main';
UPDATE freshpay.administrations SET paytrace_url = 'http://127.0.0.1:11' WHERE name = 'byfile';
UPDATE freshpay.administrations SET paytrace_url = 'https://api.paytrace.com' WHERE name = 'byfile';
RESET ROLE;
SELECT a.name, a.freshportal_url = :'fp_url' AS fp_url_kept,
	   replace(a.paytrace_url, :'pt_url', '<pt_url>') AS paytrace_url,
	   s.freshportal_api_key LIKE 'env:%' OR s.freshportal_api_key LIKE 'file:%' AS by_reference
  FROM freshpay.administrations a LEFT JOIN freshpay.administration_secrets s ON s.administration = a.name
 ORDER BY 1;
DELETE FROM freshpay.administrations WHERE name = 'mine';

SELECT a.name, s.freshportal_api_key LIKE 'env:%' AS by_reference
  FROM freshpay.administrations a JOIN freshpay.administration_secrets s ON s.administration = a.name
 ORDER BY 1;

-- plain http is a superuser's choice and only for loopback.
SET freshpay.allow_plain_http = off;
SELECT freshpay_add_administration('plain', 'http://127.0.0.1:9', 'k', 'https://api.paytrace.com', 'u', 'p', 'i');
RESET freshpay.allow_plain_http;
SET ROLE regress_fp_admin;
SET freshpay.allow_plain_http = on;
RESET ROLE;

-- The internal checks take NULL arguments (a NULL result, never a crash of
-- the server); the triggers report a NULL column themselves.
SET ROLE regress_fp_admin;
SELECT freshpay._check_url('https://x', NULL) IS NULL AS null_field,
	   freshpay._check_url(NULL, 'paytrace_url') IS NULL AS null_url;
SELECT freshpay._check_secret('x', NULL, NULL) IS NULL AS null_field,
	   freshpay._check_secret(NULL, 'paytrace_password', 'main') IS NULL AS null_secret;
SELECT freshpay._check_secret_redirect('env:HOME', NULL, NULL, NULL) IS NULL AS null_field;
UPDATE freshpay.administrations SET paytrace_url = NULL WHERE name = 'byfile';
UPDATE freshpay.administration_secrets SET paytrace_password = NULL WHERE administration = 'byfile';
RESET ROLE;
SELECT freshpay_add_administration('nullurl', NULL, 'k', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT freshpay_add_administration('nullkey', :'fp_url', NULL, 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT name FROM freshpay.administrations ORDER BY 1;

DROP ROLE regress_fp_reader, regress_fp_operator, regress_fp_admin, regress_fp_nobody, regress_fp_filer;
