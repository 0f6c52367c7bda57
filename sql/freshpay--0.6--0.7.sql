/*
 * freshpay 0.6 → 0.7: ACH on PayTrace API v3 (issue 9, contract sections 11
 * and 12).  A debit made through v3 carries the idempotency key freshpay
 * recorded before sending it, and PayTrace's ACH status, which freshpay
 * follows until the debit can no longer come back; a debit that came back
 * is 'returned', and an exception until the invoice is collected again.
 */

\echo Use "ALTER EXTENSION freshpay UPDATE TO '0.7'" to load this file. \quit

ALTER TABLE freshpay.payments
	ADD COLUMN idempotency_key uuid,
	ADD COLUMN ach_status text,
	ADD COLUMN return_reason text,
	DROP CONSTRAINT payments_status_check,
	ADD CONSTRAINT payments_status_check
		CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown', 'authorized', 'captured', 'failed', 'refunded', 'voided', 'returned']));
COMMENT ON COLUMN freshpay.payments.idempotency_key IS
	'ACH debit or refund made through PayTrace API v3: the key recorded before it was sent; a lost answer is looked up by it';
COMMENT ON COLUMN freshpay.payments.ach_status IS
	'PayTrace API v3 ACH status last seen (ACCEPTED, SETTLED, RETURNED, ...); null for cards and v1 ACH';
COMMENT ON COLUMN freshpay.payments.return_reason IS
	'Why the bank returned an ACH debit (PayTrace''s return_reason, such as R01 for insufficient funds)';
COMMENT ON COLUMN freshpay.payments.status IS
	'pending, unknown (answer lost, being looked up at PayTrace), authorized, captured, failed, refunded, voided or returned (an ACH debit the bank sent back)';
-- One key, one debit: the key is never reused.
CREATE UNIQUE INDEX payments_idempotency_key ON freshpay.payments (idempotency_key)
	WHERE idempotency_key IS NOT NULL;
-- The ACH debits the pull follows.
CREATE INDEX payments_ach_follow_idx ON freshpay.payments (administration, created_at)
	WHERE idempotency_key IS NOT NULL;

CREATE OR REPLACE VIEW freshpay.exceptions AS
	SELECT 'unknown_outcome'::text AS kind, p.administration, p.id AS payment_id, p.invoice_id,
		   NULL::bigint AS job_id,
		   pg_catalog.format('%s of %s: the answer of PayTrace was lost and PayTrace shows no such transaction yet; freshpay keeps looking, and no new charge of the invoice is made until it knows. If PayTrace''s Virtual Terminal shows no transaction for invoice %s, settle it with SELECT freshpay_resolve(%s, ''not_processed'')',
							 p.kind, p.amount, COALESCE(p.invoice_number, '(none)'), p.id) AS detail,
		   p.updated_at AS since
	  FROM freshpay.payments p
	 WHERE p.status OPERATOR(pg_catalog.=) 'unknown'
	UNION ALL
	SELECT 'failed_collection', p.administration, p.id, p.invoice_id, NULL,
		   pg_catalog.format('%s of %s failed: %s', p.kind, p.amount, COALESCE(p.message, 'no message')),
		   p.updated_at
	  FROM freshpay.payments p
	  JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id
	 WHERE p.status OPERATOR(pg_catalog.=) 'failed'
	   AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture', 'authorization'])
	   AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])
	   AND NOT EXISTS (SELECT FROM freshpay.payments later
					   WHERE later.invoice_id OPERATOR(pg_catalog.=) p.invoice_id
						 AND later.id OPERATOR(pg_catalog.>) p.id)
	UNION ALL
	SELECT 'not_registered_in_freshportal', p.administration, p.id, p.invoice_id, NULL,
		   pg_catalog.format('%s of %s captured but not registered in FreshPortal', p.kind, p.amount),
		   p.updated_at
	  FROM freshpay.payments p
	 WHERE p.status OPERATOR(pg_catalog.=) 'captured'
	   AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
	   AND p.freshportal_payment_id IS NULL
	   AND p.updated_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '5 minutes')
	UNION ALL
	SELECT 'dead_job', COALESCE(p.administration, i.administration), j.payment_id,
		   COALESCE(j.invoice_id, p.invoice_id), j.id,
		   pg_catalog.format('%s gave up after %s attempts: %s', j.kind, j.attempts, COALESCE(j.last_error, 'no error')),
		   j.updated_at
	  FROM freshpay.jobs j
	  LEFT JOIN freshpay.payments p ON p.id OPERATOR(pg_catalog.=) j.payment_id
	  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) j.invoice_id
	 WHERE j.state OPERATOR(pg_catalog.=) 'dead'
	UNION ALL
	SELECT 'failing_job', COALESCE(p.administration, i.administration), j.payment_id,
		   COALESCE(j.invoice_id, p.invoice_id), j.id,
		   pg_catalog.format('%s failed %s times and keeps retrying (next at %s): %s', j.kind, j.attempts,
							 j.next_run_at, COALESCE(j.last_error, 'no error')),
		   j.updated_at
	  FROM freshpay.jobs j
	  LEFT JOIN freshpay.payments p ON p.id OPERATOR(pg_catalog.=) j.payment_id
	  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) j.invoice_id
	 WHERE j.state OPERATOR(pg_catalog.=) 'queued'
	   AND j.attempts OPERATOR(pg_catalog.>=) pg_catalog.current_setting('freshpay.max_attempts')::integer
	UNION ALL
	SELECT 'amount_mismatch', i.administration, NULL, i.id, NULL,
		   pg_catalog.format('invoice %s: freshpay collected %s net, FreshPortal shows %s paid',
							 i.number, c.collected, i.amount_paid),
		   i.synced_at
	  FROM freshpay.invoices i
	  JOIN LATERAL (SELECT pg_catalog.sum(p.amount OPERATOR(pg_catalog.-) p.refunded_amount) AS collected
					  FROM freshpay.payments p
					 WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id
					   AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])
					   AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
					   AND p.freshportal_payment_id IS NOT NULL) c ON true
	 WHERE c.collected OPERATOR(pg_catalog.>) i.amount_paid
	UNION ALL
	SELECT 'settled_without_invoice', p.administration, p.id, NULL, NULL,
		   pg_catalog.format('%s of %s settled in batch %s is not matched to any invoice', p.kind, p.amount, p.batch_number),
		   p.settled_at
	  FROM freshpay.payments p
	 WHERE p.batch_number IS NOT NULL AND p.invoice_id IS NULL
	UNION ALL
	SELECT 'payment_request_unknown', q.administration, NULL, q.invoice_id, NULL,
		   pg_catalog.format('payment request %s for %s to %s: its answer was lost, so PayTrace may have e-mailed the link; it is never sent again by itself and stays open until %s',
							 q.id, q.amount, q.email, q.expires_at),
		   q.updated_at
	  FROM freshpay.payment_requests q
	 WHERE q.status OPERATOR(pg_catalog.=) 'unknown'
	UNION ALL
	SELECT 'payment_request_open_long', q.administration, NULL, q.invoice_id, NULL,
		   pg_catalog.format('payment request %s for %s to %s has been open since %s without a payment',
							 q.id, q.amount, q.email, q.created_at),
		   q.created_at
	  FROM freshpay.payment_requests q
	 WHERE q.status OPERATOR(pg_catalog.=) 'sent'
	   AND q.created_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '7 days')
	UNION ALL
	SELECT 'payment_request_expired', q.administration, NULL, q.invoice_id, NULL,
		   pg_catalog.format('payment request %s for %s to %s expired at %s without a payment; the invoice is still open',
							 q.id, q.amount, q.email, q.expires_at),
		   q.updated_at
	  FROM freshpay.payment_requests q
	  JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) q.invoice_id
	 WHERE q.status OPERATOR(pg_catalog.=) 'expired'
	   AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])
	   AND NOT EXISTS (SELECT FROM freshpay.payment_requests later
					   WHERE later.invoice_id OPERATOR(pg_catalog.=) q.invoice_id
						 AND later.id OPERATOR(pg_catalog.>) q.id)
	UNION ALL
	SELECT 'ach_returned', p.administration, p.id, p.invoice_id, NULL,
		   pg_catalog.format('ACH debit of %s for invoice %s came back (%s, reason %s): the invoice is open again in FreshPortal and freshpay does not collect it by itself; collect it with freshpay_capture() once the customer''s bank account is in order, or ask for another payment',
							 p.amount, COALESCE(p.invoice_number, '(none)'), COALESCE(p.ach_status, 'RETURNED'),
							 COALESCE(p.return_reason, 'not given')),
		   p.updated_at
	  FROM freshpay.payments p
	  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id
	 WHERE p.status OPERATOR(pg_catalog.=) 'returned'
	   AND (i.id IS NULL OR i.status OPERATOR(pg_catalog.<>) ALL (ARRAY['paid', 'credited']))
	   AND NOT EXISTS (SELECT FROM freshpay.payments later
					   WHERE later.invoice_id OPERATOR(pg_catalog.=) p.invoice_id
						 AND later.id OPERATOR(pg_catalog.>) p.id
						 AND later.status OPERATOR(pg_catalog.=) 'captured');
COMMENT ON COLUMN freshpay.exceptions.kind IS 'unknown_outcome, failed_collection, not_registered_in_freshportal, dead_job, failing_job, amount_mismatch, settled_without_invoice, payment_request_unknown, payment_request_open_long, payment_request_expired or ach_returned';
