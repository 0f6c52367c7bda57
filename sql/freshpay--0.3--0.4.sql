/*
 * freshpay 0.3 → 0.4: freshpay runs by itself.  Invoices are collected per
 * their customer's rule (queued by a trigger, the worker woken at commit),
 * syncs run on a schedule, payment status changes are NOTIFYed, and the
 * worker's state and everything a person must look at are views.
 */

\echo Use "ALTER EXTENSION freshpay UPDATE TO '0.4'" to load this file. \quit

------------------------------------------------------------------------------
-- The queue takes collections of invoices
------------------------------------------------------------------------------

ALTER TABLE freshpay.jobs
	ADD COLUMN invoice_id bigint REFERENCES freshpay.invoices (id) ON DELETE CASCADE,
	DROP CONSTRAINT jobs_kind_check,
	ADD CONSTRAINT jobs_kind_check
		CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['collect_invoice', 'register_payment', 'reverse_payment', 'resolve_payment'])),
	ADD CONSTRAINT jobs_target_check
		CHECK ((kind OPERATOR(pg_catalog.=) 'collect_invoice') OPERATOR(pg_catalog.=) (invoice_id IS NOT NULL AND payment_id IS NULL));
CREATE UNIQUE INDEX jobs_collect_once ON freshpay.jobs (invoice_id)
	WHERE kind OPERATOR(pg_catalog.=) 'collect_invoice' AND state OPERATOR(pg_catalog.=) 'queued';
COMMENT ON COLUMN freshpay.jobs.kind IS 'collect_invoice, register_payment, reverse_payment or resolve_payment';
COMMENT ON COLUMN freshpay.jobs.invoice_id IS 'The invoice a collect_invoice job collects';

-- Wake the worker when the current transaction commits (not at all if it
-- rolls back): an xact callback, no polling.
CREATE FUNCTION freshpay._wake_worker_at_commit()
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_wake_worker_at_commit';
COMMENT ON FUNCTION freshpay._wake_worker_at_commit() IS
	'Internal: wakes the freshpay worker when the current transaction commits';

-- An open invoice (inserted, or a concept becoming open) of an on_issue
-- customer — or of an on_due_date customer once it is due — is queued for
-- collection in the same transaction.  Invoices falling due later are queued
-- by the worker's pass over due invoices.
CREATE FUNCTION freshpay._queue_collection()
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
					 AND c.paytrace_customer_id IS NOT NULL
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
	'Internal: queues the collection of invoices of on_issue customers';
CREATE TRIGGER invoices_queue_collection
	AFTER INSERT OR UPDATE OF status ON freshpay.invoices
	FOR EACH ROW EXECUTE FUNCTION freshpay._queue_collection();

-- Every status change of a payment is announced on channel freshpay_payment.
CREATE FUNCTION freshpay._notify_payment()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
		PERFORM pg_catalog.pg_notify('freshpay_payment', NEW.id::text);
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION freshpay._notify_payment() IS
	'Internal: NOTIFY freshpay_payment with the payment id on every status change';
CREATE TRIGGER payments_notify
	AFTER INSERT OR UPDATE OF status ON freshpay.payments
	FOR EACH ROW EXECUTE FUNCTION freshpay._notify_payment();

-- PayTrace's transactions and settlement batches are pulled too.
ALTER TABLE freshpay.sync_state
	DROP CONSTRAINT sync_state_stream_check,
	ADD CONSTRAINT sync_state_stream_check
		CHECK (stream OPERATOR(pg_catalog.=) ANY (ARRAY['customers', 'invoices', 'paytrace_transactions', 'settlements']));
COMMENT ON COLUMN freshpay.sync_state.stream IS 'customers, invoices, paytrace_transactions or settlements';

------------------------------------------------------------------------------
-- Views for people
------------------------------------------------------------------------------

CREATE FUNCTION freshpay._worker_state(
	OUT pid integer, OUT state text, OUT started_at timestamptz, OUT last_activity_at timestamptz,
	OUT in_flight integer, OUT last_error text, OUT last_error_at timestamptz,
	OUT last_sync_at timestamptz)
RETURNS record LANGUAGE C AS 'MODULE_PATHNAME', 'freshpay_worker_state';
COMMENT ON FUNCTION freshpay._worker_state() IS 'Internal: the worker''s state in shared memory';

CREATE VIEW freshpay.worker_status AS
	SELECT w.pid, w.state, w.started_at, w.last_activity_at, w.in_flight,
		   (SELECT pg_catalog.count(*) FROM freshpay.jobs j
			 WHERE j.state OPERATOR(pg_catalog.=) 'queued') AS queue_depth,
		   (SELECT pg_catalog.count(*) FROM freshpay.jobs j
			 WHERE j.state OPERATOR(pg_catalog.=) 'queued'
			   AND j.next_run_at OPERATOR(pg_catalog.<=) pg_catalog.now()) AS jobs_due,
		   (SELECT pg_catalog.count(*) FROM freshpay.jobs j
			 WHERE j.state OPERATOR(pg_catalog.=) 'dead') AS dead_jobs,
		   w.last_sync_at,
		   (SELECT pg_catalog.min(s.last_synced_at) FROM freshpay.sync_state s) AS oldest_stream_synced_at,
		   w.last_error, w.last_error_at
	  FROM freshpay._worker_state() w;
COMMENT ON VIEW freshpay.worker_status IS 'The background worker: running or not, requests in flight, queue depth, last sync and last error';
COMMENT ON COLUMN freshpay.worker_status.pid IS 'Process id of the worker; null when it does not run';
COMMENT ON COLUMN freshpay.worker_status.state IS 'stopped, starting, idle or working';
COMMENT ON COLUMN freshpay.worker_status.started_at IS 'When the worker started';
COMMENT ON COLUMN freshpay.worker_status.last_activity_at IS 'When it last finished a piece of work';
COMMENT ON COLUMN freshpay.worker_status.in_flight IS 'HTTP requests it has in flight now';
COMMENT ON COLUMN freshpay.worker_status.queue_depth IS 'Jobs queued';
COMMENT ON COLUMN freshpay.worker_status.jobs_due IS 'Jobs queued and due now';
COMMENT ON COLUMN freshpay.worker_status.dead_jobs IS 'Jobs given up (see freshpay.exceptions)';
COMMENT ON COLUMN freshpay.worker_status.last_sync_at IS 'When its last scheduled sync finished';
COMMENT ON COLUMN freshpay.worker_status.oldest_stream_synced_at IS 'The least recent last sync of any administration and stream';
COMMENT ON COLUMN freshpay.worker_status.last_error IS 'The last error the worker met';
COMMENT ON COLUMN freshpay.worker_status.last_error_at IS 'When';

CREATE VIEW freshpay.exceptions AS
	SELECT 'unknown_outcome'::text AS kind, p.administration, p.id AS payment_id, p.invoice_id,
		   NULL::bigint AS job_id,
		   pg_catalog.format('%s of %s: the answer of PayTrace was lost; freshpay is looking it up', p.kind, p.amount) AS detail,
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
COMMENT ON VIEW freshpay.exceptions IS 'Everything a person must look at: unknown outcomes, failed collections, money not registered in FreshPortal, jobs given up, amounts that disagree, settled money with no invoice';
COMMENT ON COLUMN freshpay.exceptions.kind IS 'unknown_outcome, failed_collection, not_registered_in_freshportal, dead_job, amount_mismatch or settled_without_invoice';
COMMENT ON COLUMN freshpay.exceptions.administration IS 'Administration';
COMMENT ON COLUMN freshpay.exceptions.payment_id IS 'The payment concerned, if any';
COMMENT ON COLUMN freshpay.exceptions.invoice_id IS 'The invoice concerned, if any';
COMMENT ON COLUMN freshpay.exceptions.job_id IS 'The job concerned, if any';
COMMENT ON COLUMN freshpay.exceptions.detail IS 'What is wrong';
COMMENT ON COLUMN freshpay.exceptions.since IS 'Since when';

CREATE VIEW freshpay.invoice_status AS
	SELECT i.id AS invoice_id, i.administration, i.number, c.code AS customer_code, i.type, i.status,
		   i.amount_incl_vat AS billed,
		   COALESCE(m.captured, 0)::numeric(12,2) AS captured,
		   COALESCE(m.refunded, 0)::numeric(12,2) AS refunded,
		   i.open_amount AS outstanding,
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
										   AND p.freshportal_payment_id IS NULL) AS unregistered
		  FROM freshpay.payments p WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id) m ON true
	  LEFT JOIN LATERAL (
		SELECT p.status, p.kind FROM freshpay.payments p
		 WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id ORDER BY p.id DESC LIMIT 1) l ON true;
COMMENT ON VIEW freshpay.invoice_status IS 'Per invoice: billed, captured and refunded through PayTrace, outstanding, the latest payment, and whether FreshPortal agrees';
COMMENT ON COLUMN freshpay.invoice_status.invoice_id IS 'freshpay.invoices.id';
COMMENT ON COLUMN freshpay.invoice_status.administration IS 'Administration';
COMMENT ON COLUMN freshpay.invoice_status.number IS 'Invoice number';
COMMENT ON COLUMN freshpay.invoice_status.customer_code IS 'Customer code';
COMMENT ON COLUMN freshpay.invoice_status.type IS 'invoice or credit_note';
COMMENT ON COLUMN freshpay.invoice_status.status IS 'The invoice''s status (FreshPortal''s)';
COMMENT ON COLUMN freshpay.invoice_status.billed IS 'Total including VAT';
COMMENT ON COLUMN freshpay.invoice_status.captured IS 'Captured through PayTrace (sales, ACH, captures), refunds not deducted';
COMMENT ON COLUMN freshpay.invoice_status.refunded IS 'Refunded through PayTrace';
COMMENT ON COLUMN freshpay.invoice_status.outstanding IS 'Still to collect as freshpay knows it: a capture not yet registered in FreshPortal counts as paid';
COMMENT ON COLUMN freshpay.invoice_status.freshportal_open_amount IS 'The open amount FreshPortal last reported (sync or write-back)';
COMMENT ON COLUMN freshpay.invoice_status.latest_payment_status IS 'Status of the latest payment row of the invoice';
COMMENT ON COLUMN freshpay.invoice_status.latest_payment_kind IS 'Kind of the latest payment row of the invoice';
COMMENT ON COLUMN freshpay.invoice_status.freshportal_agrees IS 'Every capture is registered in FreshPortal and FreshPortal''s open amount is freshpay''s';

CREATE VIEW freshpay.reconciliation AS
	SELECT p.administration, p.batch_number, COALESCE(p.settled_at, s.settled_at) AS settled_at,
		   p.id AS payment_id, p.kind, p.paytrace_transaction_id, p.amount, p.refunded_amount,
		   p.invoice_id, i.number AS invoice_number, c.id AS customer_id, c.code AS customer_code,
		   CASE
			 WHEN p.invoice_id IS NULL THEN 'unmatched'
			 WHEN s.batch_number IS NULL THEN 'batch_unknown'
			 WHEN p.kind OPERATOR(pg_catalog.<>) 'refund' AND p.freshportal_payment_id IS NULL
				  AND p.status OPERATOR(pg_catalog.=) 'captured' THEN 'not_in_freshportal'
			 WHEN p.amount OPERATOR(pg_catalog.>) i.amount_incl_vat THEN 'amount_mismatch'
			 ELSE 'matched'
		   END AS match,
		   CASE
			 WHEN p.invoice_id IS NULL THEN 'the transaction names no invoice freshpay knows'
			 WHEN s.batch_number IS NULL THEN 'the settlement batch has not been pulled (freshpay_sync)'
			 WHEN p.kind OPERATOR(pg_catalog.<>) 'refund' AND p.freshportal_payment_id IS NULL
				  AND p.status OPERATOR(pg_catalog.=) 'captured' THEN 'captured but not registered in FreshPortal'
			 WHEN p.amount OPERATOR(pg_catalog.>) i.amount_incl_vat THEN 'more than the invoice''s total'
			 ELSE 'batch, transaction, invoice and customer agree'
		   END AS match_reason
	  FROM freshpay.payments p
	  LEFT JOIN freshpay.settlements s ON s.administration OPERATOR(pg_catalog.=) p.administration
		   AND s.batch_number OPERATOR(pg_catalog.=) p.batch_number
	  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id
	  LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) COALESCE(p.customer_id, i.customer_id)
	 WHERE p.batch_number IS NOT NULL;
COMMENT ON VIEW freshpay.reconciliation IS 'Per settled transaction: batch → payment → invoice → customer, with a match verdict and its reason';
COMMENT ON COLUMN freshpay.reconciliation.administration IS 'Administration';
COMMENT ON COLUMN freshpay.reconciliation.batch_number IS 'PayTrace settlement batch';
COMMENT ON COLUMN freshpay.reconciliation.settled_at IS 'When it settled';
COMMENT ON COLUMN freshpay.reconciliation.payment_id IS 'freshpay.payments.id';
COMMENT ON COLUMN freshpay.reconciliation.kind IS 'Kind of the payment';
COMMENT ON COLUMN freshpay.reconciliation.paytrace_transaction_id IS 'PayTrace transaction id';
COMMENT ON COLUMN freshpay.reconciliation.amount IS 'Amount settled';
COMMENT ON COLUMN freshpay.reconciliation.refunded_amount IS 'Refunded since';
COMMENT ON COLUMN freshpay.reconciliation.invoice_id IS 'Invoice collected, if matched';
COMMENT ON COLUMN freshpay.reconciliation.invoice_number IS 'Its number';
COMMENT ON COLUMN freshpay.reconciliation.customer_id IS 'Customer charged';
COMMENT ON COLUMN freshpay.reconciliation.customer_code IS 'Its code';
COMMENT ON COLUMN freshpay.reconciliation.match IS 'matched, unmatched, batch_unknown, not_in_freshportal or amount_mismatch';
COMMENT ON COLUMN freshpay.reconciliation.match_reason IS 'Why, in words';

REVOKE ALL ON freshpay.invoice_status, freshpay.reconciliation FROM PUBLIC;
GRANT SELECT ON freshpay.invoice_status, freshpay.reconciliation TO freshpay_reader;

REVOKE ALL ON FUNCTION freshpay._wake_worker_at_commit(), freshpay._queue_collection(),
	freshpay._notify_payment(), freshpay._worker_state() FROM PUBLIC;
REVOKE ALL ON freshpay.worker_status, freshpay.exceptions FROM PUBLIC;
GRANT SELECT ON freshpay.worker_status, freshpay.exceptions TO freshpay_reader;
GRANT EXECUTE ON FUNCTION freshpay._worker_state() TO freshpay_reader;
