/*
 * freshpay 0.9 → 0.10: the finance surface (issue 11, contract section 14).
 *
 *  - freshpay.reconciliation: every settled transaction (and every ACH debit
 *    that came back) with its batch, and a verdict: matched, statement,
 *    returned, refund_without_sale, no_invoice, registered_twice,
 *    amount_mismatch, not_registered_in_freshportal, batch_unknown.
 *  - freshpay.exceptions: a suggested_action for every kind; every verdict
 *    that is not matched or statement is an exception too; a batch whose
 *    transactions do not add up to its totals is one (batch_mismatch).
 *  - Views for BI tools: daily_cash, customer_summary, aging,
 *    payment_request_funnel, and the indexes they need.
 *  - freshpay.reader_scopes: readers limited to some administrations by
 *    row-level security; every view runs as its caller (security_invoker)
 *    so that it applies there too.
 */

\echo Use "ALTER EXTENSION freshpay UPDATE TO '0.10'" to load this file. \quit

------------------------------------------------------------------------------
-- Indexes of the finance views
------------------------------------------------------------------------------

-- reconciliation of a period: transactions by settlement time, refunds
-- apart (the transaction each refunds is looked up) ...
CREATE INDEX payments_settled_idx ON freshpay.payments (settled_at)
	WHERE settled_at IS NOT NULL AND kind OPERATOR(pg_catalog.<>) 'refund';
CREATE INDEX payments_settled_refund_idx ON freshpay.payments (settled_at)
	WHERE settled_at IS NOT NULL AND kind OPERATOR(pg_catalog.=) 'refund';
-- ... and the few in a batch without a settlement time of their own, or sent
-- back by the bank before they settled.  The condition is one expression
-- (IS TRUE), so that the statistics on it tell the planner how few they are:
-- estimated from its parts, they would look like many (and the month's
-- reconciliation would cost enough to be JIT-compiled, slower by far).
CREATE INDEX payments_unsettled_batch_idx ON freshpay.payments (administration, batch_number)
	WHERE (settled_at IS NULL
		   AND (batch_number IS NOT NULL OR status OPERATOR(pg_catalog.=) 'returned')) IS TRUE;
CREATE STATISTICS freshpay.payments_unsettled_stats
	ON ((settled_at IS NULL AND (batch_number IS NOT NULL OR status OPERATOR(pg_catalog.=) 'returned')))
	FROM freshpay.payments;
COMMENT ON STATISTICS freshpay.payments_unsettled_stats IS
	'How many payments are in a batch without a settlement time of their own, or returned before settling (freshpay.reconciliation)';
-- What freshpay collected and FreshPortal does not count yet (outstanding
-- amounts of invoice_status, customer_summary and aging).
CREATE INDEX payments_unregistered_idx ON freshpay.payments (invoice_id)
	WHERE status OPERATOR(pg_catalog.=) 'captured' AND freshportal_payment_id IS NULL;
CREATE INDEX payment_allocations_unregistered_idx ON freshpay.payment_allocations (invoice_id)
	WHERE freshportal_payment_id IS NULL;
-- reconciliation, customer_summary: what they read of an invoice, without
-- its wide row (raw holds FreshPortal's whole invoice, lines included).
CREATE INDEX invoices_finance_idx ON freshpay.invoices (id)
	INCLUDE (administration, customer_id, number, invoice_date, amount_incl_vat, amount_paid, open_amount, status, type);
-- aging and customer_summary: the open invoices of each customer.
CREATE INDEX invoices_open_customer_idx ON freshpay.invoices (customer_id, due_date)
	INCLUDE (id, administration, open_amount)
	WHERE type OPERATOR(pg_catalog.=) 'invoice'
	  AND status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid']);
-- payment_request_funnel: requests by administration and month.
CREATE INDEX payment_requests_created_idx ON freshpay.payment_requests (administration, created_at);

------------------------------------------------------------------------------
-- FreshPortal's registrations of freshpay's transactions
------------------------------------------------------------------------------

-- What the write-back's look-ups (GET /v1/payments?provider_transaction_id=)
-- saw in FreshPortal: every registration under a provider id freshpay uses,
-- its own and any made by someone else, and each registration freshpay
-- makes.  One a look-up no longer finds is 'gone'.  A settled transaction is
-- looked up once more at settlement, or when the pull first sees it settled
-- (a check_registrations job), and again every hour while it shows
-- registered twice (at once after freshpay_sync()).
CREATE TABLE freshpay.freshportal_registrations (
	administration text NOT NULL
		REFERENCES freshpay.administrations (name) ON UPDATE CASCADE ON DELETE CASCADE,
	freshportal_payment_id bigint NOT NULL,
	freshportal_invoice_id bigint NOT NULL,
	provider_transaction_id text NOT NULL,
	amount numeric(12,2),
	status text NOT NULL,
	seen_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (administration, freshportal_payment_id)
);
CREATE INDEX freshportal_registrations_provider_idx
	ON freshpay.freshportal_registrations (administration, provider_transaction_id);
COMMENT ON TABLE freshpay.freshportal_registrations IS 'FreshPortal''s payment registrations under the provider transaction ids freshpay uses, as its look-ups (and its own writes) last saw them (freshpay''s own and any made by someone else); a transaction with more than one live registration on an invoice is reconciliation''s registered_twice';
COMMENT ON COLUMN freshpay.freshportal_registrations.administration IS 'The administration (FreshPortal tenant) it is in';
COMMENT ON COLUMN freshpay.freshportal_registrations.freshportal_payment_id IS 'FreshPortal''s id of the registration';
COMMENT ON COLUMN freshpay.freshportal_registrations.freshportal_invoice_id IS 'FreshPortal''s id of the invoice it is registered on';
COMMENT ON COLUMN freshpay.freshportal_registrations.provider_transaction_id IS 'Its provider transaction id: a PayTrace transaction id, or <id>-r<refund id> after a partial refund';
COMMENT ON COLUMN freshpay.freshportal_registrations.amount IS 'The amount registered, when FreshPortal shows it';
COMMENT ON COLUMN freshpay.freshportal_registrations.status IS 'registered or reversed, as FreshPortal last showed it; gone when a later look-up under its provider transaction id no longer found it (deleted in FreshPortal, or its provider transaction id changed there)';
COMMENT ON COLUMN freshpay.freshportal_registrations.seen_at IS 'When a look-up (or freshpay''s own write) last saw it';

-- The registrations of a transaction (its PayTrace id, or <id>-r<refund id>)
-- live on one invoice more than once: for a sale, on its invoice; for a
-- statement, on one of its allocations' (the first).  kept is the one
-- freshpay registered (else the first); extra the others.
CREATE FUNCTION freshpay._registered_twice(text, bigint)
RETURNS TABLE (freshportal_invoice_id bigint, invoice_number text, registrations bigint,
			   payment_ids bigint[], kept bigint, extra bigint[], provider_ids text)
LANGUAGE sql STABLE
ROWS 1	-- at most one (LIMIT 1); the default 1000 would make the views' plans look 1000 times dearer
AS $$
	SELECT d.freshportal_invoice_id, inv.number, d.n, d.ids, d.kept,
		   pg_catalog.array_remove(d.ids, d.kept), d.providers
	  FROM (SELECT g.freshportal_invoice_id, pg_catalog.count(*) AS n,
				   pg_catalog.array_agg(g.freshportal_payment_id ORDER BY g.freshportal_payment_id) AS ids,
				   COALESCE(pg_catalog.min(g.freshportal_payment_id) FILTER (WHERE g.own),
							pg_catalog.min(g.freshportal_payment_id)) AS kept,
				   pg_catalog.string_agg(DISTINCT g.provider_transaction_id, ', ') AS providers
			  FROM (SELECT r.freshportal_invoice_id, r.freshportal_payment_id, r.provider_transaction_id,
						   (r.freshportal_payment_id OPERATOR(pg_catalog.=) p.freshportal_payment_id
							OR EXISTS (SELECT FROM freshpay.payment_allocations a
									   WHERE a.payment_id OPERATOR(pg_catalog.=) p.id
										 AND a.freshportal_payment_id OPERATOR(pg_catalog.=) r.freshportal_payment_id)) IS TRUE AS own
					  FROM freshpay.payments p
					  JOIN freshpay.freshportal_registrations r
						ON r.administration OPERATOR(pg_catalog.=) p.administration
					   AND r.provider_transaction_id OPERATOR(pg_catalog.=) ANY (
							 pg_catalog.array_prepend(p.paytrace_transaction_id::text,
							   ARRAY(SELECT p.paytrace_transaction_id::text OPERATOR(pg_catalog.||) '-r'
											OPERATOR(pg_catalog.||) rf.paytrace_transaction_id::text
									   FROM freshpay.payments rf
									  WHERE rf.parent_id OPERATOR(pg_catalog.=) p.id
										AND rf.kind OPERATOR(pg_catalog.=) 'refund'
										AND rf.paytrace_transaction_id IS NOT NULL)))
					 WHERE p.id OPERATOR(pg_catalog.=) $2
					   AND p.administration OPERATOR(pg_catalog.=) $1
					   AND p.kind OPERATOR(pg_catalog.<>) 'refund'
					   AND p.paytrace_transaction_id IS NOT NULL
					   AND r.status OPERATOR(pg_catalog.=) 'registered'
					   AND r.freshportal_invoice_id OPERATOR(pg_catalog.=) ANY (
							 ARRAY(SELECT i.freshportal_id FROM freshpay.invoices i
									WHERE i.id OPERATOR(pg_catalog.=) p.invoice_id
								   UNION ALL
								   SELECT i.freshportal_id FROM freshpay.payment_allocations a
									 JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) a.invoice_id
									WHERE a.payment_id OPERATOR(pg_catalog.=) p.id))) g
			 GROUP BY g.freshportal_invoice_id
			HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1) d
	  LEFT JOIN freshpay.invoices inv ON inv.administration OPERATOR(pg_catalog.=) $1
		   AND inv.freshportal_id OPERATOR(pg_catalog.=) d.freshportal_invoice_id
	 ORDER BY d.freshportal_invoice_id
	 LIMIT 1
$$;
COMMENT ON FUNCTION freshpay._registered_twice(text, bigint) IS 'Internal: the invoice on which FreshPortal holds a transaction''s registration more than once (reconciliation''s registered_twice), with the registrations, the one to keep and the extra ones';

------------------------------------------------------------------------------
-- Reconciliation: every settled transaction, with a verdict
------------------------------------------------------------------------------

-- A transaction is in it once PayTrace settled it (batch_number, or for ACH
-- through API v3 settled_at), or when the bank sent an ACH debit back.  Its
-- settlement time is its own, else its batch's.  The branches of t let a
-- condition on settled_at use an index, and look up the transaction a
-- refund acts on for refunds only.  The first verdict that applies wins, in
-- the order of the CASE.
CREATE OR REPLACE VIEW freshpay.reconciliation AS
	-- Transactions registered more than once on one invoice: few or none, so
	-- that _registered_twice runs only for their payments, once each.
	WITH twice AS MATERIALIZED (
		SELECT p.id AS payment_id, rt.*
		  FROM (SELECT DISTINCT d.administration, d.transaction_id FROM (SELECT r.administration,
		            CAST(pg_catalog.split_part(r.provider_transaction_id, '-', 1) AS pg_catalog.int8) AS transaction_id
		       FROM freshpay.freshportal_registrations r
		      WHERE r.status OPERATOR(pg_catalog.=) 'registered'
		        AND r.provider_transaction_id OPERATOR(pg_catalog.~) '^[0-9]{1,18}(-r[0-9]+)?$'
		      GROUP BY r.administration, r.freshportal_invoice_id, 2
		     HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1) d) w
		  JOIN freshpay.payments p ON p.administration OPERATOR(pg_catalog.=) w.administration
			   AND p.paytrace_transaction_id OPERATOR(pg_catalog.=) w.transaction_id
		 CROSS JOIN LATERAL freshpay._registered_twice(p.administration, p.id) rt)
	SELECT t.administration, t.batch_number, t.settled_at,
		   t.id AS payment_id, t.kind, t.paytrace_transaction_id, t.amount, t.refunded_amount,
		   t.invoice_id, i.number AS invoice_number, c.id AS customer_id, c.code AS customer_code,
		   v.match,
		   -- (matched first: nearly every row is, and is then compared once)
		   CASE v.match
			 WHEN 'matched' THEN
				  CASE WHEN t.batch_number IS NULL
					   THEN 'settled without a batch (ACH through PayTrace API v3); transaction, invoice and customer agree'
					   ELSE 'batch, transaction, invoice and customer agree'
				  END
			 WHEN 'returned' THEN
				  pg_catalog.format('the bank sent the ACH debit of %s back (%s, reason %s): the money was not collected',
									t.amount, COALESCE(t.ach_status, 'RETURNED'), COALESCE(t.return_reason, 'not given'))
			 WHEN 'refund_without_sale' THEN
				  CASE WHEN t.parent_kind IS NULL
					   THEN pg_catalog.format('refund of %s: freshpay does not know the transaction it refunds', t.amount)
					   WHEN t.parent_invoice_id IS NULL
					   THEN pg_catalog.format('refund of %s of PayTrace transaction %s, a %s freshpay did not collect for any invoice (invoice number %s)',
											  t.amount, COALESCE(t.parent_transaction_id::text, '(none)'), t.parent_kind,
											  COALESCE(t.parent_invoice_number, 'none'))
					   ELSE pg_catalog.format('refund of %s of payment %s, a %s that is no collected sale', t.amount, t.parent_id, t.parent_kind)
				  END
			 WHEN 'no_invoice' THEN
				  pg_catalog.format('the transaction names no invoice freshpay knows (invoice number %s)',
									COALESCE(t.invoice_number, 'none'))
			 WHEN 'registered_twice' THEN
				  pg_catalog.format('registered %s times in FreshPortal on invoice %s (FreshPortal payments %s, provider transaction id %s): FreshPortal counts the money more than once',
									rt.registrations, COALESCE(rt.invoice_number, rt.freshportal_invoice_id::text),
									pg_catalog.array_to_string(rt.payment_ids, ', '), rt.provider_ids)
			 WHEN 'amount_mismatch' THEN
				  CASE WHEN t.invoice_id IS NULL
					   THEN pg_catalog.format('the allocations of statement %s to %s invoices add up to %s, but %s was captured and %s refunded',
											  COALESCE(t.invoice_number, '(none)'), st.invoices, st.allocated, t.amount, t.refunded_amount)
					   WHEN (t.amount OPERATOR(pg_catalog.-) t.refunded_amount) OPERATOR(pg_catalog.>) i.amount_incl_vat
					   THEN pg_catalog.format('%s collected (net of refunds) for invoice %s, whose total is %s (changed in FreshPortal after the charge?)',
											  t.amount OPERATOR(pg_catalog.-) t.refunded_amount, i.number, i.amount_incl_vat)
					   ELSE pg_catalog.format('FreshPortal shows %s paid on invoice %s, more than its total of %s',
											  i.amount_paid, i.number, i.amount_incl_vat)
				  END
			 WHEN 'not_registered_in_freshportal' THEN
				  CASE WHEN t.invoice_id IS NULL
					   THEN pg_catalog.format('captured but %s of the %s invoice allocations of statement %s are not registered in FreshPortal',
											  st.unregistered, st.invoices, COALESCE(t.invoice_number, '(none)'))
					   ELSE 'captured but not registered in FreshPortal'
				  END
			 WHEN 'batch_unknown' THEN
				  pg_catalog.format('settlement batch %s has not been pulled from PayTrace (freshpay_sync)', t.batch_number)
			 WHEN 'statement' THEN
				  CASE WHEN t.kind OPERATOR(pg_catalog.<>) 'refund'
					   THEN pg_catalog.format('one charge for %s invoices (statement %s); see freshpay.payment_allocations',
											  st.invoices, COALESCE(t.invoice_number, '(none)'))
					   ELSE pg_catalog.format('%s of the one charge for %s invoices (statement %s); see freshpay.allocation_reversals',
											  t.kind, st.invoices, COALESCE(t.parent_invoice_number, t.invoice_number, '(none)'))
				  END
		   END AS match_reason,
		   t.status,
		   t.parent_id,
		   CASE WHEN t.kind OPERATOR(pg_catalog.=) 'ach_sale' OR t.parent_kind OPERATOR(pg_catalog.=) 'ach_sale'
				THEN 'ach' ELSE 'card' END AS method
	  FROM (-- settled, not refunds
			SELECT p.id, p.administration, p.batch_number, p.settled_at, p.kind, p.paytrace_transaction_id,
				   p.amount, p.refunded_amount, p.invoice_id, p.customer_id, p.parent_id, p.status,
				   p.freshportal_payment_id, p.invoice_number, p.ach_status, p.return_reason,
				   NULL::text AS parent_kind, NULL::bigint AS parent_invoice_id, NULL::text AS parent_invoice_number,
				   NULL::bigint AS parent_transaction_id
			  FROM freshpay.payments p
			 WHERE p.settled_at IS NOT NULL AND p.kind OPERATOR(pg_catalog.<>) 'refund'
			UNION ALL
			-- settled refunds, with the transaction they refund
			SELECT p.id, p.administration, p.batch_number, p.settled_at, p.kind, p.paytrace_transaction_id,
				   p.amount, p.refunded_amount, p.invoice_id, p.customer_id, p.parent_id, p.status,
				   p.freshportal_payment_id, p.invoice_number, p.ach_status, p.return_reason,
				   pp.kind, pp.invoice_id, pp.invoice_number, pp.paytrace_transaction_id
			  FROM freshpay.payments p
			  LEFT JOIN freshpay.payments pp ON pp.id OPERATOR(pg_catalog.=) p.parent_id
			 WHERE p.settled_at IS NOT NULL AND p.kind OPERATOR(pg_catalog.=) 'refund'
			UNION ALL
			-- in a batch without a settlement time of its own (its batch's counts),
			-- or sent back by the bank before it settled
			SELECT p.id, p.administration, p.batch_number, sb.settled_at, p.kind, p.paytrace_transaction_id,
				   p.amount, p.refunded_amount, p.invoice_id, p.customer_id, p.parent_id, p.status,
				   p.freshportal_payment_id, p.invoice_number, p.ach_status, p.return_reason,
				   pp.kind, pp.invoice_id, pp.invoice_number, pp.paytrace_transaction_id
			  FROM freshpay.payments p
			  LEFT JOIN freshpay.settlements sb ON sb.administration OPERATOR(pg_catalog.=) p.administration
				   AND sb.batch_number OPERATOR(pg_catalog.=) p.batch_number
			  LEFT JOIN freshpay.payments pp ON pp.id OPERATOR(pg_catalog.=) p.parent_id
				   AND p.kind OPERATOR(pg_catalog.=) 'refund'
			 WHERE (p.settled_at IS NULL
					AND (p.batch_number IS NOT NULL OR p.status OPERATOR(pg_catalog.=) 'returned')) IS TRUE) t
	  LEFT JOIN freshpay.settlements s ON s.administration OPERATOR(pg_catalog.=) t.administration
		   AND s.batch_number OPERATOR(pg_catalog.=) t.batch_number
	  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) t.invoice_id
	  LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) COALESCE(t.customer_id, i.customer_id)
	  -- The statement the payment is, or (a refund) acts on: its allocations.
	  LEFT JOIN (SELECT a.payment_id, pg_catalog.count(*) AS invoices, pg_catalog.sum(a.amount) AS allocated,
						pg_catalog.count(*) FILTER (WHERE a.freshportal_payment_id IS NULL
													AND a.amount OPERATOR(pg_catalog.>) 0) AS unregistered
				   FROM freshpay.payment_allocations a
				  GROUP BY a.payment_id) st
		   ON t.invoice_id IS NULL
		  AND st.payment_id OPERATOR(pg_catalog.=)
			  CASE WHEN t.kind OPERATOR(pg_catalog.=) 'refund' THEN t.parent_id ELSE t.id END
	  -- A registration of it made more than once on an invoice.
	  LEFT JOIN twice rt ON rt.payment_id OPERATOR(pg_catalog.=) t.id
	  CROSS JOIN LATERAL (
		SELECT CASE
				 WHEN t.status OPERATOR(pg_catalog.=) 'returned' THEN 'returned'
				 -- (a refund carries the invoice of the sale it refunds; st is the
				 -- statement it refunds, if it refunds one)
				 WHEN t.kind OPERATOR(pg_catalog.=) 'refund' AND t.invoice_id IS NULL AND st.payment_id IS NULL
					  THEN 'refund_without_sale'
				 WHEN t.invoice_id IS NULL AND st.payment_id IS NULL THEN 'no_invoice'
				 WHEN t.kind OPERATOR(pg_catalog.<>) 'refund' AND rt.registrations IS NOT NULL THEN 'registered_twice'
				 WHEN t.invoice_id IS NULL AND t.kind OPERATOR(pg_catalog.<>) 'refund'
					  AND t.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])
					  AND st.allocated OPERATOR(pg_catalog.<>) (t.amount OPERATOR(pg_catalog.-) t.refunded_amount)
					  THEN 'amount_mismatch'
				 WHEN t.invoice_id IS NOT NULL AND t.kind OPERATOR(pg_catalog.<>) 'refund'
					  AND ((t.amount OPERATOR(pg_catalog.-) t.refunded_amount) OPERATOR(pg_catalog.>) i.amount_incl_vat
						   OR ((t.amount OPERATOR(pg_catalog.-) t.refunded_amount) OPERATOR(pg_catalog.>) 0
							   AND i.amount_paid OPERATOR(pg_catalog.>) i.amount_incl_vat))
					  THEN 'amount_mismatch'
				 WHEN t.kind OPERATOR(pg_catalog.<>) 'refund' AND t.status OPERATOR(pg_catalog.=) 'captured'
					  AND ((t.invoice_id IS NOT NULL AND t.freshportal_payment_id IS NULL)
						   OR (t.invoice_id IS NULL AND st.unregistered OPERATOR(pg_catalog.>) 0))
					  THEN 'not_registered_in_freshportal'
				 WHEN t.batch_number IS NOT NULL AND s.batch_number IS NULL THEN 'batch_unknown'
				 WHEN st.payment_id IS NOT NULL THEN 'statement'
				 ELSE 'matched'
			   END AS match) v;
COMMENT ON VIEW freshpay.reconciliation IS 'Per settled transaction (sales, captures, ACH debits, refunds; ACH debits the bank sent back too): batch → payment → invoice → customer, with a match verdict and its reason; every verdict but matched and statement is also in freshpay.exceptions';
COMMENT ON COLUMN freshpay.reconciliation.settled_at IS 'When PayTrace settled it (the transaction''s own time, else its batch''s); null for an ACH debit sent back before it settled';
COMMENT ON COLUMN freshpay.reconciliation.batch_number IS 'PayTrace settlement batch; null for ACH through PayTrace API v3 (it reports no batch)';
COMMENT ON COLUMN freshpay.reconciliation.kind IS 'sale, capture, ach_sale or refund';
COMMENT ON COLUMN freshpay.reconciliation.amount IS 'Amount settled (a refund: the amount refunded)';
COMMENT ON COLUMN freshpay.reconciliation.refunded_amount IS 'Refunded since (its refunds are rows of their own)';
COMMENT ON COLUMN freshpay.reconciliation.match IS 'matched; statement (one charge for several invoices whose allocations add up, or a refund of one); returned (an ACH debit the bank sent back); refund_without_sale (a refund of a transaction freshpay did not collect for an invoice); no_invoice (names no invoice freshpay knows); registered_twice (FreshPortal holds more than one live registration of it on an invoice, see freshpay.freshportal_registrations); amount_mismatch (more collected than the invoice''s total, FreshPortal shows more paid than the total, or a statement''s allocations do not add up to captured − refunded); not_registered_in_freshportal; batch_unknown (its batch has not been pulled). The first that applies, in this order: returned, refund_without_sale, no_invoice, registered_twice, amount_mismatch, not_registered_in_freshportal, batch_unknown, statement, matched';
COMMENT ON COLUMN freshpay.reconciliation.match_reason IS 'Why, in a sentence, with the amounts';
COMMENT ON COLUMN freshpay.reconciliation.status IS 'Status of the payment (captured, refunded, returned, ...)';
COMMENT ON COLUMN freshpay.reconciliation.parent_id IS 'For a refund: the payment it refunds';
COMMENT ON COLUMN freshpay.reconciliation.method IS 'card or ach';

------------------------------------------------------------------------------
-- Exceptions: what to do about each
------------------------------------------------------------------------------

CREATE OR REPLACE VIEW freshpay.exceptions AS
	SELECT 'unknown_outcome'::text AS kind, p.administration, p.id AS payment_id, p.invoice_id,
		   NULL::bigint AS job_id,
		   CASE WHEN st.invoices IS NULL
				THEN pg_catalog.format('%s of %s: the answer of PayTrace was lost and PayTrace shows no such transaction yet; freshpay keeps looking, and no new charge of the invoice is made until it knows. If PayTrace''s Virtual Terminal shows no transaction for invoice %s, settle it with SELECT freshpay_resolve(%s, ''not_processed'')',
									   p.kind, p.amount, COALESCE(p.invoice_number, '(none)'), p.id)
				ELSE pg_catalog.format('%s of %s for %s invoices (statement %s): the answer of PayTrace was lost and PayTrace shows no such transaction yet; freshpay keeps looking, and no new charge of these invoices is made until it knows. If PayTrace''s Virtual Terminal shows no transaction for invoice %s, settle it with SELECT freshpay_resolve(%s, ''not_processed'')',
									   p.kind, p.amount, st.invoices, COALESCE(p.invoice_number, '(none)'),
									   COALESCE(p.invoice_number, '(none)'), p.id)
		   END AS detail,
		   p.updated_at AS since,
		   pg_catalog.format('Nothing while freshpay looks it up. If it stays unknown, look for invoice number %s in PayTrace''s Virtual Terminal: no transaction there, run SELECT freshpay_resolve(%s, ''not_processed''); a transaction there, run SELECT freshpay_resolve(%s) to look it up now.',
							 COALESCE(p.invoice_number, '(none)'), p.id, p.id) AS suggested_action
	  FROM freshpay.payments p
	  LEFT JOIN LATERAL (SELECT pg_catalog.count(*) AS invoices FROM freshpay.payment_allocations a
						  WHERE a.payment_id OPERATOR(pg_catalog.=) p.id
						 HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 0) st ON p.invoice_id IS NULL
	 WHERE p.status OPERATOR(pg_catalog.=) 'unknown'
	UNION ALL
	SELECT 'failed_collection', p.administration, p.id, p.invoice_id, NULL,
		   pg_catalog.format('%s of %s failed: %s', p.kind, p.amount, COALESCE(p.message, 'no message')),
		   p.updated_at,
		   pg_catalog.format('Ask the customer for another card or bank account (SELECT freshpay_request_payment(%s) sends a payment link), or collect again with SELECT freshpay_capture(%s) once the cause is fixed.',
							 p.invoice_id, p.invoice_id)
	  FROM freshpay.payments p
	  JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id
	 WHERE p.status OPERATOR(pg_catalog.=) 'failed'
	   AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture', 'authorization'])
	   AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])
	   AND NOT EXISTS (SELECT FROM freshpay.payments later
					   WHERE later.invoice_id OPERATOR(pg_catalog.=) p.invoice_id
						 AND later.id OPERATOR(pg_catalog.>) p.id)
	UNION ALL
	-- A failed statement while one of its invoices is still open and no
	-- later statement of the customer was made.
	SELECT 'failed_collection', p.administration, p.id, NULL, NULL,
		   pg_catalog.format('%s of %s for %s invoices (statement %s) failed: %s', p.kind, p.amount, st.invoices,
							 COALESCE(p.invoice_number, '(none)'), COALESCE(p.message, 'no message')),
		   p.updated_at,
		   pg_catalog.format('Ask the customer for another card, then collect the open invoices again with SELECT freshpay_capture_statement(%s).',
							 p.customer_id)
	  FROM freshpay.payments p
	  JOIN LATERAL (SELECT pg_catalog.count(*) AS invoices,
						   pg_catalog.count(*) FILTER (WHERE i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])) AS still_open
					  FROM freshpay.payment_allocations a
					  JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) a.invoice_id
					 WHERE a.payment_id OPERATOR(pg_catalog.=) p.id) st ON true
	 WHERE p.status OPERATOR(pg_catalog.=) 'failed'
	   AND p.invoice_id IS NULL
	   AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture', 'authorization'])
	   AND st.still_open OPERATOR(pg_catalog.>) 0
	   AND NOT EXISTS (SELECT FROM freshpay.payments later
					   WHERE later.customer_id OPERATOR(pg_catalog.=) p.customer_id
						 AND later.invoice_id IS NULL
						 AND later.id OPERATOR(pg_catalog.>) p.id
						 AND EXISTS (SELECT FROM freshpay.payment_allocations la
									 WHERE la.payment_id OPERATOR(pg_catalog.=) later.id))
	UNION ALL
	-- Captured more than 5 minutes ago, or settled, and not in FreshPortal.
	SELECT 'not_registered_in_freshportal', p.administration, p.id, p.invoice_id, NULL,
		   pg_catalog.format('%s of %s captured but not registered in FreshPortal', p.kind, p.amount),
		   p.updated_at,
		   CASE WHEN p.invoice_id IS NULL
				THEN pg_catalog.format('It names no invoice freshpay knows (invoice number %s), so freshpay cannot register it: find the invoice it pays and register it there by hand in FreshPortal (provider transaction id %s), or refund it with SELECT freshpay_refund(%s).',
									   COALESCE(p.invoice_number, 'none'), COALESCE(p.paytrace_transaction_id::text, '(none)'), p.id)
				ELSE pg_catalog.format('freshpay keeps trying: see last_error of its register_payment job (SELECT * FROM freshpay.jobs WHERE payment_id = %s) and fix what FreshPortal refuses (a concept or credit note, an open amount lower than the payment). A registration made by hand in FreshPortal with provider transaction id %s is found and not made twice.',
									   p.id, COALESCE(p.paytrace_transaction_id::text, '(none)'))
		   END
	  FROM freshpay.payments p
	 WHERE p.status OPERATOR(pg_catalog.=) 'captured'
	   AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
	   AND p.freshportal_payment_id IS NULL
	   AND (p.updated_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '5 minutes')
			OR p.batch_number IS NOT NULL OR p.settled_at IS NOT NULL)
	   AND (p.invoice_id IS NOT NULL
			OR NOT EXISTS (SELECT FROM freshpay.payment_allocations a
						   WHERE a.payment_id OPERATOR(pg_catalog.=) p.id))
	UNION ALL
	-- A statement is registered per invoice.
	SELECT 'not_registered_in_freshportal', p.administration, p.id, a.invoice_id, NULL,
		   pg_catalog.format('%s of %s for invoice %s (statement %s) captured but not registered in FreshPortal',
							 p.kind, a.amount, i.number, COALESCE(p.invoice_number, '(none)')),
		   p.updated_at,
		   pg_catalog.format('freshpay keeps trying: see last_error of the register_payment job of statement %s (SELECT * FROM freshpay.jobs WHERE payment_id = %s) and fix what FreshPortal refuses for invoice %s.',
							 COALESCE(p.invoice_number, '(none)'), p.id, i.number)
	  FROM freshpay.payments p
	  JOIN freshpay.payment_allocations a ON a.payment_id OPERATOR(pg_catalog.=) p.id
	  JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) a.invoice_id
	 WHERE p.status OPERATOR(pg_catalog.=) 'captured'
	   AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
	   AND p.invoice_id IS NULL
	   AND a.freshportal_payment_id IS NULL
	   AND a.amount OPERATOR(pg_catalog.>) 0
	   AND (p.updated_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '5 minutes')
			OR p.batch_number IS NOT NULL OR p.settled_at IS NOT NULL)
	UNION ALL
	SELECT 'dead_job', COALESCE(p.administration, i.administration, cu.administration), j.payment_id,
		   COALESCE(j.invoice_id, p.invoice_id), j.id,
		   CASE WHEN j.customer_id IS NULL
				THEN pg_catalog.format('%s gave up after %s attempts: %s', j.kind, j.attempts, COALESCE(j.last_error, 'no error'))
				ELSE pg_catalog.format('%s of customer %s (%s) gave up after %s attempts: %s', j.kind, cu.name, cu.code,
									   j.attempts, COALESCE(j.last_error, 'no error'))
		   END,
		   j.updated_at,
		   CASE WHEN j.customer_id IS NULL
				THEN pg_catalog.format('Fix what the last error says (the invoice in FreshPortal, the customer''s vault profile or rule); freshpay queues the collection again by itself after the next sync if it may succeed, or collect it now with SELECT freshpay_capture(%s).',
									   COALESCE(j.invoice_id, p.invoice_id))
				ELSE pg_catalog.format('Fix what the last error says (the customer''s vault profile or rule), then collect the statement with SELECT freshpay_capture_statement(%s).',
									   j.customer_id)
		   END
	  FROM freshpay.jobs j
	  LEFT JOIN freshpay.payments p ON p.id OPERATOR(pg_catalog.=) j.payment_id
	  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) j.invoice_id
	  LEFT JOIN freshpay.customers cu ON cu.id OPERATOR(pg_catalog.=) j.customer_id
	 WHERE j.state OPERATOR(pg_catalog.=) 'dead'
	UNION ALL
	SELECT 'failing_job', COALESCE(p.administration, i.administration, cu.administration), j.payment_id,
		   COALESCE(j.invoice_id, p.invoice_id), j.id,
		   CASE WHEN j.customer_id IS NULL
				THEN pg_catalog.format('%s failed %s times and keeps retrying (next at %s): %s', j.kind, j.attempts,
									   j.next_run_at, COALESCE(j.last_error, 'no error'))
				ELSE pg_catalog.format('%s of customer %s (%s) failed %s times and keeps retrying (next at %s): %s',
									   j.kind, cu.name, cu.code, j.attempts, j.next_run_at, COALESCE(j.last_error, 'no error'))
		   END,
		   j.updated_at,
		   'freshpay keeps retrying by itself: fix what the last error says (FreshPortal or PayTrace unreachable, refused credentials, a request FreshPortal or PayTrace refuses), then watch the job end.'
	  FROM freshpay.jobs j
	  LEFT JOIN freshpay.payments p ON p.id OPERATOR(pg_catalog.=) j.payment_id
	  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) j.invoice_id
	  LEFT JOIN freshpay.customers cu ON cu.id OPERATOR(pg_catalog.=) j.customer_id
	 WHERE j.state OPERATOR(pg_catalog.=) 'queued'
	   AND j.attempts OPERATOR(pg_catalog.>=) pg_catalog.current_setting('freshpay.max_attempts')::integer
	UNION ALL
	-- Per invoice: freshpay collected more than FreshPortal shows paid.
	SELECT 'amount_mismatch', i.administration, NULL, i.id, NULL,
		   pg_catalog.format('invoice %s: freshpay collected %s net, FreshPortal shows %s paid',
							 i.number, c.collected, i.amount_paid),
		   i.synced_at,
		   pg_catalog.format('Compare the payments of invoice %s in FreshPortal with freshpay.payments and freshpay.payment_allocations: a registration reversed or changed by hand in FreshPortal is to be registered again there; money collected twice is refunded with freshpay_refund().',
							 i.number)
	  FROM freshpay.invoices i
	  JOIN (SELECT n.invoice_id, pg_catalog.sum(n.net) AS collected FROM (
				SELECT p.invoice_id, p.amount OPERATOR(pg_catalog.-) p.refunded_amount AS net
				  FROM freshpay.payments p
				 WHERE p.invoice_id IS NOT NULL
				   AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])
				   AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
				   AND p.freshportal_payment_id IS NOT NULL
				UNION ALL
				SELECT a.invoice_id, a.amount
				  FROM freshpay.payment_allocations a
				  JOIN freshpay.payments s ON s.id OPERATOR(pg_catalog.=) a.payment_id
				 WHERE s.invoice_id IS NULL
				   AND s.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])
				   AND s.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
				   AND a.freshportal_payment_id IS NOT NULL) n
			 GROUP BY n.invoice_id) c ON c.invoice_id OPERATOR(pg_catalog.=) i.id
	 WHERE c.collected OPERATOR(pg_catalog.>) i.amount_paid
	UNION ALL
	-- Per settled transaction (reconciliation's amount_mismatch): more
	-- collected than the invoice's total, or FreshPortal shows more paid than
	-- the total.
	SELECT 'amount_mismatch', p.administration, p.id, p.invoice_id, NULL,
		   CASE WHEN (p.amount OPERATOR(pg_catalog.-) p.refunded_amount) OPERATOR(pg_catalog.>) i.amount_incl_vat
				THEN pg_catalog.format('%s of %s settled for invoice %s: %s collected net of refunds, but the invoice''s total is %s',
									   p.kind, p.amount, i.number, p.amount OPERATOR(pg_catalog.-) p.refunded_amount, i.amount_incl_vat)
				ELSE pg_catalog.format('%s of %s settled for invoice %s: FreshPortal shows %s paid, more than its total of %s',
									   p.kind, p.amount, i.number, i.amount_paid, i.amount_incl_vat)
		   END,
		   COALESCE(p.settled_at, p.updated_at),
		   pg_catalog.format('If invoice %s was lowered in FreshPortal after the charge, refund the difference: SELECT freshpay_refund(%s, %s); if it was paid twice (another payment in FreshPortal), refund one of them; if the invoice is wrong, correct it in FreshPortal.',
							 i.number, p.id,
							 LEAST(p.amount OPERATOR(pg_catalog.-) p.refunded_amount,
								   GREATEST((p.amount OPERATOR(pg_catalog.-) p.refunded_amount) OPERATOR(pg_catalog.-) i.amount_incl_vat,
											i.amount_paid OPERATOR(pg_catalog.-) i.amount_incl_vat)))
	  FROM freshpay.payments p
	  JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id
	 WHERE (p.batch_number IS NOT NULL OR p.settled_at IS NOT NULL)
	   AND p.kind OPERATOR(pg_catalog.<>) 'refund'
	   AND p.status OPERATOR(pg_catalog.<>) 'returned'
	   AND ((p.amount OPERATOR(pg_catalog.-) p.refunded_amount) OPERATOR(pg_catalog.>) i.amount_incl_vat
			OR ((p.amount OPERATOR(pg_catalog.-) p.refunded_amount) OPERATOR(pg_catalog.>) 0
				AND i.amount_paid OPERATOR(pg_catalog.>) i.amount_incl_vat))
	UNION ALL
	-- A settled statement whose allocations do not add up to captured − refunded.
	SELECT 'amount_mismatch', p.administration, p.id, NULL, NULL,
		   pg_catalog.format('statement %s: its allocations to %s invoices add up to %s, but %s was captured and %s refunded',
							 COALESCE(p.invoice_number, '(none)'), st.invoices, st.allocated, p.amount, p.refunded_amount),
		   p.updated_at,
		   pg_catalog.format('Compare freshpay.payment_allocations of payment %s with the registrations of its invoices in FreshPortal; correct the registrations in FreshPortal by hand so that together they come to %s, and report the difference to whoever maintains freshpay.',
							 p.id, p.amount OPERATOR(pg_catalog.-) p.refunded_amount)
	  FROM freshpay.payments p
	  JOIN LATERAL (SELECT pg_catalog.count(*) AS invoices, pg_catalog.sum(a.amount) AS allocated
					  FROM freshpay.payment_allocations a
					 WHERE a.payment_id OPERATOR(pg_catalog.=) p.id) st ON st.invoices OPERATOR(pg_catalog.>) 0
	 WHERE (p.batch_number IS NOT NULL OR p.settled_at IS NOT NULL)
	   AND p.invoice_id IS NULL
	   AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])
	   AND st.allocated OPERATOR(pg_catalog.<>) (p.amount OPERATOR(pg_catalog.-) p.refunded_amount)
	UNION ALL
	-- reconciliation's registered_twice.
	SELECT 'registered_twice', p.administration, p.id, p.invoice_id, NULL,
		   pg_catalog.format('%s of %s settled: registered %s times in FreshPortal on invoice %s (FreshPortal payments %s, provider transaction id %s)',
							 p.kind, p.amount, rt.registrations, COALESCE(rt.invoice_number, rt.freshportal_invoice_id::text),
							 pg_catalog.array_to_string(rt.payment_ids, ', '), rt.provider_ids),
		   COALESCE(p.settled_at, p.updated_at),
		   pg_catalog.format('Reverse FreshPortal payment %s on invoice %s in FreshPortal: it registers the same money (provider transaction id %s) a second time; keep FreshPortal payment %s.',
							 pg_catalog.array_to_string(rt.extra, ', '), COALESCE(rt.invoice_number, rt.freshportal_invoice_id::text),
							 rt.provider_ids, rt.kept)
	  FROM (SELECT DISTINCT r.administration,
		            CAST(pg_catalog.split_part(r.provider_transaction_id, '-', 1) AS pg_catalog.int8) AS transaction_id
		       FROM freshpay.freshportal_registrations r
		      WHERE r.status OPERATOR(pg_catalog.=) 'registered'
		        AND r.provider_transaction_id OPERATOR(pg_catalog.~) '^[0-9]{1,18}(-r[0-9]+)?$'
		      GROUP BY r.administration, r.freshportal_invoice_id, 2
		     HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1) w
	  JOIN freshpay.payments p ON p.administration OPERATOR(pg_catalog.=) w.administration
		   AND p.paytrace_transaction_id OPERATOR(pg_catalog.=) w.transaction_id
	  CROSS JOIN LATERAL freshpay._registered_twice(p.administration, p.id) rt
	 WHERE (p.batch_number IS NOT NULL OR p.settled_at IS NOT NULL)
	   AND p.kind OPERATOR(pg_catalog.<>) 'refund'
	   AND p.status OPERATOR(pg_catalog.<>) 'returned'
	   AND (p.invoice_id IS NOT NULL
			OR EXISTS (SELECT FROM freshpay.payment_allocations a WHERE a.payment_id OPERATOR(pg_catalog.=) p.id))
	UNION ALL
	-- reconciliation's no_invoice.
	SELECT 'settled_without_invoice', p.administration, p.id, NULL, NULL,
		   CASE WHEN p.batch_number IS NOT NULL
				THEN pg_catalog.format('%s of %s settled in batch %s is not matched to any invoice', p.kind, p.amount, p.batch_number)
				ELSE pg_catalog.format('%s of %s settled at %s is not matched to any invoice', p.kind, p.amount, p.settled_at)
		   END,
		   COALESCE(p.settled_at, p.updated_at),
		   pg_catalog.format('Find PayTrace transaction %s (invoice number %s) in PayTrace''s Virtual Terminal and who made it: register it by hand on the invoice it pays in FreshPortal, or refund it with SELECT freshpay_refund(%s) if it was charged in error.',
							 COALESCE(p.paytrace_transaction_id::text, '(none)'), COALESCE(p.invoice_number, 'none'), p.id)
	  FROM freshpay.payments p
	 WHERE (p.batch_number IS NOT NULL OR p.settled_at IS NOT NULL)
	   AND p.invoice_id IS NULL
	   AND p.kind OPERATOR(pg_catalog.<>) 'refund'
	   AND p.status OPERATOR(pg_catalog.<>) 'returned'
	   -- A statement is matched through its allocations.
	   AND NOT EXISTS (SELECT FROM freshpay.payment_allocations a
					   WHERE a.payment_id OPERATOR(pg_catalog.=) p.id)
	UNION ALL
	-- reconciliation's refund_without_sale.
	SELECT 'refund_without_sale', p.administration, p.id, p.invoice_id, NULL,
		   CASE WHEN pp.id IS NULL
				THEN pg_catalog.format('refund of %s (PayTrace transaction %s) refunds a transaction freshpay does not know',
									   p.amount, COALESCE(p.paytrace_transaction_id::text, '(none)'))
				ELSE pg_catalog.format('refund of %s (PayTrace transaction %s) refunds PayTrace transaction %s, a %s freshpay did not collect for any invoice (invoice number %s)',
									   p.amount, COALESCE(p.paytrace_transaction_id::text, '(none)'),
									   COALESCE(pp.paytrace_transaction_id::text, '(none)'), pp.kind, COALESCE(pp.invoice_number, 'none'))
		   END,
		   COALESCE(p.settled_at, p.updated_at),
		   pg_catalog.format('Find refund %s in PayTrace''s Virtual Terminal and who made it: if the money it returns was paid on a FreshPortal invoice, lower that invoice''s payment in FreshPortal by hand; if it was made in error, ask PayTrace how to take it back.',
							 COALESCE(p.paytrace_transaction_id::text, '(none)'))
	  FROM freshpay.payments p
	  LEFT JOIN freshpay.payments pp ON pp.id OPERATOR(pg_catalog.=) p.parent_id
	 WHERE (p.batch_number IS NOT NULL OR p.settled_at IS NOT NULL)
	   AND p.kind OPERATOR(pg_catalog.=) 'refund'
	   AND p.status OPERATOR(pg_catalog.<>) 'returned'
	   AND p.invoice_id IS NULL
	   AND NOT EXISTS (SELECT FROM freshpay.payment_allocations a
					   WHERE a.payment_id OPERATOR(pg_catalog.=) p.parent_id)
	UNION ALL
	-- reconciliation's batch_unknown.
	SELECT 'batch_unknown', p.administration, p.id, p.invoice_id, NULL,
		   pg_catalog.format('%s of %s settled in batch %s, which freshpay has not pulled from PayTrace',
							 p.kind, p.amount, p.batch_number),
		   COALESCE(p.settled_at, p.updated_at),
		   pg_catalog.format('Pull PayTrace''s batches: SELECT * FROM freshpay_sync(%L). If batch %s stays unknown, look for it in PayTrace''s Virtual Terminal (batches older than 35 days are not pulled).',
							 p.administration, p.batch_number)
	  FROM freshpay.payments p
	 WHERE p.batch_number IS NOT NULL
	   AND NOT EXISTS (SELECT FROM freshpay.settlements s
					   WHERE s.administration OPERATOR(pg_catalog.=) p.administration
						 AND s.batch_number OPERATOR(pg_catalog.=) p.batch_number)
	UNION ALL
	-- A batch whose transactions do not add up to PayTrace's totals of it.
	SELECT 'batch_mismatch', s.administration, NULL, NULL, NULL,
		   pg_catalog.format('batch %s: PayTrace counts %s transactions, %s of sales and %s of refunds (net %s); freshpay holds %s transactions in it, %s of sales and %s of refunds (net %s)',
							 s.batch_number, s.transaction_count, s.sales_amount, s.refund_amount, s.net_amount,
							 COALESCE(b.transactions, 0), COALESCE(b.sales, 0.00), COALESCE(b.refunds, 0.00),
							 COALESCE(b.sales, 0.00) OPERATOR(pg_catalog.-) COALESCE(b.refunds, 0.00)),
		   COALESCE(s.settled_at, s.synced_at),
		   pg_catalog.format('Compare batch %s in PayTrace''s Virtual Terminal with SELECT * FROM freshpay.reconciliation WHERE administration = %L AND batch_number = %s: a transaction freshpay does not hold was made at PayTrace and could not be matched (a refund of a sale freshpay does not know, say); book it in FreshPortal by hand. If PayTrace''s figures changed, SELECT * FROM freshpay_sync(%L) pulls them again.',
							 s.batch_number, s.administration, s.batch_number, s.administration)
	  FROM freshpay.settlements s
	  LEFT JOIN (SELECT x.administration, x.batch_number, pg_catalog.count(*) AS transactions,
						COALESCE(pg_catalog.sum(x.amount) FILTER (WHERE x.kind OPERATOR(pg_catalog.<>) 'refund'), 0.00) AS sales,
						COALESCE(pg_catalog.sum(x.amount) FILTER (WHERE x.kind OPERATOR(pg_catalog.=) 'refund'), 0.00) AS refunds
				   FROM freshpay.payments x
				  WHERE x.batch_number IS NOT NULL
				  GROUP BY x.administration, x.batch_number) b
		   ON b.administration OPERATOR(pg_catalog.=) s.administration
		  AND b.batch_number OPERATOR(pg_catalog.=) s.batch_number
	 WHERE s.transaction_count OPERATOR(pg_catalog.<>) COALESCE(b.transactions, 0)
		OR s.sales_amount OPERATOR(pg_catalog.<>) COALESCE(b.sales, 0)
		OR s.refund_amount OPERATOR(pg_catalog.<>) COALESCE(b.refunds, 0)
	UNION ALL
	SELECT 'payment_request_unknown', q.administration, NULL, q.invoice_id, NULL,
		   pg_catalog.format('payment request %s for %s to %s: its answer was lost, so PayTrace may have e-mailed the link; it is never sent again by itself and stays open until %s',
							 q.id, q.amount, q.email, q.expires_at),
		   q.updated_at,
		   pg_catalog.format('Ask the customer (%s) whether PayTrace''s e-mail arrived; if it did not, send a new request after %s with SELECT freshpay_request_payment(%s), or collect the invoice another way.',
							 q.email, q.expires_at, q.invoice_id)
	  FROM freshpay.payment_requests q
	 WHERE q.status OPERATOR(pg_catalog.=) 'unknown'
	UNION ALL
	SELECT 'payment_request_open_long', q.administration, NULL, q.invoice_id, NULL,
		   pg_catalog.format('payment request %s for %s to %s has been open since %s without a payment',
							 q.id, q.amount, q.email, q.created_at),
		   q.created_at,
		   pg_catalog.format('Remind the customer (%s) of the payment link, which works until %s, or collect the invoice another way.',
							 q.email, q.expires_at)
	  FROM freshpay.payment_requests q
	 WHERE q.status OPERATOR(pg_catalog.=) 'sent'
	   AND q.created_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '7 days')
	UNION ALL
	SELECT 'payment_request_expired', q.administration, NULL, q.invoice_id, NULL,
		   pg_catalog.format('payment request %s for %s to %s expired at %s without a payment; the invoice is still open',
							 q.id, q.amount, q.email, q.expires_at),
		   q.updated_at,
		   pg_catalog.format('Send a new payment link with SELECT freshpay_request_payment(%s), or collect the invoice another way.',
							 q.invoice_id)
	  FROM freshpay.payment_requests q
	  JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) q.invoice_id
	 WHERE q.status OPERATOR(pg_catalog.=) 'expired'
	   AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])
	   AND NOT EXISTS (SELECT FROM freshpay.payment_requests later
					   WHERE later.invoice_id OPERATOR(pg_catalog.=) q.invoice_id
						 AND later.id OPERATOR(pg_catalog.>) q.id)
	UNION ALL
	-- reconciliation's returned, until the invoice is collected again or paid.
	SELECT 'ach_returned', p.administration, p.id, p.invoice_id, NULL,
		   pg_catalog.format('ACH debit of %s for invoice %s came back (%s, reason %s): the invoice is open again in FreshPortal and freshpay does not collect it by itself; collect it with freshpay_capture() once the customer''s bank account is in order, or ask for another payment',
							 p.amount, COALESCE(p.invoice_number, '(none)'), COALESCE(p.ach_status, 'RETURNED'),
							 COALESCE(p.return_reason, 'not given')),
		   p.updated_at,
		   CASE WHEN p.invoice_id IS NULL
				THEN pg_catalog.format('Ask the customer about the return (reason %s) and collect the money another way; the debit names no invoice freshpay knows (invoice number %s).',
									   COALESCE(p.return_reason, 'not given'), COALESCE(p.invoice_number, 'none'))
				ELSE pg_catalog.format('Ask the customer about the return (reason %s); once the bank account is in order collect again with SELECT freshpay_capture(%s), or send a payment link with SELECT freshpay_request_payment(%s).',
									   COALESCE(p.return_reason, 'not given'), p.invoice_id, p.invoice_id)
		   END
	  FROM freshpay.payments p
	  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id
	 WHERE p.status OPERATOR(pg_catalog.=) 'returned'
	   AND (i.id IS NULL OR i.status OPERATOR(pg_catalog.<>) ALL (ARRAY['paid', 'credited']))
	   AND NOT EXISTS (SELECT FROM freshpay.payments later
					   WHERE later.invoice_id OPERATOR(pg_catalog.=) p.invoice_id
						 AND later.id OPERATOR(pg_catalog.>) p.id
						 AND later.status OPERATOR(pg_catalog.=) 'captured')
	UNION ALL
	SELECT 'collection_paused', c.administration, d.last_id, NULL, NULL,
		   pg_catalog.format('automatic collection of customer %s (%s) is paused: %s declined charges in 24 hours (freshpay.max_declines_per_day = %s; PayTrace disables a card on its 4th failed attempt within 24 hours); it resumes at %s. Ask the customer for a new card (freshpay_request_payment with mode onboard), or collect an invoice by hand with freshpay_capture()',
							 c.name, c.code, d.declines, pg_catalog.current_setting('freshpay.max_declines_per_day'),
							 d.resumes_at),
		   d.last_at,
		   pg_catalog.format('Ask customer %s (%s) for a new card: SELECT freshpay_request_payment(<invoice id>, ''onboard''); automatic collection resumes by itself at %s.',
							 c.name, c.code, d.resumes_at)
	  FROM freshpay.customers c
	  JOIN LATERAL (SELECT pg_catalog.count(*) AS declines, pg_catalog.max(p.id) AS last_id, pg_catalog.max(p.created_at) AS last_at,
						   (pg_catalog.array_agg(p.created_at ORDER BY p.created_at))
							 [CAST(pg_catalog.count(*) OPERATOR(pg_catalog.-)
								   pg_catalog.current_setting('freshpay.max_declines_per_day')::pg_catalog.int4 OPERATOR(pg_catalog.+) 1
								   AS pg_catalog.int4)]
							 OPERATOR(pg_catalog.+) interval '24 hours' AS resumes_at
					  FROM freshpay.payments p
					 WHERE p.customer_id OPERATOR(pg_catalog.=) c.id
					   AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'authorization', 'ach_sale'])
					   AND p.status OPERATOR(pg_catalog.=) 'failed'
					   AND (p.response_code IS NOT NULL OR p.paytrace_transaction_id IS NOT NULL)
					   AND p.created_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '24 hours')) d ON true
	 WHERE c.collection OPERATOR(pg_catalog.=) ANY (ARRAY['on_issue', 'on_due_date', 'statement_weekly', 'statement_monthly'])
	   AND pg_catalog.current_setting('freshpay.max_declines_per_day')::pg_catalog.int4 OPERATOR(pg_catalog.>) 0
	   AND d.declines OPERATOR(pg_catalog.>=) pg_catalog.current_setting('freshpay.max_declines_per_day')::pg_catalog.int4
	UNION ALL
	SELECT 'card_expiring', c.administration, NULL, n.id, NULL,
		   pg_catalog.format('the card of customer %s (%s), ending %s, expires at the end of %s/%s, before invoice %s is due on %s: ask the customer for a new card, e.g. SELECT freshpay_request_payment(%s, ''onboard'')',
							 c.name, c.code, c.card_last4, pg_catalog.lpad(c.card_expiry_month::text, 2, '0'),
							 c.card_expiry_year, n.number, n.due_date, n.id),
		   c.card_checked_at,
		   pg_catalog.format('Ask customer %s (%s) for a new card before %s: SELECT freshpay_request_payment(%s, ''onboard'') e-mails a link that stores it, and freshpay reads the new expiry at its next daily pull.',
							 c.name, c.code, n.due_date, n.id)
	  FROM freshpay.customers c
	  JOIN LATERAL (SELECT i.id, i.number, i.due_date FROM freshpay.invoices i
					 WHERE i.customer_id OPERATOR(pg_catalog.=) c.id
					   AND i.type OPERATOR(pg_catalog.=) 'invoice'
					   AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])
					   AND i.due_date IS NOT NULL
					 ORDER BY i.due_date, i.id LIMIT 1) n ON true
	 WHERE c.payment_method OPERATOR(pg_catalog.=) 'card'
	   AND c.paytrace_customer_id IS NOT NULL
	   AND c.card_expiry_year IS NOT NULL
	   AND (pg_catalog.make_date(c.card_expiry_year, c.card_expiry_month, 1)
			OPERATOR(pg_catalog.+) interval '1 month')::date
		   OPERATOR(pg_catalog.<=) GREATEST(n.due_date, CURRENT_DATE);
COMMENT ON VIEW freshpay.exceptions IS 'Everything a person must look at, with what to do about it: unknown outcomes, failed collections, money not registered in FreshPortal, jobs given up or failing, amounts that disagree, settled money with no invoice or no sale, batches not pulled or not adding up, payment requests, ACH returns, paused collections, expiring cards';
COMMENT ON COLUMN freshpay.exceptions.kind IS 'unknown_outcome, failed_collection, not_registered_in_freshportal, dead_job, failing_job, amount_mismatch, settled_without_invoice (reconciliation''s no_invoice), refund_without_sale, registered_twice (a registration made more than once in FreshPortal), batch_unknown, batch_mismatch, payment_request_unknown, payment_request_open_long, payment_request_expired, ach_returned (reconciliation''s returned, until the invoice is collected again or paid), collection_paused or card_expiring';
COMMENT ON COLUMN freshpay.exceptions.payment_id IS 'The payment concerned, if any (for a reconciliation verdict, the settled transaction)';
COMMENT ON COLUMN freshpay.exceptions.suggested_action IS 'What finance should do about it, in a sentence or two (with the SQL to run where there is some)';

------------------------------------------------------------------------------
-- Views for BI tools
------------------------------------------------------------------------------

-- Money moved per day, administration and method.
CREATE VIEW freshpay.daily_cash AS
	SELECT m.day, m.administration, m.method,
		   COALESCE(pg_catalog.sum(m.amount) FILTER (WHERE m.movement OPERATOR(pg_catalog.=) 'collected'), 0)::numeric(12,2) AS collected,
		   COALESCE(pg_catalog.sum(m.amount) FILTER (WHERE m.movement OPERATOR(pg_catalog.=) 'refunded'), 0)::numeric(12,2) AS refunded,
		   COALESCE(pg_catalog.sum(m.amount) FILTER (WHERE m.movement OPERATOR(pg_catalog.=) 'returned'), 0)::numeric(12,2) AS returned,
		   (COALESCE(pg_catalog.sum(m.amount) FILTER (WHERE m.movement OPERATOR(pg_catalog.=) 'collected'), 0)
			OPERATOR(pg_catalog.-) COALESCE(pg_catalog.sum(m.amount) FILTER (WHERE m.movement OPERATOR(pg_catalog.<>) 'collected'), 0))::numeric(12,2) AS net,
		   pg_catalog.count(*) FILTER (WHERE m.movement OPERATOR(pg_catalog.=) 'collected') AS collections,
		   pg_catalog.count(*) FILTER (WHERE m.movement OPERATOR(pg_catalog.=) 'refunded') AS refunds,
		   pg_catalog.count(*) FILTER (WHERE m.movement OPERATOR(pg_catalog.=) 'returned') AS returns
	  FROM (SELECT COALESCE(p.settled_at, p.created_at)::date AS day, p.administration,
				   CASE WHEN p.kind OPERATOR(pg_catalog.=) 'ach_sale' THEN 'ach' ELSE 'card' END AS method,
				   'collected'::text AS movement, p.amount
			  FROM freshpay.payments p
			 WHERE p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
			   AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded', 'returned'])
			UNION ALL
			SELECT COALESCE(r.settled_at, r.created_at)::date, r.administration,
				   CASE WHEN s.kind OPERATOR(pg_catalog.=) 'ach_sale' THEN 'ach' ELSE 'card' END,
				   'refunded', r.amount
			  FROM freshpay.payments r
			  LEFT JOIN freshpay.payments s ON s.id OPERATOR(pg_catalog.=) r.parent_id
			 WHERE r.kind OPERATOR(pg_catalog.=) 'refund'
			   AND r.status OPERATOR(pg_catalog.=) 'refunded'
			UNION ALL
			SELECT COALESCE((SELECT pg_catalog.min(h.at) FROM freshpay.payment_history h
							  WHERE h.payment_id OPERATOR(pg_catalog.=) p.id
								AND h.new_status OPERATOR(pg_catalog.=) 'returned'), p.updated_at)::date,
				   p.administration, 'ach', 'returned', p.amount
			  FROM freshpay.payments p
			 WHERE p.status OPERATOR(pg_catalog.=) 'returned') m
	 GROUP BY m.day, m.administration, m.method;
COMMENT ON VIEW freshpay.daily_cash IS 'Money moved through PayTrace per day (in the session''s time zone), administration and method: collected, refunded, returned by the bank, and net';
COMMENT ON COLUMN freshpay.daily_cash.day IS 'The day the money moved: a collection or refund on the day PayTrace settled it (not settled yet: the day it was made), an ACH return on the day freshpay learned of it';
COMMENT ON COLUMN freshpay.daily_cash.administration IS 'Administration';
COMMENT ON COLUMN freshpay.daily_cash.method IS 'card or ach';
COMMENT ON COLUMN freshpay.daily_cash.collected IS 'Sales, captures and ACH debits collected (later refunds and returns not deducted: they count on their own day)';
COMMENT ON COLUMN freshpay.daily_cash.refunded IS 'Refunds made';
COMMENT ON COLUMN freshpay.daily_cash.returned IS 'ACH debits the bank sent back';
COMMENT ON COLUMN freshpay.daily_cash.net IS 'collected − refunded − returned';
COMMENT ON COLUMN freshpay.daily_cash.collections IS 'Number of collections';
COMMENT ON COLUMN freshpay.daily_cash.refunds IS 'Number of refunds';
COMMENT ON COLUMN freshpay.daily_cash.returns IS 'Number of ACH returns';

-- Per customer: billed, collected, outstanding, how fast it pays.
--
-- _customer_figures computes them for some customers over every invoice and
-- payment of theirs.  Over a large ledger that is a second for all of them,
-- so customer_figures keeps each customer's figures, and the view computes
-- anew only those of the customers whose rows changed since they were kept
-- (customer_figures_stale, marked by triggers in the transaction that makes
-- the change) or that have none kept.  The sync worker keeps the figures of
-- the changed customers every 5 seconds (_refresh_customer_figures).  The
-- view is exact either way: what is kept is used only while nothing it was
-- computed from has changed.

-- What one customer's figures are computed from: its invoices, its payments
-- (each with its invoice), and the invoices its statements paid.  The days
-- to cash are counted per customer and number of days, so that the 90th
-- percentile needs no sort of every transaction.
CREATE FUNCTION freshpay._customer_figures(customer_ids bigint[])
RETURNS TABLE (customer_id bigint, invoices bigint, billed numeric, open_amount numeric, collected numeric,
			   unregistered numeric, avg_days numeric, p90_days integer, declines bigint,
			   last_payment_at timestamptz)
LANGUAGE sql STABLE
AS $$
	SELECT c.id, COALESCE(iv.invoices, 0), COALESCE(iv.billed, 0), COALESCE(iv.open_amount, 0),
		   COALESCE(pm.collected, 0), COALESCE(pm.unregistered, 0), pm.avg_days, pm.p90_days,
		   COALESCE(pm.declines, 0), pm.last_payment_at
	  FROM (SELECT DISTINCT u.id FROM pg_catalog.unnest(customer_ids) u(id) WHERE u.id IS NOT NULL) c
	  LEFT JOIN (SELECT i.customer_id,
						pg_catalog.count(*) FILTER (WHERE i.status OPERATOR(pg_catalog.<>) 'concept') AS invoices,
						pg_catalog.sum(i.amount_incl_vat) FILTER (WHERE i.status OPERATOR(pg_catalog.<>) 'concept') AS billed,
						pg_catalog.sum(i.open_amount)
							FILTER (WHERE i.type OPERATOR(pg_catalog.=) 'invoice'
									AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])) AS open_amount
				   FROM freshpay.invoices i
				  WHERE i.customer_id OPERATOR(pg_catalog.=) ANY (customer_ids)
				  GROUP BY i.customer_id) iv ON iv.customer_id OPERATOR(pg_catalog.=) c.id
	  LEFT JOIN (SELECT x.customer_id,
						pg_catalog.sum(x.collected) AS collected,
						pg_catalog.sum(x.unregistered) AS unregistered,
						pg_catalog.sum(x.declines) AS declines,
						pg_catalog.max(x.paid_at) AS last_payment_at,
						pg_catalog.sum(x.days OPERATOR(pg_catalog.*) x.n)::numeric
							OPERATOR(pg_catalog./) NULLIF(pg_catalog.sum(x.n), 0) AS avg_days,
						pg_catalog.min(x.days) FILTER (WHERE x.cumulative OPERATOR(pg_catalog.>=)
														   (0.9 OPERATOR(pg_catalog.*) x.total)) AS p90_days
				   FROM (SELECT d.customer_id, d.days, d.n, d.collected, d.unregistered, d.declines, d.paid_at,
								pg_catalog.sum(d.n) OVER (PARTITION BY d.customer_id ORDER BY d.days) AS cumulative,
								pg_catalog.sum(d.n) OVER (PARTITION BY d.customer_id) AS total
						   FROM (SELECT y.customer_id, y.days, pg_catalog.count(y.days) AS n,
										pg_catalog.sum(y.collected) AS collected,
										pg_catalog.sum(y.unregistered) AS unregistered,
										pg_catalog.count(*) FILTER (WHERE y.declined) AS declines,
										pg_catalog.max(y.paid_at) AS paid_at
								   FROM (-- each payment of the customer
										 SELECT p.customer_id,
												-- days from the invoice date to the day the money settled
												-- (not settled yet: the day it was collected)
												CASE WHEN p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
														  AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])
													 THEN COALESCE(p.settled_at, p.created_at)::date OPERATOR(pg_catalog.-) i.invoice_date
												END AS days,
												CASE WHEN p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
														  AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])
													 THEN p.amount OPERATOR(pg_catalog.-) p.refunded_amount
												END AS collected,
												-- collected for an open invoice, not counted by FreshPortal yet
												CASE WHEN p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
														  AND p.status OPERATOR(pg_catalog.=) 'captured'
														  AND p.freshportal_payment_id IS NULL
														  AND i.type OPERATOR(pg_catalog.=) 'invoice'
														  AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])
													 THEN p.amount OPERATOR(pg_catalog.-) p.refunded_amount
												END AS unregistered,
												(p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'authorization', 'ach_sale'])
												 AND p.status OPERATOR(pg_catalog.=) 'failed'
												 AND (p.response_code IS NOT NULL OR p.paytrace_transaction_id IS NOT NULL)) AS declined,
												CASE WHEN p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])
													 THEN p.created_at END AS paid_at
										   FROM freshpay.payments p
										   LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id
										  WHERE p.customer_id OPERATOR(pg_catalog.=) ANY (customer_ids)
										 UNION ALL
										 -- each invoice a statement of the customer paid
										 SELECT s.customer_id,
												CASE WHEN s.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])
													 THEN COALESCE(s.settled_at, s.created_at)::date OPERATOR(pg_catalog.-) i.invoice_date
												END,
												NULL,
												CASE WHEN s.status OPERATOR(pg_catalog.=) 'captured'
														  AND a.freshportal_payment_id IS NULL
														  AND i.type OPERATOR(pg_catalog.=) 'invoice'
														  AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])
													 THEN a.amount
												END,
												false, NULL
										   FROM freshpay.payment_allocations a
										   JOIN freshpay.payments s ON s.id OPERATOR(pg_catalog.=) a.payment_id
										   JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) a.invoice_id
										  WHERE s.invoice_id IS NULL
											AND s.customer_id OPERATOR(pg_catalog.=) ANY (customer_ids)
											AND s.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])) y
								  GROUP BY y.customer_id, y.days) d) x
				  GROUP BY x.customer_id) pm ON pm.customer_id OPERATOR(pg_catalog.=) c.id
$$;
COMMENT ON FUNCTION freshpay._customer_figures(bigint[]) IS 'Internal: customer_summary''s figures of these customers, computed over all their invoices and payments';

CREATE TABLE freshpay.customer_figures (
	customer_id bigint PRIMARY KEY REFERENCES freshpay.customers (id) ON DELETE CASCADE,
	administration text NOT NULL,
	invoices bigint NOT NULL,
	billed numeric(12,2) NOT NULL,
	open_amount numeric(12,2) NOT NULL,
	collected numeric(12,2) NOT NULL,
	unregistered numeric(12,2) NOT NULL,
	avg_days numeric,
	p90_days integer,
	declines bigint NOT NULL,
	last_payment_at timestamptz,
	refreshed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE freshpay.customer_figures IS 'customer_summary''s figures of each customer as last computed (by the sync worker); used only while the customer is not in customer_figures_stale.  Derived data: not dumped, computed again after a restore';
COMMENT ON COLUMN freshpay.customer_figures.customer_id IS 'freshpay.customers.id';
COMMENT ON COLUMN freshpay.customer_figures.administration IS 'The customer''s administration';
COMMENT ON COLUMN freshpay.customer_figures.invoices IS 'As customer_summary.invoices';
COMMENT ON COLUMN freshpay.customer_figures.billed IS 'As customer_summary.billed';
COMMENT ON COLUMN freshpay.customer_figures.open_amount IS 'Open amount of its open and partially paid invoices, as FreshPortal shows it';
COMMENT ON COLUMN freshpay.customer_figures.collected IS 'As customer_summary.collected';
COMMENT ON COLUMN freshpay.customer_figures.unregistered IS 'Collected by freshpay for its open invoices and not registered in FreshPortal yet (outstanding = open_amount - unregistered)';
COMMENT ON COLUMN freshpay.customer_figures.avg_days IS 'Average days to cash, unrounded';
COMMENT ON COLUMN freshpay.customer_figures.p90_days IS 'As customer_summary.p90_days_to_cash';
COMMENT ON COLUMN freshpay.customer_figures.declines IS 'As customer_summary.declines';
COMMENT ON COLUMN freshpay.customer_figures.last_payment_at IS 'As customer_summary.last_payment_at';
COMMENT ON COLUMN freshpay.customer_figures.refreshed_at IS 'When they were computed';

-- Customers whose figures changed since they were kept: a row per change
-- (no key, so that a change never waits for another transaction's mark).
CREATE TABLE freshpay.customer_figures_stale (
	id bigserial PRIMARY KEY,
	customer_id bigint NOT NULL,
	administration text NOT NULL,
	marked_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE freshpay.customer_figures_stale IS 'Customers whose invoices, payments or statement allocations changed since customer_figures was computed for them: customer_summary computes theirs anew';
COMMENT ON COLUMN freshpay.customer_figures_stale.id IS 'Order of the marks: a refresh clears those it saw';
COMMENT ON COLUMN freshpay.customer_figures_stale.customer_id IS 'freshpay.customers.id';
COMMENT ON COLUMN freshpay.customer_figures_stale.administration IS 'The customer''s administration';
COMMENT ON COLUMN freshpay.customer_figures_stale.marked_at IS 'When the change was made (its transaction''s start)';

-- The marks, made in the transaction of the change.  Statement triggers with
-- the changed rows (one insert per statement, not per row: a sync's or a
-- load's thousands of rows), but for a payment's update (below); ALWAYS, so
-- that a load with session_replication_role = replica marks too.  They run
-- as their owner: the roles that change the rows need no right on the marks.

-- Rows of payments or invoices inserted or deleted: their customers.
CREATE FUNCTION freshpay._customer_figures_mark_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'INSERT' THEN
		INSERT INTO freshpay.customer_figures_stale (customer_id, administration)
		SELECT DISTINCT n.customer_id, n.administration FROM new_rows n WHERE n.customer_id IS NOT NULL;
	ELSIF TG_OP = 'DELETE' THEN
		INSERT INTO freshpay.customer_figures_stale (customer_id, administration)
		SELECT DISTINCT o.customer_id, o.administration FROM old_rows o WHERE o.customer_id IS NOT NULL;
	END IF;
	RETURN NULL;
END
$$;

-- A payment updated (the money flow's steps, one row at a time): a row
-- trigger whose WHEN (in the trigger, below) lets through only what the
-- figures read, so that the steps that change nothing of it (attempts,
-- times, Level 3) cost nothing.
CREATE FUNCTION freshpay._customer_figures_mark_payment() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.customer_id IS NOT NULL THEN
		INSERT INTO freshpay.customer_figures_stale (customer_id, administration)
		VALUES (NEW.customer_id, NEW.administration);
	END IF;
	IF OLD.customer_id IS DISTINCT FROM NEW.customer_id AND OLD.customer_id IS NOT NULL THEN
		INSERT INTO freshpay.customer_figures_stale (customer_id, administration)
		VALUES (OLD.customer_id, OLD.administration);
	END IF;
	RETURN NULL;
END
$$;

-- An invoice updated: its figures are its customer's; its payments' (and
-- the statements that paid it) are their customers', normally the same one.
CREATE FUNCTION freshpay._customer_figures_mark_invoices() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	WITH changed AS (
		SELECT o.id, o.customer_id AS old_customer, o.administration AS old_administration,
			   n.customer_id AS new_customer, n.administration AS new_administration
		  FROM old_rows o
		  JOIN new_rows n ON n.id = o.id
		 WHERE (o.customer_id, o.status, o.type, o.amount_incl_vat, o.open_amount, o.invoice_date)
			   IS DISTINCT FROM (n.customer_id, n.status, n.type, n.amount_incl_vat, n.open_amount, n.invoice_date))
	INSERT INTO freshpay.customer_figures_stale (customer_id, administration)
	SELECT DISTINCT m.customer_id, m.administration
	  FROM (SELECT c.old_customer, c.old_administration FROM changed c
			UNION ALL
			SELECT c.new_customer, c.new_administration FROM changed c
			UNION ALL
			SELECT p.customer_id, p.administration
			  FROM freshpay.payments p WHERE p.invoice_id IN (SELECT c.id FROM changed c)
			UNION ALL
			SELECT s.customer_id, s.administration
			  FROM freshpay.payment_allocations a
			  JOIN freshpay.payments s ON s.id = a.payment_id
			 WHERE a.invoice_id IN (SELECT c.id FROM changed c)) m (customer_id, administration)
	 WHERE m.customer_id IS NOT NULL;
	RETURN NULL;
END
$$;

-- An allocation's figures are its statement's customer's.
CREATE FUNCTION freshpay._customer_figures_mark_allocations() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'INSERT' THEN
		INSERT INTO freshpay.customer_figures_stale (customer_id, administration)
		SELECT DISTINCT s.customer_id, s.administration
		  FROM freshpay.payments s WHERE s.id IN (SELECT n.payment_id FROM new_rows n) AND s.customer_id IS NOT NULL;
	ELSIF TG_OP = 'DELETE' THEN
		INSERT INTO freshpay.customer_figures_stale (customer_id, administration)
		SELECT DISTINCT s.customer_id, s.administration
		  FROM freshpay.payments s WHERE s.id IN (SELECT o.payment_id FROM old_rows o) AND s.customer_id IS NOT NULL;
	ELSE
		INSERT INTO freshpay.customer_figures_stale (customer_id, administration)
		SELECT DISTINCT s.customer_id, s.administration
		  FROM freshpay.payments s
		 WHERE s.id IN (SELECT o.payment_id FROM old_rows o UNION ALL SELECT n.payment_id FROM new_rows n)
		   AND s.customer_id IS NOT NULL;
	END IF;
	RETURN NULL;
END
$$;

-- A table emptied at once: every customer's figures are computed anew.
CREATE FUNCTION freshpay._customer_figures_forget() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM freshpay.customer_figures;
	RETURN NULL;
END
$$;

DO $$
DECLARE
	t text;
	op text;
BEGIN
	FOREACH t IN ARRAY ARRAY['payments', 'invoices', 'payment_allocations'] LOOP
		FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
			CONTINUE WHEN t = 'payments' AND op = 'update';
			EXECUTE pg_catalog.format(
				'CREATE TRIGGER customer_figures_%s AFTER %s ON freshpay.%I REFERENCING %s TABLE AS %s'
				' FOR EACH STATEMENT EXECUTE FUNCTION freshpay.%I()',
				op, pg_catalog.upper(op), t,
				CASE op WHEN 'insert' THEN 'NEW' WHEN 'delete' THEN 'OLD' ELSE 'OLD TABLE AS old_rows NEW' END,
				CASE op WHEN 'delete' THEN 'old_rows' ELSE 'new_rows' END,
				'_customer_figures_mark_' || CASE WHEN t = 'payment_allocations' THEN 'allocations'
												  WHEN op = 'update' THEN t ELSE 'rows' END);
			EXECUTE pg_catalog.format('ALTER TABLE freshpay.%I ENABLE ALWAYS TRIGGER customer_figures_%s', t, op);
		END LOOP;
		IF t = 'payments' THEN
			CREATE TRIGGER customer_figures_update AFTER UPDATE ON freshpay.payments FOR EACH ROW
				WHEN ((OLD.customer_id, OLD.invoice_id, OLD.kind, OLD.status, OLD.amount, OLD.refunded_amount,
					   OLD.settled_at, OLD.created_at, OLD.freshportal_payment_id, OLD.response_code,
					   OLD.paytrace_transaction_id, OLD.administration)
					  IS DISTINCT FROM
					  (NEW.customer_id, NEW.invoice_id, NEW.kind, NEW.status, NEW.amount, NEW.refunded_amount,
					   NEW.settled_at, NEW.created_at, NEW.freshportal_payment_id, NEW.response_code,
					   NEW.paytrace_transaction_id, NEW.administration))
				EXECUTE FUNCTION freshpay._customer_figures_mark_payment();
			ALTER TABLE freshpay.payments ENABLE ALWAYS TRIGGER customer_figures_update;
		END IF;
		EXECUTE pg_catalog.format(
			'CREATE TRIGGER customer_figures_truncate AFTER TRUNCATE ON freshpay.%I'
			' FOR EACH STATEMENT EXECUTE FUNCTION freshpay._customer_figures_forget()', t);
		EXECUTE pg_catalog.format('ALTER TABLE freshpay.%I ENABLE ALWAYS TRIGGER customer_figures_truncate', t);
	END LOOP;
END
$$;

-- Keep the figures of the customers marked since (and of those with none
-- kept), and clear the marks they were computed after: all in one statement,
-- so that exactly the marks its snapshot saw are cleared; a change committed
-- later keeps its mark.  One refresh at a time (the table lock, which only
-- refreshes take), each after the one before has committed.  Returns the
-- number of customers refreshed, or NULL when a table it reads was held
-- for longer than 100 ms (by DROP or ALTER EXTENSION, VACUUM FULL, ...): it
-- lets go of everything at once rather than wait with the figures locked,
-- which could deadlock with the one holding that table; the next refresh
-- does the work.
CREATE FUNCTION freshpay._refresh_customer_figures() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '10s'
AS $$
DECLARE
	refreshed integer;
BEGIN
	LOCK TABLE freshpay.customer_figures IN SHARE ROW EXCLUSIVE MODE;
	PERFORM pg_catalog.set_config('lock_timeout', '100ms', true);
	WITH seen AS (
		SELECT s.id, s.customer_id FROM freshpay.customer_figures_stale s
	), todo AS (
		SELECT c.id, c.administration
		  FROM freshpay.customers c
		 WHERE c.id IN (SELECT seen.customer_id FROM seen)
			OR NOT EXISTS (SELECT FROM freshpay.customer_figures f WHERE f.customer_id = c.id)
	), kept AS (
		INSERT INTO freshpay.customer_figures AS f
			(customer_id, administration, invoices, billed, open_amount, collected, unregistered, avg_days,
			 p90_days, declines, last_payment_at, refreshed_at)
		SELECT x.customer_id, t.administration, x.invoices, x.billed, x.open_amount, x.collected, x.unregistered,
			   x.avg_days, x.p90_days, x.declines, x.last_payment_at, now()
		  FROM freshpay._customer_figures(ARRAY(SELECT todo.id FROM todo)) x
		  JOIN todo t ON t.id = x.customer_id
		ON CONFLICT (customer_id) DO UPDATE
		   SET administration = excluded.administration, invoices = excluded.invoices, billed = excluded.billed,
			   open_amount = excluded.open_amount, collected = excluded.collected,
			   unregistered = excluded.unregistered, avg_days = excluded.avg_days, p90_days = excluded.p90_days,
			   declines = excluded.declines, last_payment_at = excluded.last_payment_at,
			   refreshed_at = excluded.refreshed_at
		RETURNING 1
	), cleared AS (
		DELETE FROM freshpay.customer_figures_stale s WHERE s.id IN (SELECT seen.id FROM seen)
	)
	SELECT count(*) INTO refreshed FROM kept;
	RETURN refreshed;
EXCEPTION WHEN lock_not_available THEN
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION freshpay._refresh_customer_figures() IS 'Internal: keep customer_figures of the customers changed since (the sync worker calls it every 5 seconds); returns how many, NULL when a table was held and it let go';

CREATE VIEW freshpay.customer_summary AS
	WITH stale AS MATERIALIZED (
		SELECT s.customer_id FROM freshpay.customer_figures_stale s
		UNION
		SELECT c.id FROM freshpay.customers c
		 WHERE NOT EXISTS (SELECT FROM freshpay.customer_figures f WHERE f.customer_id OPERATOR(pg_catalog.=) c.id))
	SELECT c.id AS customer_id, c.administration, c.code, c.name, c.payment_method, c.collection,
		   COALESCE(f.invoices, 0) AS invoices,
		   COALESCE(f.billed, 0)::numeric(12,2) AS billed,
		   COALESCE(f.collected, 0)::numeric(12,2) AS collected,
		   (COALESCE(f.open_amount, 0) OPERATOR(pg_catalog.-) COALESCE(f.unregistered, 0))::numeric(12,2) AS outstanding,
		   pg_catalog.round(f.avg_days, 1) AS avg_days_to_cash,
		   f.p90_days AS p90_days_to_cash,
		   COALESCE(f.declines, 0) AS declines,
		   f.last_payment_at
	  FROM freshpay.customers c
	  LEFT JOIN (SELECT k.customer_id, k.invoices, k.billed, k.open_amount, k.collected, k.unregistered, k.avg_days,
						k.p90_days, k.declines, k.last_payment_at
				   FROM freshpay.customer_figures k
				  WHERE NOT EXISTS (SELECT FROM stale s WHERE s.customer_id OPERATOR(pg_catalog.=) k.customer_id)
				 UNION ALL
				 SELECT l.customer_id, l.invoices, l.billed, l.open_amount, l.collected, l.unregistered, l.avg_days,
						l.p90_days, l.declines, l.last_payment_at
				   FROM freshpay._customer_figures(ARRAY(SELECT s.customer_id FROM stale s)) l) f
		ON f.customer_id OPERATOR(pg_catalog.=) c.id;
COMMENT ON VIEW freshpay.customer_summary IS 'Per customer: what was billed, collected through PayTrace and is outstanding, how many days the money takes (average and 90th percentile), declines, payment method';
COMMENT ON COLUMN freshpay.customer_summary.customer_id IS 'freshpay.customers.id';
COMMENT ON COLUMN freshpay.customer_summary.administration IS 'Administration';
COMMENT ON COLUMN freshpay.customer_summary.code IS 'Customer code';
COMMENT ON COLUMN freshpay.customer_summary.name IS 'Customer name';
COMMENT ON COLUMN freshpay.customer_summary.payment_method IS 'card or ach';
COMMENT ON COLUMN freshpay.customer_summary.collection IS 'Collection rule: manual, on_issue, on_due_date, statement_weekly or statement_monthly';
COMMENT ON COLUMN freshpay.customer_summary.invoices IS 'Invoices and credit notes, concepts left out';
COMMENT ON COLUMN freshpay.customer_summary.billed IS 'Their totals including VAT (credit notes count negative)';
COMMENT ON COLUMN freshpay.customer_summary.collected IS 'Collected through PayTrace (sales, captures, ACH debits, statements), net of refunds; ACH debits sent back not counted';
COMMENT ON COLUMN freshpay.customer_summary.outstanding IS 'Open amount of its open and partially paid invoices, less what freshpay collected that FreshPortal does not count yet (as freshpay.invoice_status.outstanding)';
COMMENT ON COLUMN freshpay.customer_summary.avg_days_to_cash IS 'Average days from invoice date to the day the money settled (not settled yet: was collected), per collecting transaction (per invoice of a statement)';
COMMENT ON COLUMN freshpay.customer_summary.p90_days_to_cash IS '90th percentile of those days (a value that occurred)';
COMMENT ON COLUMN freshpay.customer_summary.declines IS 'Declined charges (sales, authorizations, ACH debits PayTrace refused), all time';
COMMENT ON COLUMN freshpay.customer_summary.last_payment_at IS 'When its latest collected payment was made';

-- Outstanding per customer by days past due.
CREATE VIEW freshpay.aging AS
	SELECT o.customer_id, o.administration, c.code, c.name,
		   COALESCE(pg_catalog.sum(o.outstanding) FILTER (WHERE o.due_date IS NULL OR o.due_date OPERATOR(pg_catalog.>=) CURRENT_DATE), 0)::numeric(12,2) AS current,
		   COALESCE(pg_catalog.sum(o.outstanding) FILTER (WHERE (CURRENT_DATE OPERATOR(pg_catalog.-) o.due_date) OPERATOR(pg_catalog.>=) 1
															 AND (CURRENT_DATE OPERATOR(pg_catalog.-) o.due_date) OPERATOR(pg_catalog.<=) 30), 0)::numeric(12,2) AS days_1_30,
		   COALESCE(pg_catalog.sum(o.outstanding) FILTER (WHERE (CURRENT_DATE OPERATOR(pg_catalog.-) o.due_date) OPERATOR(pg_catalog.>=) 31
															 AND (CURRENT_DATE OPERATOR(pg_catalog.-) o.due_date) OPERATOR(pg_catalog.<=) 60), 0)::numeric(12,2) AS days_31_60,
		   COALESCE(pg_catalog.sum(o.outstanding) FILTER (WHERE (CURRENT_DATE OPERATOR(pg_catalog.-) o.due_date) OPERATOR(pg_catalog.>=) 61
															 AND (CURRENT_DATE OPERATOR(pg_catalog.-) o.due_date) OPERATOR(pg_catalog.<=) 90), 0)::numeric(12,2) AS days_61_90,
		   COALESCE(pg_catalog.sum(o.outstanding) FILTER (WHERE (CURRENT_DATE OPERATOR(pg_catalog.-) o.due_date) OPERATOR(pg_catalog.>) 90), 0)::numeric(12,2) AS days_over_90,
		   pg_catalog.sum(o.outstanding)::numeric(12,2) AS total,
		   pg_catalog.count(*) AS open_invoices,
		   pg_catalog.min(o.due_date) AS oldest_due_date
	  FROM (SELECT i.customer_id, i.administration, i.due_date,
				   i.open_amount OPERATOR(pg_catalog.-) COALESCE(u.amount, 0) OPERATOR(pg_catalog.-) COALESCE(ua.amount, 0) AS outstanding
			  FROM freshpay.invoices i
			  LEFT JOIN (SELECT p.invoice_id, pg_catalog.sum(p.amount OPERATOR(pg_catalog.-) p.refunded_amount) AS amount
						   FROM freshpay.payments p
						  WHERE p.status OPERATOR(pg_catalog.=) 'captured' AND p.freshportal_payment_id IS NULL
							AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
						  GROUP BY p.invoice_id) u ON u.invoice_id OPERATOR(pg_catalog.=) i.id
			  LEFT JOIN (SELECT a.invoice_id, pg_catalog.sum(a.amount) AS amount
						   FROM freshpay.payment_allocations a
						   JOIN freshpay.payments s ON s.id OPERATOR(pg_catalog.=) a.payment_id
						  WHERE a.freshportal_payment_id IS NULL AND s.status OPERATOR(pg_catalog.=) 'captured'
							AND s.invoice_id IS NULL
							AND s.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
						  GROUP BY a.invoice_id) ua ON ua.invoice_id OPERATOR(pg_catalog.=) i.id
			 WHERE i.type OPERATOR(pg_catalog.=) 'invoice'
			   AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])) o
	  LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) o.customer_id
	 GROUP BY o.customer_id, o.administration, c.code, c.name;
COMMENT ON VIEW freshpay.aging IS 'Outstanding per customer by days past the due date (today''s date), over its open and partially paid invoices';
COMMENT ON COLUMN freshpay.aging.customer_id IS 'freshpay.customers.id; null for invoices whose customer has not been synced';
COMMENT ON COLUMN freshpay.aging.administration IS 'Administration';
COMMENT ON COLUMN freshpay.aging.code IS 'Customer code';
COMMENT ON COLUMN freshpay.aging.name IS 'Customer name';
COMMENT ON COLUMN freshpay.aging.current IS 'Outstanding not due yet (due today or later, or without a due date)';
COMMENT ON COLUMN freshpay.aging.days_1_30 IS 'Outstanding 1 to 30 days past due';
COMMENT ON COLUMN freshpay.aging.days_31_60 IS 'Outstanding 31 to 60 days past due';
COMMENT ON COLUMN freshpay.aging.days_61_90 IS 'Outstanding 61 to 90 days past due';
COMMENT ON COLUMN freshpay.aging.days_over_90 IS 'Outstanding more than 90 days past due';
COMMENT ON COLUMN freshpay.aging.total IS 'All outstanding: FreshPortal''s open amounts less what freshpay collected that FreshPortal does not count yet (as freshpay.invoice_status.outstanding)';
COMMENT ON COLUMN freshpay.aging.open_invoices IS 'Open and partially paid invoices';
COMMENT ON COLUMN freshpay.aging.oldest_due_date IS 'Earliest due date among them';

-- Payment requests per administration and month.
CREATE VIEW freshpay.payment_request_funnel AS
	SELECT pg_catalog.date_trunc('month', q.created_at)::date AS month, q.administration,
		   pg_catalog.count(*) AS requested,
		   pg_catalog.count(*) FILTER (WHERE q.status OPERATOR(pg_catalog.=) ANY (ARRAY['sent', 'paid', 'onboarded', 'expired'])) AS sent,
		   pg_catalog.count(*) FILTER (WHERE q.status OPERATOR(pg_catalog.=) ANY (ARRAY['paid', 'onboarded'])) AS paid,
		   pg_catalog.count(*) FILTER (WHERE q.status OPERATOR(pg_catalog.=) 'onboarded') AS onboarded,
		   pg_catalog.count(*) FILTER (WHERE q.status OPERATOR(pg_catalog.=) 'expired') AS expired,
		   pg_catalog.count(*) FILTER (WHERE q.status OPERATOR(pg_catalog.=) 'sent') AS open,
		   pg_catalog.count(*) FILTER (WHERE q.status OPERATOR(pg_catalog.=) 'unknown') AS unknown,
		   pg_catalog.count(*) FILTER (WHERE q.status OPERATOR(pg_catalog.=) 'failed') AS failed,
		   pg_catalog.sum(q.amount)::numeric(12,2) AS amount_requested,
		   COALESCE(pg_catalog.sum(q.amount) FILTER (WHERE q.status OPERATOR(pg_catalog.=) ANY (ARRAY['paid', 'onboarded'])), 0)::numeric(12,2) AS amount_paid
	  FROM freshpay.payment_requests q
	 GROUP BY 1, q.administration;
COMMENT ON VIEW freshpay.payment_request_funnel IS 'Payment requests per administration and month they were made (in the session''s time zone): how many were sent, paid, stored a card, expired';
COMMENT ON COLUMN freshpay.payment_request_funnel.month IS 'First day of the month the requests were made';
COMMENT ON COLUMN freshpay.payment_request_funnel.administration IS 'Administration';
COMMENT ON COLUMN freshpay.payment_request_funnel.requested IS 'Requests made';
COMMENT ON COLUMN freshpay.payment_request_funnel.sent IS 'Of them, sent: PayTrace took them (status sent, paid, onboarded or expired)';
COMMENT ON COLUMN freshpay.payment_request_funnel.paid IS 'Paid through the link (paid or onboarded)';
COMMENT ON COLUMN freshpay.payment_request_funnel.onboarded IS 'Paid, and the payer stored the card: the customer is linked to it';
COMMENT ON COLUMN freshpay.payment_request_funnel.expired IS 'Expired without a payment';
COMMENT ON COLUMN freshpay.payment_request_funnel.open IS 'Sent, not paid, not expired yet';
COMMENT ON COLUMN freshpay.payment_request_funnel.unknown IS 'Answer lost: PayTrace may have sent them';
COMMENT ON COLUMN freshpay.payment_request_funnel.failed IS 'Not sent (PayTrace refused them)';
COMMENT ON COLUMN freshpay.payment_request_funnel.amount_requested IS 'Amounts asked';
COMMENT ON COLUMN freshpay.payment_request_funnel.amount_paid IS 'Amounts paid through the links (a payer cannot change the amount asked)';

------------------------------------------------------------------------------
-- Readers limited to administrations (row-level security)
------------------------------------------------------------------------------

CREATE TABLE freshpay.reader_scopes (
	role name NOT NULL,
	administration text NOT NULL
		REFERENCES freshpay.administrations (name) ON UPDATE CASCADE ON DELETE CASCADE,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (role, administration)
);
COMMENT ON TABLE freshpay.reader_scopes IS 'Readers limited to administrations: a role listed here, directly or through membership, sees rows of the listed administrations only, in every freshpay table and view; roles not listed see all. freshpay_operator and freshpay_admin (and superusers, and the worker) always see all. Managed by freshpay_admin';
COMMENT ON COLUMN freshpay.reader_scopes.role IS 'The role (and every member of it) that is limited';
COMMENT ON COLUMN freshpay.reader_scopes.administration IS 'An administration it may see';
COMMENT ON COLUMN freshpay.reader_scopes.created_at IS 'When the row was added';

CREATE FUNCTION freshpay._reader_scopes_check()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) NEW.role) THEN
		RAISE EXCEPTION 'role "%" does not exist', NEW.role
			USING ERRCODE = 'undefined_object',
				  HINT = 'freshpay.reader_scopes limits an existing role (and its members) to administrations.';
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION freshpay._reader_scopes_check() IS 'Internal: a reader scope names an existing role';
CREATE TRIGGER reader_scopes_check BEFORE INSERT OR UPDATE ON freshpay.reader_scopes
	FOR EACH ROW EXECUTE FUNCTION freshpay._reader_scopes_check();

-- The administrations the current role may see: NULL for all.  Operators
-- (and admins) see all: the money functions read back what the worker
-- recorded as their caller.  A role is limited by the rows naming it or a
-- role it is a member of; a role dropped since limits no one.
CREATE FUNCTION freshpay._reader_scope()
RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE
AS $$
	SELECT CASE WHEN pg_catalog.pg_has_role('freshpay_operator', 'USAGE') THEN NULL
				ELSE (SELECT pg_catalog.array_agg(DISTINCT s.administration)
						FROM freshpay.reader_scopes s
						JOIN pg_catalog.pg_roles r ON r.rolname OPERATOR(pg_catalog.=) s.role
					   WHERE pg_catalog.pg_has_role(r.oid, 'MEMBER'))
		   END
$$;
COMMENT ON FUNCTION freshpay._reader_scope() IS 'Internal: the administrations the current role may see (freshpay.reader_scopes), null for all';

ALTER TABLE freshpay.reader_scopes ENABLE ROW LEVEL SECURITY;
-- A reader sees the scopes that limit it; freshpay_admin manages them all.
CREATE POLICY reader_scopes_own ON freshpay.reader_scopes FOR SELECT
	USING (EXISTS (SELECT FROM pg_catalog.pg_roles r
				   WHERE r.rolname OPERATOR(pg_catalog.=) reader_scopes.role
					 AND pg_catalog.pg_has_role(r.oid, 'MEMBER')));
CREATE POLICY reader_scopes_admin ON freshpay.reader_scopes FOR ALL TO freshpay_admin
	USING (true) WITH CHECK (true);

-- A statement's allocations, and the reversals of their registrations, carry
-- the administration of their payment (set when they are recorded), so that
-- their policy is a check of a column of the row like the others'.  (A
-- look-up of the payment for every row made the plan of a limited reader's
-- reconciliation, which aggregates the allocations whole, look costly
-- enough to be JIT-compiled: twice as slow.)  Rows recorded by 0.9 get it
-- from their payment.
ALTER TABLE freshpay.payment_allocations
	ADD COLUMN administration text REFERENCES freshpay.administrations (name) ON UPDATE CASCADE;
UPDATE freshpay.payment_allocations a SET administration = p.administration
  FROM freshpay.payments p WHERE p.id OPERATOR(pg_catalog.=) a.payment_id;
ALTER TABLE freshpay.payment_allocations ALTER COLUMN administration SET NOT NULL;
COMMENT ON COLUMN freshpay.payment_allocations.administration IS 'Administration of the statement (its payment''s), for row-level security';
ALTER TABLE freshpay.allocation_reversals
	ADD COLUMN administration text REFERENCES freshpay.administrations (name) ON UPDATE CASCADE;
UPDATE freshpay.allocation_reversals r SET administration = p.administration
  FROM freshpay.payments p WHERE p.id OPERATOR(pg_catalog.=) r.payment_id;
ALTER TABLE freshpay.allocation_reversals ALTER COLUMN administration SET NOT NULL;
COMMENT ON COLUMN freshpay.allocation_reversals.administration IS 'Administration of the void or refund and of the statement it reverses, for row-level security';

-- The data tables: a row of another administration is invisible to a
-- limited role.  (The sub-SELECTs run once per statement.)
DO $$
DECLARE
	t text;
	c text;
BEGIN
	FOREACH t IN ARRAY ARRAY['administrations', 'customers', 'invoices', 'payments', 'settlements',
							 'sync_state', 'payment_requests', 'freshportal_registrations',
							 'payment_allocations', 'allocation_reversals', 'customer_figures',
							 'customer_figures_stale'] LOOP
		c := CASE t WHEN 'administrations' THEN 'name' ELSE 'administration' END;
		EXECUTE pg_catalog.format('ALTER TABLE freshpay.%I ENABLE ROW LEVEL SECURITY', t);
		EXECUTE pg_catalog.format(
			'CREATE POLICY reader_scope ON freshpay.%I FOR ALL'
			' USING ((SELECT freshpay._reader_scope()) IS NULL'
			'        OR %I OPERATOR(pg_catalog.=) ANY ((SELECT freshpay._reader_scope())::text[]))', t, c);
	END LOOP;
END
$$;
-- The tables without an administration column follow the row they belong
-- to.  (A scalar lookup by key, not EXISTS: that would be planned as a hash
-- of every payment.)
ALTER TABLE freshpay.payment_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY reader_scope ON freshpay.payment_history FOR ALL
	USING ((SELECT freshpay._reader_scope()) IS NULL
		   OR (SELECT p.administration FROM freshpay.payments p
				WHERE p.id OPERATOR(pg_catalog.=) payment_history.payment_id)
			  OPERATOR(pg_catalog.=) ANY ((SELECT freshpay._reader_scope())::text[]));
ALTER TABLE freshpay.jobs ENABLE ROW LEVEL SECURITY;
CREATE POLICY reader_scope ON freshpay.jobs FOR ALL
	USING ((SELECT freshpay._reader_scope()) IS NULL
		   OR COALESCE((SELECT p.administration FROM freshpay.payments p
						 WHERE p.id OPERATOR(pg_catalog.=) jobs.payment_id),
					   (SELECT i.administration FROM freshpay.invoices i
						 WHERE i.id OPERATOR(pg_catalog.=) jobs.invoice_id),
					   (SELECT cu.administration FROM freshpay.customers cu
						 WHERE cu.id OPERATOR(pg_catalog.=) jobs.customer_id))
			  OPERATOR(pg_catalog.=) ANY ((SELECT freshpay._reader_scope())::text[]));

-- Views run as their caller, so that the policies apply through them.
ALTER VIEW freshpay.invoice_status SET (security_invoker = true);
ALTER VIEW freshpay.reconciliation SET (security_invoker = true);
ALTER VIEW freshpay.exceptions SET (security_invoker = true);
ALTER VIEW freshpay.customer_status SET (security_invoker = true);
ALTER VIEW freshpay.worker_status SET (security_invoker = true);
ALTER VIEW freshpay.daily_cash SET (security_invoker = true);
ALTER VIEW freshpay.customer_summary SET (security_invoker = true);
ALTER VIEW freshpay.aging SET (security_invoker = true);
ALTER VIEW freshpay.payment_request_funnel SET (security_invoker = true);
-- Syncs in progress come from shared memory: filtered here.
CREATE OR REPLACE VIEW freshpay.sync_progress AS
	SELECT sp.* FROM freshpay._sync_progress() sp
	 WHERE (SELECT freshpay._reader_scope()) IS NULL
		OR sp.administration OPERATOR(pg_catalog.=) ANY ((SELECT freshpay._reader_scope())::text[]);
ALTER VIEW freshpay.sync_progress SET (security_invoker = true);

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON freshpay.daily_cash, freshpay.customer_summary, freshpay.aging,
	freshpay.payment_request_funnel, freshpay.reader_scopes FROM PUBLIC;
REVOKE ALL ON FUNCTION freshpay._reader_scope(), freshpay._reader_scopes_check() FROM PUBLIC;
GRANT SELECT ON freshpay.daily_cash, freshpay.customer_summary, freshpay.aging,
	freshpay.payment_request_funnel, freshpay.reader_scopes TO freshpay_reader;
GRANT EXECUTE ON FUNCTION freshpay._reader_scope() TO freshpay_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON freshpay.reader_scopes TO freshpay_admin;
GRANT EXECUTE ON FUNCTION freshpay._reader_scopes_check() TO freshpay_admin;

SELECT pg_catalog.pg_extension_config_dump('freshpay.reader_scopes', '');

REVOKE ALL ON freshpay.freshportal_registrations FROM PUBLIC;
REVOKE ALL ON FUNCTION freshpay._registered_twice(text, bigint) FROM PUBLIC;
GRANT SELECT ON freshpay.freshportal_registrations TO freshpay_reader;
GRANT EXECUTE ON FUNCTION freshpay._registered_twice(text, bigint) TO freshpay_reader;
SELECT pg_catalog.pg_extension_config_dump('freshpay.freshportal_registrations', '');

-- customer_summary's kept figures: read through the view (as its caller);
-- written by the refresh and the marking triggers only.  Not dumped: a
-- restored database computes them again.
REVOKE ALL ON freshpay.customer_figures, freshpay.customer_figures_stale FROM PUBLIC;
REVOKE ALL ON FUNCTION freshpay._customer_figures(bigint[]), freshpay._refresh_customer_figures(),
	freshpay._customer_figures_mark_rows(), freshpay._customer_figures_mark_payment(),
	freshpay._customer_figures_mark_invoices(),
	freshpay._customer_figures_mark_allocations(), freshpay._customer_figures_forget() FROM PUBLIC;
GRANT SELECT ON freshpay.customer_figures, freshpay.customer_figures_stale TO freshpay_reader;
GRANT EXECUTE ON FUNCTION freshpay._customer_figures(bigint[]) TO freshpay_reader;

------------------------------------------------------------------------------
-- The queue checks FreshPortal's registrations of settled transactions
------------------------------------------------------------------------------

ALTER TABLE freshpay.jobs
	DROP CONSTRAINT jobs_kind_check,
	ADD CONSTRAINT jobs_kind_check
		CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['collect_invoice', 'collect_statement', 'register_payment', 'reverse_payment', 'resolve_payment', 'send_level3', 'check_registrations'])),
	DROP CONSTRAINT jobs_target_check,
	ADD CONSTRAINT jobs_target_check
		CHECK ((kind OPERATOR(pg_catalog.=) 'collect_invoice') OPERATOR(pg_catalog.=) (invoice_id IS NOT NULL AND payment_id IS NULL)
			   AND (kind OPERATOR(pg_catalog.=) 'collect_statement')
				   OPERATOR(pg_catalog.=) (customer_id IS NOT NULL AND payment_id IS NULL AND invoice_id IS NULL)
			   AND (kind OPERATOR(pg_catalog.<>) 'check_registrations' OR payment_id IS NOT NULL));
COMMENT ON COLUMN freshpay.jobs.kind IS 'collect_invoice, collect_statement, register_payment, reverse_payment, resolve_payment, send_level3 or check_registrations (FreshPortal''s registrations of a settled transaction looked up once more: at settlement, and hourly while it shows registered twice)';
