--
-- Administrations: validation, secrets and who may see them.
--
\set SHOW_CONTEXT never
\getenv fp_url FRESHPAY_TEST_FP_URL
\getenv pt_url FRESHPAY_TEST_PT_URL

-- Secrets by reference: the server's environment (see test/run-suites).
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
SELECT name FROM freshpay.administrations ORDER BY 1;
SELECT administration FROM freshpay.administration_secrets ORDER BY 1;

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

DROP ROLE regress_fp_reader, regress_fp_operator, regress_fp_admin, regress_fp_nobody;
