/*
 * freshpay 0.1: administrations, FreshPortal customers and invoices, sync.
 *
 * Everything is schema-qualified (pg_catalog included): this script and the
 * SECURITY DEFINER functions must not depend on the caller's search_path.
 */

\echo Use "CREATE EXTENSION freshpay" to load this file. \quit

-- freshpay needs shared_preload_libraries; loading it here makes _PG_init
-- say so (with its hint) when it is missing, whatever the configuration.
LOAD 'freshpay';

-- Like pg_cron: the worker serves one database, so the extension lives there.
DO $$
BEGIN
	IF pg_catalog.current_database() OPERATOR(pg_catalog.<>) pg_catalog.current_setting('freshpay.database_name')
	   AND pg_catalog.current_database() OPERATOR(pg_catalog.<>) 'contrib_regression' THEN
		RAISE EXCEPTION 'can only create extension freshpay in database "%"',
				pg_catalog.current_setting('freshpay.database_name')
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'The freshpay background worker serves the database named by freshpay.database_name.',
				  HINT = pg_catalog.format('Set freshpay.database_name = %L in postgresql.conf and restart the server to use this database.',
										   pg_catalog.current_database());
	END IF;
END
$$;

-- Roles are cluster-wide and outlive the extension; create them only once.
-- freshpay_admin ⊃ freshpay_operator ⊃ freshpay_reader.
DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['freshpay_reader', 'freshpay_operator', 'freshpay_admin'] LOOP
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
			EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
		END IF;
	END LOOP;
	IF NOT pg_catalog.pg_has_role('freshpay_operator', 'freshpay_reader', 'MEMBER') THEN
		GRANT freshpay_reader TO freshpay_operator;
	END IF;
	IF NOT pg_catalog.pg_has_role('freshpay_admin', 'freshpay_operator', 'MEMBER') THEN
		GRANT freshpay_operator TO freshpay_admin;
	END IF;
END
$$;

CREATE SCHEMA freshpay;
COMMENT ON SCHEMA freshpay IS 'freshpay: FreshPortal invoices collected through PayTrace; tables for BI and reconciliation';
GRANT USAGE ON SCHEMA freshpay TO freshpay_reader;

------------------------------------------------------------------------------
-- Administrations
------------------------------------------------------------------------------

CREATE TABLE freshpay.administrations (
	name text PRIMARY KEY,
	freshportal_url text NOT NULL,
	paytrace_url text NOT NULL,
	paytrace_username text NOT NULL,
	paytrace_integrator_id text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CONSTRAINT administrations_name_check
		CHECK (name OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_-]{0,62}$')
);
COMMENT ON TABLE freshpay.administrations IS 'One FreshPortal administration (tenant) and the PayTrace account that collects for it; secrets are in administration_secrets';
COMMENT ON COLUMN freshpay.administrations.name IS 'Short name used everywhere else (lower case, digits, _ and -)';
COMMENT ON COLUMN freshpay.administrations.freshportal_url IS 'FreshPortal API base URL, e.g. https://850255-api.freshportal.com';
COMMENT ON COLUMN freshpay.administrations.paytrace_url IS 'PayTrace API base URL, e.g. https://api.paytrace.com';
COMMENT ON COLUMN freshpay.administrations.paytrace_username IS 'PayTrace API user (a VT user of type API User)';
COMMENT ON COLUMN freshpay.administrations.paytrace_integrator_id IS 'PayTrace integrator id sent in every request body';
COMMENT ON COLUMN freshpay.administrations.created_at IS 'When the administration was added';

CREATE TABLE freshpay.administration_secrets (
	administration text PRIMARY KEY
		REFERENCES freshpay.administrations (name) ON UPDATE CASCADE ON DELETE CASCADE,
	freshportal_api_key text NOT NULL,
	paytrace_password text NOT NULL
);
COMMENT ON TABLE freshpay.administration_secrets IS 'Secrets of each administration, readable only by the extension owner and freshpay_admin; each is the secret itself or an env:NAME / file:PATH reference resolved by the server';
COMMENT ON COLUMN freshpay.administration_secrets.administration IS 'The administration these secrets belong to';
COMMENT ON COLUMN freshpay.administration_secrets.freshportal_api_key IS 'FreshPortal API key, or env:NAME / file:PATH';
COMMENT ON COLUMN freshpay.administration_secrets.paytrace_password IS 'PayTrace API password, or env:NAME / file:PATH';

CREATE FUNCTION freshpay._check_url(url text, field text)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_check_url';
COMMENT ON FUNCTION freshpay._check_url(text, text) IS 'Internal: raise an error unless url is a base URL freshpay may connect to';

CREATE FUNCTION freshpay._check_secret(stored text, field text, administration text)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_check_secret';
COMMENT ON FUNCTION freshpay._check_secret(text, text, text) IS 'Internal: raise an error unless the current role may store this secret and it resolves';

-- The checks run as the role writing the row, so direct DML cannot bypass them.
CREATE FUNCTION freshpay._administrations_check()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR NEW.freshportal_url IS DISTINCT FROM OLD.freshportal_url THEN
		PERFORM freshpay._check_url(NEW.freshportal_url, 'freshportal_url');
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR NEW.paytrace_url IS DISTINCT FROM OLD.paytrace_url THEN
		PERFORM freshpay._check_url(NEW.paytrace_url, 'paytrace_url');
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION freshpay._administrations_check() IS 'Internal: validates the URLs of an administration';
CREATE TRIGGER administrations_check BEFORE INSERT OR UPDATE ON freshpay.administrations
	FOR EACH ROW EXECUTE FUNCTION freshpay._administrations_check();

CREATE FUNCTION freshpay._administration_secrets_check()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR NEW.freshportal_api_key IS DISTINCT FROM OLD.freshportal_api_key THEN
		PERFORM freshpay._check_secret(NEW.freshportal_api_key, 'freshportal_api_key', NEW.administration);
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR NEW.paytrace_password IS DISTINCT FROM OLD.paytrace_password THEN
		PERFORM freshpay._check_secret(NEW.paytrace_password, 'paytrace_password', NEW.administration);
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION freshpay._administration_secrets_check() IS 'Internal: checks who may store a secret reference, and that it resolves';
CREATE TRIGGER administration_secrets_check BEFORE INSERT OR UPDATE ON freshpay.administration_secrets
	FOR EACH ROW EXECUTE FUNCTION freshpay._administration_secrets_check();

------------------------------------------------------------------------------
-- FreshPortal data
------------------------------------------------------------------------------

CREATE TABLE freshpay.customers (
	id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	administration text NOT NULL REFERENCES freshpay.administrations (name) ON UPDATE CASCADE,
	freshportal_id bigint NOT NULL,
	code text NOT NULL,
	name text NOT NULL,
	email text,
	currency text,
	payment_term_days integer,
	blocked boolean NOT NULL DEFAULT false,
	paytrace_customer_id text,
	payment_method text NOT NULL DEFAULT 'card',
	collection text NOT NULL DEFAULT 'manual',
	mutation_time timestamptz NOT NULL DEFAULT pg_catalog.now(),
	raw jsonb NOT NULL DEFAULT '{}',
	synced_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	UNIQUE (administration, freshportal_id),
	CONSTRAINT customers_payment_method_check
		CHECK (payment_method OPERATOR(pg_catalog.=) ANY (ARRAY['card', 'ach'])),
	CONSTRAINT customers_collection_check
		CHECK (collection OPERATOR(pg_catalog.=) ANY (ARRAY['manual', 'on_issue', 'on_due_date']))
);
CREATE INDEX customers_code_idx ON freshpay.customers (administration, code);
COMMENT ON TABLE freshpay.customers IS 'FreshPortal customers (debtors), synced; the PayTrace link and collection rule are local';
COMMENT ON COLUMN freshpay.customers.id IS 'Local id';
COMMENT ON COLUMN freshpay.customers.administration IS 'Administration the customer belongs to';
COMMENT ON COLUMN freshpay.customers.freshportal_id IS 'Customer id in FreshPortal';
COMMENT ON COLUMN freshpay.customers.code IS 'Customer code in FreshPortal';
COMMENT ON COLUMN freshpay.customers.name IS 'Customer name';
COMMENT ON COLUMN freshpay.customers.email IS 'E-mail address, if FreshPortal has one';
COMMENT ON COLUMN freshpay.customers.currency IS 'Currency the customer is invoiced in (ISO 4217)';
COMMENT ON COLUMN freshpay.customers.payment_term_days IS 'Payment term in days';
COMMENT ON COLUMN freshpay.customers.blocked IS 'Blocked in FreshPortal';
COMMENT ON COLUMN freshpay.customers.paytrace_customer_id IS 'PayTrace vault profile (customer_id) charged for this customer; null when unlinked';
COMMENT ON COLUMN freshpay.customers.payment_method IS 'card (sales against the card profile) or ach (check sales against the bank profile)';
COMMENT ON COLUMN freshpay.customers.collection IS 'manual, on_issue (collect when the invoice arrives) or on_due_date';
COMMENT ON COLUMN freshpay.customers.mutation_time IS 'FreshPortal mutation_date_time of the stored version';
COMMENT ON COLUMN freshpay.customers.raw IS 'The customer as FreshPortal sent it';
COMMENT ON COLUMN freshpay.customers.synced_at IS 'When this row was last written by a sync';

CREATE TABLE freshpay.invoices (
	id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	administration text NOT NULL REFERENCES freshpay.administrations (name) ON UPDATE CASCADE,
	freshportal_id bigint NOT NULL,
	number text NOT NULL,
	customer_id bigint REFERENCES freshpay.customers (id),
	freshportal_customer_id bigint NOT NULL,
	type text NOT NULL DEFAULT 'invoice',
	invoice_date date NOT NULL,
	due_date date,
	currency text NOT NULL,
	amount_excl_vat numeric(12,2) NOT NULL,
	vat_amount numeric(12,2) NOT NULL,
	amount_incl_vat numeric(12,2) NOT NULL,
	amount_paid numeric(12,2) NOT NULL DEFAULT 0,
	open_amount numeric(12,2) NOT NULL,
	status text NOT NULL DEFAULT 'open',
	mutation_time timestamptz NOT NULL DEFAULT pg_catalog.now(),
	raw jsonb NOT NULL DEFAULT '{}',
	synced_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	UNIQUE (administration, freshportal_id),
	CONSTRAINT invoices_type_check
		CHECK (type OPERATOR(pg_catalog.=) ANY (ARRAY['invoice', 'credit_note'])),
	CONSTRAINT invoices_status_check
		CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['concept', 'open', 'partially_paid', 'paid', 'credited']))
);
CREATE INDEX invoices_customer_idx ON freshpay.invoices (customer_id);
CREATE INDEX invoices_number_idx ON freshpay.invoices (administration, number);
CREATE INDEX invoices_open_due_idx ON freshpay.invoices (due_date)
	WHERE status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid']);
COMMENT ON TABLE freshpay.invoices IS 'FreshPortal invoices and credit notes, synced; credit notes keep FreshPortal''s negative amounts';
COMMENT ON COLUMN freshpay.invoices.id IS 'Local id (the invoice_id of the money functions)';
COMMENT ON COLUMN freshpay.invoices.administration IS 'Administration the invoice belongs to';
COMMENT ON COLUMN freshpay.invoices.freshportal_id IS 'Invoice id in FreshPortal';
COMMENT ON COLUMN freshpay.invoices.number IS 'Invoice number; sent to PayTrace as invoice_id';
COMMENT ON COLUMN freshpay.invoices.customer_id IS 'Local customer id; null until the customer has been synced';
COMMENT ON COLUMN freshpay.invoices.freshportal_customer_id IS 'Customer id in FreshPortal';
COMMENT ON COLUMN freshpay.invoices.type IS 'invoice or credit_note';
COMMENT ON COLUMN freshpay.invoices.invoice_date IS 'Invoice date';
COMMENT ON COLUMN freshpay.invoices.due_date IS 'Due date';
COMMENT ON COLUMN freshpay.invoices.currency IS 'Currency (ISO 4217); PayTrace collects USD only';
COMMENT ON COLUMN freshpay.invoices.amount_excl_vat IS 'Total excluding VAT';
COMMENT ON COLUMN freshpay.invoices.vat_amount IS 'VAT';
COMMENT ON COLUMN freshpay.invoices.amount_incl_vat IS 'Total including VAT';
COMMENT ON COLUMN freshpay.invoices.amount_paid IS 'Amount paid according to FreshPortal';
COMMENT ON COLUMN freshpay.invoices.open_amount IS 'Amount still open according to FreshPortal';
COMMENT ON COLUMN freshpay.invoices.status IS 'concept, open, partially_paid, paid or credited';
COMMENT ON COLUMN freshpay.invoices.mutation_time IS 'FreshPortal mutation_date_time of the stored version';
COMMENT ON COLUMN freshpay.invoices.raw IS 'The invoice as FreshPortal sent it, lines included';
COMMENT ON COLUMN freshpay.invoices.synced_at IS 'When this row was last written by a sync';

------------------------------------------------------------------------------
-- Sync state
------------------------------------------------------------------------------

CREATE TABLE freshpay.sync_state (
	administration text NOT NULL
		REFERENCES freshpay.administrations (name) ON UPDATE CASCADE ON DELETE CASCADE,
	stream text NOT NULL,
	cursor timestamptz,
	last_synced_at timestamptz,
	last_fetched bigint,
	last_inserted bigint,
	last_updated bigint,
	PRIMARY KEY (administration, stream),
	CONSTRAINT sync_state_stream_check
		CHECK (stream OPERATOR(pg_catalog.=) ANY (ARRAY['customers', 'invoices']))
);
COMMENT ON TABLE freshpay.sync_state IS 'Incremental sync cursor and last result per administration and stream';
COMMENT ON COLUMN freshpay.sync_state.administration IS 'Administration';
COMMENT ON COLUMN freshpay.sync_state.stream IS 'customers or invoices';
COMMENT ON COLUMN freshpay.sync_state.cursor IS 'FreshPortal server time at the start of the last complete pull; the next pull starts freshpay.sync_overlap before it';
COMMENT ON COLUMN freshpay.sync_state.last_synced_at IS 'When the last complete pull committed';
COMMENT ON COLUMN freshpay.sync_state.last_fetched IS 'Rows received by the last pull';
COMMENT ON COLUMN freshpay.sync_state.last_inserted IS 'Rows inserted by the last pull';
COMMENT ON COLUMN freshpay.sync_state.last_updated IS 'Rows updated by the last pull';

CREATE FUNCTION freshpay._sync_progress(
	OUT pid integer, OUT administration text, OUT stream text, OUT pages integer,
	OUT rows_done bigint, OUT rows_expected bigint, OUT started_at timestamptz)
RETURNS SETOF record LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_sync_progress';
COMMENT ON FUNCTION freshpay._sync_progress() IS 'Internal: the rows of freshpay.sync_progress';

CREATE VIEW freshpay.sync_progress AS SELECT * FROM freshpay._sync_progress();
COMMENT ON VIEW freshpay.sync_progress IS 'Syncs running now, one row per backend and stream, updated after every page';
COMMENT ON COLUMN freshpay.sync_progress.pid IS 'Backend running the sync';
COMMENT ON COLUMN freshpay.sync_progress.administration IS 'Administration being synced';
COMMENT ON COLUMN freshpay.sync_progress.stream IS 'customers or invoices';
COMMENT ON COLUMN freshpay.sync_progress.pages IS 'Pages received so far';
COMMENT ON COLUMN freshpay.sync_progress.rows_done IS 'Rows received so far';
COMMENT ON COLUMN freshpay.sync_progress.rows_expected IS 'Rows FreshPortal announced on the first page';
COMMENT ON COLUMN freshpay.sync_progress.started_at IS 'When this stream''s pull started';

------------------------------------------------------------------------------
-- Functions
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.freshpay_add_administration(
	name text,
	freshportal_url text,
	freshportal_api_key text,
	paytrace_url text,
	paytrace_username text,
	paytrace_password text,
	paytrace_integrator_id text)
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

	INSERT INTO freshpay.administrations
		(name, freshportal_url, paytrace_url, paytrace_username, paytrace_integrator_id)
	VALUES (name, freshportal_url, paytrace_url, paytrace_username, paytrace_integrator_id)
	RETURNING * INTO result;
	INSERT INTO freshpay.administration_secrets
		(administration, freshportal_api_key, paytrace_password)
	VALUES (name, freshportal_api_key, paytrace_password);
	RETURN result;
END
$$;
COMMENT ON FUNCTION @extschema@.freshpay_add_administration(text, text, text, text, text, text, text) IS
	'Adds a FreshPortal administration and its PayTrace account; secrets may be env:NAME or file:PATH references';

CREATE FUNCTION @extschema@.freshpay_sync(administration text DEFAULT NULL)
RETURNS TABLE (administration text, stream text, fetched bigint, inserted bigint, updated bigint)
LANGUAGE C
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'freshpay_sync';
COMMENT ON FUNCTION @extschema@.freshpay_sync(text) IS
	'Pulls FreshPortal customers and invoices changed since the last sync (all administrations when null); one row per stream';

------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC, least privilege for the three roles
------------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA freshpay FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA freshpay FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.freshpay_add_administration(text, text, text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.freshpay_sync(text) FROM PUBLIC;

GRANT SELECT ON freshpay.administrations, freshpay.customers, freshpay.invoices,
	freshpay.sync_state, freshpay.sync_progress TO freshpay_reader;
GRANT EXECUTE ON FUNCTION freshpay._sync_progress() TO freshpay_reader;

GRANT EXECUTE ON FUNCTION @extschema@.freshpay_sync(text) TO freshpay_operator;

GRANT SELECT, INSERT, UPDATE, DELETE ON freshpay.administrations, freshpay.administration_secrets TO freshpay_admin;
GRANT EXECUTE ON FUNCTION @extschema@.freshpay_add_administration(text, text, text, text, text, text, text) TO freshpay_admin;
GRANT EXECUTE ON FUNCTION freshpay._check_url(text, text), freshpay._check_secret(text, text, text),
	freshpay._administrations_check(), freshpay._administration_secrets_check() TO freshpay_admin;

-- pg_dump keeps the data of these extension tables.
SELECT pg_catalog.pg_extension_config_dump('freshpay.administrations', '');
SELECT pg_catalog.pg_extension_config_dump('freshpay.administration_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('freshpay.customers', '');
SELECT pg_catalog.pg_extension_config_dump('freshpay.invoices', '');
SELECT pg_catalog.pg_extension_config_dump('freshpay.sync_state', '');
SELECT pg_catalog.pg_extension_config_dump('freshpay.customers_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('freshpay.invoices_id_seq', '');
