--
-- freshpay demo: a US flower wholesaler's FreshPortal administration,
-- synced into PostgreSQL where the finance team's BI tools look.
-- Run by test/demo (the stand-ins play FreshPortal and PayTrace).
--
\set ECHO queries
\pset footer off

-- 1. Install and connect the administration.  Secrets are references to
--    the server's environment, so they never appear in SQL text or logs.
CREATE EXTENSION freshpay;
SELECT name, paytrace_username, created_at IS NOT NULL AS added
  FROM freshpay_add_administration(
	name                   => 'main',
	freshportal_url        => :'fp_url',
	freshportal_api_key    => :'fp_api_key_ref',
	paytrace_url           => :'pt_url',
	paytrace_username      => :'pt_username',
	paytrace_password      => :'pt_password_ref',
	paytrace_integrator_id => :'pt_integrator_id');

-- 2. Pull customers and invoices.
SELECT * FROM freshpay_sync('main');

-- 3. What BI sees: receivables per customer.
SELECT c.code, c.name, count(*) FILTER (WHERE i.type = 'invoice') AS invoices,
	   count(*) FILTER (WHERE i.type = 'credit_note') AS credit_notes,
	   sum(i.amount_incl_vat) AS billed, sum(i.open_amount) AS open
  FROM freshpay.customers c JOIN freshpay.invoices i ON i.customer_id = c.id
 GROUP BY c.code, c.name ORDER BY open DESC;

-- 4. Open invoices by due date, oldest first.
SELECT i.number, c.code, i.status, i.due_date, i.open_amount,
	   CASE WHEN i.due_date < current_date THEN current_date - i.due_date END AS days_overdue
  FROM freshpay.invoices i JOIN freshpay.customers c ON c.id = i.customer_id
 WHERE i.status IN ('open', 'partially_paid') AND i.type = 'invoice'
 ORDER BY i.due_date, i.number;

-- 5. A second sync is incremental: nothing new was inserted or updated.
SELECT * FROM freshpay_sync('main');
SELECT administration, stream, last_synced_at IS NOT NULL AS synced, last_fetched, last_inserted, last_updated
  FROM freshpay.sync_state ORDER BY 1, 2;

-- 6. Link customers to their PayTrace vault profiles (no card data here).
SELECT l.code, l.paytrace_customer_id, l.payment_method, l.collection
  FROM freshpay.customers c,
	   LATERAL freshpay_link_customer(c.id, 'C-' || c.code, 'manual',
									  CASE c.code WHEN 'FERN' THEN 'ach' ELSE 'card' END) l
 WHERE c.code IN ('BLOOM', 'PETAL', 'FERN')
 ORDER BY l.code;

-- 7. Collect: a card sale, an ACH debit, an authorization captured in part.
SELECT kind, status, amount, response_code, approval_code IS NOT NULL AS approved
  FROM freshpay_capture((SELECT id FROM freshpay.invoices WHERE number = 'INV-10421'));
SELECT kind, status, amount, response_code
  FROM freshpay_capture((SELECT id FROM freshpay.invoices WHERE number = 'INV-10439'));
SELECT kind, status, amount
  FROM freshpay_authorize((SELECT id FROM freshpay.invoices WHERE number = 'INV-10437'));
SELECT kind, status, amount, parent_id IS NOT NULL AS captures_the_authorization
  FROM freshpay_capture((SELECT id FROM freshpay.invoices WHERE number = 'INV-10437'), 500.00);

-- 8. Bad input is refused before anything is sent.
\set ON_ERROR_STOP off
SELECT freshpay_capture((SELECT id FROM freshpay.invoices WHERE number = 'INV-10421'));
SELECT freshpay_capture((SELECT id FROM freshpay.invoices WHERE number = 'INV-10425'));
\set ON_ERROR_STOP on

-- 9. The worker writes every outcome back to FreshPortal; the invoices follow.
SELECT pg_sleep(2);
SELECT p.id, i.number, p.kind, p.status, p.amount, p.freshportal_payment_id IS NOT NULL AS in_freshportal
  FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
 ORDER BY p.id;
SELECT number, amount_incl_vat, amount_paid, open_amount, status
  FROM freshpay.invoices WHERE number IN ('INV-10421', 'INV-10437', 'INV-10439') ORDER BY number;

-- 10. Undo one: a void before settlement, reversed in FreshPortal too.
SELECT kind, status, amount FROM freshpay_reverse((SELECT id FROM freshpay.invoices WHERE number = 'INV-10421'));
SELECT pg_sleep(1);
SELECT number, amount_paid, open_amount, status FROM freshpay.invoices WHERE number = 'INV-10421';
SELECT p.id, h.event, h.old_status, h.new_status
  FROM freshpay.payment_history h JOIN freshpay.payments p ON p.id = h.payment_id
  JOIN freshpay.invoices i ON i.id = p.invoice_id
 WHERE i.number = 'INV-10421' ORDER BY h.id;

-- 11. Who can see what: readers see the data, never a secret.
SELECT grantee, privilege_type FROM information_schema.role_table_grants
 WHERE table_schema = 'freshpay' AND table_name = 'administration_secrets' ORDER BY 1, 2;
