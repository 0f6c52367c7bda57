/*
 * freshpay 0.5 → 0.6: PayTrace API v3 beside v1 (issue 9), first step: an
 * administration's PayTrace merchant id, which every v3 call carries.  An
 * administration without one keeps using API v1 only.
 */

\echo Use "ALTER EXTENSION freshpay UPDATE TO '0.6'" to load this file. \quit

ALTER TABLE freshpay.administrations
	ADD COLUMN paytrace_merchant_id integer,
	ADD CONSTRAINT administrations_paytrace_merchant_id_check
		CHECK (paytrace_merchant_id OPERATOR(pg_catalog.>) 0);
COMMENT ON COLUMN freshpay.administrations.paytrace_merchant_id IS
	'PayTrace merchant id for API v3 (payment requests, ACH followed until settled or returned); null: API v1 only';

-- freshpay_add_administration takes it as an optional last argument.
DROP FUNCTION @extschema@.freshpay_add_administration(text, text, text, text, text, text, text);
CREATE FUNCTION @extschema@.freshpay_add_administration(
	name text,
	freshportal_url text,
	freshportal_api_key text,
	paytrace_url text,
	paytrace_username text,
	paytrace_password text,
	paytrace_integrator_id text,
	paytrace_merchant_id integer DEFAULT NULL)
RETURNS freshpay.administrations
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	result freshpay.administrations;
BEGIN
	IF name IS NULL OR name OPERATOR(pg_catalog.!~) '^[a-z][a-z0-9_-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid administration name %', pg_catalog.quote_nullable(name)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use 1 to 63 lower-case letters, digits, "_" and "-", starting with a letter.';
	END IF;
	IF EXISTS (SELECT FROM freshpay.administrations a WHERE a.name OPERATOR(pg_catalog.=) name) THEN
		RAISE EXCEPTION 'administration "%" already exists', name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Update freshpay.administrations and freshpay.administration_secrets to change it.';
	END IF;
	IF paytrace_username IS NULL OR paytrace_username OPERATOR(pg_catalog.=) '' THEN
		RAISE EXCEPTION 'paytrace_username must not be empty'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give the name of the PayTrace user of type API User.';
	END IF;
	IF paytrace_integrator_id IS NULL OR paytrace_integrator_id OPERATOR(pg_catalog.=) '' THEN
		RAISE EXCEPTION 'paytrace_integrator_id must not be empty'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'PayTrace issues the integrator id together with the API credentials.';
	END IF;

	IF paytrace_merchant_id OPERATOR(pg_catalog.<=) 0 THEN
		RAISE EXCEPTION 'paytrace_merchant_id must be a positive integer, not %', paytrace_merchant_id
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'It is the merchant id PayTrace gives for API v3; leave it null to use API v1 only.';
	END IF;

	INSERT INTO freshpay.administrations
		(name, freshportal_url, paytrace_url, paytrace_username, paytrace_integrator_id, paytrace_merchant_id)
	VALUES (name, freshportal_url, paytrace_url, paytrace_username, paytrace_integrator_id,
			paytrace_merchant_id)
	RETURNING * INTO result;
	INSERT INTO freshpay.administration_secrets
		(administration, freshportal_api_key, paytrace_password)
	VALUES (name, freshportal_api_key, paytrace_password);
	RETURN result;
END
$$;
COMMENT ON FUNCTION @extschema@.freshpay_add_administration(text, text, text, text, text, text, text, integer) IS
	'Adds a FreshPortal administration and its PayTrace account (with a merchant id: API v3 too); secrets may be env:NAME or file:PATH references';
REVOKE ALL ON FUNCTION @extschema@.freshpay_add_administration(text, text, text, text, text, text, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.freshpay_add_administration(text, text, text, text, text, text, text, integer) TO freshpay_admin;

------------------------------------------------------------------------------
-- Payment requests (contract section 10): a customer without a vault profile
-- gets PayTrace's hosted payment page by e-mail
------------------------------------------------------------------------------

CREATE TABLE freshpay.payment_requests (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	administration text NOT NULL
		REFERENCES freshpay.administrations (name) ON UPDATE CASCADE,
	invoice_id bigint NOT NULL REFERENCES freshpay.invoices (id),
	customer_id bigint REFERENCES freshpay.customers (id),
	mode text NOT NULL,
	amount numeric(12,2) NOT NULL,
	email text NOT NULL,
	paytrace_request_id text,
	status text NOT NULL DEFAULT 'pending',
	payment_id bigint REFERENCES freshpay.payments (id),
	message text,
	requested_by text NOT NULL,
	expires_at timestamptz NOT NULL,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CONSTRAINT payment_requests_mode_check
		CHECK (mode OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'authorize', 'sale_and_onboard', 'onboard'])),
	CONSTRAINT payment_requests_status_check
		CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown', 'sent', 'paid', 'onboarded', 'expired', 'failed'])),
	CONSTRAINT payment_requests_amount_check CHECK (amount OPERATOR(pg_catalog.>=) 0)
);
-- Never two open requests for one invoice: pending (being sent), unknown
-- (the answer was lost: PayTrace may have e-mailed the link) or sent.
CREATE UNIQUE INDEX payment_requests_one_open ON freshpay.payment_requests (invoice_id)
	WHERE status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown', 'sent']);
CREATE INDEX payment_requests_administration_idx ON freshpay.payment_requests (administration, status);
COMMENT ON TABLE freshpay.payment_requests IS 'Payment requests: PayTrace e-mails the payer a link to its hosted payment page; freshpay never sees a card or bank number';
COMMENT ON COLUMN freshpay.payment_requests.id IS 'Local id';
COMMENT ON COLUMN freshpay.payment_requests.administration IS 'The administration';
COMMENT ON COLUMN freshpay.payment_requests.invoice_id IS 'The invoice it asks to pay';
COMMENT ON COLUMN freshpay.payment_requests.customer_id IS 'The invoice''s customer';
COMMENT ON COLUMN freshpay.payment_requests.mode IS 'sale, authorize, sale_and_onboard (pay and store the card) or onboard (store a card, no payment)';
COMMENT ON COLUMN freshpay.payment_requests.amount IS 'Amount asked (the open amount; 0 for onboard)';
COMMENT ON COLUMN freshpay.payment_requests.email IS 'Where PayTrace sends the link';
COMMENT ON COLUMN freshpay.payment_requests.paytrace_request_id IS 'PayTrace''s id of the request, once it answered';
COMMENT ON COLUMN freshpay.payment_requests.status IS 'pending (recorded, being sent), unknown (sent, answer lost; never re-sent by itself), sent, paid, onboarded, expired, failed (not sent)';
COMMENT ON COLUMN freshpay.payment_requests.payment_id IS 'The freshpay.payments row the payer''s transaction became';
COMMENT ON COLUMN freshpay.payment_requests.message IS 'What PayTrace said, or what went wrong';
COMMENT ON COLUMN freshpay.payment_requests.requested_by IS 'Who asked for it (a role, or the worker)';
COMMENT ON COLUMN freshpay.payment_requests.expires_at IS 'When the link stops working; another request may be sent then';
COMMENT ON COLUMN freshpay.payment_requests.created_at IS 'When it was recorded';
COMMENT ON COLUMN freshpay.payment_requests.updated_at IS 'Last change';

CREATE FUNCTION @extschema@.freshpay_request_payment(invoice_id bigint, mode text DEFAULT 'sale_and_onboard',
	email text DEFAULT NULL, expires_in interval DEFAULT '14 days')
RETURNS freshpay.payment_requests LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_request_payment';
COMMENT ON FUNCTION @extschema@.freshpay_request_payment(bigint, text, text, interval) IS
	'Sends a payment request for the invoice''s open amount: PayTrace e-mails the customer a link to its hosted payment page (API v3)';

REVOKE ALL ON freshpay.payment_requests FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.freshpay_request_payment(bigint, text, text, interval) FROM PUBLIC;
GRANT SELECT ON freshpay.payment_requests TO freshpay_reader;
GRANT EXECUTE ON FUNCTION @extschema@.freshpay_request_payment(bigint, text, text, interval) TO freshpay_operator;

SELECT pg_catalog.pg_extension_config_dump('freshpay.payment_requests', '');
SELECT pg_catalog.pg_extension_config_dump('freshpay.payment_requests_id_seq', '');

-- The collection rules without a vault profile: a payment request instead of
-- a charge (contract section 10).
CREATE OR REPLACE FUNCTION @extschema@.freshpay_link_customer(
	customer_id bigint,
	paytrace_customer_id text,
	collection text DEFAULT 'manual',
	payment_method text DEFAULT 'card')
RETURNS freshpay.customers
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	result freshpay.customers;
BEGIN
	IF paytrace_customer_id IS NOT NULL AND pg_catalog.btrim(paytrace_customer_id) OPERATOR(pg_catalog.=) '' THEN
		RAISE EXCEPTION 'paytrace_customer_id must not be empty'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give the customer_id of the PayTrace vault profile, or NULL to unlink.';
	END IF;
	IF collection IS NULL OR collection OPERATOR(pg_catalog.<>) ALL (ARRAY['manual', 'on_issue', 'on_due_date']) THEN
		RAISE EXCEPTION 'invalid collection rule %', pg_catalog.quote_nullable(collection)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use manual, on_issue or on_due_date.';
	END IF;
	IF payment_method IS NULL OR payment_method OPERATOR(pg_catalog.<>) ALL (ARRAY['card', 'ach']) THEN
		RAISE EXCEPTION 'invalid payment method %', pg_catalog.quote_nullable(payment_method)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use card or ach.';
	END IF;
	-- Without a vault profile a card customer on a rule is sent payment
	-- requests; ACH has no hosted page to ask with.
	IF paytrace_customer_id IS NULL AND collection OPERATOR(pg_catalog.<>) 'manual'
	   AND payment_method OPERATOR(pg_catalog.=) 'ach' THEN
		RAISE EXCEPTION 'collection rule % needs a PayTrace vault profile for ACH', collection
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give paytrace_customer_id, or use collection => ''manual''.';
	END IF;

	UPDATE freshpay.customers c
	   SET paytrace_customer_id = freshpay_link_customer.paytrace_customer_id,
		   collection = freshpay_link_customer.collection,
		   payment_method = freshpay_link_customer.payment_method
	 WHERE c.id OPERATOR(pg_catalog.=) freshpay_link_customer.customer_id
	RETURNING c.* INTO result;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'customer % does not exist', customer_id
			USING ERRCODE = 'no_data_found',
				  HINT = 'customer_id is freshpay.customers.id; run freshpay_sync() to pull customers.';
	END IF;
	RETURN result;
END
$$;
COMMENT ON FUNCTION @extschema@.freshpay_link_customer(bigint, text, text, text) IS
	'Maps a FreshPortal customer to a PayTrace vault profile and sets its collection rule and payment method; a card customer on a rule without a profile is sent payment requests';

CREATE OR REPLACE FUNCTION freshpay._queue_collection()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF NEW.type OPERATOR(pg_catalog.=) 'invoice'
	   AND NEW.status OPERATOR(pg_catalog.=) 'open'
	   AND (TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR OLD.status OPERATOR(pg_catalog.=) 'concept')
	   AND EXISTS (SELECT FROM freshpay.customers c
				   WHERE c.id OPERATOR(pg_catalog.=) NEW.customer_id
					 AND (c.collection OPERATOR(pg_catalog.=) 'on_issue'
						  OR (c.collection OPERATOR(pg_catalog.=) 'on_due_date'
							  AND NEW.due_date OPERATOR(pg_catalog.<=) CURRENT_DATE))
					 AND NOT c.blocked) THEN
		INSERT INTO freshpay.jobs (kind, invoice_id)
		VALUES ('collect_invoice', NEW.id)
		ON CONFLICT (invoice_id) WHERE kind OPERATOR(pg_catalog.=) 'collect_invoice' AND state OPERATOR(pg_catalog.=) 'queued'
		DO NOTHING;
		PERFORM freshpay._wake_worker_at_commit();
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION freshpay._queue_collection() IS
	'Internal: queues the collection of invoices of on_issue customers (a charge, or a payment request without a vault profile)';

-- Payment requests in the finance surface: the invoice's latest request in
-- invoice_status; requests whose answer was lost, open for more than a week,
-- or expired on an open invoice in exceptions.
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
		   q.expires_at AS payment_request_expires_at
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
		SELECT p.status, p.kind FROM freshpay.payments p
		 WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id ORDER BY p.id DESC LIMIT 1) l ON true
	  LEFT JOIN LATERAL (
		SELECT r.status, r.expires_at FROM freshpay.payment_requests r
		 WHERE r.invoice_id OPERATOR(pg_catalog.=) i.id ORDER BY r.id DESC LIMIT 1) q ON true;
COMMENT ON COLUMN freshpay.invoice_status.payment_request_status IS 'Status of the invoice''s latest payment request, if any';
COMMENT ON COLUMN freshpay.invoice_status.payment_request_expires_at IS 'When the invoice''s latest payment request expires';

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
						 AND later.id OPERATOR(pg_catalog.>) q.id);
COMMENT ON COLUMN freshpay.exceptions.kind IS 'unknown_outcome, failed_collection, not_registered_in_freshportal, dead_job, failing_job, amount_mismatch, settled_without_invoice, payment_request_unknown, payment_request_open_long or payment_request_expired';
