/*-------------------------------------------------------------------------
 *
 * collect.c
 *	  The SQL money functions: freshpay_capture, freshpay_authorize,
 *	  freshpay_void, freshpay_refund, freshpay_reverse,
 *	  freshpay_capture_statement.
 *
 * They run in the caller's backend but move no money themselves: the call
 * goes to the background worker (mailbox.c), which records the attempt,
 * sends it and records the outcome in transactions of its own (attempt.c).
 * So the record survives whatever happens to the caller's transaction, and
 * the caller gets the resulting freshpay.payments row, read with a fresh
 * snapshot since the worker committed it after this statement began.
 *
 * Also the parser hooks the regression tests feed PayTrace's recorded
 * answers to.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "mailbox.h"
#include "paytrace.h"
#include "settings.h"

/* The largest amount freshpay stores: numeric(12,2). */
#define AMOUNT_MAX "9999999999.99"

/* The amount argument as numeric text with two decimals, checked. */
static void
amount_argument(FunctionCallInfo fcinfo, int argno, MoneyCall *call)
{
	Numeric		amount;
	Datum		rounded;
	Datum		max;

	if (PG_ARGISNULL(argno))
		return;
	amount = PG_GETARG_NUMERIC(argno);
	if (numeric_is_nan(amount) || numeric_is_inf(amount))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be a number of dollars"),
				 errhint("Give an amount such as 590.00, or NULL for the default.")));
	rounded = DirectFunctionCall2(numeric_round, NumericGetDatum(amount), Int32GetDatum(2));
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, rounded, NumericGetDatum(amount))) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount %s has more than two decimals",
						DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(amount)))),
				 errhint("Amounts are in dollars and cents.")));
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, rounded,
										  DirectFunctionCall1(int4_numeric, Int32GetDatum(0)))) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be greater than zero"),
				 errhint("Give a positive amount, or NULL for the default.")));
	/* Refused here, where the whole number can still be named. */
	max = DirectFunctionCall3(numeric_in, CStringGetDatum(AMOUNT_MAX),
							  ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, rounded, max)) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("amount %s is out of range",
						DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(amount)))),
				 errdetail("Amounts are at most %s dollars.", AMOUNT_MAX),
				 errhint("Amounts are in dollars and cents.")));
	if (strlcpy(call->amount, DatumGetCString(DirectFunctionCall1(numeric_out, rounded)),
				sizeof(call->amount)) >= sizeof(call->amount))
		elog(ERROR, "amount does not fit in a money call");
	call->has_amount = true;
}

/*
 * A row the worker committed after our snapshot was taken: the first column
 * of sql (which takes the id), and the second as text in *second when asked
 * for.  The statement's plan is kept for the session in *plan.
 */
static Datum
committed_row(SPIPlanPtr *plan, const char *sql, int64 id, const char *what, char **second)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(id)};
	Datum		row;
	bool		isnull;

	SPI_connect();
	if (*plan == NULL)
	{
		SPIPlanPtr	prepared = SPI_prepare(sql, 1, types);

		if (prepared == NULL || SPI_keepplan(prepared) != 0)
			elog(ERROR, "could not prepare the statement reading the %s", what);
		*plan = prepared;
	}
	if (SPI_execute_snapshot(*plan, values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "%s " INT64_FORMAT " recorded by the worker cannot be read", what, id);
	row = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	row = SPI_datumTransfer(row, false, -1);
	if (second != NULL)
	{
		/* SPI_getvalue allocates in SPI's memory: copy out before it goes. */
		char	   *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

		*second = SPI_palloc(strlen(value) + 1);
		strcpy(*second, value);
	}
	SPI_finish();
	return row;
}

/*
 * Hand the call to the worker and wait for its answer; its error is raised
 * here, in the caller's session.  Returns the id of the row it recorded in
 * freshpay.<table>.
 */
static int64
call_worker(const MoneyCall *call, const char *table)
{
	MoneyAnswer answer;

	/*
	 * The worker re-reads the invoice, then PayTrace answers within the
	 * timeout; a statement also asks PayTrace what it holds of each invoice.
	 */
	int			rounds = call->op == MONEY_STATEMENT ? 3 : 2;
	int			timeout_ms = (int) Min((int64) (freshpay_request_timeout + freshpay_connect_timeout) * rounds + 30000,
									   (int64) PG_INT32_MAX);

	if (!mailbox_call(call, &answer, timeout_ms))
	{
		if (answer.payment_id == 0)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("the freshpay worker did not answer in time"),
					 errdetail("The call may still be recorded and carried out by the worker."),
					 errhint("Look at freshpay.%s before trying again.", table)));
		answer.sqlerrcode = 0;
	}
	if (answer.sqlerrcode != 0)
		ereport(ERROR,
				(errcode(answer.sqlerrcode),
				 errmsg_internal("%s", answer.message),
				 answer.detail[0] ? errdetail_internal("%s", answer.detail) : 0,
				 answer.hint[0] ? errhint("%s", answer.hint) : 0));
	return answer.payment_id;
}

/* The payments row, and its status. */
static Datum
payment_row(int64 payment_id, char **status)
{
	static SPIPlanPtr plan = NULL;

	return committed_row(&plan, "SELECT p, p.status FROM freshpay.payments p WHERE p.id OPERATOR(pg_catalog.=) $1",
						 payment_id, "payment", status);
}

/*
 * The call goes to the worker as the calling user's; the payments row it
 * recorded is the answer, with a WARNING when its outcome is not known yet.
 */
static Datum
payment_answer(MoneyCall *call)
{
	char	   *status;
	Datum		row;
	int64		payment_id;

	strlcpy(call->requested_by, GetUserNameFromId(GetUserId(), false), sizeof(call->requested_by));
	payment_id = call_worker(call, "payments");
	row = payment_row(payment_id, &status);
	if (strcmp(status, "unknown") == 0 || strcmp(status, "pending") == 0)
		ereport(WARNING,
				(errmsg("the outcome of payment " INT64_FORMAT " is not known yet", payment_id),
				 errdetail("The answer of PayTrace was lost or is late; freshpay looks the transaction up at PayTrace and records the outcome. Nothing is sent again before that."),
				 errhint("Follow it in freshpay.payments and freshpay.payment_history.")));
	return row;
}

/*
 * A call of op on the first argument, named what, which must not be null;
 * from this database only (the worker would take our ids for those of its
 * own).
 */
static void
call_on(MoneyCall *call, FunctionCallInfo fcinfo, const char *function, MoneyOp op, const char *what)
{
	mailbox_require_worker_database(function);
	call->database_id = MyDatabaseId;
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	call->op = op;
	call->target_id = PG_GETARG_INT64(0);
}

static Datum
money_call(FunctionCallInfo fcinfo, const char *function, MoneyOp op, const char *what,
		   bool takes_amount)
{
	MoneyCall	call = {0};

	call_on(&call, fcinfo, function, op, what);
	if (takes_amount)
		amount_argument(fcinfo, 1, &call);
	PG_RETURN_DATUM(payment_answer(&call));
}

PG_FUNCTION_INFO_V1(freshpay_capture);
PG_FUNCTION_INFO_V1(freshpay_authorize);
PG_FUNCTION_INFO_V1(freshpay_void);
PG_FUNCTION_INFO_V1(freshpay_refund);
PG_FUNCTION_INFO_V1(freshpay_reverse);

Datum
freshpay_capture(PG_FUNCTION_ARGS)
{
	return money_call(fcinfo, "freshpay_capture", MONEY_CAPTURE, "invoice_id", true);
}

Datum
freshpay_authorize(PG_FUNCTION_ARGS)
{
	return money_call(fcinfo, "freshpay_authorize", MONEY_AUTHORIZE, "invoice_id", true);
}

Datum
freshpay_void(PG_FUNCTION_ARGS)
{
	return money_call(fcinfo, "freshpay_void", MONEY_VOID, "payment_id", false);
}

Datum
freshpay_refund(PG_FUNCTION_ARGS)
{
	return money_call(fcinfo, "freshpay_refund", MONEY_REFUND, "payment_id", true);
}

Datum
freshpay_reverse(PG_FUNCTION_ARGS)
{
	return money_call(fcinfo, "freshpay_reverse", MONEY_REVERSE, "invoice_id", false);
}

PG_FUNCTION_INFO_V1(freshpay_capture_statement);

/*
 * freshpay_capture_statement(customer_id, invoice_ids DEFAULT NULL): one
 * PayTrace sale for several open invoices of the customer (statement.c).
 * The list is checked here as far as it can be without the data: not
 * empty, no NULL, no invoice twice, at most STATEMENT_MAX_INVOICES.
 */
Datum
freshpay_capture_statement(PG_FUNCTION_ARGS)
{
	MoneyCall	call = {0};

	call_on(&call, fcinfo, "freshpay_capture_statement", MONEY_STATEMENT, "customer_id");
	if (!PG_ARGISNULL(1))
	{
		ArrayType  *array = PG_GETARG_ARRAYTYPE_P(1);
		Datum	   *ids;
		bool	   *nulls;
		int			n;

		if (ARR_NDIM(array) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("invoice_ids must be a one-dimensional array")));
		deconstruct_array(array, INT8OID, 8, true, TYPALIGN_DOUBLE, &ids, &nulls, &n);
		if (n == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invoice_ids is empty: a statement needs invoices"),
					 errhint("Name the invoices to collect, or pass NULL for every open invoice due by today.")));
		if (n > STATEMENT_MAX_INVOICES)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("a statement names at most %d invoices, not %d", STATEMENT_MAX_INVOICES, n),
					 errhint("Collect them in several statements.")));
		for (int i = 0; i < n; i++)
		{
			if (nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("invoice_ids must not contain NULL")));
			for (int j = 0; j < i; j++)
				if (DatumGetInt64(ids[j]) == DatumGetInt64(ids[i]))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("invoice " INT64_FORMAT " is named twice in invoice_ids", DatumGetInt64(ids[i])),
							 errhint("Name each invoice once; a statement collects what is open of it.")));
			call.invoice_ids[i] = DatumGetInt64(ids[i]);
		}
		call.n_invoices = n;
	}
	PG_RETURN_DATUM(payment_answer(&call));
}

/* The payment_requests row the worker committed. */
static Datum
request_row(int64 request_id)
{
	static SPIPlanPtr plan = NULL;

	return committed_row(&plan, "SELECT q FROM freshpay.payment_requests q WHERE q.id OPERATOR(pg_catalog.=) $1",
						 request_id, "payment request", NULL);
}

PG_FUNCTION_INFO_V1(freshpay_request_payment);

/*
 * freshpay_request_payment(invoice_id, mode, email, expires_in): the worker
 * records the request, then sends it (contract section 10).
 */
Datum
freshpay_request_payment(PG_FUNCTION_ARGS)
{
	MoneyCall	call = {0};

	call_on(&call, fcinfo, "freshpay_request_payment", MONEY_REQUEST, "invoice_id");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("mode must not be null"),
				 errhint("Use sale, authorize, sale_and_onboard or onboard.")));
	if (VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(1)) >= sizeof(call.mode))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid payment request mode"),
				 errhint("Use sale, authorize, sale_and_onboard or onboard.")));
	text_to_cstring_buffer(PG_GETARG_TEXT_PP(1), call.mode, sizeof(call.mode));
	if (!PG_ARGISNULL(2))
	{
		text	   *email = PG_GETARG_TEXT_PP(2);

		if (VARSIZE_ANY_EXHDR(email) >= sizeof(call.email) || VARSIZE_ANY_EXHDR(email) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("email must be 1 to %d characters", (int) sizeof(call.email) - 1)));
		text_to_cstring_buffer(email, call.email, sizeof(call.email));
	}
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("expires_in must not be null")));
	{
		Interval   *span = PG_GETARG_INTERVAL_P(3);
		int64		seconds = span->time / USECS_PER_SEC;

		/* Months and days as the calendar's average; refused if not positive or too long. */
		if (span->month > 24 || span->month < -24 || span->day > 800 || span->day < -800)
			seconds = span->month > 0 || span->day > 0 ? PG_INT64_MAX / 2 : -1;
		else
			seconds += ((int64) span->month * DAYS_PER_MONTH + span->day) * SECS_PER_DAY;
		call.expires_in_s = seconds;
	}
	strlcpy(call.requested_by, GetUserNameFromId(GetUserId(), false), sizeof(call.requested_by));

	PG_RETURN_DATUM(request_row(call_worker(&call, "payment_requests")));
}

static const char *
outcome_name(PtOutcome outcome)
{
	static const char *const names[] = {
		[PT_APPROVED] = "approved",
		[PT_AUTO_VOIDED] = "auto_voided",
		[PT_DECLINED] = "declined",
		[PT_REJECTED] = "rejected",
		[PT_NOT_SENT] = "not_sent",
		[PT_RETRY_LATER] = "retry_later",
		[PT_UNKNOWN] = "unknown",
	};

	return names[outcome];
}

static const char *
state_name(PtState state)
{
	static const char *const names[] = {
		[PT_STATE_PENDING_SETTLEMENT] = "pending_settlement",
		[PT_STATE_SETTLED] = "settled",
		[PT_STATE_AUTHORIZED] = "authorized",
		[PT_STATE_VOIDED] = "voided",
		[PT_STATE_DECLINED] = "declined",
		[PT_STATE_OTHER] = "other",
	};

	return names[state];
}

PG_FUNCTION_INFO_V1(freshpay_paytrace_parse_result);

/* freshpay._paytrace_parse_result(http_status, body): for parser tests. */
Datum
freshpay_paytrace_parse_result(PG_FUNCTION_ARGS)
{
	text	   *body = PG_GETARG_TEXT_PP(1);
	PtResult   *r = paytrace_parse_result(PG_GETARG_INT32(0), VARDATA_ANY(body),
										  VARSIZE_ANY_EXHDR(body));
	TupleDesc	desc;
	Datum		values[6];
	bool		nulls[6] = {0};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = CStringGetTextDatum(outcome_name(r->outcome));
	values[1] = Int32GetDatum(r->response_code);
	nulls[1] = r->response_code == 0;
	values[2] = Int64GetDatum(r->transaction_id);
	nulls[2] = !r->has_transaction_id;
	values[3] = r->approval_code ? CStringGetTextDatum(r->approval_code) : (Datum) 0;
	nulls[3] = r->approval_code == NULL;
	values[4] = r->message ? CStringGetTextDatum(r->message) : (Datum) 0;
	nulls[4] = r->message == NULL;
	values[5] = r->error_codes ? CStringGetTextDatum(r->error_codes) : (Datum) 0;
	nulls[5] = r->error_codes == NULL;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

PG_FUNCTION_INFO_V1(freshpay_paytrace_parse_export);

/* freshpay._paytrace_parse_export(body): for parser tests. */
Datum
freshpay_paytrace_parse_export(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *body = PG_GETARG_TEXT_PP(0);
	List	   *transactions;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	transactions = paytrace_parse_export(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body));
	foreach(lc, transactions)
	{
		PtTransaction *t = lfirst(lc);
		Datum		values[8];
		bool		nulls[8] = {0};

		values[0] = Int64GetDatum(t->transaction_id);
		values[1] = t->type ? CStringGetTextDatum(t->type) : (Datum) 0;
		nulls[1] = t->type == NULL;
		values[2] = t->amount;
		values[3] = CStringGetTextDatum(t->invoice_id);
		values[4] = CStringGetTextDatum(state_name(t->state));
		values[5] = Int32GetDatum(t->batch_number);
		nulls[5] = t->batch_number == 0;
		values[6] = TimestampTzGetDatum(t->settled_at);
		nulls[6] = !t->has_settled_at;
		values[7] = TimestampTzGetDatum(t->created_at);
		nulls[7] = !t->has_created_at;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
