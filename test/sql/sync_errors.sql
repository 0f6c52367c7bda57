--
-- freshpay_sync() on bad input: each case a clear error (SQLSTATE, message,
-- hint) that leaves tables and cursors as they were.
--
\set SHOW_CONTEXT never
\getenv fp_url FRESHPAY_TEST_FP_URL
\getenv pt_url FRESHPAY_TEST_PT_URL
-- 'main' of administrations.sql points at that test's stand-ins: every test
-- has its own (test/standin/with_standins.py).
UPDATE freshpay.administrations SET freshportal_url = :'fp_url', paytrace_url = :'pt_url'
 WHERE name = 'main';

\! python3 test/standinctl.py fp POST /_standin/reset
\! python3 test/standinctl.py fp POST /_standin/seed '{"customers": [{"id": 1, "code": "BLOOM", "name": "Bloom & Co Florists", "currency": "USD"}], "invoices": [{"id": 10, "number": "INV-10", "customer_id": 1, "invoice_date": "2026-11-02", "amount_excl_vat": "100.00", "vat_amount": "9.00", "amount_incl_vat": "109.00"}]}'

-- Errors whose detail carries timings or paths are shown without it.
CREATE FUNCTION pg_temp.error_of(statement text,
	OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE statement;
	code := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE,
							message = MESSAGE_TEXT,
							hint = PG_EXCEPTION_HINT;
END
$$;

CREATE VIEW pg_temp.written AS
	SELECT (SELECT count(*) FROM freshpay.customers) AS customers,
		   (SELECT count(*) FROM freshpay.invoices) AS invoices,
		   (SELECT count(*) FROM freshpay.sync_state WHERE cursor IS NOT NULL) AS cursors;

-- Nothing listens on port 9.
SELECT name FROM freshpay_add_administration('unreachable', 'http://127.0.0.1:9',
	'k', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT * FROM pg_temp.error_of($$SELECT * FROM freshpay_sync('unreachable')$$);

-- A wrong API key: the error names the administration, never the key.
SELECT name FROM freshpay_add_administration('wrongkey', :'fp_url',
	'not-the-right-key', 'https://api.paytrace.com', 'u', 'p', 'i');
SELECT * FROM freshpay_sync('wrongkey');

-- Malformed JSON.
\! python3 test/standinctl.py fp POST /_standin/faults '{"rules": [{"action": "malformed", "path": "/v1/customers"}]}'
SELECT * FROM freshpay_sync('main');
SELECT * FROM pg_temp.written;

-- A list without its "data" array.
\! python3 test/standinctl.py fp POST /_standin/faults '{"rules": [{"action": "status", "status": 200, "body": "{\"items\": []}", "path": "/v1/customers"}]}'
SELECT * FROM freshpay_sync('main');

-- A server error: nothing written, the cursor stays.
\! python3 test/standinctl.py fp POST /_standin/faults '{"rules": [{"action": "status", "status": 500, "body": "{\"message\": \"Server Error\"}", "path": "/v1/invoices"}]}'
SELECT * FROM freshpay_sync('main');
SELECT * FROM pg_temp.written;

-- An oversized answer.
\! python3 test/standinctl.py fp POST /_standin/faults '{"rules": [{"action": "oversize", "bytes": 200000, "path": "/v1/customers"}]}'
SET freshpay.max_response_size = '64kB';
SELECT * FROM freshpay_sync('main');
RESET freshpay.max_response_size;
\! python3 test/standinctl.py fp POST /_standin/faults '{"rules": []}'

-- A money field that is not an amount.  The customers stream had already
-- been pulled in this statement; it is rolled back with the rest.
\! python3 test/standinctl.py fp POST /_standin/seed '{"invoices": [{"id": 9001, "number": "INV-9001", "customer_id": 1, "invoice_date": "2026-11-03", "currency": "USD", "amount_excl_vat": "11.47", "vat_amount": "1.03", "amount_incl_vat": "12,50", "amount_paid": "0.00", "open_amount": "12,50", "status": "open", "raw": true}]}'
SELECT * FROM freshpay_sync('main');
SELECT * FROM pg_temp.written;
\! python3 test/standinctl.py fp POST /_standin/seed '{"invoices": [{"id": 9001, "number": "INV-9001", "customer_id": 1, "invoice_date": "2026-11-03", "currency": "USD", "amount_excl_vat": "11.47", "vat_amount": "1.03", "amount_incl_vat": "12.50", "status": "open"}]}'

-- An unknown invoice status.
\! python3 test/standinctl.py fp POST /_standin/seed '{"invoices": [{"id": 9002, "number": "INV-9002", "customer_id": 1, "invoice_date": "2026-11-03", "amount_excl_vat": "1.00", "vat_amount": "0.00", "amount_incl_vat": "1.00", "status": "archived", "raw": true}]}'
SELECT * FROM freshpay_sync('main');
\! python3 test/standinctl.py fp POST /_standin/seed '{"invoices": [{"id": 9002, "number": "INV-9002", "customer_id": 1, "invoice_date": "2026-11-03", "amount_excl_vat": "1.00", "vat_amount": "0.00", "amount_incl_vat": "1.00", "status": "open"}]}'

-- plain http switched off after the administration was added.
SET freshpay.allow_plain_http = off;
SELECT * FROM freshpay_sync('main');
RESET freshpay.allow_plain_http;

-- A file: secret that became empty.
SELECT current_setting('data_directory') || '/freshpay_test_key' AS key_file \gset
COPY (SELECT '') TO :'key_file';
SELECT * FROM freshpay_sync('byfile');

-- An unknown administration.
SELECT * FROM freshpay_sync('nosuch');

SELECT * FROM pg_temp.written;

-- After all that, a sync of 'main' succeeds, and a second one finds nothing new.
SELECT * FROM freshpay_sync('main');
SELECT * FROM freshpay_sync('main');
SELECT administration, stream, cursor IS NOT NULL AS has_cursor, last_fetched, last_inserted
  FROM freshpay.sync_state ORDER BY 1, 2;
SELECT number, status, amount_incl_vat, open_amount FROM freshpay.invoices ORDER BY number;
