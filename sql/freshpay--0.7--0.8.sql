/*
 * freshpay 0.7 → 0.8: B2B collection (issue 10, contract section 13).  The
 * decline guard: a customer whose card declined freshpay.max_declines_per_day
 * times within 24 hours is not collected by itself until the oldest of those
 * declines is a day old, and is an exception meanwhile.  Level 3: after an
 * approved Visa or Mastercard sale or capture the worker sends the
 * invoice's lines to PayTrace (job send_level3); the outcome is kept on the
 * payment, which it never changes otherwise.  Card health: the pull reads
 * linked customers' vault profiles daily for the card's last four digits
 * and expiry month and year; a card expiring before the next due invoice is
 * an exception.
 */

\echo Use "ALTER EXTENSION freshpay UPDATE TO '0.8'" to load this file. \quit

-- The decline guard reads a customer's charges of the day at each collection.
CREATE INDEX payments_customer_idx ON freshpay.payments (customer_id, created_at);

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

ALTER TABLE freshpay.customers
	ADD COLUMN card_last4 text,
	ADD COLUMN card_expiry_month smallint,
	ADD COLUMN card_expiry_year smallint,
	ADD COLUMN card_checked_at timestamptz,
	ADD CONSTRAINT customers_card_last4_check
		CHECK (card_last4 OPERATOR(pg_catalog.~) '^[0-9]{4}$'),
	ADD CONSTRAINT customers_card_expiry_check
		CHECK (card_expiry_month OPERATOR(pg_catalog.>=) 1 AND card_expiry_month OPERATOR(pg_catalog.<=) 12
			   AND card_expiry_year OPERATOR(pg_catalog.>=) 2000 AND card_expiry_year OPERATOR(pg_catalog.<=) 2999);
COMMENT ON COLUMN freshpay.customers.card_last4 IS 'Last four digits of the vault profile''s card, as PayTrace shows them (nothing more is kept)';
COMMENT ON COLUMN freshpay.customers.card_expiry_month IS 'Expiry month of the vault profile''s card';
COMMENT ON COLUMN freshpay.customers.card_expiry_year IS 'Expiry year of the vault profile''s card';
COMMENT ON COLUMN freshpay.customers.card_checked_at IS 'When the vault profile was last read from PayTrace (daily; null: to be read at the next pull)';

-- Another vault profile: what was known of the old card is forgotten, and the new one is read at the next pull.
CREATE FUNCTION freshpay._customers_card_forget()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.paytrace_customer_id IS DISTINCT FROM OLD.paytrace_customer_id
	   OR NEW.payment_method IS DISTINCT FROM OLD.payment_method THEN
		NEW.card_last4 := NULL;
		NEW.card_expiry_month := NULL;
		NEW.card_expiry_year := NULL;
		NEW.card_checked_at := NULL;
	END IF;
	RETURN NEW;
END;
$$;
COMMENT ON FUNCTION freshpay._customers_card_forget() IS
	'Internal: forgets a customer''s card when it is linked to another vault profile';
REVOKE ALL ON FUNCTION freshpay._customers_card_forget() FROM PUBLIC;
CREATE TRIGGER customers_card_forget BEFORE UPDATE OF paytrace_customer_id, payment_method ON freshpay.customers
	FOR EACH ROW EXECUTE FUNCTION freshpay._customers_card_forget();

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
	   AND d.declines OPERATOR(pg_catalog.>=) pg_catalog.current_setting('freshpay.max_declines_per_day')::pg_catalog.int4
	UNION ALL
	SELECT 'card_expiring', c.administration, NULL, n.id, NULL,
		   pg_catalog.format('the card of customer %s (%s), ending %s, expires at the end of %s/%s, before invoice %s is due on %s: ask the customer for a new card, e.g. SELECT freshpay_request_payment(%s, ''onboard'')',
							 c.name, c.code, c.card_last4, pg_catalog.lpad(c.card_expiry_month::text, 2, '0'),
							 c.card_expiry_year, n.number, n.due_date, n.id),
		   c.card_checked_at
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
COMMENT ON COLUMN freshpay.exceptions.kind IS 'unknown_outcome, failed_collection, not_registered_in_freshportal, dead_job, failing_job, amount_mismatch, settled_without_invoice, payment_request_unknown, payment_request_open_long, payment_request_expired, ach_returned, collection_paused or card_expiring';

-- The finance surface: Level 3 and the card's expiry per invoice; per
-- customer, its card, collection and what holds it.
CREATE OR REPLACE VIEW freshpay.invoice_status AS
	SELECT i.id AS invoice_id, i.administration, i.number, c.code AS customer_code, i.type, i.status,
		   i.amount_incl_vat AS billed,
		   COALESCE(m.captured, 0)::numeric(12,2) AS captured,
		   COALESCE(m.refunded, 0)::numeric(12,2) AS refunded,
		   (i.open_amount OPERATOR(pg_catalog.-) COALESCE(m.unregistered_amount, 0))::numeric(12,2) AS outstanding,
		   (i.raw OPERATOR(pg_catalog.->>) 'open_amount')::numeric(12,2) AS freshportal_open_amount,
		   l.status AS latest_payment_status,
		   l.kind AS latest_payment_kind,
		   (COALESCE(m.unregistered, 0) OPERATOR(pg_catalog.=) 0
			AND i.open_amount OPERATOR(pg_catalog.=)
				COALESCE((i.raw OPERATOR(pg_catalog.->>) 'open_amount')::numeric, i.open_amount)) AS freshportal_agrees,
		   q.status AS payment_request_status,
		   q.expires_at AS payment_request_expires_at,
		   l.level3_status AS level3_status,
		   CASE WHEN c.card_expiry_year IS NOT NULL
				THEN pg_catalog.lpad(c.card_expiry_month::text, 2, '0') OPERATOR(pg_catalog.||) '/'
					 OPERATOR(pg_catalog.||) c.card_expiry_year::text END AS card_expiry
	  FROM freshpay.invoices i
	  LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) i.customer_id
	  LEFT JOIN LATERAL (
		SELECT pg_catalog.sum(p.amount) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
												 AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])) AS captured,
			   pg_catalog.sum(p.amount) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) 'refund'
												 AND p.status OPERATOR(pg_catalog.=) 'refunded') AS refunded,
			   pg_catalog.count(*) FILTER (WHERE p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
										   AND p.status OPERATOR(pg_catalog.=) 'captured'
										   AND p.freshportal_payment_id IS NULL) AS unregistered,
			   pg_catalog.sum(p.amount OPERATOR(pg_catalog.-) p.refunded_amount)
				   FILTER (WHERE p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])
						   AND p.status OPERATOR(pg_catalog.=) 'captured'
						   AND p.freshportal_payment_id IS NULL) AS unregistered_amount
		  FROM freshpay.payments p WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id) m ON true
	  LEFT JOIN LATERAL (
		SELECT p.status, p.kind, p.level3_status FROM freshpay.payments p
		 WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id ORDER BY p.id DESC LIMIT 1) l ON true
	  LEFT JOIN LATERAL (
		SELECT r.status, r.expires_at FROM freshpay.payment_requests r
		 WHERE r.invoice_id OPERATOR(pg_catalog.=) i.id ORDER BY r.id DESC LIMIT 1) q ON true;
COMMENT ON COLUMN freshpay.invoice_status.level3_status IS 'Level 3 status of the invoice''s latest payment (see freshpay.payments.level3_status)';
COMMENT ON COLUMN freshpay.invoice_status.card_expiry IS 'Expiry (MM/YYYY) of the customer''s card on file, as PayTrace''s vault shows it';

CREATE VIEW freshpay.customer_status AS
	SELECT c.id AS customer_id, c.administration, c.code, c.name, c.payment_method, c.collection,
		   c.paytrace_customer_id IS NOT NULL AS has_vault_profile,
		   c.card_last4,
		   CASE WHEN c.card_expiry_year IS NOT NULL
				THEN pg_catalog.lpad(c.card_expiry_month::text, 2, '0') OPERATOR(pg_catalog.||) '/'
					 OPERATOR(pg_catalog.||) c.card_expiry_year::text END AS card_expiry,
		   COALESCE(o.open_invoices, 0) AS open_invoices,
		   COALESCE(o.open_amount, 0)::numeric(12,2) AS open_amount,
		   o.next_due_date,
		   COALESCE(d.declines, 0) AS declines_24h,
		   (c.collection OPERATOR(pg_catalog.<>) 'manual'
			AND pg_catalog.current_setting('freshpay.max_declines_per_day')::pg_catalog.int4 OPERATOR(pg_catalog.>) 0
			AND COALESCE(d.declines, 0) OPERATOR(pg_catalog.>=)
				pg_catalog.current_setting('freshpay.max_declines_per_day')::pg_catalog.int4) AS collection_paused,
		   p.last_payment_at
	  FROM freshpay.customers c
	  LEFT JOIN LATERAL (
		SELECT pg_catalog.count(*) AS open_invoices, pg_catalog.sum(i.open_amount) AS open_amount,
			   pg_catalog.min(i.due_date) AS next_due_date
		  FROM freshpay.invoices i
		 WHERE i.customer_id OPERATOR(pg_catalog.=) c.id AND i.type OPERATOR(pg_catalog.=) 'invoice'
		   AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])) o ON true
	  LEFT JOIN LATERAL (
		SELECT pg_catalog.count(*) AS declines FROM freshpay.payments p
		 WHERE p.customer_id OPERATOR(pg_catalog.=) c.id
		   AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'authorization', 'ach_sale'])
		   AND p.status OPERATOR(pg_catalog.=) 'failed'
		   AND (p.response_code IS NOT NULL OR p.paytrace_transaction_id IS NOT NULL)
		   AND p.created_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '24 hours')) d ON true
	  LEFT JOIN LATERAL (
		SELECT pg_catalog.max(p.created_at) AS last_payment_at FROM freshpay.payments p
		 WHERE p.customer_id OPERATOR(pg_catalog.=) c.id
		   AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded'])) p ON true;
COMMENT ON VIEW freshpay.customer_status IS 'Per customer: its card on file, collection rule, open invoices, and whether the decline guard holds its automatic collection';
COMMENT ON COLUMN freshpay.customer_status.customer_id IS 'freshpay.customers.id';
COMMENT ON COLUMN freshpay.customer_status.administration IS 'Administration';
COMMENT ON COLUMN freshpay.customer_status.code IS 'Customer code';
COMMENT ON COLUMN freshpay.customer_status.name IS 'Customer name';
COMMENT ON COLUMN freshpay.customer_status.payment_method IS 'card or ach';
COMMENT ON COLUMN freshpay.customer_status.collection IS 'manual, on_issue or on_due_date';
COMMENT ON COLUMN freshpay.customer_status.has_vault_profile IS 'Linked to a PayTrace vault profile';
COMMENT ON COLUMN freshpay.customer_status.card_last4 IS 'Last four digits of the card on file';
COMMENT ON COLUMN freshpay.customer_status.card_expiry IS 'Expiry (MM/YYYY) of the card on file';
COMMENT ON COLUMN freshpay.customer_status.open_invoices IS 'Open or partially paid invoices';
COMMENT ON COLUMN freshpay.customer_status.open_amount IS 'Their open amount, as FreshPortal shows it';
COMMENT ON COLUMN freshpay.customer_status.next_due_date IS 'Earliest due date of the open invoices';
COMMENT ON COLUMN freshpay.customer_status.declines_24h IS 'Declined charges in the last 24 hours';
COMMENT ON COLUMN freshpay.customer_status.collection_paused IS 'The decline guard holds the customer''s automatic collection (see freshpay.exceptions)';
COMMENT ON COLUMN freshpay.customer_status.last_payment_at IS 'When the customer''s latest collected payment was made';
REVOKE ALL ON freshpay.customer_status FROM PUBLIC;
GRANT SELECT ON freshpay.customer_status TO freshpay_reader;
