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
