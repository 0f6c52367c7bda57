--
-- test/demo.sql — the demo's report: what freshpay did with the wholesaler's
-- month, read from freshpay's tables and views as a finance team or its BI
-- tool would (payments, payment_allocations, payment_requests,
-- invoice_status, customer_status, reconciliation, settlements,
-- exceptions).
--
-- ./demo prints it at the end.  Against a demo kept with ./demo --keep:
--   psql "host=… port=… dbname=erp user=…" -f test/demo.sql
-- It only reads (its helpers are temporary), reports every administration,
-- and fits in 100 columns.  It relies on the views of freshpay 0.9 and uses
-- newer columns when they are there (exceptions.suggested_action).
--
\set QUIET on
\set ON_ERROR_STOP on
\timing off
\pset footer off
\pset null '-'
\pset linestyle unicode
\pset border 1
SET client_min_messages = warning;

-- Text wrapped at width, continuation lines indented.
CREATE FUNCTION pg_temp.wrap(body text, width integer, indent text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
	SELECT rtrim(regexp_replace(body || ' ', '(.{1,' || width || '})\s+', E'\\1\n' || indent, 'g'), E'\n ')
$$;

CREATE FUNCTION pg_temp.usd(amount numeric) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT to_char(amount, 'FM$999,999,990.00') $$;

-- Whether FreshPortal has been told about these payments: no write-back job
-- of theirs is still queued.
CREATE FUNCTION pg_temp.written_back(payment_ids bigint[]) RETURNS boolean
LANGUAGE sql STABLE AS $$
	SELECT NOT EXISTS (SELECT FROM freshpay.jobs j WHERE j.state = 'queued'
						AND j.kind IN ('register_payment', 'reverse_payment')
						AND j.payment_id = ANY (payment_ids))
$$;

-- Every collected invoice, one row each: a charge of the invoice, or its
-- allocation in a statement; net of refunds; voids, declines and returned
-- ACH debits are not collected.  The route says who collected it.
CREATE TEMP VIEW demo_cash AS
	SELECT i.administration, i.id AS invoice_id, i.number, c.code, c.name,
		   i.invoice_date, i.due_date, p.id AS payment_id, p.kind,
		   CASE WHEN p.invoice_id IS NULL THEN 'statement (card)'
				WHEN p.requested_by = 'payment request' THEN 'payment request (card)'
				WHEN p.requested_by = 'freshpay worker' THEN
					CASE WHEN c.collection = 'on_due_date' THEN 'on due date' ELSE 'on issue' END
					|| CASE WHEN p.kind = 'ach_sale' THEN ' (ACH)' ELSE ' (card)' END
				ELSE 'by hand (' || p.requested_by || ')' END AS route,
		   CASE WHEN p.invoice_id IS NULL THEN a.amount ELSE p.amount - p.refunded_amount END AS amount,
		   p.created_at::date AS cash_date
	  FROM freshpay.payments p
	  LEFT JOIN freshpay.payment_allocations a ON p.invoice_id IS NULL AND a.payment_id = p.id
	  JOIN freshpay.invoices i ON i.id = coalesce(p.invoice_id, a.invoice_id)
	  JOIN freshpay.customers c ON c.id = i.customer_id
	 WHERE p.kind IN ('sale', 'ach_sale', 'capture')
	   AND p.status IN ('captured', 'refunded');

-- Every invoice still open, and why.
CREATE TEMP VIEW demo_open AS
	SELECT s.administration, s.invoice_id, s.number, s.outstanding, i.due_date,
		   CASE WHEN EXISTS (SELECT FROM freshpay.exceptions e WHERE e.invoice_id = s.invoice_id
							  AND e.kind IN ('failed_collection', 'ach_returned'))
					THEN 'collection failed (see the exceptions)'
				WHEN s.payment_request_status = 'sent' THEN 'payment request sent, not paid yet'
				WHEN cs.collection = 'on_due_date' THEN 'to collect on its due date'
				WHEN cs.collection LIKE 'statement%' THEN 'on the next statement'
				WHEN cs.collection = 'manual' THEN 'pays by check or transfer'
				ELSE 'other' END AS why
	  FROM freshpay.invoice_status s
	  JOIN freshpay.invoices i ON i.id = s.invoice_id
	  JOIN freshpay.customer_status cs ON cs.customer_id = i.customer_id
	 WHERE s.type = 'invoice' AND s.status IN ('open', 'partially_paid') AND s.outstanding > 0;

\pset format unaligned
\pset tuples_only on
SELECT E'\n' || repeat('=', 100) || E'\n'
	   || ' freshpay demo report: ' || a.name || ', ' || current_date || E'\n'
	   || repeat('=', 100) || E'\n'
	   || format('  %-16s%s invoices dated %s to %s, and %s credit notes; billed %s', 'invoices',
				 count(*) FILTER (WHERE i.type = 'invoice'), min(i.invoice_date), max(i.invoice_date),
				 count(*) FILTER (WHERE i.type = 'credit_note'),
				 pg_temp.usd(sum(i.amount_incl_vat) FILTER (WHERE i.type = 'invoice'))) || E'\n'
	   || format('  %-16s%s of %s invoices, by the worker and by payers on PayTrace''s page', 'collected',
				 (SELECT pg_temp.usd(sum(amount)) FROM demo_cash d WHERE d.administration = a.name),
				 (SELECT count(DISTINCT invoice_id) FROM demo_cash d WHERE d.administration = a.name)) || E'\n'
	   || format('  %-16s%s of %s invoices', 'still open',
				 (SELECT pg_temp.usd(sum(outstanding)) FROM demo_open o WHERE o.administration = a.name),
				 (SELECT count(*) FROM demo_open o WHERE o.administration = a.name))
  FROM freshpay.administrations a
  JOIN freshpay.invoices i ON i.administration = a.name
 GROUP BY a.name ORDER BY a.name;

\echo
\echo 'Collected, by route'
\pset format aligned
\pset tuples_only off
SELECT coalesce(route, 'total') AS route,
	   count(*) AS invoices,
	   pg_temp.usd(sum(amount)) AS collected,
	   round(avg(cash_date - invoice_date), 1) AS days_to_cash,
	   count(*) FILTER (WHERE cash_date = invoice_date) AS same_day,
	   round(avg(cash_date - due_date), 1) AS days_after_due
  FROM demo_cash
 GROUP BY ROLLUP (route)
 ORDER BY route IS NULL, sum(amount) DESC;
\echo '  days to cash: from the invoice date to the day freshpay collected it.  The month''s invoices'
\echo '  reached freshpay today (go-live), so older ones count their age; from now on an invoice is'
\echo '  collected the day it is issued (on issue: same day), on its due date, or on statement day.'

\echo
\echo 'Still open'
SELECT coalesce(why, 'total') AS why, count(*) AS invoices,
	   pg_temp.usd(sum(outstanding)) AS outstanding,
	   min(due_date) FILTER (WHERE due_date >= current_date) AS next_due
  FROM demo_open
 GROUP BY ROLLUP (why)
 ORDER BY why IS NULL, sum(outstanding) DESC;

\echo
\echo 'The month''s flows'
\pset format unaligned
\pset tuples_only on
WITH statements AS (
	SELECT p.id, p.invoice_number, p.amount, p.status, c.name,
		   (SELECT count(*) FROM freshpay.payment_allocations a WHERE a.payment_id = p.id) AS invoices,
		   (SELECT count(*) FROM freshpay.payment_allocations a WHERE a.payment_id = p.id
			   AND (a.freshportal_payment_id IS NOT NULL OR a.amount = 0)) AS registered
	  FROM freshpay.payments p JOIN freshpay.customers c ON c.id = p.customer_id
	 WHERE p.invoice_id IS NULL AND p.kind = 'sale'
	   AND EXISTS (SELECT FROM freshpay.payment_allocations a WHERE a.payment_id = p.id)
), requests AS (
	SELECT r.id, r.status, r.amount, i.number, c.name, c.id AS customer_id,
		   c.paytrace_customer_id, p.created_at AS paid_at
	  FROM freshpay.payment_requests r
	  JOIN freshpay.invoices i ON i.id = r.invoice_id
	  JOIN freshpay.customers c ON c.id = r.customer_id
	  LEFT JOIN freshpay.payments p ON p.id = r.payment_id
), flows AS (
	SELECT 1 AS n, 'collected on issue' AS flow,
		   format('%s invoices, %s: charged by the worker as they arrived', count(*), pg_temp.usd(sum(amount))) AS what
	  FROM demo_cash WHERE route LIKE 'on issue%' HAVING count(*) > 0
	UNION ALL
	SELECT 2, 'collected on due date',
		   format('%s invoices, %s (%s by card, %s by ACH debit); %s more to collect on their due dates',
				  count(*), pg_temp.usd(sum(amount)),
				  count(*) FILTER (WHERE kind <> 'ach_sale'), count(*) FILTER (WHERE kind = 'ach_sale'),
				  (SELECT count(*) FROM demo_open WHERE why = 'to collect on its due date'))
	  FROM demo_cash WHERE route LIKE 'on due date%' HAVING count(*) > 0
	UNION ALL
	SELECT 3, 'statement',
		   format('%s: %s for %s invoices of %s, one card charge, %s',
				  invoice_number, pg_temp.usd(amount), invoices, name,
				  CASE WHEN registered = invoices THEN 'registered in FreshPortal per invoice'
					   ELSE format('%s of its invoices registered in FreshPortal so far', registered) END)
	  FROM statements WHERE status IN ('captured', 'refunded')
	UNION ALL
	SELECT 4, 'payment request paid, card stored',
		   format('%s paid %s (%s) on PayTrace''s page and stored the card: linked to vault profile %s; %s',
				  r.name, r.number, pg_temp.usd(r.amount), r.paytrace_customer_id,
				  coalesce((SELECT format('their next invoice %s (%s) was charged by itself', i.number,
										  pg_temp.usd(p.amount))
							  FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
							 WHERE i.customer_id = r.customer_id AND p.requested_by = 'freshpay worker'
							   AND p.status IN ('captured', 'refunded') AND p.created_at > r.paid_at
							 ORDER BY p.id LIMIT 1), 'no invoice of theirs since'))
	  FROM requests r WHERE r.status = 'onboarded'
	UNION ALL
	SELECT 5, 'payment request paid',
		   format('%s paid %s (%s) on PayTrace''s page', name, number, pg_temp.usd(amount))
	  FROM requests WHERE status = 'paid'
	UNION ALL
	SELECT 6, 'payment request waiting',
		   format('%s: the request for %s (%s) is e-mailed, not paid yet', name, number, pg_temp.usd(amount))
	  FROM requests WHERE status = 'sent'
	UNION ALL
	SELECT 7, 'decline',
		   format('%s %s (%s): %s %s', c.name, i.number, pg_temp.usd(p.amount), p.response_code,
				  btrim(regexp_replace(coalesce(p.message, ''), '\s+', ' ', 'g')))
	  FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
	  JOIN freshpay.customers c ON c.id = i.customer_id
	 WHERE p.status = 'failed' AND p.response_code IS NOT NULL
	UNION ALL
	SELECT 8, 'void',
		   format('%s %s (%s) voided before settlement; its FreshPortal registration %s',
				  c.name, i.number, pg_temp.usd(s.amount),
				  CASE WHEN pg_temp.written_back(ARRAY[v.id, s.id]) THEN 'reversed' ELSE 'being reversed' END)
	  FROM freshpay.payments v JOIN freshpay.payments s ON s.id = v.parent_id
	  JOIN freshpay.invoices i ON i.id = s.invoice_id JOIN freshpay.customers c ON c.id = i.customer_id
	 WHERE v.kind = 'void' AND v.status NOT IN ('failed', 'pending', 'unknown') AND s.status = 'voided'
	UNION ALL
	SELECT 9, CASE WHEN r.amount < s.amount THEN 'partial refund' ELSE 'refund' END,
		   format('%s of %s on %s %s, settled in batch %s; FreshPortal %s %s registered',
				  pg_temp.usd(r.amount), pg_temp.usd(s.amount), c.name, i.number, s.batch_number,
				  CASE WHEN pg_temp.written_back(ARRAY[r.id, s.id]) THEN 'keeps' ELSE 'is to keep' END,
				  pg_temp.usd(s.amount - s.refunded_amount))
	  FROM freshpay.payments r JOIN freshpay.payments s ON s.id = r.parent_id
	  JOIN freshpay.invoices i ON i.id = s.invoice_id JOIN freshpay.customers c ON c.id = i.customer_id
	 WHERE r.kind = 'refund' AND r.status IN ('captured', 'refunded')
	UNION ALL
	SELECT 10, 'ACH return',
		   format('%s %s (%s) returned by the bank (%s %s): %s',
				  c.name, i.number, pg_temp.usd(p.amount), p.ach_status, p.return_reason,
				  CASE WHEN pg_temp.written_back(ARRAY[p.id]) THEN 'its registration reversed, the invoice open again'
					   ELSE 'its registration being reversed' END)
	  FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
	  JOIN freshpay.customers c ON c.id = i.customer_id
	 WHERE p.status = 'returned'
	UNION ALL
	SELECT 11, 'ACH debits',
		   format('%s debits: %s settled by the bank, %s returned', count(*),
				  count(*) FILTER (WHERE settled_at IS NOT NULL AND status = 'captured'),
				  count(*) FILTER (WHERE status = 'returned'))
	  FROM freshpay.payments WHERE kind = 'ach_sale' HAVING count(*) > 0
	UNION ALL
	SELECT 12, 'settlement batches',
		   format('%s batches, %s transactions; %s reconciled with their invoices and customers',
				  count(DISTINCT batch_number), count(*),
				  CASE WHEN count(*) FILTER (WHERE match NOT IN ('matched', 'statement')) = 0 THEN 'all'
					   ELSE (count(*) FILTER (WHERE match IN ('matched', 'statement')))::text END)
	  FROM freshpay.reconciliation WHERE batch_number IS NOT NULL HAVING count(*) > 0
	UNION ALL
	SELECT 13, 'Level 3',
		   format('%s card charges carried their invoice lines (Visa, Mastercard: a lower interchange rate); %s not applicable (Amex)',
				  count(*) FILTER (WHERE level3_status = 'sent'), count(*) FILTER (WHERE level3_status = 'not_applicable'))
	  FROM freshpay.payments WHERE level3_status IS NOT NULL
	UNION ALL
	SELECT 14, 'exceptions', format('%s to look at, listed below', count(*))
	  FROM freshpay.exceptions
)
SELECT '  ' || rpad(flow, 35) || pg_temp.wrap(what, 62, repeat(' ', 37)) FROM flows ORDER BY n, what;

\echo
\echo 'Settlement batches (cards), reconciled transaction by transaction'
\pset format aligned
\pset tuples_only off
SELECT s.batch_number AS batch, s.settled_at::date AS settled,
	   s.transaction_count AS transactions,
	   pg_temp.usd(s.sales_amount) AS sales,
	   pg_temp.usd(s.refund_amount) AS refunds,
	   count(r.payment_id) FILTER (WHERE r.match IN ('matched', 'statement')) || ' of ' || count(r.payment_id) AS reconciled,
	   (SELECT string_agg(format('%s %s', m.match, m.n), ', ' ORDER BY m.n DESC, m.match)
		  FROM (SELECT r2.match, count(*) AS n FROM freshpay.reconciliation r2
				 WHERE r2.administration = s.administration AND r2.batch_number = s.batch_number
				 GROUP BY r2.match) m) AS verdicts
  FROM freshpay.settlements s
  LEFT JOIN freshpay.reconciliation r ON r.administration = s.administration AND r.batch_number = s.batch_number
 GROUP BY s.administration, s.batch_number, s.settled_at, s.transaction_count, s.sales_amount, s.refund_amount
 ORDER BY s.administration, s.batch_number;

\echo
\echo 'Exceptions: what a person must look at (freshpay.exceptions)'
\pset format unaligned
\pset tuples_only on
SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'freshpay.exceptions'::regclass
				AND attname = 'suggested_action' AND NOT attisdropped) AS demo_has_action \gset
\if :demo_has_action
\set demo_action 'e.suggested_action'
\else
\set demo_action 'NULL::text'
\endif
SELECT '  ' || e.kind || coalesce(' · ' || i.number, '') || coalesce(' · ' || c.name, '') || E'\n'
	   || '      ' || pg_temp.wrap(e.detail, 92, '      ')
	   || coalesce(E'\n      → ' || pg_temp.wrap(:demo_action, 90, '        '), '')
  FROM freshpay.exceptions e
  LEFT JOIN freshpay.payments p ON p.id = e.payment_id
  LEFT JOIN freshpay.invoices i ON i.id = e.invoice_id
  LEFT JOIN freshpay.customers c ON c.id = coalesce(i.customer_id, p.customer_id)
 ORDER BY e.kind, i.number, e.since;
\echo
