/*
 * freshpay 0.7 → 0.8: B2B collection (issue 10, contract section 13).  The
 * decline guard: a customer whose card declined freshpay.max_declines_per_day
 * times within 24 hours is not collected by itself until the oldest of those
 * declines is a day old, and is an exception meanwhile.  Level 3: after an
 * approved Visa or Mastercard sale or capture the worker sends the
 * invoice's lines to PayTrace (job send_level3); the outcome is kept on the
 * payment, which it never changes otherwise.
 */

\echo Use "ALTER EXTENSION freshpay UPDATE TO '0.8'" to load this file. \quit

ALTER TABLE freshpay.administrations
	ADD COLUMN level3_enabled boolean NOT NULL DEFAULT true;
COMMENT ON COLUMN freshpay.administrations.level3_enabled IS
	'Send Level 3 line items after Visa and Mastercard sales and captures (false: never)';

ALTER TABLE freshpay.payments
	ADD COLUMN level3_status text,
	ADD COLUMN level3_message text,
	ADD CONSTRAINT payments_level3_status_check
		CHECK (level3_status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'sent', 'failed', 'not_applicable', 'skipped']));
COMMENT ON COLUMN freshpay.payments.level3_status IS
	'Level 3 line items of a card sale or capture: pending, sent, failed (PayTrace refused; see level3_message), not_applicable (not a Visa or Mastercard), skipped (settled first, a partial payment, no lines, or turned off); null for other payments';
COMMENT ON COLUMN freshpay.payments.level3_message IS 'What PayTrace said of the Level 3 call, or why none was made';

ALTER TABLE freshpay.jobs
	DROP CONSTRAINT jobs_kind_check,
	ADD CONSTRAINT jobs_kind_check
		CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['collect_invoice', 'register_payment', 'reverse_payment', 'resolve_payment', 'send_level3']));
COMMENT ON COLUMN freshpay.jobs.kind IS 'collect_invoice, register_payment, reverse_payment, resolve_payment or send_level3';

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
						 AND later.status OPERATOR(pg_catalog.=) 'captured')
	UNION ALL
	SELECT 'collection_paused', c.administration, d.last_id, NULL, NULL,
		   pg_catalog.format('automatic collection of customer %s (%s) is paused: %s declined charges in 24 hours (freshpay.max_declines_per_day = %s; PayTrace disables a card on its 4th failed attempt within 24 hours); it resumes at %s. Ask the customer for a new card (freshpay_request_payment with mode onboard), or collect an invoice by hand with freshpay_capture()',
							 c.name, c.code, d.declines, pg_catalog.current_setting('freshpay.max_declines_per_day'),
							 d.resumes_at),
		   d.last_at
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
	 WHERE c.collection OPERATOR(pg_catalog.=) ANY (ARRAY['on_issue', 'on_due_date'])
	   AND pg_catalog.current_setting('freshpay.max_declines_per_day')::pg_catalog.int4 OPERATOR(pg_catalog.>) 0
	   AND d.declines OPERATOR(pg_catalog.>=) pg_catalog.current_setting('freshpay.max_declines_per_day')::pg_catalog.int4;
COMMENT ON COLUMN freshpay.exceptions.kind IS 'unknown_outcome, failed_collection, not_registered_in_freshportal, dead_job, failing_job, amount_mismatch, settled_without_invoice, payment_request_unknown, payment_request_open_long, payment_request_expired, ach_returned or collection_paused';
