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
