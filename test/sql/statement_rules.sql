--
-- Statement rules: freshpay_link_customer with statement_weekly and
-- statement_monthly, the constraints on customers and jobs behind them, and
-- how the finance views show a statement (one charge for several invoices).
-- Nothing here depends on today's date: statement_since is compared with
-- CURRENT_DATE.
--
\set SHOW_CONTEXT never

-- Each refusal: its SQLSTATE, message and hint (no detail: a failing row
-- carries timestamps).
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

-- An administration of its own, which nothing is sent to, and its customers.
SELECT name FROM freshpay_add_administration('stmt', 'http://127.0.0.1:9', 'k',
	'http://127.0.0.1:9', 'u', 'p', 'i');
INSERT INTO freshpay.customers (administration, freshportal_id, code, name, currency) VALUES
	('stmt', 9001, 'WEEKLY', 'Weekly Wholesale', 'USD'),
	('stmt', 9002, 'MONTHLY', 'Monthly Markets', 'USD'),
	('stmt', 9003, 'BANK', 'Bank Debit Blooms', 'USD'),
	('stmt', 9004, 'NOVAULT', 'No Vault Nursery', 'USD');
SELECT id AS weekly FROM freshpay.customers WHERE administration = 'stmt' AND code = 'WEEKLY' \gset
SELECT id AS monthly FROM freshpay.customers WHERE administration = 'stmt' AND code = 'MONTHLY' \gset
SELECT id AS bank FROM freshpay.customers WHERE administration = 'stmt' AND code = 'BANK' \gset
SELECT id AS novault FROM freshpay.customers WHERE administration = 'stmt' AND code = 'NOVAULT' \gset
CREATE VIEW pg_temp.rules AS
	SELECT code, paytrace_customer_id, payment_method, collection, statement_day,
		   CASE WHEN statement_since = CURRENT_DATE THEN 'today' ELSE statement_since::text END AS statement_since
	  FROM freshpay.customers WHERE administration = 'stmt' ORDER BY code;

-- The new columns start empty.
SELECT * FROM pg_temp.rules;

------------------------------------------------------------------------------
-- Good: a statement rule stores its day, and since today
------------------------------------------------------------------------------

SELECT code, collection, payment_method, statement_day, statement_since = CURRENT_DATE AS since_today
  FROM freshpay_link_customer(:weekly, 'pt-weekly', 'statement_weekly', 'card', 3);
SELECT code, collection, payment_method, statement_day, statement_since = CURRENT_DATE AS since_today
  FROM freshpay_link_customer(:monthly, 'pt-monthly', collection => 'statement_monthly', statement_day => 15);
-- The ends of the ranges: Sunday and Saturday, the 1st and the 28th.
SELECT code, collection, statement_day FROM freshpay_link_customer(:bank, 'pt-bank', 'statement_weekly', 'card', 0);
SELECT code, collection, statement_day FROM freshpay_link_customer(:bank, 'pt-bank', 'statement_weekly', 'card', 6);
SELECT code, collection, statement_day FROM freshpay_link_customer(:bank, 'pt-bank', 'statement_monthly', 'card', 1);
SELECT code, collection, statement_day FROM freshpay_link_customer(:bank, 'pt-bank', 'statement_monthly', 'card', 28);
-- Back to an invoice rule: no day, no since.
SELECT code, collection, payment_method, statement_day, statement_since IS NULL AS no_since
  FROM freshpay_link_customer(:bank, 'pt-bank', 'on_due_date', 'ach');
SELECT * FROM pg_temp.rules;

-- statement_since stays while the rule and its day stay (another vault
-- profile changes neither), and moves to today when either changes.
UPDATE freshpay.customers SET statement_since = '2000-01-03' WHERE id = :weekly;
SELECT code, statement_day, statement_since
  FROM freshpay_link_customer(:weekly, 'pt-weekly', 'statement_weekly', 'card', 3);
SELECT code, statement_day, statement_since
  FROM freshpay_link_customer(:weekly, 'pt-weekly-2', 'statement_weekly', 'card', 3);
SELECT code, statement_day, statement_since = CURRENT_DATE AS since_today
  FROM freshpay_link_customer(:weekly, 'pt-weekly', 'statement_weekly', 'card', 4);
UPDATE freshpay.customers SET statement_since = '2000-01-03' WHERE id = :weekly;
SELECT code, collection, statement_day, statement_since = CURRENT_DATE AS since_today
  FROM freshpay_link_customer(:weekly, 'pt-weekly', 'statement_monthly', 'card', 4);
SELECT code, collection, statement_day, statement_since = CURRENT_DATE AS since_today
  FROM freshpay_link_customer(:weekly, 'pt-weekly', 'statement_weekly', 'card', 3);

------------------------------------------------------------------------------
-- Refused: each a clear error (22023) that changes nothing
------------------------------------------------------------------------------

-- A statement rule without its day.
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, 'pt-weekly', 'statement_weekly')$$, :weekly));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, 'pt-monthly', 'statement_monthly', 'card', NULL)$$, :monthly));
-- Days out of range.
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, 'pt-weekly', 'statement_weekly', 'card', 7)$$, :weekly));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, 'pt-weekly', 'statement_weekly', 'card', -1)$$, :weekly));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, 'pt-monthly', 'statement_monthly', 'card', 0)$$, :monthly));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, 'pt-monthly', 'statement_monthly', 'card', 29)$$, :monthly));
-- A day without a statement rule.
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, 'pt-weekly', 'on_issue', 'card', 3)$$, :weekly));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, NULL, 'manual', 'card', 3)$$, :weekly));
-- Statements are card charges against a vault profile.
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, 'pt-bank', 'statement_monthly', 'ach', 15)$$, :bank));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, NULL, 'statement_weekly', 'card', 2)$$, :novault));
-- A rule that does not exist; the hint lists them.
SELECT * FROM pg_temp.error_of(pg_catalog.format($$SELECT freshpay_link_customer(%s, 'pt-weekly', 'statement_daily', 'card', 3)$$, :weekly));
SELECT * FROM pg_temp.rules;

------------------------------------------------------------------------------
-- The constraints refuse bad rows written directly
------------------------------------------------------------------------------

SELECT * FROM pg_temp.error_of(pg_catalog.format($$UPDATE freshpay.customers SET collection = 'statement_weekly' WHERE id = %s$$, :novault));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$UPDATE freshpay.customers SET collection = 'statement_weekly', statement_day = 7 WHERE id = %s$$, :novault));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$UPDATE freshpay.customers SET collection = 'statement_weekly', statement_day = -1 WHERE id = %s$$, :novault));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$UPDATE freshpay.customers SET collection = 'statement_monthly', statement_day = 0 WHERE id = %s$$, :novault));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$UPDATE freshpay.customers SET collection = 'statement_monthly', statement_day = 29 WHERE id = %s$$, :novault));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$UPDATE freshpay.customers SET collection = 'on_issue', statement_day = 3 WHERE id = %s$$, :novault));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$UPDATE freshpay.customers SET statement_day = NULL WHERE id = %s$$, :weekly));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$UPDATE freshpay.customers SET collection = 'statement_daily', statement_day = 3 WHERE id = %s$$, :novault));
SELECT * FROM pg_temp.rules;

-- Jobs: a statement collection names the customer only, once while queued.
-- (In a transaction rolled back: the worker never sees these jobs.)
BEGIN;
INSERT INTO freshpay.invoices (administration, freshportal_id, number, customer_id, freshportal_customer_id,
	invoice_date, due_date, currency, amount_excl_vat, vat_amount, amount_incl_vat, open_amount)
VALUES ('stmt', 9101, 'J-1', :weekly, 9001, '2026-01-05', '2026-01-05', 'USD', 10, 0, 10, 10);
SELECT id AS job_invoice FROM freshpay.invoices WHERE administration = 'stmt' AND number = 'J-1' \gset
SELECT * FROM pg_temp.error_of(pg_catalog.format($$INSERT INTO freshpay.jobs (kind, customer_id) VALUES ('collect_statement', %s)$$, :weekly));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$INSERT INTO freshpay.jobs (kind, customer_id) VALUES ('collect_statement', %s)$$, :weekly));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$INSERT INTO freshpay.jobs (kind, customer_id) VALUES ('collect_statement', %s)$$, :monthly));
SELECT * FROM pg_temp.error_of($$INSERT INTO freshpay.jobs (kind) VALUES ('collect_statement')$$);
SELECT * FROM pg_temp.error_of(pg_catalog.format($$INSERT INTO freshpay.jobs (kind, customer_id, invoice_id) VALUES ('collect_statement', %s, %s)$$, :weekly, :job_invoice));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$INSERT INTO freshpay.jobs (kind, customer_id) VALUES ('register_payment', %s)$$, :weekly));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$INSERT INTO freshpay.jobs (kind, customer_id) VALUES ('collect_invoice', %s)$$, :weekly));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$INSERT INTO freshpay.jobs (kind, invoice_id) VALUES ('collect_invoice', %s)$$, :job_invoice));
SELECT * FROM pg_temp.error_of(pg_catalog.format($$INSERT INTO freshpay.jobs (kind, customer_id) VALUES ('collect_everything', %s)$$, :weekly));
-- Done, another may be queued.
UPDATE freshpay.jobs SET state = 'done' WHERE kind = 'collect_statement' AND customer_id = :weekly;
SELECT * FROM pg_temp.error_of(pg_catalog.format($$INSERT INTO freshpay.jobs (kind, customer_id) VALUES ('collect_statement', %s)$$, :weekly));
SELECT kind, state, customer_id = :weekly AS weekly FROM freshpay.jobs
 WHERE customer_id IN (:weekly, :monthly) ORDER BY id;
ROLLBACK;

------------------------------------------------------------------------------
-- A statement in the finance views (rolled back: the worker never sees it)
------------------------------------------------------------------------------

BEGIN;
-- Five invoices of WEEKLY: S-1 paid, the others open.
INSERT INTO freshpay.invoices (administration, freshportal_id, number, customer_id, freshportal_customer_id,
	invoice_date, due_date, currency, amount_excl_vat, vat_amount, amount_incl_vat, amount_paid, open_amount, status)
VALUES ('stmt', 9201, 'S-1', :weekly, 9001, '2026-01-05', '2026-01-05', 'USD', 100, 0, 100, 100, 0, 'paid'),
	   ('stmt', 9202, 'S-2', :weekly, 9001, '2026-01-05', '2026-01-05', 'USD', 50, 0, 50, 0, 50, 'open'),
	   ('stmt', 9203, 'S-3', :weekly, 9001, '2026-01-05', '2026-01-05', 'USD', 25, 0, 25, 0, 25, 'open'),
	   ('stmt', 9204, 'S-4', :weekly, 9001, '2026-01-05', '2026-01-05', 'USD', 20, 0, 20, 0, 20, 'open'),
	   ('stmt', 9205, 'S-5', :weekly, 9001, '2026-01-05', '2026-01-05', 'USD', 30, 0, 30, 0, 30, 'open');
-- ST-1: captured and settled, S-1 registered in FreshPortal, S-2 not yet;
-- then a settled refund of it.  ST-2: its answer was lost.  ST-3 and ST-4:
-- declined.  And a settled sale that names no invoice.
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, amount, status, invoice_number,
	response_code, message, batch_number, paytrace_transaction_id, updated_at)
VALUES ('stmt', NULL, :weekly, 'sale', 150.00, 'captured', 'ST-1', 101, 'APPROVED', 77, 880001, now() - interval '1 hour'),
	   ('stmt', NULL, :weekly, 'sale', 25.00, 'unknown', 'ST-2', NULL, NULL, NULL, NULL, now() - interval '1 hour'),
	   ('stmt', NULL, :weekly, 'sale', 20.00, 'failed', 'ST-3', 102, 'DECLINED', NULL, 880003, now() - interval '1 hour'),
	   ('stmt', NULL, :weekly, 'sale', 20.00, 'failed', 'ST-4', 102, 'DECLINED', NULL, 880004, now() - interval '1 hour'),
	   ('stmt', NULL, NULL, 'sale', 12.34, 'captured', 'X-1', 101, 'APPROVED', 77, 880005, now() - interval '1 hour');
SELECT id AS st1 FROM freshpay.payments WHERE administration = 'stmt' AND invoice_number = 'ST-1' \gset
SELECT id AS st2 FROM freshpay.payments WHERE administration = 'stmt' AND invoice_number = 'ST-2' \gset
SELECT id AS st3 FROM freshpay.payments WHERE administration = 'stmt' AND invoice_number = 'ST-3' \gset
SELECT id AS st4 FROM freshpay.payments WHERE administration = 'stmt' AND invoice_number = 'ST-4' \gset
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, parent_id, amount, status, invoice_number,
	batch_number, paytrace_transaction_id)
VALUES ('stmt', NULL, :weekly, 'refund', :st1, 10.00, 'refunded', 'ST-1', 78, 880006);
INSERT INTO freshpay.payment_allocations (administration, payment_id, invoice_id, amount, freshportal_payment_id, registered_amount)
SELECT 'stmt', :st1, id, 100.00, 7001, 100.00 FROM freshpay.invoices WHERE administration = 'stmt' AND number = 'S-1'
UNION ALL SELECT 'stmt', :st1, id, 50.00, NULL, NULL FROM freshpay.invoices WHERE administration = 'stmt' AND number = 'S-2'
UNION ALL SELECT 'stmt', :st2, id, 25.00, NULL, NULL FROM freshpay.invoices WHERE administration = 'stmt' AND number = 'S-3'
UNION ALL SELECT 'stmt', :st3, id, 20.00, NULL, NULL FROM freshpay.invoices WHERE administration = 'stmt' AND number = 'S-4'
UNION ALL SELECT 'stmt', :st4, id, 20.00, NULL, NULL FROM freshpay.invoices WHERE administration = 'stmt' AND number = 'S-4';

-- Registered and unregistered allocations, with the latest statement.
SELECT number, status, billed, captured, refunded, outstanding, latest_payment_status, latest_payment_kind,
	   freshportal_agrees, statement_payment_id IS NOT NULL AS has_statement, statement_number, statement_allocated
  FROM freshpay.invoice_status WHERE administration = 'stmt' ORDER BY number;

-- One row per statement, or per allocation not registered; the declines
-- hold the statement rule too; a statement job has its customer.
INSERT INTO freshpay.jobs (kind, customer_id, state, attempts, last_error)
VALUES ('collect_statement', :weekly, 'dead', 8, 'PayTrace is down');
SELECT e.kind, p.invoice_number AS payment, i.number AS invoice, e.job_id IS NOT NULL AS has_job,
	   replace(e.detail, pg_catalog.format('freshpay_resolve(%s,', e.payment_id), 'freshpay_resolve(<id>,') AS detail
  FROM freshpay.exceptions e
  LEFT JOIN freshpay.payments p ON p.id = e.payment_id
  LEFT JOIN freshpay.invoices i ON i.id = e.invoice_id
 WHERE e.administration = 'stmt' AND e.kind <> 'collection_paused'
 ORDER BY 1, 2, 3;
SELECT e.kind, p.invoice_number AS payment, e.detail LIKE 'automatic collection of customer Weekly Wholesale (WEEKLY) is paused: 2 declined charges%' AS detail_ok
  FROM freshpay.exceptions e JOIN freshpay.payments p ON p.id = e.payment_id
 WHERE e.administration = 'stmt' AND e.kind = 'collection_paused';
-- Registered statement money counts in the invoice's amounts.
UPDATE freshpay.invoices SET amount_paid = 90, open_amount = 10 WHERE administration = 'stmt' AND number = 'S-1';
SELECT kind, detail FROM freshpay.exceptions WHERE administration = 'stmt' AND kind = 'amount_mismatch';

-- Settled: a statement with an allocation not registered, and its refund
-- in a batch not pulled yet; the verdicts say why.
SELECT kind, amount, invoice_id IS NULL AS no_invoice, customer_code, match, match_reason
  FROM freshpay.reconciliation WHERE administration = 'stmt' ORDER BY payment_id;

-- The customer's statement day.
SELECT code, collection, has_vault_profile, statement_day, collection_paused
  FROM freshpay.customer_status WHERE administration = 'stmt' ORDER BY code;
ROLLBACK;

------------------------------------------------------------------------------
-- Privileges: like the other money functions and tables
------------------------------------------------------------------------------

SELECT p.oid::regprocedure AS function, p.prosecdef AS security_definer, p.proisstrict AS strict,
	   p.provolatile AS volatility,
	   has_function_privilege('freshpay_operator', p.oid, 'EXECUTE') AS operator_may,
	   has_function_privilege('freshpay_reader', p.oid, 'EXECUTE') AS reader_may
  FROM pg_proc p
 WHERE p.proname IN ('freshpay_link_customer', 'freshpay_capture_statement', 'freshpay_capture')
 ORDER BY p.proname;
SELECT c.relname, has_table_privilege('freshpay_reader', c.oid, 'SELECT') AS reader_reads,
	   has_table_privilege('freshpay_operator', c.oid, 'INSERT') AS operator_writes
  FROM pg_class c
 WHERE c.oid IN ('freshpay.payment_allocations'::regclass, 'freshpay.allocation_reversals'::regclass)
 ORDER BY 1;
-- pg_dump keeps them (config tables of the extension).
SELECT c.relname
  FROM pg_extension e, unnest(e.extconfig) AS x(oid) JOIN pg_class c ON c.oid = x.oid
 WHERE e.extname = 'freshpay' AND c.relname ~ '^(payment_allocations|allocation_reversals)'
 ORDER BY 1;

-- Leave nothing behind.
DELETE FROM freshpay.customers WHERE administration = 'stmt';
DELETE FROM freshpay.administrations WHERE name = 'stmt';
