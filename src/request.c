/*-------------------------------------------------------------------------
 *
 * request.c
 *	  Payment requests (contract section 10): PayTrace e-mails the customer
 *	  a link to its hosted payment page, so a customer without a vault
 *	  profile can pay; freshpay never sees a card or bank number.
 *
 * A request is a flow of the worker's pipeline, durable like a money call:
 *
 *	  START      a transaction checks the call against local data: an open
 *	             USD invoice, an e-mail address, an administration with a
 *	             PayTrace merchant id (API v3), no request of the invoice
 *	             still open
 *	  REREAD     GET the invoice from FreshPortal: what is open now
 *	  RECORD     a transaction expires the invoice's requests past their
 *	             expires_at and records this one 'pending'; COMMIT; then
 *	             POST /v3/invoice
 *	  SENT       the answer: 'sent' with PayTrace's id; 'unknown' when it
 *	             was lost (PayTrace may have e-mailed the link: never sent
 *	             again by itself); 'failed' when nothing was sent
 *
 * A partial unique index allows one open request (pending, unknown, sent)
 * per invoice.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "administration.h"
#include "freshportal.h"
#include "jobs.h"
#include "mailbox.h"
#include "money.h"
#include "paytrace_v3.h"
#include "plan.h"
#include "request.h"
#include "spi_txn.h"

/* How long a request the collection rules send stays valid. */
#define REQUEST_JOB_EXPIRY_S (14 * 24 * 3600L)

/* The longest a link may stay valid. */
#define REQUEST_MAX_EXPIRY_S (366 * 24 * 3600L)

typedef enum RequestState
{
	REQUEST_START,
	REQUEST_REREAD,
	REQUEST_SENT
} RequestState;

typedef struct Request
{
	RequestState state;
	int			slot;
	MoneyCall	call;
	CallPlan	plan;			/* invoice, customer, amount */
	char	   *customer_name;
	char	   *email;
	Administration *admin;
	FpCall	   *reread;
	PtV3Call   *v3;
	int64		request_id;
} Request;

void
request_for_call(Flow *f, int slot, const MoneyCall *call)
{
	Request    *r = MemoryContextAllocZero(f->context, sizeof(Request));

	r->slot = slot;
	r->call = *call;
	f->state = r;
}

/*
 * A collect_invoice job whose customer has no vault profile: its flow
 * becomes a payment request's (mode sale_and_onboard, to the customer's
 * e-mail, valid 14 days), and the job ends with the request.
 */
void
request_for_job(Flow *f)
{
	Request    *r = MemoryContextAllocZero(f->context, sizeof(Request));

	r->slot = -1;
	r->call.op = MONEY_REQUEST;
	r->call.target_id = f->job.invoice_id;
	strlcpy(r->call.mode, "sale_and_onboard", sizeof(r->call.mode));
	r->call.expires_in_s = REQUEST_JOB_EXPIRY_S;
	strlcpy(r->call.requested_by, "freshpay worker", sizeof(r->call.requested_by));
	f->kind = FLOW_REQUEST;
	f->state = r;
}

/* Good enough to send: one @, something on each side, a dot in the domain, no spaces. */
static bool
email_valid(const char *email)
{
	const char *at = strchr(email, '@');
	size_t		len = strlen(email);

	if (len < 3 || len > 254 || at == NULL || at == email || strchr(at + 1, '@') != NULL ||
		strchr(at + 1, '.') == NULL || at[1] == '.' || email[len - 1] == '.')
		return false;
	for (const char *c = email; *c; c++)
		if (*c <= 0x20 || *c >= 0x7f || *c == ',' || *c == ';' || *c == '<' || *c == '>')
			return false;
	return true;
}

/* The mode as PayTrace's transaction_type [C]. */
static const char *
transaction_type_of(const char *mode)
{
	if (strcmp(mode, "sale") == 0)
		return "SALE";
	if (strcmp(mode, "authorize") == 0)
		return "AUTHORIZATION";
	if (strcmp(mode, "sale_and_onboard") == 0)
		return "SALE_AND_CUSTOMER";
	if (strcmp(mode, "onboard") == 0)
		return "CREATE_CUSTOMER";
	return NULL;
}

/* START: the checks against local data, in one transaction. */
static void
start_request(Flow *f, Request *r)
{
	MemoryContext caller = fp_txn_begin();
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(r->call.target_id)};
	MoneyCall	collect = {0};

	MemoryContextSwitchTo(f->context);
	if (transaction_type_of(r->call.mode) == NULL)
		fp_refuse(ERRCODE_INVALID_PARAMETER_VALUE,
				  "Use sale, authorize, sale_and_onboard (pay and store the card) or onboard (store a card, no payment).",
				  "invalid payment request mode \"%s\"", r->call.mode);
	if (r->call.expires_in_s <= 0 || r->call.expires_in_s > REQUEST_MAX_EXPIRY_S)
		fp_refuse(ERRCODE_INVALID_PARAMETER_VALUE,
				  "Give an interval between one second and one year.",
				  "expires_in must be positive and at most a year");

	/* The invoice's checks are a collection's, without the vault profile. */
	collect.op = MONEY_CAPTURE;
	collect.target_id = r->call.target_id;
	plan_request_checks(&r->plan, &collect, f->context);

	if (fp_spi_run("SELECT c.name, c.email,"
				   "       (SELECT q.status OPERATOR(pg_catalog.||) ' until ' OPERATOR(pg_catalog.||) q.expires_at::text"
				   "          FROM freshpay.payment_requests q"
				   "         WHERE q.invoice_id OPERATOR(pg_catalog.=) i.id"
				   "           AND q.status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown', 'sent'])"
				   "           AND (q.status OPERATOR(pg_catalog.=) 'pending'"
				   "                OR q.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()))"
				   "  FROM freshpay.invoices i"
				   "  LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) i.customer_id"
				   " WHERE i.id OPERATOR(pg_catalog.=) $1",
				   1, types, values, NULL, SPI_OK_SELECT) != 1)
		elog(ERROR, "invoice " INT64_FORMAT " vanished", r->call.target_id);
	r->customer_name = fp_spi_text(f->context, 1);
	/* SPI calls leave CurrentMemoryContext at SPI's: copy into the flow's own. */
	r->email = r->call.email[0] ? MemoryContextStrdup(f->context, r->call.email) : fp_spi_text(f->context, 2);
	if (fp_spi_text(f->context, 3) != NULL)
		fp_refuse(ERRCODE_OBJECT_IN_USE,
				  "Wait for the customer to pay, or for the request to expire; freshpay.payment_requests shows it.",
				  "a payment request for invoice %s is already open (%s)", r->plan.invoice_number,
				  fp_spi_text(f->context, 3));
	if (r->email == NULL || r->email[0] == '\0')
		fp_refuse(ERRCODE_INVALID_PARAMETER_VALUE,
				  "Give the e-mail address to send the link to: freshpay_request_payment(invoice_id, email => '...').",
				  "customer of invoice %s has no e-mail address", r->plan.invoice_number);
	if (!email_valid(r->email))
		fp_refuse(ERRCODE_INVALID_PARAMETER_VALUE,
				  "Give one address such as ap@florist.example.",
				  "\"%s\" is not a valid e-mail address", r->email);
	r->admin = administration_load(r->plan.administration, f->context);
	paytrace_v3_require(r->admin, "a payment request");
	fp_txn_commit(caller);
}

static void not_sent(Flow *f, Request *r) pg_attribute_noreturn();

/* RECORD: expire what has expired, record this request; then send it. */
static void
record_and_send(Flow *f, Request *r)
{
	MemoryContext caller;
	TimestampTz expires_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 r->call.expires_in_s * 1000L);
	bool		onboard = strcmp(r->call.mode, "onboard") == 0;
	Oid			types[] = {TEXTOID, INT8OID, INT8OID, TEXTOID, NUMERICOID, TEXTOID, TEXTOID,
	TIMESTAMPTZOID};
	Datum		values[] = {
		CStringGetTextDatum(r->plan.administration),
		Int64GetDatum(r->plan.invoice_id),
		Int64GetDatum(r->plan.customer_id),
		CStringGetTextDatum(r->call.mode),
		money_numeric(onboard ? "0" : r->plan.amount),
		CStringGetTextDatum(r->email),
		CStringGetTextDatum(r->call.requested_by),
		TimestampTzGetDatum(expires_at)
	};
	char		nulls[] = {' ', ' ', r->plan.customer_id ? ' ' : 'n', ' ', ' ', ' ', ' ', ' '};
	PtV3Invoice inv = {0};

	/* The token first: without one nothing is recorded, and the caller is told. */
	paytrace_v3_prepare(r->admin);
	caller = fp_txn_begin();
	MemoryContextSwitchTo(f->context);
	fp_spi_run("UPDATE freshpay.payment_requests SET status = 'expired', updated_at = pg_catalog.now()"
			   " WHERE invoice_id OPERATOR(pg_catalog.=) $1"
			   "   AND status OPERATOR(pg_catalog.=) ANY (ARRAY['unknown', 'sent'])"
			   "   AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()",
			   1, &types[1], &values[1], NULL, SPI_OK_UPDATE);
	fp_spi_run("INSERT INTO freshpay.payment_requests"
			   " (administration, invoice_id, customer_id, mode, amount, email, requested_by, expires_at)"
			   " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
			   8, types, values, nulls, SPI_OK_INSERT_RETURNING);
	fp_spi_int64(1, &r->request_id);
	fp_txn_commit(caller);
	MemoryContextSwitchTo(f->context);
	if (r->slot >= 0)
		mailbox_progress(r->slot, r->request_id);

	inv.transaction_type = transaction_type_of(r->call.mode);
	inv.invoice_number = r->plan.invoice_number;
	inv.amount = onboard ? "0.00" : r->plan.amount;
	inv.email = r->email;
	inv.customer_label = r->customer_name;
	inv.expire_at = expires_at;
	PG_TRY();
	{
		r->v3 = paytrace_v3_invoice_call(r->admin, &inv);
		paytrace_v3_send(r->v3, f, f->priority);
	}
	PG_CATCH();
	{
		/* Nothing left: the request is failed, and may be asked again. */
		not_sent(f, r);
	}
	PG_END_TRY();
	r->state = REQUEST_SENT;
}

typedef struct RequestOutcome
{
	int64		request_id;
	const char *status;
	const char *paytrace_request_id;
	const char *message;
} RequestOutcome;

static void
record_outcome_step(void *arg)
{
	RequestOutcome *o = arg;
	Oid			types[] = {INT8OID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[] = {
		Int64GetDatum(o->request_id), CStringGetTextDatum(o->status),
		o->paytrace_request_id ? CStringGetTextDatum(o->paytrace_request_id) : (Datum) 0,
		o->message ? CStringGetTextDatum(o->message) : (Datum) 0
	};
	char		nulls[] = {' ', ' ', o->paytrace_request_id ? ' ' : 'n', o->message ? ' ' : 'n'};

	fp_spi_run("UPDATE freshpay.payment_requests"
			   "   SET status = $2, paytrace_request_id = COALESCE($3, paytrace_request_id),"
			   "       message = $4, updated_at = pg_catalog.now()"
			   " WHERE id OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.=) 'pending'",
			   4, types, values, nulls, SPI_OK_UPDATE);
}

/* Record the outcome in a transaction of its own, whatever state the caller's error left. */
static void
record_outcome(int64 request_id, const char *status, const char *id, const char *message)
{
	RequestOutcome o = {request_id, status, id, message};

	if (!fp_txn_on_the_side(record_outcome_step, &o))
		elog(WARNING, "freshpay worker: could not record the outcome of payment request " INT64_FORMAT
			 "; it stays pending and becomes unknown when the worker restarts", request_id);
}

/* An error before the request left (or while a refused token was renewed): 'failed', then the error. */
static void
not_sent(Flow *f, Request *r)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(f->context);
	edata = CopyErrorData();
	FlushErrorState();
	record_outcome(r->request_id, "failed", NULL, psprintf("Not sent: %s", edata->message));
	ReThrowError(edata);
}

/* SENT: what PayTrace's answer says, recorded; a refusal is the caller's error too. */
static void
record_answer(Flow *f, Request *r, const HttpResponse *response)
{
	bool		lost = false;
	char	   *why = NULL;
	char	   *volatile id = NULL;

	PG_TRY();
	{
		id = paytrace_v3_invoice_of(r->v3, response, &lost, &why);
	}
	PG_CATCH();
	{
		/* PayTrace refused it: nothing was sent to the customer. */
		ErrorData  *edata;

		MemoryContextSwitchTo(f->context);
		edata = CopyErrorData();
		FlushErrorState();
		record_outcome(r->request_id, "failed", NULL, edata->message);
		ReThrowError(edata);
	}
	PG_END_TRY();
	record_outcome(r->request_id, id ? "sent" : lost ? "unknown" : "failed", id, why);
}

static FlowStep
advance(Flow *f, Request *r, const HttpResponse *response)
{
	switch (r->state)
	{
		case REQUEST_START:
			start_request(f, r);
			r->reread = freshportal_get_invoice_call(r->admin, r->plan.freshportal_invoice_id);
			freshportal_send(r->reread, f, f->priority);
			r->state = REQUEST_REREAD;
			return FLOW_WAITING;

		case REQUEST_REREAD:
			if (!freshportal_answered(r->reread, response, f, f->priority))
				return FLOW_WAITING;
			plan_check_invoice(&r->plan, freshportal_invoice_of(r->reread, response), false);
			record_and_send(f, r);
			return FLOW_WAITING;

		case REQUEST_SENT:
			{
				volatile bool answered = false;

				/* A 401 renews the token and sends again; failing that, nothing was sent. */
				PG_TRY();
				{
					answered = paytrace_v3_answered(r->v3, response, f, f->priority);
				}
				PG_CATCH();
				{
					not_sent(f, r);
				}
				PG_END_TRY();
				if (!answered)
					return FLOW_WAITING;
			}
			record_answer(f, r, response);
			return FLOW_DONE;
	}
	return FLOW_DONE;			/* keep compiler quiet */
}

/*
 * Step a payment request's flow.  An error before it was sent is the
 * caller's; after, the outcome is recorded and the caller gets the row.
 */
FlowStep
request_step(Flow *f, const HttpResponse *response)
{
	MemoryContext outer = CurrentMemoryContext;
	Request    *r = f->state;
	volatile FlowStep next = FLOW_DONE;
	MoneyAnswer answer = {0};

	PG_TRY();
	{
		MemoryContextSwitchTo(f->context);
		next = advance(f, r, response);
	}
	PG_CATCH();
	{
		ErrorData  *edata = fp_txn_catch(outer);

		if (r->slot < 0)
		{
			/* A job: retried with backoff, or ended when retrying cannot mend it. */
			char	   *error = fp_error_text(edata);

			worker_status_error(error);
			job_update(&f->job, false, 0, error, job_is_permanent(edata->sqlerrcode), -1);
		}
		answer.sqlerrcode = edata->sqlerrcode ? edata->sqlerrcode : ERRCODE_INTERNAL_ERROR;
		strlcpy(answer.message, edata->message ? edata->message : "", sizeof(answer.message));
		strlcpy(answer.detail, edata->detail ? edata->detail : "", sizeof(answer.detail));
		strlcpy(answer.hint, edata->hint ? edata->hint : "", sizeof(answer.hint));
		next = FLOW_DONE;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(outer);
	if (next == FLOW_DONE && r->slot >= 0)
	{
		answer.payment_id = r->request_id;
		mailbox_answer(r->slot, &answer);
	}
	else if (next == FLOW_DONE && answer.sqlerrcode == 0 && f->job.id != 0)
		job_update(&f->job, true, 0, NULL, false, -1);
	return next;
}

/*
 * On worker start: a request left 'pending' by a previous worker was maybe
 * sent; it becomes 'unknown' and is never sent again by itself.
 */
void
request_recover(void)
{
	MemoryContext caller = fp_txn_begin();
	int64		n;

	n = fp_spi_run("UPDATE freshpay.payment_requests SET status = 'unknown', updated_at = pg_catalog.now(),"
				   "       message = 'The worker restarted while it was being sent; PayTrace may have e-mailed the link.'"
				   " WHERE status OPERATOR(pg_catalog.=) 'pending'",
				   0, NULL, NULL, NULL, SPI_OK_UPDATE);
	fp_txn_commit(caller);
	if (n > 0)
		elog(LOG, "freshpay worker: " INT64_FORMAT " payment requests were being sent at restart; they are unknown", n);
}
