/*
 * freshpay 0.4 → 0.5: money safety when PayTrace is slower than freshpay
 * waits.  An outcome freshpay could not learn stays 'unknown' until PayTrace
 * shows it, or a person settles it; an authorization that has a capture is
 * no longer actionable; write-back and lookups retry until they succeed;
 * money calls are bound to freshpay.database_name; secret references cannot
 * be redirected.
 */

\echo Use "ALTER EXTENSION freshpay UPDATE TO '0.5'" to load this file. \quit

------------------------------------------------------------------------------
-- Administrations and secrets (M3, M4)
------------------------------------------------------------------------------

-- [section: administrations — edited by the admin-security work]

-- M3: the checks never read a NULL argument (a NULL gives a NULL result); the
-- triggers report a NULL column themselves.  freshpay_admin keeps EXECUTE on
-- them: the triggers run as the role writing the row (so that the checks see
-- that role's privileges), and a trigger can only call what that role may.
ALTER FUNCTION freshpay._check_url(text, text) STRICT;
ALTER FUNCTION freshpay._check_secret(text, text, text) STRICT;

-- M4: a stored env:/file: reference may only be sent somewhere else by a role
-- that could have stored it.
CREATE FUNCTION freshpay._check_secret_redirect(stored text, field text, administration text, change text)
RETURNS void LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'freshpay_check_secret_redirect';
COMMENT ON FUNCTION freshpay._check_secret_redirect(text, text, text, text) IS
	'Internal: raise an error unless the current role may change where this stored secret is sent';
REVOKE ALL ON FUNCTION freshpay._check_secret_redirect(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION freshpay._check_secret_redirect(text, text, text, text) TO freshpay_admin;

-- A URL change redirects the secrets stored for the administration: the
-- secrets row is locked (FOR SHARE) so that a reference stored concurrently
-- is seen, or waits for this change.
CREATE OR REPLACE FUNCTION freshpay._administrations_check()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	changed text[] := '{}';
	s record;
BEGIN
	IF NEW.freshportal_url IS NULL THEN
		RAISE EXCEPTION 'freshportal_url must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF NEW.paytrace_url IS NULL THEN
		RAISE EXCEPTION 'paytrace_url must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR NEW.freshportal_url IS DISTINCT FROM OLD.freshportal_url THEN
		PERFORM freshpay._check_url(NEW.freshportal_url, 'freshportal_url');
		changed := changed OPERATOR(pg_catalog.||) 'freshportal_url'::text;
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR NEW.paytrace_url IS DISTINCT FROM OLD.paytrace_url THEN
		PERFORM freshpay._check_url(NEW.paytrace_url, 'paytrace_url');
		changed := changed OPERATOR(pg_catalog.||) 'paytrace_url'::text;
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' AND pg_catalog.cardinality(changed) OPERATOR(pg_catalog.>) 0 THEN
		FOR s IN SELECT a.freshportal_api_key, a.paytrace_password
				   FROM freshpay.administration_secrets a
				  WHERE a.administration OPERATOR(pg_catalog.=) OLD.name
				    FOR SHARE
		LOOP
			PERFORM freshpay._check_secret_redirect(s.freshportal_api_key, 'freshportal_api_key', OLD.name,
				'change ' OPERATOR(pg_catalog.||) pg_catalog.array_to_string(changed, ' and '));
			PERFORM freshpay._check_secret_redirect(s.paytrace_password, 'paytrace_password', OLD.name,
				'change ' OPERATOR(pg_catalog.||) pg_catalog.array_to_string(changed, ' and '));
		END LOOP;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION freshpay._administrations_check() IS
	'Internal: validates the URLs of an administration, and who may change them while its secrets are env:/file: references';

-- Moving a secrets row to another administration (or deleting it) is checked
-- like storing its references.  Cascades from freshpay.administrations (a
-- rename, a deleted administration) run as the table owner and pass.
CREATE OR REPLACE FUNCTION freshpay._administration_secrets_check()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF TG_OP OPERATOR(pg_catalog.=) 'DELETE'
	   OR (TG_OP OPERATOR(pg_catalog.=) 'UPDATE' AND NEW.administration IS DISTINCT FROM OLD.administration) THEN
		PERFORM freshpay._check_secret_redirect(OLD.freshportal_api_key, 'freshportal_api_key', OLD.administration,
			CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN 'delete the secrets' ELSE 'move the secrets' END);
		PERFORM freshpay._check_secret_redirect(OLD.paytrace_password, 'paytrace_password', OLD.administration,
			CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN 'delete the secrets' ELSE 'move the secrets' END);
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
		RETURN OLD;
	END IF;
	IF NEW.freshportal_api_key IS NULL THEN
		RAISE EXCEPTION 'freshportal_api_key must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF NEW.paytrace_password IS NULL THEN
		RAISE EXCEPTION 'paytrace_password must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR NEW.freshportal_api_key IS DISTINCT FROM OLD.freshportal_api_key THEN
		PERFORM freshpay._check_secret(NEW.freshportal_api_key, 'freshportal_api_key', NEW.administration);
	END IF;
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR NEW.paytrace_password IS DISTINCT FROM OLD.paytrace_password THEN
		PERFORM freshpay._check_secret(NEW.paytrace_password, 'paytrace_password', NEW.administration);
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION freshpay._administration_secrets_check() IS
	'Internal: checks who may store a secret reference (and that it resolves), and who may move or delete one';
DROP TRIGGER administration_secrets_check ON freshpay.administration_secrets;
CREATE TRIGGER administration_secrets_check BEFORE INSERT OR UPDATE OR DELETE ON freshpay.administration_secrets
	FOR EACH ROW EXECUTE FUNCTION freshpay._administration_secrets_check();

------------------------------------------------------------------------------
-- Unknown outcomes, the ledger and the queue
------------------------------------------------------------------------------

-- [section: money — edited by the money-safety work]

-- What a person does with an outcome that stays unknown.
CREATE FUNCTION @extschema@.freshpay_resolve(payment_id bigint, verdict text DEFAULT NULL)
RETURNS freshpay.payments
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
	p freshpay.payments;
BEGIN
	IF verdict IS NOT NULL AND verdict OPERATOR(pg_catalog.<>) 'not_processed' THEN
		RAISE EXCEPTION 'verdict must be NULL or ''not_processed'', not "%"', verdict
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'NULL looks the payment up at PayTrace now; ''not_processed'' settles it once PayTrace''s Virtual Terminal shows no transaction for it.';
	END IF;
	SELECT * INTO p FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'payment % does not exist', $1
			USING ERRCODE = 'no_data_found', HINT = 'payment_id is freshpay.payments.id.';
	END IF;
	IF p.status OPERATOR(pg_catalog.=) 'pending' AND verdict IS NOT NULL THEN
		RAISE EXCEPTION 'payment % is in flight', p.id
			USING ERRCODE = 'object_in_use',
				  HINT = 'The worker is waiting for PayTrace''s answer; settle it only once it is unknown.';
	END IF;
	IF p.status OPERATOR(pg_catalog.<>) ALL (ARRAY['pending', 'unknown']) THEN
		RAISE EXCEPTION 'payment % is %, not unknown', p.id, p.status
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Only an unknown outcome needs settling.';
	END IF;

	IF verdict IS NULL THEN
		INSERT INTO freshpay.jobs (kind, payment_id, next_run_at)
		VALUES ('resolve_payment', p.id, pg_catalog.now())
		ON CONFLICT (kind, payment_id) WHERE state OPERATOR(pg_catalog.=) 'queued'
		DO UPDATE SET next_run_at = pg_catalog.now(), updated_at = pg_catalog.now();
	ELSE
		UPDATE freshpay.payments
		   SET status = 'failed',
			   message = pg_catalog.format('Settled as not processed by %s: PayTrace showed no transaction for it. Recorded over this if PayTrace shows one later.',
										   pg_catalog.session_user()),
			   updated_at = pg_catalog.now()
		 WHERE id OPERATOR(pg_catalog.=) p.id
		RETURNING * INTO p;
		INSERT INTO freshpay.payment_history (payment_id, old_status, new_status, event, message)
		VALUES (p.id, 'unknown', 'failed', 'settled', p.message);
		UPDATE freshpay.jobs SET state = 'done', updated_at = pg_catalog.now()
		 WHERE kind OPERATOR(pg_catalog.=) 'resolve_payment'
		   AND jobs.payment_id OPERATOR(pg_catalog.=) p.id
		   AND state OPERATOR(pg_catalog.=) 'queued';
		-- The invoice's collection, if one waits, goes on now.
		UPDATE freshpay.jobs SET next_run_at = pg_catalog.now(), updated_at = pg_catalog.now()
		 WHERE kind OPERATOR(pg_catalog.=) 'collect_invoice'
		   AND invoice_id OPERATOR(pg_catalog.=) p.invoice_id
		   AND state OPERATOR(pg_catalog.=) 'queued';
	END IF;
	PERFORM freshpay._wake_worker_at_commit();
	RETURN p;
END
$fn$;
COMMENT ON FUNCTION @extschema@.freshpay_resolve(bigint, text) IS
	'Settle an unknown outcome: NULL looks it up at PayTrace now; ''not_processed'' records it as failed once a person has seen in PayTrace''s Virtual Terminal that no transaction exists for it (a later PayTrace record is still recorded over that)';
REVOKE ALL ON FUNCTION @extschema@.freshpay_resolve(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.freshpay_resolve(bigint, text) TO freshpay_operator;

COMMENT ON COLUMN freshpay.payments.freshportal_payment_id IS
	'FreshPortal payment registering it (sale, ACH debit, capture: null until registered, and while a reversal of its registration is under way); for a void or refund, the FreshPortal payment it reversed';

-- The local invoice mirrors FreshPortal; what freshpay collected and
-- FreshPortal does not count yet is deducted from what is outstanding.
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
				COALESCE((i.raw OPERATOR(pg_catalog.->>) 'open_amount')::numeric, i.open_amount)) AS freshportal_agrees
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
		 WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id ORDER BY p.id DESC LIMIT 1) l ON true;
COMMENT ON COLUMN freshpay.invoice_status.outstanding IS 'Still to collect: FreshPortal''s open amount less what freshpay collected and FreshPortal does not count yet';

-- A claimed job remembers when, so that a new worker knows the claims of
-- one that died are void.
ALTER TABLE freshpay.jobs ADD COLUMN claimed_at timestamptz;
COMMENT ON COLUMN freshpay.jobs.claimed_at IS 'When the worker claimed it (null when not running); a restarted worker runs claimed jobs again at once';

-- Jobs that keep failing are an alert; write-back and lookups never die.
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
	 WHERE p.batch_number IS NOT NULL AND p.invoice_id IS NULL;
COMMENT ON COLUMN freshpay.exceptions.kind IS 'unknown_outcome, failed_collection, not_registered_in_freshportal, dead_job, failing_job, amount_mismatch or settled_without_invoice';
