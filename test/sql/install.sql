--
-- Installing freshpay: the configured database only, versions, roles,
-- comments and privileges.
--
\set SHOW_CONTEXT never

-- The worker's database is the one the extension may live in.
SHOW freshpay.database_name;

-- Another database is refused, with the setting to change in the hint.
CREATE DATABASE freshpay_elsewhere;
\c freshpay_elsewhere
CREATE EXTENSION freshpay;
SELECT count(*) AS freshpay_schemas FROM pg_namespace WHERE nspname = 'freshpay';
\c contrib_regression
DROP DATABASE freshpay_elsewhere;

-- Rows recorded by 0.9 survive the update to 0.10: a statement's
-- allocations and the reversal of one get the administration of their
-- payment.  (In a transaction rolled back: the worker never sees them.)
BEGIN;
CREATE EXTENSION freshpay VERSION '0.9';
SELECT name FROM freshpay_add_administration('upd', 'http://127.0.0.1:9', 'k', 'http://127.0.0.1:9', 'u', 'p', 'i');
SELECT name FROM freshpay_add_administration('upd2', 'http://127.0.0.1:9', 'k', 'http://127.0.0.1:9', 'u', 'p', 'i');
INSERT INTO freshpay.customers (administration, freshportal_id, code, name, currency)
VALUES ('upd', 1, 'UPD', 'Update Umbellifers', 'USD'), ('upd2', 1, 'UPD2', 'Update Ursinias', 'USD');
INSERT INTO freshpay.invoices (administration, freshportal_id, number, customer_id, freshportal_customer_id, invoice_date,
	due_date, currency, amount_excl_vat, vat_amount, amount_incl_vat, amount_paid, open_amount, status)
SELECT c.administration, n, c.code || '-' || n, c.id, 1, CURRENT_DATE, CURRENT_DATE, 'USD', 10, 0, 10, 10, 0, 'paid'
  FROM freshpay.customers c CROSS JOIN generate_series(1, 2) n;
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, parent_id, amount, status, invoice_number)
SELECT c.administration, NULL, c.id, 'sale', NULL, 20.00, 'voided', 'ST-' || c.code FROM freshpay.customers c;
INSERT INTO freshpay.payments (administration, invoice_id, customer_id, kind, parent_id, amount, status, invoice_number)
SELECT s.administration, NULL, s.customer_id, 'void', s.id, 20.00, 'voided', s.invoice_number
  FROM freshpay.payments s WHERE s.kind = 'sale';
INSERT INTO freshpay.payment_allocations (payment_id, invoice_id, amount)
SELECT p.id, i.id, 10.00 FROM freshpay.payments p JOIN freshpay.invoices i ON i.customer_id = p.customer_id
 WHERE p.kind = 'sale';
INSERT INTO freshpay.allocation_reversals (payment_id, invoice_id, freshportal_payment_id, amount)
SELECT v.id, i.id, 100 + i.id, 10.00 FROM freshpay.payments v JOIN freshpay.invoices i ON i.customer_id = v.customer_id
 WHERE v.kind = 'void';
ALTER EXTENSION freshpay UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'freshpay';
SELECT 'allocation' AS "row", p.kind AS of_payment, a.administration, count(*) AS rows,
	   count(*) FILTER (WHERE a.administration = p.administration) AS as_their_payment
  FROM freshpay.payment_allocations a JOIN freshpay.payments p ON p.id = a.payment_id GROUP BY 1, 2, 3
UNION ALL
SELECT 'reversal', p.kind, r.administration, count(*), count(*) FILTER (WHERE r.administration = p.administration)
  FROM freshpay.allocation_reversals r JOIN freshpay.payments p ON p.id = r.payment_id GROUP BY 1, 2, 3
 ORDER BY 1, 3;
ROLLBACK;

-- The update path: install the first version, update to the current one.
CREATE EXTENSION freshpay VERSION '0.1';
SELECT extversion FROM pg_extension WHERE extname = 'freshpay';
SELECT to_regclass('freshpay.payments') IS NULL AS no_payments_in_0_1;
ALTER EXTENSION freshpay UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'freshpay';

-- An updated installation has exactly the objects of a fresh one.
CREATE TEMP TABLE updated_objects AS
	SELECT pg_describe_object(classid, objid, objsubid) AS object
	  FROM pg_depend
	 WHERE refclassid = 'pg_extension'::regclass
	   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'freshpay');
CREATE TEMP TABLE updated_columns AS
	SELECT table_name, column_name, data_type, numeric_precision, numeric_scale, is_nullable
	  FROM information_schema.columns WHERE table_schema = 'freshpay';
DROP EXTENSION freshpay;
CREATE EXTENSION freshpay;
SELECT extversion FROM pg_extension WHERE extname = 'freshpay';
(SELECT object FROM updated_objects
 EXCEPT
 SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend
  WHERE refclassid = 'pg_extension'::regclass
	AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'freshpay'))
UNION ALL
(SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend
  WHERE refclassid = 'pg_extension'::regclass
	AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'freshpay')
 EXCEPT
 SELECT object FROM updated_objects);
(SELECT * FROM updated_columns
 EXCEPT
 SELECT table_name, column_name, data_type, numeric_precision, numeric_scale, is_nullable
   FROM information_schema.columns WHERE table_schema = 'freshpay')
UNION ALL
(SELECT table_name, column_name, data_type, numeric_precision, numeric_scale, is_nullable
   FROM information_schema.columns WHERE table_schema = 'freshpay'
 EXCEPT
 SELECT * FROM updated_columns);

-- From every released version, not only the first: each updated
-- installation has the fresh one's objects, columns, privileges and
-- trigger states (no rows expected but the count of versions).
CREATE TEMP TABLE fresh_shape AS
	SELECT 'object' AS what, pg_describe_object(classid, objid, objsubid) AS item FROM pg_depend
	 WHERE refclassid = 'pg_extension'::regclass
	   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'freshpay')
	UNION ALL
	SELECT 'column', format('%s.%s %s(%s,%s) %s default %s', table_name, column_name, data_type, numeric_precision,
							numeric_scale, is_nullable, column_default)
	  FROM information_schema.columns WHERE table_schema = 'freshpay'
	UNION ALL
	SELECT 'acl', format('%s %s', c.oid::regclass, c.relacl) FROM pg_class c
	 WHERE c.relnamespace = 'freshpay'::regnamespace
	UNION ALL
	SELECT 'trigger', format('%s %s %s', t.tgrelid::regclass, t.tgname, t.tgenabled) FROM pg_trigger t
	 WHERE NOT t.tgisinternal AND t.tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'freshpay'::regnamespace);
CREATE TEMP TABLE updated_shape (version text, what text, item text);
DO $$
DECLARE
	v text;
	done boolean;
BEGIN
	FOR v IN SELECT version FROM pg_available_extension_versions
			  WHERE name = 'freshpay' AND version <> (SELECT default_version FROM pg_available_extensions WHERE name = 'freshpay')
	LOOP
	  -- (the worker may be reading the tables DROP EXTENSION takes: on a
	  -- deadlock, the version is tried again)
	  done := false;
	  WHILE NOT done LOOP
	  BEGIN
		DROP EXTENSION freshpay;
		EXECUTE format('CREATE EXTENSION freshpay VERSION %L', v);
		ALTER EXTENSION freshpay UPDATE;
		INSERT INTO updated_shape
		SELECT v, 'object', pg_describe_object(classid, objid, objsubid) FROM pg_depend
		 WHERE refclassid = 'pg_extension'::regclass
		   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'freshpay')
		UNION ALL
		SELECT v, 'column', format('%s.%s %s(%s,%s) %s default %s', table_name, column_name, data_type, numeric_precision,
								   numeric_scale, is_nullable, column_default)
		  FROM information_schema.columns WHERE table_schema = 'freshpay'
		UNION ALL
		SELECT v, 'acl', format('%s %s', c.oid::regclass, c.relacl) FROM pg_class c
		 WHERE c.relnamespace = 'freshpay'::regnamespace
		UNION ALL
		SELECT v, 'trigger', format('%s %s %s', t.tgrelid::regclass, t.tgname, t.tgenabled) FROM pg_trigger t
		 WHERE NOT t.tgisinternal AND t.tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'freshpay'::regnamespace);
		done := true;
	  EXCEPTION WHEN deadlock_detected THEN
		NULL;
	  END;
	  END LOOP;
	  COMMIT;  -- each version in a transaction of its own (locks)
	END LOOP;
	done := false;
	WHILE NOT done LOOP
	BEGIN
		DROP EXTENSION freshpay;
		CREATE EXTENSION freshpay;
		done := true;
	EXCEPTION WHEN deadlock_detected THEN
		NULL;
	END;
	END LOOP;
END
$$;
SELECT count(DISTINCT version) AS versions_updated FROM updated_shape;
SELECT v.version, d.* FROM (SELECT DISTINCT version FROM updated_shape) v
 CROSS JOIN LATERAL ((SELECT 'missing' AS diff, what, item FROM fresh_shape
					  EXCEPT SELECT 'missing', what, item FROM updated_shape u WHERE u.version = v.version)
					 UNION ALL
					 (SELECT 'extra', what, item FROM updated_shape u WHERE u.version = v.version
					  EXCEPT SELECT 'extra', what, item FROM fresh_shape)) d;

-- The three roles exist, nested admin ⊃ operator ⊃ reader.
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'freshpay\_%' AND NOT rolsuper ORDER BY 1;
SELECT pg_has_role('freshpay_admin', 'freshpay_reader', 'USAGE') AS admin_reads,
	   pg_has_role('freshpay_operator', 'freshpay_reader', 'USAGE') AS operator_reads,
	   pg_has_role('freshpay_reader', 'freshpay_operator', 'USAGE') AS reader_operates;

-- The tables and views of the contract, each with a comment.
SELECT c.relname, c.relkind, obj_description(c.oid, 'pg_class') IS NOT NULL AS commented
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'freshpay' AND c.relkind IN ('r', 'v')
 ORDER BY 1;
-- Every column of every table and view is commented too (no rows expected).
SELECT c.relname, a.attname
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE n.nspname = 'freshpay' AND c.relkind IN ('r', 'v')
   AND col_description(c.oid, a.attnum) IS NULL;

-- Money is numeric(12,2) everywhere, never a float.
SELECT table_name, column_name, data_type, numeric_precision, numeric_scale
  FROM information_schema.columns
 WHERE table_schema = 'freshpay'
   AND (column_name ~ 'amount' OR data_type IN ('real', 'double precision', 'money'))
 ORDER BY 1, 2;

-- Nothing of freshpay's is granted to PUBLIC (no rows expected).
SELECT table_name, privilege_type FROM information_schema.role_table_grants
 WHERE table_schema = 'freshpay' AND grantee = 'PUBLIC';
SELECT p.oid::regprocedure
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
 WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'freshpay')
   AND (p.proacl IS NULL OR EXISTS (SELECT FROM aclexplode(p.proacl) WHERE grantee = 0));

-- The settings of the contract, with their defaults and contexts.
SELECT name, setting, unit, context FROM pg_settings WHERE name LIKE 'freshpay.%' ORDER BY 1;
-- The prefix is reserved: a misspelt setting is an error, not a silent placeholder.
SET freshpay.request_timout = '5s';
