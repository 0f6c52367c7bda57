/*-------------------------------------------------------------------------
 *
 * harness.c
 *	  libFuzzer targets for freshpay's parsers of remote input, run inside a
 *	  real PostgreSQL backend.
 *
 * The parsers use the backend for everything (palloc, ereport, numeric_in,
 * date_in, timestamptz_in, jsonb_in), so they are fuzzed where they run: this
 * file is built, with src/jsonconv.c, src/paytrace.c, src/freshportal.c and
 * stubs.c, into a loadable module (freshpay_fuzz.so) that carries libFuzzer
 * (libclang_rt.fuzzer_no_main).  The SQL function
 *
 *		freshpay_fuzz(target text, args text[]) RETURNS int
 *
 * hands args to LLVMFuzzerRunDriver; libFuzzer then calls run_input() for
 * every input and ends the process when it is done (a throwaway single-user
 * backend: see test/fuzz/run).
 *
 * Per input: the input is copied into a malloc'd block of exactly len + 1
 * bytes (NUL-terminated, like an HTTP body), every step of the target runs
 * in its own PG_TRY, and a per-input memory context is reset afterwards.
 * An ERROR is the parser rejecting the input: normal.  A crash, a sanitizer
 * report, an internal error (XX000, "can't happen") or a broken invariant
 * (fuzz_assert) is a finding: the process aborts and libFuzzer keeps the
 * input.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdio.h>
#include <stdlib.h>

#include "json_prelude.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "freshportal.h"
#include "jsonconv.h"
#include "paytrace.h"

#include "fuzz.h"

PG_MODULE_MAGIC;

extern int	LLVMFuzzerRunDriver(int *argc, char ***argv,
								int (*callback) (const uint8_t *data, size_t size));

PG_FUNCTION_INFO_V1(freshpay_fuzz);

/* Keeps the compiler from dropping reads that exist only to be checked. */
static volatile size_t sink;

static MemoryContext input_context;

static Administration admin = {
	.name = "fuzz",
	.freshportal_url = "http://127.0.0.1:9",
	.freshportal_api_key = "fuzz-api-key",
	.paytrace_url = "http://127.0.0.1:9",
	.paytrace_username = "fuzz-user",
	.paytrace_password = "fuzz-password",
	.paytrace_integrator_id = "fuzz-integrator",
};

static const PtRequest sale = {
	.operation = PT_SALE,
	.customer_id = "99",
	.amount = "25.00",
	.invoice_number = "INV-1",
};

/* -- checks ---------------------------------------------------------------- */

#define fuzz_assert(cond) \
	do { \
		if (!(cond)) \
			fuzz_fail(__FILE__, __LINE__, #cond); \
	} while (0)

static void
fuzz_fail(const char *file, int line, const char *what)
{
	fprintf(stderr, "==FRESHPAY FUZZ== invariant broken at %s:%d: %s\n", file, line, what);
	fflush(stderr);
	abort();
}

/* Read a whole string (AddressSanitizer checks every byte). */
static void
check_string(const char *s)
{
	if (s != NULL)
		sink += strlen(s);
}

/* An amount: a valid numeric(12,2). */
static void
check_money(Datum amount)
{
	char	   *text = DatumGetCString(DirectFunctionCall1(numeric_out, amount));
	char	   *dot = strchr(text, '.');

	fuzz_assert(dot != NULL && strlen(dot + 1) == 2);
	fuzz_assert(dot - text <= (text[0] == '-' ? 11 : 10));
}

static void
check_jsonb(Datum value)
{
	check_string(DatumGetCString(DirectFunctionCall1(jsonb_out, value)));
}

static void
check_date(DateADT date)
{
	check_string(DatumGetCString(DirectFunctionCall1(date_out, DateADTGetDatum(date))));
}

static void
check_timestamp(TimestampTz ts)
{
	fuzz_assert(!TIMESTAMP_NOT_FINITE(ts));
	check_string(DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(ts))));
}

static void
check_pt_result(PtResult *r)
{
	fuzz_assert(r != NULL);
	fuzz_assert(r->outcome >= PT_APPROVED && r->outcome <= PT_UNKNOWN);
	fuzz_assert(r->message != NULL);
	check_string(r->message);
	check_string(r->approval_code);
	check_string(r->error_codes);
	if (r->outcome == PT_REJECTED)
		fuzz_assert(r->error_codes != NULL);
}

static void
check_pt_transaction(PtTransaction *t)
{
	check_string(t->type);
	check_money(t->amount);
	fuzz_assert(t->invoice_id != NULL && t->customer_id != NULL);
	check_string(t->invoice_id);
	check_string(t->customer_id);
	check_string(t->approval_code);
	check_string(t->status_message);
	fuzz_assert(t->state >= PT_STATE_PENDING_SETTLEMENT && t->state <= PT_STATE_OTHER);
	if (t->has_settled_at)
		check_timestamp(t->settled_at);
	if (t->has_created_at)
		check_timestamp(t->created_at);
}

static void
check_pt_batch(PtBatch *b)
{
	if (b->has_settled_at)
		check_timestamp(b->settled_at);
	check_money(b->sales_amount);
	check_money(b->refund_amount);
	check_money(b->net_amount);
	check_jsonb(b->raw);
}

static void
check_fp_customer(FpCustomer *c)
{
	fuzz_assert(c->code != NULL && c->name != NULL);
	check_string(c->code);
	check_string(c->name);
	check_string(c->email);
	check_string(c->currency);
	check_timestamp(c->mutation_time);
	check_jsonb(c->raw);
}

static void
check_fp_invoice(FpInvoice *inv)
{
	fuzz_assert(inv->number != NULL && inv->type != NULL && inv->currency != NULL &&
				inv->status != NULL);
	check_string(inv->number);
	fuzz_assert(strcmp(inv->type, "invoice") == 0 || strcmp(inv->type, "credit_note") == 0);
	check_string(inv->currency);
	check_string(inv->status);
	check_date(inv->invoice_date);
	if (inv->has_due_date)
		check_date(inv->due_date);
	check_money(inv->amount_excl_vat);
	check_money(inv->vat_amount);
	check_money(inv->amount_incl_vat);
	check_money(inv->amount_paid);
	check_money(inv->open_amount);
	check_timestamp(inv->mutation_time);
	check_jsonb(inv->raw);
}

static void
check_fp_payment(FpPayment *p)
{
	fuzz_assert(p != NULL && p->status != NULL);
	check_string(p->status);
	check_string(p->provider_transaction_id);
}

/* -- running one step ------------------------------------------------------ */

typedef void (*StepFn) (const char *data, size_t len);

/*
 * Run one step; an ERROR is a rejection and is swallowed.  An internal error
 * (elog, XX000) other than the stubs' own is reported as a finding: the
 * parsers must reject bad input with a proper SQLSTATE, and "can't happen"
 * errors of PostgreSQL mean it was fed something it should not have been.
 */
static void
run_step(StepFn step, const char *data, size_t len)
{
	MemoryContext context = CurrentMemoryContext;

	PG_TRY();
	{
		step(data, len);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		FlushErrorState();
		if (edata->sqlerrcode == ERRCODE_INTERNAL_ERROR &&
			strncmp(edata->message, "fuzz stub:", 10) != 0)
		{
			fprintf(stderr, "==FRESHPAY FUZZ== internal error (XX000): %s\n", edata->message);
			fflush(stderr);
			abort();
		}
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/* -- target: paytrace_result (answers of money calls) ---------------------- */

static void
pt_result_200(const char *data, size_t len)
{
	check_pt_result(paytrace_parse_result(200, data, len));
}

static void
pt_result_400(const char *data, size_t len)
{
	check_pt_result(paytrace_parse_result(400, data, len));
}

/*
 * An answer that may say "invalid_token" (400): then the client logs in
 * again (the input read as the login answer, 200) and resends the call (the
 * input read once more, as a 400).
 */
static void
pt_result_finish(const char *data, size_t len)
{
	static const long statuses[] = {400, 200, 400};
	HttpRequest request = {.call = "fuzz"};
	HttpResponse response;

	fuzz_http_answers(statuses, lengthof(statuses), data, len);
	http_perform(&request, &response);
	check_pt_result(paytrace_finish(&admin, &sale, &response));
}

/* No cached token: the input read as the answer of POST /oauth/token. */
static void
pt_result_login(const char *data, size_t len)
{
	fuzz_token_cached(false);
	fuzz_http_answer(200, data, len);
	paytrace_prepare(&admin);
}

static const StepFn paytrace_result_steps[] = {
	pt_result_200, pt_result_400, pt_result_finish, pt_result_login, NULL
};

/* -- target: paytrace_export (transaction exports) ------------------------- */

static void
pt_export(const char *data, size_t len)
{
	List	   *list = paytrace_parse_export(data, len);
	ListCell   *lc;

	foreach(lc, list)
		check_pt_transaction(lfirst(lc));
}

static void
pt_export_by_id(const char *data, size_t len)
{
	List	   *list;
	ListCell   *lc;

	fuzz_http_answer(200, data, len);
	list = paytrace_export_by_id(&admin, 1);
	foreach(lc, list)
		check_pt_transaction(lfirst(lc));
}

static const StepFn paytrace_export_steps[] = {pt_export, pt_export_by_id, NULL};

/* -- target: paytrace_batches (batch exports) ------------------------------ */

static void
pt_batches(const char *data, size_t len)
{
	List	   *list;
	ListCell   *lc;

	fuzz_http_answer(200, data, len);
	list = paytrace_export_batches(&admin, 0, 1);
	foreach(lc, list)
		check_pt_batch(lfirst(lc));
}

static const StepFn paytrace_batches_steps[] = {pt_batches, NULL};

/* -- target: freshportal_list (customer and invoice pages) ----------------- */

static void
fp_list(FpStream stream, long status, const char *data, size_t len)
{
	FpPage	   *page;
	ListCell   *lc;

	fuzz_http_answer(status, data, len);
	page = freshportal_list(&admin, stream, 0, 1, 100);
	fuzz_assert(page != NULL);
	if (page->has_server_time)
		check_timestamp(page->server_time);
	foreach(lc, page->items)
	{
		if (stream == FP_STREAM_CUSTOMERS)
			check_fp_customer(lfirst(lc));
		else
			check_fp_invoice(lfirst(lc));
		sink += freshportal_item_id(stream, lfirst(lc));
		check_timestamp(freshportal_item_mutation_time(stream, lfirst(lc)));
	}
}

static void
fp_list_customers(const char *data, size_t len)
{
	fp_list(FP_STREAM_CUSTOMERS, 200, data, len);
}

static void
fp_list_invoices(const char *data, size_t len)
{
	fp_list(FP_STREAM_INVOICES, 200, data, len);
}

/* An error answer: only its "message" is read. */
static void
fp_list_422(const char *data, size_t len)
{
	fp_list(FP_STREAM_INVOICES, 422, data, len);
}

static const StepFn freshportal_list_steps[] = {
	fp_list_customers, fp_list_invoices, fp_list_422, NULL
};

/* -- target: freshportal_invoice (one invoice, and the login answer) ------- */

static void
fp_invoice(const char *data, size_t len)
{
	fuzz_http_answer(200, data, len);
	check_fp_invoice(freshportal_get_invoice(&admin, 42));
}

static void
fp_invoice_login(const char *data, size_t len)
{
	fuzz_token_cached(false);
	fuzz_http_answer(200, data, len);
	check_fp_invoice(freshportal_get_invoice(&admin, 42));
}

static void
fp_invoice_500(const char *data, size_t len)
{
	fuzz_http_answer(500, data, len);
	check_fp_invoice(freshportal_get_invoice(&admin, 42));
}

static const StepFn freshportal_invoice_steps[] = {
	fp_invoice, fp_invoice_login, fp_invoice_500, NULL
};

/* -- target: freshportal_payments (payment lookups and registrations) ------ */

static void
fp_find_payments(const char *data, size_t len)
{
	List	   *list;
	ListCell   *lc;

	fuzz_http_answer(200, data, len);
	list = freshportal_find_payments(&admin, "125391269");
	foreach(lc, list)
		check_fp_payment(lfirst(lc));
}

static void
fp_get_payment(const char *data, size_t len)
{
	fuzz_http_answer(200, data, len);
	check_fp_payment(freshportal_get_payment(&admin, 7));
}

static void
fp_register_payment(const char *data, size_t len)
{
	FpRegistration registration = {
		.invoice_id = 42,
		.amount = "25.00",
		.currency = "USD",
		.method = "card",
		.provider_transaction_id = "125391269",
		.payment_date = 9000,
	};

	fuzz_http_answer(201, data, len);
	sink += freshportal_register_payment(&admin, &registration);
}

static const StepFn freshportal_payments_steps[] = {
	fp_find_payments, fp_get_payment, fp_register_payment, NULL
};

/* -- target: jsonconv (the strict money, date and timestamp conversions) --- */

/*
 * The input is used twice: as the text of a JSON string member "v" (any
 * bytes), and parsed as JSON, whose members then go through every converter.
 */
static json_object *string_holder;	/* {"v": <input as a JSON string>} */
static json_object *parsed;			/* the input parsed as JSON, or NULL */
static const char *member_key;		/* the key the member steps use */

static void
jc_money_text(const char *data, size_t len)
{
	check_money(jsonconv_money_text(data, "amount"));
}

static void
jc_money(const char *data, size_t len)
{
	check_money(jsonconv_money(string_holder, "v"));
}

static void
jc_date(const char *data, size_t len)
{
	DateADT		date;

	if (jsonconv_date_opt(string_holder, "v", &date))
	{
		fuzz_assert(!DATE_NOT_FINITE(date));
		check_date(date);
	}
}

/*
 * A timestamp FreshPortal sends comes back to it as the sync cursor, in
 * jsonconv_format_timestamp's form: that form must read back as the same
 * instant.  Only for instants in years 1-9999 UTC, the years the form can
 * write.
 */
static void
jc_timestamp(const char *data, size_t len)
{
	TimestampTz ts = jsonconv_timestamp(string_holder, "v");
	TimestampTz lo = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
															 CStringGetDatum("0001-01-01 00:00:00+00"),
															 ObjectIdGetDatum(InvalidOid),
															 Int32GetDatum(-1)));
	TimestampTz hi = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
															 CStringGetDatum("10000-01-01 00:00:00+00"),
															 ObjectIdGetDatum(InvalidOid),
															 Int32GetDatum(-1)));

	check_timestamp(ts);
	if (ts >= lo && ts < hi)
	{
		char	   *text = jsonconv_format_timestamp(ts);
		json_object *again = json_object_new_object();
		TimestampTz back = 0;

		if (again == NULL)
			elog(ERROR, "fuzz stub: out of memory");
		PG_TRY();
		{
			json_object_object_add(again, "v", json_object_new_string(text));
			back = jsonconv_timestamp(again, "v");
		}
		PG_FINALLY();
		{
			json_object_put(again);
		}
		PG_END_TRY();
		fuzz_assert(back == ts);
	}
}

static void
jc_int64(const char *data, size_t len)
{
	int64		value;

	if (jsonconv_int64_opt(string_holder, "v", &value))
		sink += value;
}

static void
jc_jsonb(const char *data, size_t len)
{
	if (parsed != NULL)
		check_jsonb(jsonconv_jsonb(parsed));
}

/*
 * Strict means exact: an integer jsonconv accepts from a JSON number must be
 * the number as written.  json-c saturates numbers beyond int64 while it
 * parses (reading 9223372036854775808 gives INT64_MAX) but still writes them
 * out as read (for values up to UINT64_MAX), so its rendering shows when the
 * value was clamped.
 */
static void
m_int64(const char *data, size_t len)
{
	int64		value;
	json_object *member = jsonconv_member(parsed, member_key);

	if (jsonconv_int64_opt(parsed, member_key, &value) &&
		json_object_is_type(member, json_type_int))
	{
		char		written[32];

		snprintf(written, sizeof(written), INT64_FORMAT, value);
		fuzz_assert(strcmp(written,
						   json_object_to_json_string_ext(member, JSON_C_TO_STRING_PLAIN)) == 0);
	}
}

static void
m_string(const char *data, size_t len)
{
	check_string(jsonconv_string_opt(parsed, member_key));
}

static void
m_bool(const char *data, size_t len)
{
	sink += jsonconv_bool_opt(parsed, member_key, false);
}

static void
m_money(const char *data, size_t len)
{
	check_money(jsonconv_money(parsed, member_key));
}

static void
m_date(const char *data, size_t len)
{
	DateADT		date;

	if (jsonconv_date_opt(parsed, member_key, &date))
		check_date(date);
}

static void
m_timestamp(const char *data, size_t len)
{
	check_timestamp(jsonconv_timestamp(parsed, member_key));
}

static const StepFn member_steps[] = {
	m_int64, m_string, m_bool, m_money, m_date, m_timestamp, NULL
};

static void
jc_members(const char *data, size_t len)
{
	int			n = 0;

	if (parsed == NULL || !json_object_is_type(parsed, json_type_object))
		return;
	json_object_object_foreach(parsed, key, value)
	{
		(void) value;
		if (n++ >= 16)
			break;
		member_key = key;
		for (int i = 0; member_steps[i] != NULL; i++)
			run_step(member_steps[i], data, len);
	}
	member_key = NULL;
}

static const StepFn jsonconv_inner_steps[] = {
	jc_money_text, jc_money, jc_date, jc_timestamp, jc_int64, jc_jsonb, jc_members, NULL
};

/* The json-c objects of this target are freed on every path. */
static void
jsonconv_all(const char *data, size_t len)
{
	char		error[128];

	string_holder = json_object_new_object();
	if (string_holder == NULL)
		elog(ERROR, "fuzz stub: out of memory");
	parsed = NULL;
	PG_TRY();
	{
		json_object_object_add(string_holder, "v", json_object_new_string_len(data, (int) len));
		parsed = jsonconv_parse(data, len, error, sizeof(error));
		if (parsed == NULL)
			check_string(error);
		for (int i = 0; jsonconv_inner_steps[i] != NULL; i++)
			run_step(jsonconv_inner_steps[i], data, len);
	}
	PG_FINALLY();
	{
		json_object_put(string_holder);
		json_object_put(parsed);
		string_holder = parsed = NULL;
	}
	PG_END_TRY();
}

static const StepFn jsonconv_steps[] = {jsonconv_all, NULL};

/* -- target: _selftest (proves that findings are caught; not run by default) */

static void
selftest(const char *data, size_t len)
{
	if (len >= 4 && memcmp(data, "boom", 4) == 0)
		sink += data[len + 1];	/* reads past the input: AddressSanitizer */
	else if (len >= 4 && memcmp(data, "leak", 4) == 0)
		sink += (size_t) json_object_new_object();	/* never put: LeakSanitizer */
	else if (len >= 4 && memcmp(data, "oops", 4) == 0)
		elog(ERROR, "selftest internal error");	/* XX000: a finding */
	else if (len >= 4 && memcmp(data, "nope", 4) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("selftest rejection")));	/* a rejection: fine */
}

static const StepFn selftest_steps[] = {selftest, NULL};

/* -- the targets ----------------------------------------------------------- */

typedef struct FuzzTarget
{
	const char *name;
	const StepFn *steps;
} FuzzTarget;

static const FuzzTarget targets[] = {
	{"paytrace_result", paytrace_result_steps},
	{"paytrace_export", paytrace_export_steps},
	{"paytrace_batches", paytrace_batches_steps},
	{"freshportal_list", freshportal_list_steps},
	{"freshportal_invoice", freshportal_invoice_steps},
	{"freshportal_payments", freshportal_payments_steps},
	{"jsonconv", jsonconv_steps},
	{"_selftest", selftest_steps},
};

static const FuzzTarget *current;

static int
run_input(const uint8_t *data, size_t size)
{
	MemoryContext old = MemoryContextSwitchTo(input_context);
	char	   *copy = malloc(size + 1);

	if (copy == NULL)
		abort();
	memcpy(copy, data, size);
	copy[size] = '\0';

	for (int i = 0; current->steps[i] != NULL; i++)
	{
		run_step(current->steps[i], copy, size);
		fuzz_http_reset();
	}

	free(copy);
	MemoryContextSwitchTo(old);
	MemoryContextReset(input_context);
	return 0;
}

/*
 * freshpay_fuzz(target text, args text[]) RETURNS int
 *
 * Runs libFuzzer with args (its usual command line: corpus directories,
 * -max_total_time=…, or files to replay).  libFuzzer normally ends the
 * process itself when it is done.
 */
Datum
freshpay_fuzz(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ArrayType  *array = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int			argc;
	char	  **argv;

	current = NULL;
	for (size_t i = 0; i < lengthof(targets); i++)
		if (strcmp(targets[i].name, name) == 0)
			current = &targets[i];
	if (current == NULL)
	{
		StringInfoData names;

		initStringInfo(&names);
		for (size_t i = 0; i < lengthof(targets); i++)
			appendStringInfo(&names, "%s%s", i ? ", " : "", targets[i].name);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown fuzz target \"%s\"", name),
				 errhint("Targets: %s.", names.data)));
	}

	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
	argv = MemoryContextAllocZero(TopMemoryContext, sizeof(char *) * (nelems + 2));
	argv[0] = MemoryContextStrdup(TopMemoryContext, psprintf("freshpay_fuzz-%s", name));
	argc = 1;
	for (int i = 0; i < nelems; i++)
		if (!nulls[i])
			argv[argc++] = MemoryContextStrdup(TopMemoryContext, TextDatumGetCString(elems[i]));
	argv[argc] = NULL;

	input_context = AllocSetContextCreate(TopMemoryContext, "freshpay fuzz input",
										  ALLOCSET_DEFAULT_SIZES);
	PG_RETURN_INT32(LLVMFuzzerRunDriver(&argc, &argv, run_input));
}

/* Listed for tools: the names of the targets, one a line. */
PG_FUNCTION_INFO_V1(freshpay_fuzz_targets);

Datum
freshpay_fuzz_targets(PG_FUNCTION_ARGS)
{
	StringInfoData names;

	initStringInfo(&names);
	for (size_t i = 0; i < lengthof(targets); i++)
		appendStringInfo(&names, "%s\n", targets[i].name);
	PG_RETURN_TEXT_P(cstring_to_text(names.data));
}
