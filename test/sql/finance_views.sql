--
-- The finance surface (issue 11): reconciliation verdicts and the
-- exceptions they make, with a suggested action each; the BI views
-- (invoice_status, daily_cash, customer_summary, aging,
-- payment_request_funnel) against figures computed by hand from rows
-- inserted here; what freshpay_reader may read and do; readers limited to
-- administrations (freshpay.reader_scopes, row-level security).
--
-- Everything runs in one transaction, rolled back at the end: the worker
-- never sees these rows.  Dates are relative to today (T); the output shows
-- them as offsets (day - T), so that it does not depend on the date.
--
\set SHOW_CONTEXT never
SET TimeZone = 'UTC';

CREATE FUNCTION pg_temp.error_of(statement text, OUT code text, OUT message text)
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE statement;
	code := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
END
$$;
-- At day T-k, hh:00 UTC.
CREATE FUNCTION pg_temp.t(k integer, hh integer DEFAULT 12) RETURNS timestamptz
LANGUAGE sql AS $$ SELECT (CURRENT_DATE - k) + make_time(hh, 0, 0) $$;

BEGIN;
SELECT name FROM freshpay_add_administration('fin', 'http://127.0.0.1:9', 'k', 'http://127.0.0.1:9', 'u', 'p', 'i');
SELECT name FROM freshpay_add_administration('fin2', 'http://127.0.0.1:9', 'k', 'http://127.0.0.1:9', 'u', 'p', 'i');
SELECT name FROM freshpay_add_administration('finx', 'http://127.0.0.1:9', 'k', 'http://127.0.0.1:9', 'u', 'p', 'i');

------------------------------------------------------------------------------
-- The rows (administration fin, for the hand computation)
------------------------------------------------------------------------------

INSERT INTO freshpay.customers (administration, freshportal_id, code, name, currency, payment_method, paytrace_customer_id) VALUES
	('fin', 9101, 'ALPHA', 'Alpha Florists', 'USD', 'card', 'PT-A'),
	('fin', 9102, 'BRAVO', 'Bravo Bulbs', 'USD', 'ach', 'PT-B'),
	('fin', 9103, 'CHARLIE', 'Charlie Chrysanths', 'USD', 'card', 'PT-C'),
	('fin', 9104, 'DELTA', 'Delta Dahlias', 'USD', 'card', NULL),
	('fin2', 9201, 'ECHO', 'Echo Eustomas', 'USD', 'card', 'PT-E'),
	('finx', 9301, 'XRAY', 'Xray Xerophytes', 'USD', 'card', 'PT-X');
SELECT id AS alpha FROM freshpay.customers WHERE code = 'ALPHA' AND administration = 'fin' \gset
SELECT id AS bravo FROM freshpay.customers WHERE code = 'BRAVO' AND administration = 'fin' \gset
SELECT id AS charlie FROM freshpay.customers WHERE code = 'CHARLIE' AND administration = 'fin' \gset
SELECT id AS delta FROM freshpay.customers WHERE code = 'DELTA' AND administration = 'fin' \gset
SELECT id AS echo FROM freshpay.customers WHERE code = 'ECHO' AND administration = 'fin2' \gset
SELECT id AS xray FROM freshpay.customers WHERE code = 'XRAY' AND administration = 'finx' \gset

-- number, customer, type, invoice date, due date, total, paid, open, status
INSERT INTO freshpay.invoices (administration, freshportal_id, number, customer_id, freshportal_customer_id, type,
	invoice_date, due_date, currency, amount_excl_vat, vat_amount, amount_incl_vat, amount_paid, open_amount, status)
SELECT v.adm, 9000 + row_number() OVER (), v.number, v.customer, 0, v.type,
	   CURRENT_DATE - v.dated, CURRENT_DATE - v.due, 'USD', v.total, 0, v.total, v.paid, v.open, v.status
  FROM (VALUES
	('fin', 'A-1', :alpha, 'invoice', 100, 70, 100.00, 100.00, 0.00, 'paid'),
	('fin', 'A-2', :alpha, 'invoice', 50, 20, 200.00, 50.00, 150.00, 'partially_paid'),
	('fin', 'A-3', :alpha, 'invoice', 10, -20, 300.00, 0.00, 300.00, 'open'),
	('fin', 'A-4', :alpha, 'invoice', 5, -25, 999.00, 0.00, 999.00, 'concept'),
	('fin', 'A-5', :alpha, 'credit_note', 30, NULL, -30.00, -30.00, 0.00, 'credited'),
	('fin', 'B-1', :bravo, 'invoice', 130, 100, 400.00, 0.00, 400.00, 'open'),
	('fin', 'B-2', :bravo, 'invoice', 80, 45, 80.00, 0.00, 80.00, 'open'),
	('fin', 'B-3', :bravo, 'invoice', 90, 70, 60.00, 0.00, 60.00, 'open'),
	('fin', 'B-4', :bravo, 'invoice', 20, NULL, 25.00, 0.00, 25.00, 'open'),
	('fin', 'C-1', :charlie, 'invoice', 40, 10, 120.00, 120.00, 0.00, 'paid'),
	('fin', 'C-2', :charlie, 'invoice', 40, 10, 80.00, 80.00, 0.00, 'paid'),
	('fin2', 'E-1', :echo, 'invoice', 35, 5, 500.00, 100.00, 400.00, 'partially_paid'),
	('finx', 'X-1', :xray, 'invoice', 60, 30, 100.00, 100.00, 0.00, 'paid'),
	-- X-2: billed 50 and collected, then lowered to 40 in FreshPortal
	('finx', 'X-2', :xray, 'invoice', 60, 30, 40.00, 50.00, -10.00, 'paid'),
	('finx', 'X-3', :xray, 'invoice', 60, 30, 70.00, 0.00, 70.00, 'open'))
	AS v(adm, number, customer, type, dated, due, total, paid, open, status);
SELECT id AS a1 FROM freshpay.invoices WHERE number = 'A-1' AND administration = 'fin' \gset
SELECT id AS a2 FROM freshpay.invoices WHERE number = 'A-2' AND administration = 'fin' \gset
SELECT id AS a3 FROM freshpay.invoices WHERE number = 'A-3' AND administration = 'fin' \gset
SELECT id AS b1 FROM freshpay.invoices WHERE number = 'B-1' AND administration = 'fin' \gset
SELECT id AS b2 FROM freshpay.invoices WHERE number = 'B-2' AND administration = 'fin' \gset
SELECT id AS c1 FROM freshpay.invoices WHERE number = 'C-1' AND administration = 'fin' \gset
SELECT id AS c2 FROM freshpay.invoices WHERE number = 'C-2' AND administration = 'fin' \gset
SELECT id AS e1 FROM freshpay.invoices WHERE number = 'E-1' AND administration = 'fin2' \gset
SELECT id AS x1 FROM freshpay.invoices WHERE number = 'X-1' AND administration = 'finx' \gset
SELECT id AS x2 FROM freshpay.invoices WHERE number = 'X-2' AND administration = 'finx' \gset
SELECT id AS x3 FROM freshpay.invoices WHERE number = 'X-3' AND administration = 'finx' \gset

-- Alpha (card): P1 sale of A-1, settled T-94 in batch 10, 20.00 of it
-- refunded (P3, settled T-59 in batch 12); P2 a part of A-2, settled T-44
-- in batch 11; P4 a decline on A-2; P5 a sale of part of A-3 yesterday,
-- not settled and not registered in FreshPortal yet.
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, amount, refunded_amount, status,
	response_code, message, invoice_number, paytrace_transaction_id, batch_number, settled_at,
	freshportal_payment_id, created_at, updated_at) VALUES
	('fin', :a1, :alpha, 'sale', 100.00, 20.00, 'captured', 101, 'APPROVED', 'A-1', 7001, 10, pg_temp.t(94), 5001, pg_temp.t(95, 10), pg_temp.t(59)),
	('fin', :a2, :alpha, 'sale', 50.00, 0, 'captured', 101, 'APPROVED', 'A-2', 7002, 11, pg_temp.t(44), 5002, pg_temp.t(45, 10), pg_temp.t(44)),
	('fin', :a2, :alpha, 'sale', 150.00, 0, 'failed', 102, 'DECLINED', 'A-2', 7004, NULL, NULL, NULL, pg_temp.t(30, 10), pg_temp.t(30, 10)),
	('fin', :a3, :alpha, 'sale', 40.00, 0, 'captured', 101, 'APPROVED', 'A-3', 7005, NULL, NULL, NULL, pg_temp.t(1, 10), pg_temp.t(1, 10));
SELECT id AS p1 FROM freshpay.payments WHERE paytrace_transaction_id = 7001 \gset
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, parent_id, amount, status, response_code,
	invoice_number, paytrace_transaction_id, batch_number, settled_at, freshportal_payment_id, created_at, updated_at)
VALUES ('fin', :a1, :alpha, 'refund', :p1, 20.00, 'refunded', 106, 'A-1', 7003, 12, pg_temp.t(59), 5001, pg_temp.t(60, 10), pg_temp.t(59));
-- Bravo (ACH through v3): P6 debit of B-1, settled T-97 (no batch), sent
-- back by the bank at T-95; P7 a declined debit of B-2.
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, amount, status, response_code, message,
	invoice_number, paytrace_transaction_id, settled_at, freshportal_payment_id, ach_status, return_reason,
	idempotency_key, created_at, updated_at) VALUES
	('fin', :b1, :bravo, 'ach_sale', 400.00, 'returned', NULL, 'returned', 'B-1', 7006, pg_temp.t(97), 5006, 'RETURNED', 'R01',
	 '00000000-0000-4000-8000-000000000006', pg_temp.t(99, 10), pg_temp.t(95)),
	('fin', :b2, :bravo, 'ach_sale', 80.00, 'failed', 125, 'DECLINED', 'B-2', 7007, NULL, NULL, 'DECLINED', NULL,
	 '00000000-0000-4000-8000-000000000007', pg_temp.t(40, 10), pg_temp.t(40, 10));
INSERT INTO freshpay.payment_history (payment_id, at, old_status, new_status, event, message)
SELECT id, pg_temp.t(95), 'captured', 'returned', 'returned', 'the bank sent it back'
  FROM freshpay.payments WHERE paytrace_transaction_id = 7006;
-- Charlie: P8, statement ST-9 of 200.00 for C-1 (120) and C-2 (80),
-- settled T-8 in batch 13, both allocations registered.
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, amount, status, response_code,
	invoice_number, paytrace_transaction_id, batch_number, settled_at, created_at, updated_at)
VALUES ('fin', NULL, :charlie, 'sale', 200.00, 'captured', 101, 'ST-9', 7008, 13, pg_temp.t(8), pg_temp.t(9, 10), pg_temp.t(8));
SELECT id AS p8 FROM freshpay.payments WHERE paytrace_transaction_id = 7008 \gset
INSERT INTO freshpay.payment_allocations (administration, payment_id, invoice_id, amount, freshportal_payment_id, registered_amount)
VALUES ('fin', :p8, :c1, 120.00, 8001, 120.00), ('fin', :p8, :c2, 80.00, 8002, 80.00);
-- fin2: a part of E-1, settled T-3 in batch 31.
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, amount, status, response_code,
	invoice_number, paytrace_transaction_id, batch_number, settled_at, freshportal_payment_id, created_at, updated_at)
VALUES ('fin2', :e1, :echo, 'sale', 100.00, 'captured', 101, 'E-1', 7201, 31, pg_temp.t(3), 5201, pg_temp.t(4, 10), pg_temp.t(3));
INSERT INTO freshpay.payment_history (payment_id, at, old_status, new_status, event)
SELECT id, pg_temp.t(4, 10), NULL, 'captured', 'recorded' FROM freshpay.payments WHERE paytrace_transaction_id = 7201;
-- PayTrace's batches of fin and fin2: what freshpay holds, to the cent.
INSERT INTO freshpay.settlements (administration, batch_number, settled_at, transaction_count, sales_amount, refund_amount, net_amount)
VALUES ('fin', 10, pg_temp.t(94), 1, 100.00, 0, 100.00),
	   ('fin', 11, pg_temp.t(44), 1, 50.00, 0, 50.00),
	   ('fin', 12, pg_temp.t(59), 1, 0, 20.00, -20.00),
	   ('fin', 13, pg_temp.t(8), 1, 200.00, 0, 200.00),
	   ('fin2', 31, pg_temp.t(3), 1, 100.00, 0, 100.00);

-- Payment requests of fin: March 2026 one of each outcome, April one whose
-- answer was lost.
INSERT INTO freshpay.payment_requests (administration, invoice_id, customer_id, mode, amount, email, status,
	requested_by, expires_at, created_at, updated_at) VALUES
	('fin', :a1, :alpha, 'sale', 10.00, 'ap@alpha.example', 'paid', 'regress', '2026-03-19', '2026-03-05 09:00', '2026-03-06'),
	('fin', :a2, :alpha, 'sale_and_onboard', 20.00, 'ap@alpha.example', 'onboarded', 'regress', '2026-03-20', '2026-03-06 09:00', '2026-03-07'),
	('fin', :b1, :bravo, 'sale', 30.00, 'ap@bravo.example', 'expired', 'regress', '2026-03-21', '2026-03-07 09:00', '2026-03-21'),
	('fin', :b2, :bravo, 'sale', 40.00, 'ap@bravo.example', 'sent', 'regress', CURRENT_DATE + 30, '2026-03-31 23:30', '2026-03-31 23:30'),
	('fin', :a3, :alpha, 'sale', 50.00, 'ap@alpha.example', 'failed', 'regress', '2026-03-22', '2026-03-08 09:00', '2026-03-08'),
	('fin', :c1, :charlie, 'sale', 60.00, 'ap@charlie.example', 'unknown', 'regress', CURRENT_DATE + 30, '2026-04-01 00:30', '2026-04-01 00:30');

------------------------------------------------------------------------------
-- invoice_status, by hand
------------------------------------------------------------------------------

-- A-1: 100 collected, 20 of it refunded, paid; A-2: 50 collected, the
-- decline after it is the latest payment; A-3: 40 captured, not in
-- FreshPortal yet (300 open there, 260 outstanding); C-1, C-2: paid by the
-- statement.
SELECT number, status, billed, captured, refunded, outstanding, latest_payment_status, latest_payment_kind,
	   freshportal_agrees, statement_number, statement_allocated
  FROM freshpay.invoice_status WHERE administration = 'fin' ORDER BY number;
SELECT * FROM (VALUES ('A-1', 100.00, 100.00, 20.00, 0.00), ('A-2', 200.00, 50.00, 0.00, 150.00),
				  ('A-3', 300.00, 40.00, 0.00, 260.00), ('C-1', 120.00, 120.00, 0.00, 0.00),
				  ('C-2', 80.00, 80.00, 0.00, 0.00), ('B-1', 400.00, 0.00, 0.00, 400.00))
	AS hand(number, billed, captured, refunded, outstanding)
EXCEPT
SELECT number, billed, captured, refunded, outstanding FROM freshpay.invoice_status WHERE administration = 'fin';

------------------------------------------------------------------------------
-- daily_cash, by hand
------------------------------------------------------------------------------

-- T-97 ACH 400 collected (P6 settled), T-95 the same 400 returned, T-94
-- card 100 (P1), T-59 card refund 20 (P3), T-44 card 50 (P2), T-8 card 200
-- (the statement), T-1 card 40 (P5, not settled: the day it was made).
SELECT day - CURRENT_DATE AS day, method, collected, refunded, returned, net, collections, refunds, returns
  FROM freshpay.daily_cash WHERE administration = 'fin' ORDER BY 1, 2;
SELECT * FROM (VALUES (-97, 'ach', 400.00, 0.00, 0.00, 400.00), (-95, 'ach', 0.00, 0.00, 400.00, -400.00),
				  (-94, 'card', 100.00, 0.00, 0.00, 100.00), (-59, 'card', 0.00, 20.00, 0.00, -20.00),
				  (-44, 'card', 50.00, 0.00, 0.00, 50.00), (-8, 'card', 200.00, 0.00, 0.00, 200.00),
				  (-1, 'card', 40.00, 0.00, 0.00, 40.00)) AS hand(day, method, collected, refunded, returned, net)
EXCEPT ALL
SELECT day - CURRENT_DATE, method, collected, refunded, returned, net FROM freshpay.daily_cash WHERE administration = 'fin';

------------------------------------------------------------------------------
-- customer_summary, by hand
------------------------------------------------------------------------------

-- ALPHA: billed 100 + 200 + 300 - 30 (A-4 is a concept) = 570 over 4;
-- collected 80 + 50 + 40 = 170; outstanding 150 + 300 - 40 = 410; days to
-- cash 6 (T-94 - T-100), 6 (T-44 - T-50), 9 (T-1 - T-10): average 7.0,
-- 90th percentile 9; 1 decline.  BRAVO: 565 billed, nothing collected (the
-- debit came back), all outstanding, 1 decline.  CHARLIE: the statement,
-- 32 days for both invoices.  DELTA: nothing.
SELECT code, payment_method, invoices, billed, collected, outstanding, avg_days_to_cash, p90_days_to_cash, declines,
	   last_payment_at - CURRENT_DATE::timestamptz AS last_payment
  FROM freshpay.customer_summary WHERE administration = 'fin' ORDER BY code;
SELECT * FROM (VALUES ('ALPHA', 4::bigint, 570.00, 170.00, 410.00, 7.0, 9, 1::bigint),
				  ('BRAVO', 4, 565.00, 0.00, 565.00, NULL, NULL, 1),
				  ('CHARLIE', 2, 200.00, 200.00, 0.00, 32.0, 32, 0),
				  ('DELTA', 0, 0.00, 0.00, 0.00, NULL, NULL, 0))
	AS hand(code, invoices, billed, collected, outstanding, avg_days, p90_days, declines)
EXCEPT
SELECT code, invoices, billed, collected, outstanding, avg_days_to_cash, p90_days_to_cash, declines
  FROM freshpay.customer_summary WHERE administration = 'fin';
-- One customer alone gives the same row.
SELECT (SELECT s FROM freshpay.customer_summary s WHERE customer_id = :alpha)
	 = (SELECT s FROM freshpay.customer_summary s WHERE code = 'ALPHA' AND administration = 'fin') AS same_alone;

-- The figures kept per customer (customer_figures: the sync worker keeps
-- them every few seconds; here by hand) give the same rows.  A change made
-- since marks its customer (customer_figures_stale), whose figures the view
-- computes anew at once; what is kept of the others is used.
CREATE TEMP VIEW fin_summary AS
	SELECT code, invoices, billed, collected, outstanding, avg_days_to_cash, p90_days_to_cash, declines, last_payment_at
	  FROM freshpay.customer_summary WHERE administration = 'fin';
CREATE TEMP TABLE fin_summary_live AS SELECT * FROM fin_summary;
SELECT count(DISTINCT customer_id) AS fin_customers_marked FROM freshpay.customer_figures_stale WHERE administration = 'fin';
SELECT freshpay._refresh_customer_figures() >= 4 AS refreshed;
SELECT count(*) AS marks_left FROM freshpay.customer_figures_stale WHERE administration = 'fin';
SELECT c.code, f.invoices, f.billed, f.collected, f.open_amount - f.unregistered AS outstanding, round(f.avg_days, 1) AS avg_days,
	   f.p90_days, f.declines
  FROM freshpay.customer_figures f JOIN freshpay.customers c ON c.id = f.customer_id
 WHERE f.administration = 'fin' ORDER BY c.code;
(SELECT * FROM fin_summary EXCEPT SELECT * FROM fin_summary_live)
UNION ALL
(SELECT * FROM fin_summary_live EXCEPT SELECT * FROM fin_summary);
-- What the figures do not read marks no one: a payment's updated_at, a
-- customer's name.
UPDATE freshpay.payments SET updated_at = updated_at + interval '1 second' WHERE customer_id = :alpha;
UPDATE freshpay.customers SET name = 'Alpha Florists Inc.' WHERE id = :alpha;
SELECT count(*) AS marks_after_unrelated_changes FROM freshpay.customer_figures_stale WHERE administration = 'fin';
-- A refund of 10.00 more of P1 (even in a load with triggers off:
-- session_replication_role = replica) is in ALPHA's row at once, and only
-- ALPHA is marked; kept again, the same.
SET session_replication_role = replica;
UPDATE freshpay.payments SET refunded_amount = 30.00 WHERE id = :p1;
RESET session_replication_role;
SELECT c.code FROM freshpay.customer_figures_stale s JOIN freshpay.customers c ON c.id = s.customer_id
 WHERE s.administration = 'fin' GROUP BY c.code;
SELECT code, collected FROM fin_summary WHERE code = 'ALPHA';
SELECT freshpay._refresh_customer_figures() > 0 AS refreshed;
SELECT collected FROM freshpay.customer_figures WHERE customer_id = :alpha;
SELECT code, collected FROM fin_summary WHERE code = 'ALPHA';
-- FreshPortal lowers A-3's open amount (a sync): its customer and the
-- customers of its payments are marked, and outstanding follows.
UPDATE freshpay.invoices SET open_amount = 250.00 WHERE id = :a3;
SELECT c.code FROM freshpay.customer_figures_stale s JOIN freshpay.customers c ON c.id = s.customer_id
 WHERE s.administration = 'fin' GROUP BY c.code;
SELECT code, outstanding FROM fin_summary WHERE code = 'ALPHA';
-- A statement's allocation left unregistered again: its customer's
-- figures follow (C-1 is paid, so nothing is outstanding for it).
UPDATE freshpay.payment_allocations SET freshportal_payment_id = NULL, registered_amount = NULL
 WHERE payment_id = :p8 AND invoice_id = :c1;
SELECT c.code FROM freshpay.customer_figures_stale s JOIN freshpay.customers c ON c.id = s.customer_id
 WHERE s.administration = 'fin' GROUP BY c.code ORDER BY 1;
SELECT freshpay._refresh_customer_figures() > 0 AS refreshed;
-- Kept or computed anew, each customer's row is the one computed over all
-- its rows (no rows expected).
SELECT v.code FROM fin_summary v
  JOIN freshpay.customers c ON c.code = v.code AND c.administration = 'fin'
  JOIN freshpay._customer_figures(ARRAY[c.id]) l ON true
 WHERE (v.invoices, v.billed, v.collected, v.outstanding, v.avg_days_to_cash, v.p90_days_to_cash, v.declines,
		v.last_payment_at)
	   IS DISTINCT FROM (l.invoices, l.billed, l.collected, l.open_amount - l.unregistered, round(l.avg_days, 1),
						 l.p90_days, l.declines, l.last_payment_at);
-- A table emptied at once (TRUNCATE) forgets every kept figure.
SAVEPOINT before_truncate;
TRUNCATE freshpay.payment_allocations;
SELECT count(*) AS kept_after_truncate FROM freshpay.customer_figures;
ROLLBACK TO SAVEPOINT before_truncate;
-- The hand figures again, and the changes undone.
UPDATE freshpay.payments SET refunded_amount = 20.00 WHERE id = :p1;
UPDATE freshpay.invoices SET open_amount = 300.00 WHERE id = :a3;
UPDATE freshpay.payment_allocations SET freshportal_payment_id = 8001, registered_amount = 120.00
 WHERE payment_id = :p8 AND invoice_id = :c1;
SELECT * FROM fin_summary_live EXCEPT SELECT * FROM fin_summary;

------------------------------------------------------------------------------
-- aging, by hand (days past the due date, today)
------------------------------------------------------------------------------

-- ALPHA: A-2 20 days past due (150), A-3 due in 20 days (300 - 40).  BRAVO:
-- B-1 100 days (400), B-2 45 (80), B-3 70 (60), B-4 no due date (25).
-- CHARLIE: nothing open, no row.
SELECT code, current, days_1_30, days_31_60, days_61_90, days_over_90, total, open_invoices,
	   oldest_due_date - CURRENT_DATE AS oldest_due
  FROM freshpay.aging WHERE administration = 'fin' ORDER BY code;
SELECT * FROM (VALUES ('ALPHA', 260.00, 150.00, 0.00, 0.00, 0.00, 410.00),
				  ('BRAVO', 25.00, 0.00, 80.00, 60.00, 400.00, 565.00)) AS hand(code, c, d30, d60, d90, over, total)
EXCEPT
SELECT code, current, days_1_30, days_31_60, days_61_90, days_over_90, total FROM freshpay.aging WHERE administration = 'fin';
-- The buckets add up to the total, which is customer_summary's outstanding.
SELECT a.code, a.current + a.days_1_30 + a.days_31_60 + a.days_61_90 + a.days_over_90 = a.total AS buckets_add_up,
	   a.total = s.outstanding AS as_summary
  FROM freshpay.aging a JOIN freshpay.customer_summary s USING (customer_id)
 WHERE a.administration = 'fin' ORDER BY 1;

------------------------------------------------------------------------------
-- payment_request_funnel, by hand
------------------------------------------------------------------------------

SELECT month, requested, sent, paid, onboarded, expired, open, unknown, failed, amount_requested, amount_paid
  FROM freshpay.payment_request_funnel WHERE administration = 'fin' ORDER BY month;

------------------------------------------------------------------------------
-- Reconciliation verdicts (administration finx), and their exceptions
------------------------------------------------------------------------------

-- Q1 matched; Q2 more than X-2's total now; Q3 not registered in
-- FreshPortal (captured a minute ago, settled); Q4 names no invoice; Q5 a
-- refund of Q4; Q6 a statement whose allocations do not add up; Q7 in a
-- batch not pulled; Q8 an ACH debit the bank sent back; Q9 matched, in
-- batch 21 without a settlement time of its own (the batch's counts).
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, amount, status, response_code,
	invoice_number, paytrace_transaction_id, batch_number, settled_at, freshportal_payment_id, ach_status, return_reason,
	created_at, updated_at) VALUES
	('finx', :x1, :xray, 'sale', 100.00, 'captured', 101, 'X-1', 8101, 21, pg_temp.t(50), 6101, NULL, NULL, pg_temp.t(51), pg_temp.t(50)),
	('finx', :x2, :xray, 'sale', 50.00, 'captured', 101, 'X-2', 8102, 21, pg_temp.t(50), 6102, NULL, NULL, pg_temp.t(51), pg_temp.t(50)),
	('finx', :x3, :xray, 'sale', 70.00, 'captured', 101, 'X-3', 8103, 21, pg_temp.t(50), NULL, NULL, NULL, now() - interval '1 minute', now() - interval '1 minute'),
	('finx', NULL, NULL, 'sale', 10.00, 'captured', 101, 'ZZ-9', 8104, 21, pg_temp.t(50), NULL, NULL, NULL, pg_temp.t(51), pg_temp.t(50)),
	('finx', NULL, :xray, 'sale', 30.00, 'captured', 101, 'ST-X', 8106, 22, pg_temp.t(40), NULL, NULL, NULL, pg_temp.t(41), pg_temp.t(40)),
	('finx', :x1, :xray, 'sale', 5.00, 'captured', 101, 'X-1', 8107, 99, pg_temp.t(30), 6107, NULL, NULL, pg_temp.t(31), pg_temp.t(30)),
	('finx', :x3, :xray, 'ach_sale', 70.00, 'returned', NULL, 'X-3', 8108, NULL, pg_temp.t(45), 6108, 'RETURNED', 'R02', pg_temp.t(48), pg_temp.t(44)),
	('finx', :x1, :xray, 'sale', 1.00, 'captured', 101, 'X-1', 8109, 21, NULL, 6109, NULL, NULL, pg_temp.t(51), pg_temp.t(50));
SELECT id AS q4 FROM freshpay.payments WHERE paytrace_transaction_id = 8104 \gset
SELECT id AS q6 FROM freshpay.payments WHERE paytrace_transaction_id = 8106 \gset
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, parent_id, amount, status, response_code,
	invoice_number, paytrace_transaction_id, batch_number, settled_at, created_at, updated_at)
VALUES ('finx', NULL, NULL, 'refund', :q4, 10.00, 'refunded', 106, 'ZZ-9', 8105, 22, pg_temp.t(40), pg_temp.t(41), pg_temp.t(40));
UPDATE freshpay.payments SET refunded_amount = 10.00, status = 'refunded' WHERE id = :q4;
INSERT INTO freshpay.payment_allocations (administration, payment_id, invoice_id, amount, freshportal_payment_id, registered_amount)
VALUES ('finx', :q6, :x1, 10.00, 6201, 10.00), ('finx', :q6, :x2, 15.00, 6202, 15.00);
-- Batch 21 adds up; batch 22 does not: PayTrace counts a sale of 15.00
-- more than freshpay holds.
INSERT INTO freshpay.settlements (administration, batch_number, settled_at, transaction_count, sales_amount, refund_amount, net_amount)
VALUES ('finx', 21, pg_temp.t(50), 5, 231.00, 0, 231.00),
	   ('finx', 22, pg_temp.t(40), 3, 45.00, 10.00, 35.00);

SELECT paytrace_transaction_id AS transaction, kind, amount, batch_number AS batch, settled_at - pg_temp.t(0) AS settled,
	   invoice_number AS invoice, customer_code AS customer, method, match, match_reason
  FROM freshpay.reconciliation WHERE administration = 'finx' ORDER BY paytrace_transaction_id;
-- And fin's: matched, a refund of a matched sale, a debit sent back, a
-- statement that adds up.
SELECT paytrace_transaction_id AS transaction, kind, amount, batch_number AS batch, invoice_number AS invoice,
	   customer_code AS customer, method, match, match_reason
  FROM freshpay.reconciliation WHERE administration = 'fin' ORDER BY paytrace_transaction_id;
-- A settled-at condition leaves out nothing that settled then, by its own
-- time or its batch's.
SELECT count(*) AS settled_in_window FROM freshpay.reconciliation
 WHERE administration IN ('fin', 'finx') AND settled_at >= pg_temp.t(60) AND settled_at < pg_temp.t(40, 13);

-- Every verdict but matched and statement is an exception of the same
-- transaction (no_invoice as settled_without_invoice, returned as
-- ach_returned), with a suggested action.
SELECT r.paytrace_transaction_id AS transaction, r.match,
	   (SELECT string_agg(e.kind, ', ' ORDER BY e.kind) FROM freshpay.exceptions e
		 WHERE e.payment_id = r.payment_id AND e.suggested_action <> '') AS exceptions
  FROM freshpay.reconciliation r WHERE r.administration IN ('fin', 'finx') ORDER BY 1;
SELECT count(*) AS verdicts_without_exception
  FROM freshpay.reconciliation r
 WHERE r.administration IN ('fin', 'finx') AND r.match NOT IN ('matched', 'statement')
   AND NOT EXISTS (SELECT FROM freshpay.exceptions e
				   WHERE e.payment_id = r.payment_id AND e.suggested_action <> ''
					 AND e.kind = CASE r.match WHEN 'no_invoice' THEN 'settled_without_invoice'
											   WHEN 'returned' THEN 'ach_returned' ELSE r.match END);
-- finx's exceptions, each with what to do (local ids shown as <id>).
SELECT e.kind, p.paytrace_transaction_id AS transaction, i.number AS invoice, e.detail,
	   regexp_replace(regexp_replace(e.suggested_action, '(freshpay_\w+\()\d+', '\1<id>', 'g'),
					  '(payment_id = |payment )\d+', '\1<id>', 'g') AS suggested_action
  FROM freshpay.exceptions e
  LEFT JOIN freshpay.payments p ON p.id = e.payment_id
  LEFT JOIN freshpay.invoices i ON i.id = e.invoice_id
 WHERE e.administration = 'finx' ORDER BY 1, 2, 3;
-- Every exception of every kind has a suggested action; suggested_action
-- is the view's last column.
SELECT count(*) AS exceptions_without_action FROM freshpay.exceptions WHERE coalesce(suggested_action, '') = '';
SELECT kind, count(*) FROM freshpay.exceptions WHERE administration IN ('fin', 'finx') GROUP BY 1 ORDER BY 1;
SELECT attname FROM pg_attribute WHERE attrelid = 'freshpay.exceptions'::regclass AND attnum > 0 ORDER BY attnum DESC LIMIT 1;

------------------------------------------------------------------------------
-- Privileges: a role granted freshpay_reader
------------------------------------------------------------------------------

CREATE ROLE regress_fin_reader IN ROLE freshpay_reader;
CREATE ROLE regress_fin_admin IN ROLE freshpay_admin;
-- What freshpay_reader may read in schema freshpay: everything but the
-- secrets (and, in reader_scopes, the rows that limit it).
SELECT c.relname, c.relkind, has_table_privilege('freshpay_reader', c.oid, 'SELECT') AS reads,
	   has_table_privilege('freshpay_reader', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') AS writes
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'freshpay' AND c.relkind IN ('r', 'v') ORDER BY 1;
-- It reads each of them (as itself: the views run as their caller) ...
SET ROLE regress_fin_reader;
SELECT c.relname, (pg_temp.error_of(pg_catalog.format('SELECT count(*) FROM freshpay.%I', c.relname))).code
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'freshpay' AND c.relkind IN ('r', 'v') ORDER BY 1;
-- ... and calls no money function, nor changes anything.
SELECT f, (pg_temp.error_of('SELECT ' || f)).code FROM (VALUES
	(pg_catalog.format('freshpay_capture(%s)', :a3)), (pg_catalog.format('freshpay_authorize(%s)', :a3)),
	(pg_catalog.format('freshpay_refund(%s, 1.00)', :p1)), (pg_catalog.format('freshpay_void(%s)', :p1)),
	(pg_catalog.format('freshpay_reverse(%s)', :a1)), (pg_catalog.format('freshpay_capture_statement(%s)', :charlie)),
	(pg_catalog.format('freshpay_request_payment(%s)', :a3)), (pg_catalog.format('freshpay_resolve(%s)', :p1)),
	(pg_catalog.format('freshpay_link_customer(%s, ''PT-D'')', :delta)), ('freshpay_sync(''fin'')'),
	('freshpay_add_administration(''finz'', ''http://127.0.0.1:9'', ''k'', ''http://127.0.0.1:9'', ''u'', ''p'', ''i'')')) AS calls(f);
SELECT s, (pg_temp.error_of(s)).code FROM (VALUES
	('UPDATE freshpay.invoices SET open_amount = 0'), ('DELETE FROM freshpay.payments'),
	('INSERT INTO freshpay.reader_scopes (role, administration) VALUES (''regress_fin_reader'', ''fin'')'),
	('UPDATE freshpay.administrations SET paytrace_url = ''http://127.0.0.1:8''')) AS statements(s);
RESET ROLE;

------------------------------------------------------------------------------
-- Readers limited to administrations
------------------------------------------------------------------------------

CREATE ROLE regress_fin_scoped IN ROLE freshpay_reader;
CREATE ROLE regress_fin_member IN ROLE regress_fin_scoped;
CREATE ROLE regress_fin_group;
CREATE ROLE regress_fin_grouped IN ROLE freshpay_reader, regress_fin_group;
CREATE ROLE regress_fin_operator IN ROLE freshpay_operator;
CREATE ROLE regress_fin_x IN ROLE freshpay_reader;
-- freshpay_admin manages the scopes; a role that does not exist is refused.
SET ROLE regress_fin_admin;
INSERT INTO freshpay.reader_scopes (role, administration) VALUES
	('regress_fin_scoped', 'fin2'), ('regress_fin_group', 'finx'), ('regress_fin_group', 'fin2'),
	('regress_fin_operator', 'fin2'), ('regress_fin_x', 'finx');
SELECT * FROM pg_temp.error_of($$INSERT INTO freshpay.reader_scopes (role, administration) VALUES ('regress_fin_nobody', 'fin')$$);
SELECT * FROM pg_temp.error_of($$INSERT INTO freshpay.reader_scopes (role, administration) VALUES ('regress_fin_scoped', 'nowhere')$$);
SELECT role, administration FROM freshpay.reader_scopes WHERE role::text LIKE 'regress_fin%' ORDER BY 1, 2;
RESET ROLE;

-- What each role sees of fin, fin2 and finx: rows per administration in a
-- table or view, as administration:rows.
CREATE FUNCTION pg_temp.seen(relation text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	result text;
BEGIN
	EXECUTE pg_catalog.format('SELECT coalesce(string_agg(a || '':'' || n, '' '' ORDER BY a), ''-'') FROM (SELECT %s AS a, count(*) AS n FROM freshpay.%I WHERE %s IN (''fin'', ''fin2'', ''finx'') GROUP BY 1) x',
							  CASE relation WHEN 'administrations' THEN 'name' ELSE 'administration' END, relation,
							  CASE relation WHEN 'administrations' THEN 'name' ELSE 'administration' END)
		INTO result;
	RETURN result;
END
$$;
CREATE TEMP VIEW seen_by WITH (security_invoker = true) AS
	SELECT r AS relation, pg_temp.seen(r) AS rows
	  FROM unnest(ARRAY['administrations', 'customers', 'invoices', 'payments', 'settlements', 'payment_requests',
						'payment_allocations', 'invoice_status', 'reconciliation', 'exceptions', 'customer_status',
						'daily_cash', 'customer_summary', 'aging', 'payment_request_funnel']) r;
GRANT SELECT ON seen_by TO PUBLIC;
-- A reader not listed sees all three.
SET ROLE regress_fin_reader;
SELECT * FROM seen_by;
RESET ROLE;
-- A listed reader sees fin2 only, in every table and view; so does a member of it.
SET ROLE regress_fin_scoped;
SELECT * FROM seen_by;
SELECT (SELECT count(*) FROM freshpay.payment_allocations) AS allocations,
	   (SELECT count(*) FROM freshpay.payment_history) AS history,
	   (SELECT count(*) FROM freshpay.jobs) AS jobs,
	   (SELECT count(*) FROM freshpay.sync_state) AS sync_state;
SELECT role, administration FROM freshpay.reader_scopes ORDER BY 1, 2;
RESET ROLE;
SET ROLE regress_fin_member;
SELECT * FROM seen_by WHERE relation IN ('invoices', 'payments', 'aging');
RESET ROLE;
-- Listed through a group role: the group's administrations.
SET ROLE regress_fin_grouped;
SELECT * FROM seen_by WHERE relation IN ('invoices', 'payments', 'reconciliation', 'exceptions');
SELECT count(*) AS allocations_of_finx FROM freshpay.payment_allocations;
RESET ROLE;
-- Limited to finx alone: the allocations of finx's statement (Q6), not those
-- of fin's (P8), and each is of a payment it sees.
SET ROLE regress_fin_x;
SELECT * FROM seen_by WHERE relation IN ('payments', 'payment_allocations', 'reconciliation');
SELECT p.invoice_number AS statement, i.number AS invoice, a.amount
  FROM freshpay.payment_allocations a
  LEFT JOIN freshpay.payments p ON p.id = a.payment_id
  LEFT JOIN freshpay.invoices i ON i.id = a.invoice_id
 ORDER BY 1, 2;
RESET ROLE;
-- Operators (and admins) see everything, listed or not: the money
-- functions read back what the worker recorded as their caller.
SET ROLE regress_fin_operator;
SELECT * FROM seen_by WHERE relation IN ('invoices', 'payments', 'reconciliation');
RESET ROLE;
SET ROLE regress_fin_admin;
SELECT * FROM seen_by WHERE relation IN ('payments', 'payment_requests');
RESET ROLE;
-- And the superuser (the worker's role).
SELECT * FROM seen_by WHERE relation IN ('invoices', 'payments');
-- Without rows in reader_scopes the limit is gone.
DELETE FROM freshpay.reader_scopes WHERE role = 'regress_fin_scoped';
SET ROLE regress_fin_scoped;
SELECT * FROM seen_by WHERE relation IN ('invoices', 'payments');
RESET ROLE;

ROLLBACK;
