--
-- How freshpay reads PayTrace's answers: the recorded sandbox exchanges
-- (test/fixtures/paytrace-recorded), the documented shapes of declines,
-- errors and exports, and what must never count as paid.
--
\set SHOW_CONTEXT never

-- Recorded sandbox answers, byte for byte.
\set fixture `cat test/fixtures/paytrace-recorded/create_sale_by_customer.json`
SELECT * FROM freshpay._paytrace_parse_result(200, (:'fixture'::jsonb)->'response'->>'body');
\set fixture `cat test/fixtures/paytrace-recorded/create_sale_by_transaction.json`
SELECT * FROM freshpay._paytrace_parse_result(200, (:'fixture'::jsonb)->'response'->>'body');
\set fixture `cat test/fixtures/paytrace-recorded/create_keyed_sale_transaction.json`
SELECT * FROM freshpay._paytrace_parse_result(200, (:'fixture'::jsonb)->'response'->>'body');

-- A decline is HTTP 200 with success false: final, not paid.
SELECT * FROM freshpay._paytrace_parse_result(200,
	'{"success":false,"response_code":102,"status_message":"Your transaction was not approved.","transaction_id":392501201,"approval_code":"","approval_message":"  EXPIRED CARD - Expired card","avs_response":"No Match","csc_response":"","external_transaction_id":""}');

-- 103: approved, then voided by AVS/CSC rules: not paid.
SELECT * FROM freshpay._paytrace_parse_result(200,
	'{"success":true,"response_code":103,"status_message":"Your transaction was successfully approved. However, it was voided because your address and/or CSC did not match.","transaction_id":392501202,"approval_code":"TAS111"}');

-- Errors: HTTP 400, response_code 1, errors{code:[messages]}.
SELECT * FROM freshpay._paytrace_parse_result(400,
	'{"success":false,"response_code":1,"status_message":"One or more errors has occurred.","errors":{"35":["Please provide a valid Credit Card Number."],"43":["Please provide a valid Expiration Month."]},"external_transaction_id":""}');
SELECT * FROM freshpay._paytrace_parse_result(400,
	'{"success":false,"response_code":1,"status_message":"One or more errors has occurred.","errors":{"817":["The Transaction ID that you provided could not be refunded. Only settled transactions can be refunded.  Please try to void the transaction instead."]}}');

-- Capture, void, refund, ACH.
SELECT outcome, response_code, transaction_id FROM freshpay._paytrace_parse_result(200,
	'{"success":true,"response_code":112,"status_message":"Your transaction was successfully captured.","transaction_id":392442990,"external_transaction_id":""}');
SELECT outcome, response_code, transaction_id FROM freshpay._paytrace_parse_result(200,
	'{"success":true,"response_code":109,"status_message":"Your transaction was successfully voided.","transaction_id":395971574}');
SELECT outcome, response_code, transaction_id FROM freshpay._paytrace_parse_result(200,
	'{"success":true,"response_code":106,"status_message":"Your transaction was successfully refunded.","transaction_id":179066852,"external_transaction_id":"","masked_card_number":"xxxxxxxxxxxx5439"}');
SELECT outcome, response_code, transaction_id FROM freshpay._paytrace_parse_result(200,
	'{"success":true,"response_code":120,"status_message":"Your check was successfully processed.","check_transaction_id":981619}');
SELECT outcome, response_code, transaction_id FROM freshpay._paytrace_parse_result(200,
	'{"success":false,"response_code":125,"status_message":"Your check was NOT successfully processed.","check_transaction_id":981610,"ach_code":0,"ach_message":""}');

-- Whatever cannot be read is unknown, never "failed": it may have happened.
SELECT outcome, message FROM freshpay._paytrace_parse_result(502, '<html>Bad Gateway</html>');
SELECT outcome, message FROM freshpay._paytrace_parse_result(200, '{"success":true,"response_code":101,"status_mess');
SELECT outcome, message FROM freshpay._paytrace_parse_result(200, '{"response_code":101}');
SELECT outcome FROM freshpay._paytrace_parse_result(200, '{"success":true,"response_code":999}');
SELECT outcome FROM freshpay._paytrace_parse_result(429, '');

-- Exports: dates M/D/YYYY h:mm:ss AM (Pacific), status_code Y / N / GB<batch>,
-- amounts as numbers or strings, exact.
SET TimeZone = 'UTC';
SELECT * FROM freshpay._paytrace_parse_export(
	'{"success":true,"response_code":1,"status_message":"Your request has been successfully completed.",
	  "transactions":[
	   {"transaction_id":79388123,"transaction_type":"SALE","amount":110,"invoice_id":"inv1234","status_code":"GB571","status_message":"GB571","created":{"through":"API","at":"4/10/2015 4:06:30 PM","by":"sandbox123"},"settled":"4/10/2015 8:13:45 PM","customer_id":""},
	   {"transaction_id":"79388124","transaction_type":"SALE","amount":"51.88","invoice_id":"INV-2","status_code":"Y","status_message":"Pending Settlement","created":{"at":"12/5/2024 11:08:46 AM"},"settled":""},
	   {"transaction_id":79388125,"transaction_type":"AUTHORIZATION","amount":25.0,"invoice_id":"INV-3","status_code":"N","status_message":"Authorization Only","created":{"at":"1/1/2026 12:00:01 AM"},"settled":""},
	   {"transaction_id":79388126,"transaction_type":"SALE","amount":0.29,"invoice_id":"INV-4","status_code":"N","status_message":"Declined","created":{"at":"1/1/2026 12:30:00 PM"},"settled":""},
	   {"transaction_id":79388127,"transaction_type":"SALE","amount":19.95,"invoice_id":"INV-5","status_code":"N","status_message":"Voided","created":{"at":"7/4/2026 9:15:00 PM"},"settled":""}],
	  "external_transaction_id":""}');
RESET TimeZone;

-- Malformed exports are errors (a lookup must not conclude "not found").
SELECT * FROM freshpay._paytrace_parse_export('{"success":true,"transactions":[{"transaction_id":1,"amount":"1,00"}]}');
SELECT * FROM freshpay._paytrace_parse_export('{"success":true,"transactions":[{"transaction_id":1,"amount":1,"created":{"at":"2026-01-01 10:00"}}]}');
SELECT * FROM freshpay._paytrace_parse_export('{"success":false,"response_code":1,"errors":{"9003":["Please provide a valid Start Date."]}}');
SELECT * FROM freshpay._paytrace_parse_export('{"success":true,"transactions":[');

-- A settled status must name its batch exactly: GB and digits, nothing else.
SELECT * FROM freshpay._paytrace_parse_export('{"success":true,"transactions":[{"transaction_id":1,"amount":1,"status_code":"GB12x","status_message":"GB12x"}]}');
SELECT * FROM freshpay._paytrace_parse_export('{"success":true,"transactions":[{"transaction_id":1,"amount":1,"status_code":"GB99999999999","status_message":"GB"}]}');
SELECT batch_number FROM freshpay._paytrace_parse_export('{"success":true,"transactions":[{"transaction_id":1,"amount":1,"status_code":"GB0042","status_message":"GB0042"}]}');

-- An id beyond int64 is refused, not clamped (found by fuzzing).
SELECT * FROM freshpay._paytrace_parse_export('{"success":true,"transactions":[{"transaction_id":18446744073709551615,"amount":"1.00"}]}');
