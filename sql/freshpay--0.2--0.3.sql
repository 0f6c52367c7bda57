/*
 * freshpay 0.2 → 0.3: collecting money.  The money functions, customer
 * linking, the queue of background work (write-back to FreshPortal,
 * resolution of unknown outcomes) and the history of every status change.
 */

\echo Use "ALTER EXTENSION freshpay UPDATE TO '0.3'" to load this file. \quit

------------------------------------------------------------------------------
-- Payments: what an attempt needs to be resolved and written back
------------------------------------------------------------------------------

ALTER TABLE freshpay.payments
	ADD COLUMN invoice_number text,
	ADD COLUMN requested_by text NOT NULL DEFAULT CURRENT_USER,
	ADD COLUMN refunded_amount numeric(12,2) NOT NULL DEFAULT 0,
	ADD CONSTRAINT payments_refunded_check
		CHECK (refunded_amount OPERATOR(pg_catalog.>=) 0 AND refunded_amount OPERATOR(pg_catalog.<=) amount);
COMMENT ON COLUMN freshpay.payments.invoice_number IS 'Invoice number sent to PayTrace as invoice_id; the key of lookups';
COMMENT ON COLUMN freshpay.payments.requested_by IS 'Role that asked for the attempt, or "worker" / "sync"';
COMMENT ON COLUMN freshpay.payments.refunded_amount IS 'Sum of successful refunds of this sale or capture';

-- One collection attempt in flight per invoice: the database enforces it.
CREATE UNIQUE INDEX payments_one_attempt_per_invoice ON freshpay.payments (invoice_id)
	WHERE status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])
	  AND kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'authorization', 'capture', 'ach_sale']);
-- One attempt in flight per transaction acted on (capture, void, refund).
CREATE UNIQUE INDEX payments_one_attempt_per_parent ON freshpay.payments (parent_id)
	WHERE status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown']);
-- A PayTrace transaction is adopted once per kind.
CREATE UNIQUE INDEX payments_transaction_once ON freshpay.payments (administration, paytrace_transaction_id, kind)
	WHERE paytrace_transaction_id IS NOT NULL;

------------------------------------------------------------------------------
-- History of every attempt and status change
------------------------------------------------------------------------------

CREATE TABLE freshpay.payment_history (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	payment_id bigint NOT NULL REFERENCES freshpay.payments (id) ON DELETE CASCADE,
	at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	old_status text,
	new_status text NOT NULL,
	response_code integer,
	event text NOT NULL,
	message text
);
CREATE INDEX payment_history_payment_idx ON freshpay.payment_history (payment_id, at);
CREATE INDEX payment_history_at_idx ON freshpay.payment_history (at);
COMMENT ON TABLE freshpay.payment_history IS 'Every attempt, answer and status change of every payment; no secrets, no card data; kept for freshpay.history_retention';
COMMENT ON COLUMN freshpay.payment_history.id IS 'Local id';
COMMENT ON COLUMN freshpay.payment_history.payment_id IS 'The payment';
COMMENT ON COLUMN freshpay.payment_history.at IS 'When it happened';
COMMENT ON COLUMN freshpay.payment_history.old_status IS 'Status before (null for the first event)';
COMMENT ON COLUMN freshpay.payment_history.new_status IS 'Status after';
COMMENT ON COLUMN freshpay.payment_history.response_code IS 'PayTrace response_code of the answer, if any';
COMMENT ON COLUMN freshpay.payment_history.event IS 'recorded, answered, lost, resolved, registered, reversed, ...';
COMMENT ON COLUMN freshpay.payment_history.message IS 'What PayTrace or FreshPortal said, or what went wrong';

------------------------------------------------------------------------------
-- The queue of background work
------------------------------------------------------------------------------

CREATE TABLE freshpay.jobs (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	kind text NOT NULL,
	payment_id bigint REFERENCES freshpay.payments (id) ON DELETE CASCADE,
	state text NOT NULL DEFAULT 'queued',
	attempts integer NOT NULL DEFAULT 0,
	next_run_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	last_error text,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CONSTRAINT jobs_kind_check
		CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['register_payment', 'reverse_payment', 'resolve_payment'])),
	CONSTRAINT jobs_state_check
		CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'done', 'dead']))
);
CREATE INDEX jobs_due_idx ON freshpay.jobs (next_run_at) WHERE state OPERATOR(pg_catalog.=) 'queued';
CREATE UNIQUE INDEX jobs_once_per_payment ON freshpay.jobs (kind, payment_id)
	WHERE state OPERATOR(pg_catalog.=) 'queued';
COMMENT ON TABLE freshpay.jobs IS 'Work the background worker does: register or reverse payments in FreshPortal, resolve unknown outcomes at PayTrace';
COMMENT ON COLUMN freshpay.jobs.id IS 'Local id';
COMMENT ON COLUMN freshpay.jobs.kind IS 'register_payment, reverse_payment or resolve_payment';
COMMENT ON COLUMN freshpay.jobs.payment_id IS 'The payment the job is about';
COMMENT ON COLUMN freshpay.jobs.state IS 'queued, done or dead (gave up after freshpay.max_attempts, or failed permanently)';
COMMENT ON COLUMN freshpay.jobs.attempts IS 'Attempts made so far';
COMMENT ON COLUMN freshpay.jobs.next_run_at IS 'Not before this time';
COMMENT ON COLUMN freshpay.jobs.last_error IS 'Why the last attempt failed';
COMMENT ON COLUMN freshpay.jobs.created_at IS 'When the job was queued';
COMMENT ON COLUMN freshpay.jobs.updated_at IS 'Last change';

------------------------------------------------------------------------------
-- Functions
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.freshpay_link_customer(
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
	IF paytrace_customer_id IS NULL AND collection OPERATOR(pg_catalog.<>) 'manual' THEN
		RAISE EXCEPTION 'collection rule % needs a PayTrace vault profile', collection
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
	'Maps a FreshPortal customer to a PayTrace vault profile and sets its collection rule and payment method';

CREATE FUNCTION @extschema@.freshpay_capture(invoice_id bigint, amount numeric DEFAULT NULL)
RETURNS freshpay.payments LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_capture';
COMMENT ON FUNCTION @extschema@.freshpay_capture(bigint, numeric) IS
	'Collects the invoice (default: its open amount): captures its open authorization if there is one, else a sale against the customer''s PayTrace vault profile';

CREATE FUNCTION @extschema@.freshpay_authorize(invoice_id bigint, amount numeric DEFAULT NULL)
RETURNS freshpay.payments LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_authorize';
COMMENT ON FUNCTION @extschema@.freshpay_authorize(bigint, numeric) IS
	'Places an authorization for later capture (card customers)';

CREATE FUNCTION @extschema@.freshpay_void(payment_id bigint)
RETURNS freshpay.payments LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_void';
COMMENT ON FUNCTION @extschema@.freshpay_void(bigint) IS
	'Voids an unsettled sale, authorization or capture; returns the void row';

CREATE FUNCTION @extschema@.freshpay_refund(payment_id bigint, amount numeric DEFAULT NULL)
RETURNS freshpay.payments LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_refund';
COMMENT ON FUNCTION @extschema@.freshpay_refund(bigint, numeric) IS
	'Refunds a settled sale or capture, fully (default) or partly; returns the refund row';

CREATE FUNCTION @extschema@.freshpay_reverse(invoice_id bigint)
RETURNS freshpay.payments LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_reverse';
COMMENT ON FUNCTION @extschema@.freshpay_reverse(bigint) IS
	'Undoes the invoice''s collection: voids it if unsettled, refunds it if settled; returns the void or refund row';

CREATE FUNCTION freshpay._paytrace_parse_result(http_status integer, body text,
	OUT outcome text, OUT response_code integer, OUT transaction_id bigint,
	OUT approval_code text, OUT message text, OUT error_codes text)
RETURNS record LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'freshpay_paytrace_parse_result';
COMMENT ON FUNCTION freshpay._paytrace_parse_result(integer, text) IS
	'Internal, for tests: how freshpay reads a PayTrace money-call answer';

CREATE FUNCTION freshpay._paytrace_parse_export(body text,
	OUT transaction_id bigint, OUT type text, OUT amount numeric, OUT invoice_id text,
	OUT state text, OUT batch_number integer, OUT settled_at timestamptz, OUT created_at timestamptz)
RETURNS SETOF record LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'freshpay_paytrace_parse_export';
COMMENT ON FUNCTION freshpay._paytrace_parse_export(text) IS
	'Internal, for tests: how freshpay reads a PayTrace transaction export';

REVOKE ALL ON freshpay.payment_history, freshpay.jobs FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.freshpay_link_customer(bigint, text, text, text),
	@extschema@.freshpay_capture(bigint, numeric), @extschema@.freshpay_authorize(bigint, numeric),
	@extschema@.freshpay_void(bigint), @extschema@.freshpay_refund(bigint, numeric),
	@extschema@.freshpay_reverse(bigint),
	freshpay._paytrace_parse_result(integer, text), freshpay._paytrace_parse_export(text)
	FROM PUBLIC;

GRANT SELECT ON freshpay.payment_history, freshpay.jobs TO freshpay_reader;
GRANT EXECUTE ON FUNCTION @extschema@.freshpay_link_customer(bigint, text, text, text),
	@extschema@.freshpay_capture(bigint, numeric), @extschema@.freshpay_authorize(bigint, numeric),
	@extschema@.freshpay_void(bigint), @extschema@.freshpay_refund(bigint, numeric),
	@extschema@.freshpay_reverse(bigint)
	TO freshpay_operator;

SELECT pg_catalog.pg_extension_config_dump('freshpay.payment_history', '');
SELECT pg_catalog.pg_extension_config_dump('freshpay.payment_history_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('freshpay.jobs', '');
SELECT pg_catalog.pg_extension_config_dump('freshpay.jobs_id_seq', '');
