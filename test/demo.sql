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

-- 6. Who can see what: readers see the data, never a secret.
SELECT grantee, privilege_type FROM information_schema.role_table_grants
 WHERE table_schema = 'freshpay' AND table_name = 'administration_secrets' ORDER BY 1, 2;
