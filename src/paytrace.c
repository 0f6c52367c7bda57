/*-------------------------------------------------------------------------
 *
 * paytrace.c
 *	  PayTrace JSON API v1 client, wire format in one place.
 *
 * Facts it follows (research/paytrace-api.md, [C] = confirmed):
 *	- POST /oauth/token, password grant, form-encoded; tokens live 7200 s and
 *	  there is no refresh token.  We cache one per administration in shared
 *	  memory, renew it five minutes before expiry, and once more when a call
 *	  answers "invalid_token" (which means the call was not processed).
 *	- Every call is a JSON POST with integrator_id in the body and
 *	  "Authorization: Bearer" with a capital B.
 *	- Outcomes are decided from the body whatever the HTTP status: declines
 *	  are HTTP 200 with success:false, errors are 400 with response_code 1
 *	  and errors{code:[messages]}, and 103 is an approval that was voided at
 *	  once (not paid).
 *	- Exports: dates "M/D/YYYY h:mm:ss AM" without a zone (taken as Pacific
 *	  time, PayTrace's home; a guess), status_code "Y", "N" or "GB<batch>",
 *	  numbers that come as JSON numbers or strings.
 *
 * Amounts are sent as JSON numbers written from their numeric text, and read
 * back from the JSON text as written: never through a double.
 *
 * Must not: touch tables, decide retries (the attempt protocol does), print
 * secrets or tokens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "jsonconv.h"
#include "utils/datetime.h"
#include "utils/formatting.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "http.h"
#include "paytrace.h"
#include "shared.h"

#define SERVICE "PayTrace"

/* Renew a token this long before PayTrace would expire it. */
#define PT_TOKEN_MARGIN_S 300

/* Export dates carry no zone; PayTrace is in Spokane, WA. [G] */
#define PT_EXPORT_TIME_ZONE "America/Los_Angeles"

/* The path of each money call. */
typedef struct PtCall
{
	PtOperation operation;
	const char *path;
} PtCall;

static const PtCall calls[] = {
	{PT_SALE, "/v1/transactions/sale/by_customer"},
	{PT_AUTHORIZE, "/v1/transactions/authorization/by_customer"},
	{PT_CAPTURE, "/v1/transactions/authorization/capture"},
	{PT_VOID, "/v1/transactions/void"},
	{PT_REFUND, "/v1/transactions/refund/for_transaction"},
	{PT_ACH_SALE, "/v1/checks/sale/by_customer"},
};

/*
 * Field names of batches/export.  The v1 JSON names are not documented; these
 * follow the legacy API's fields in snake_case ([G] in the research), kept
 * here so that the real names change one table.
 */
static const struct
{
	const char *list;			/* the array of batches */
	const char *number;
	const char *created;
	const char *transaction_count;
	const char *sales_amount;
	const char *refund_amount;
	const char *net_amount;
}			batch_fields = {
	"batches", "number", "created", "transaction_count", "sales_amount", "refund_amount", "net_amount"
};

/* Codes PayTrace answers when a money call did what was asked. */
static const int approved_codes[] = {101, 106, 109, 112, 120, 122, 124};

static const PtCall *
call_of(PtOperation operation)
{
	for (size_t i = 0; i < lengthof(calls); i++)
		if (calls[i].operation == operation)
			return &calls[i];
	elog(ERROR, "unknown PayTrace operation %d", (int) operation);
	return NULL;				/* keep compiler quiet */
}

static uint32
credential_hash(const Administration *admin)
{
	char	   *credentials = psprintf("%s\n%s", admin->paytrace_username, admin->paytrace_password);
	uint32		hash = administration_credential_hash(admin->paytrace_url, credentials);

	explicit_bzero(credentials, strlen(credentials));
	return hash;
}

/* The string value of key in a parsed body, or NULL. */
static char *
member_string(json_object *root, const char *key)
{
	json_object *value = jsonconv_member(root, key);

	if (value == NULL || !json_object_is_type(value, json_type_string))
		return NULL;
	return pstrdup(json_object_get_string(value));
}

/* Does this answer say our token was not accepted? */
static bool
is_invalid_token(const HttpResponse *response)
{
	char		error[64];
	json_object *root;
	volatile bool invalid = false;

	if (response->status != 401 && response->status != 400)
		return false;
	/*
	 * Only PayTrace's own word says the request was not processed; a 401
	 * with an unreadable body (a proxy's page, say) proves nothing, and a
	 * money request is never sent again on it.
	 */
	root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	if (root == NULL)
		return false;
	PG_TRY();
	{
		char	   *code = member_string(root, "error");

		invalid = code != NULL && strcmp(code, "invalid_token") == 0;
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return invalid;
}

/* POST /oauth/token: the password grant, form-encoded. */
static char *
pt_authenticate(const Administration *admin, uint32 hash)
{
	HttpRequest request = {0};
	HttpResponse response;
	char	   *body;
	char	   *volatile token = NULL;
	int64		expires_in = 7200;
	char		error[128];
	json_object *root;

	body = psprintf("grant_type=password&username=%s&password=%s",
					http_url_escape(admin->paytrace_username),
					http_url_escape(admin->paytrace_password));
	request.service = SERVICE;
	request.administration = admin->name;
	request.call = "POST /oauth/token";
	request.method = "POST";
	request.url = psprintf("%s/oauth/token", admin->paytrace_url);
	request.content_type = "application/x-www-form-urlencoded; charset=UTF-8";
	request.body = body;
	request.idempotent = true;	/* a second token does no harm */
	http_perform(&request, &response);
	explicit_bzero(body, strlen(body));

	if (response.transport != HTTP_TRANSPORT_OK)
		http_report_transport_error(&request, &response);

	root = jsonconv_parse(response.body, response.body_len, error, sizeof(error));
	PG_TRY();
	{
		if (root != NULL && response.status == 200)
		{
			token = member_string(root, "access_token");
			jsonconv_int64_opt(root, "expires_in", &expires_in);
		}
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	explicit_bzero(response.body, response.body_len);

	if (response.status >= 400 && response.status < 500)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("PayTrace rejected the API credentials of administration \"%s\"", admin->name),
				 errdetail("POST /oauth/token answered HTTP %ld.", response.status),
				 errhint("Check paytrace_username and paytrace_password: the user must be a PayTrace API User.")));
	if (token == NULL || token[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("PayTrace sent no token in answer to POST /oauth/token for administration \"%s\"",
						admin->name),
				 errdetail("HTTP status %ld.", response.status),
				 errhint("Try again later; check PayTrace's status if it persists.")));

	/* Renew early; a token that lives less than twice the margin, at half-life. */
	expires_in = expires_in > 2 * PT_TOKEN_MARGIN_S ? expires_in - PT_TOKEN_MARGIN_S : expires_in / 2;
	token_cache_store(admin->name, REMOTE_PAYTRACE, hash, token,
					  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), expires_in * 1000));
	return token;
}

/*
 * An authenticated JSON POST.  body_fields are the members after
 * integrator_id (",\"amount\":1.00..."), or "".  "invalid_token" means the
 * call was not processed: renew the token and send it once more.
 */
/* An authenticated JSON POST to path; body_fields follow integrator_id. */
static void
pt_request(const Administration *admin, const char *path, const char *body_fields,
		   bool idempotent, const char *token, HttpRequest *request)
{
	StringInfoData body;

	initStringInfo(&body);
	appendStringInfoString(&body, "{\"integrator_id\":");
	escape_json(&body, admin->paytrace_integrator_id);
	appendStringInfoString(&body, body_fields);
	appendStringInfoChar(&body, '}');

	memset(request, 0, sizeof(HttpRequest));
	request->service = SERVICE;
	request->administration = admin->name;
	request->call = psprintf("POST %s", path);
	request->method = "POST";
	request->url = psprintf("%s%s", admin->paytrace_url, path);
	request->content_type = "application/json";
	request->body = body.data;
	request->bearer_token = pstrdup(token);
	request->idempotent = idempotent;
}

/*
 * Send and wait.  "invalid_token" means the call was not processed: renew
 * the token and send it once more.
 */
static void
pt_post(const Administration *admin, const char *path, const char *body_fields,
		bool idempotent, HttpResponse *response)
{
	uint32		hash = credential_hash(admin);

	for (int attempt = 0; attempt < 2; attempt++)
	{
		char		cached[FRESHPAY_TOKEN_MAX + 1];
		char	   *token;
		HttpRequest request;

		if (attempt == 0 &&
			token_cache_lookup(admin->name, REMOTE_PAYTRACE, hash, cached, sizeof(cached)))
			token = cached;
		else
			token = pt_authenticate(admin, hash);

		pt_request(admin, path, body_fields, idempotent, token, &request);
		http_perform(&request, response);
		if (response->transport != HTTP_TRANSPORT_OK || !is_invalid_token(response))
			return;
		token_cache_forget(admin->name, REMOTE_PAYTRACE, token);
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("PayTrace rejected a fresh token of administration \"%s\" for POST %s",
					admin->name, path),
			 errhint("The API user may lack permission for this call; check it in PayTrace's Virtual Terminal.")));
}

static bool
is_approved_code(int code)
{
	for (size_t i = 0; i < lengthof(approved_codes); i++)
		if (approved_codes[i] == code)
			return true;
	return false;
}

/* "35: Please provide ...; 43: ..." and "35,43" from errors{code:[msg]}. */
static void
describe_errors(json_object *errors, StringInfo message, StringInfo codes)
{
	json_object_object_foreach(errors, code, messages)
	{
		if (codes->len > 0)
			appendStringInfoChar(codes, ',');
		appendStringInfoString(codes, code);
		if (json_object_is_type(messages, json_type_array))
		{
			for (size_t i = 0; i < json_object_array_length(messages); i++)
			{
				json_object *text = json_object_array_get_idx(messages, i);

				appendStringInfo(message, "%s%s: %s", message->len ? "; " : "", code,
								 json_object_get_string(text));
			}
		}
		else
			appendStringInfo(message, "%s%s: %s", message->len ? "; " : "", code,
							 json_object_get_string(messages));
	}
}

static void
result_from_json(PtResult *result, json_object *root)
{
	json_object *success = jsonconv_member(root, "success");
	json_object *errors = jsonconv_member(root, "errors");
	int64		value;
	char	   *status_message = member_string(root, "status_message");
	char	   *approval_message = member_string(root, "approval_message");
	StringInfoData message;

	if (jsonconv_int64_opt(root, "response_code", &value))
		result->response_code = (int) value;
	if (jsonconv_int64_opt(root, "transaction_id", &value) ||
		jsonconv_int64_opt(root, "check_transaction_id", &value))
	{
		result->has_transaction_id = true;
		result->transaction_id = value;
	}
	result->approval_code = member_string(root, "approval_code");
	if (result->approval_code != NULL && result->approval_code[0] == '\0')
		result->approval_code = NULL;

	initStringInfo(&message);
	if (status_message != NULL)
		appendStringInfoString(&message, status_message);
	if (approval_message != NULL && approval_message[0] != '\0')
		appendStringInfo(&message, "%s%s", message.len ? " " : "", approval_message);

	if (success == NULL || !json_object_is_type(success, json_type_boolean))
	{
		result->outcome = PT_UNKNOWN;
		if (message.len == 0)
			appendStringInfoString(&message, "The answer has no \"success\" field.");
	}
	else if (result->response_code == 103)
		result->outcome = PT_AUTO_VOIDED;
	else if (json_object_get_boolean(success) && is_approved_code(result->response_code))
		result->outcome = PT_APPROVED;
	else if (!json_object_get_boolean(success) && errors != NULL &&
			 json_object_is_type(errors, json_type_object))
	{
		StringInfoData codes;

		initStringInfo(&codes);
		resetStringInfo(&message);
		describe_errors(errors, &message, &codes);
		result->outcome = PT_REJECTED;
		result->error_codes = codes.data;
	}
	else if (!json_object_get_boolean(success))
		result->outcome = PT_DECLINED;
	else
		result->outcome = PT_UNKNOWN;	/* success with a code we do not know */
	result->message = message.data;
}

/*
 * Classify an HTTP answer of a money call.  Also the entry point of the
 * parser tests (freshpay._paytrace_parse_result).
 */
PtResult *
paytrace_parse_result(long http_status, const char *body, size_t len)
{
	PtResult   *result = palloc0(sizeof(PtResult));
	char		error[128];
	json_object *root;

	result->http_status = http_status;
	result->retry_after = -1;
	if (http_status == 429)
	{
		result->outcome = PT_RETRY_LATER;
		result->message = psprintf("PayTrace is rate limiting (HTTP 429).");
		return result;
	}

	root = jsonconv_parse(body, len, error, sizeof(error));
	if (root == NULL)
	{
		/* Without a readable body we cannot know whether it happened. */
		result->outcome = PT_UNKNOWN;
		result->message = psprintf("HTTP %ld with an unreadable body: %s.", http_status, error);
		return result;
	}
	PG_TRY();
	{
		result_from_json(result, root);
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return result;
}

/* Append ,"key":<amount> with the amount as a JSON number, as written. */
static void
append_amount(StringInfo fields, const char *amount)
{
	if (amount != NULL)
		appendStringInfo(fields, ",\"amount\":%s", amount);
}

/* The members of a money call's body after integrator_id. */
static char *
money_fields(const PtRequest *request)
{
	StringInfoData fields;

	initStringInfo(&fields);
	switch (request->operation)
	{
		case PT_SALE:
		case PT_AUTHORIZE:
		case PT_ACH_SALE:
			appendStringInfoString(&fields, ",\"customer_id\":");
			escape_json(&fields, request->customer_id);
			append_amount(&fields, request->amount);
			break;
		case PT_CAPTURE:
		case PT_REFUND:
			appendStringInfo(&fields, ",\"transaction_id\":" INT64_FORMAT, request->transaction_id);
			append_amount(&fields, request->amount);
			break;
		case PT_VOID:
			appendStringInfo(&fields, ",\"transaction_id\":" INT64_FORMAT, request->transaction_id);
			break;
	}
	if (request->invoice_number != NULL)
	{
		appendStringInfoString(&fields, ",\"invoice_id\":");
		escape_json(&fields, request->invoice_number);
	}
	return fields.data;
}

/* The outcome of a money call from its HTTP answer (or the lack of one). */
static PtResult *
result_of(const HttpResponse *response)
{
	PtResult   *result;

	switch (response->transport)
	{
		case HTTP_TRANSPORT_OK:
			result = paytrace_parse_result(response->status, response->body, response->body_len);
			result->retry_after = response->retry_after;

			/*
			 * [G] A 503 that says when to come back (Retry-After) is an
			 * overloaded front end turning the request away unprocessed, as a
			 * 429 is.  A 503 or 500 without it proves nothing: unknown.
			 */
			if (response->status == 503 && response->retry_after >= 0 && result->outcome == PT_UNKNOWN)
			{
				result->outcome = PT_RETRY_LATER;
				result->message = psprintf("PayTrace is unavailable (HTTP 503, Retry-After %d s).",
										   response->retry_after);
			}
			break;
		case HTTP_TRANSPORT_NOT_SENT:
			result = palloc0(sizeof(PtResult));
			result->outcome = PT_NOT_SENT;
			result->retry_after = -1;
			result->message = psprintf("Could not reach PayTrace: %s", response->error);
			break;
		default:
			result = palloc0(sizeof(PtResult));
			result->outcome = PT_UNKNOWN;
			result->retry_after = -1;
			result->message = psprintf("The answer of PayTrace was lost: %s", response->error);
			break;
	}
	return result;
}

/*
 * Start a money call without waiting (the worker keeps many in flight);
 * paytrace_finish turns the answer into the outcome.
 */
HttpTransfer *
paytrace_start(const Administration *admin, const PtRequest *request, void *owner)
{
	uint32		hash = credential_hash(admin);
	char		cached[FRESHPAY_TOKEN_MAX + 1];
	char	   *token;
	HttpRequest http;

	if (token_cache_lookup(admin->name, REMOTE_PAYTRACE, hash, cached, sizeof(cached)))
		token = cached;
	else
		token = pt_authenticate(admin, hash);
	pt_request(admin, call_of(request->operation)->path, money_fields(request), false, token, &http);
	return http_start(&http, owner);
}

/*
 * Make sure a token is cached, so that a money call recorded next leaves at
 * once (the worker fetches it before it records the attempt).
 */
void
paytrace_prepare(const Administration *admin)
{
	uint32		hash = credential_hash(admin);
	char		cached[FRESHPAY_TOKEN_MAX + 1];

	if (!token_cache_lookup(admin->name, REMOTE_PAYTRACE, hash, cached, sizeof(cached)))
		(void) pt_authenticate(admin, hash);
	explicit_bzero(cached, sizeof(cached));
}

PtResult *
paytrace_finish(const Administration *admin, const PtRequest *request,
				const HttpResponse *response)
{
	/*
	 * PayTrace says the token was not accepted: nothing was processed.  The
	 * request goes once more with a new token; a second refusal ends it as
	 * not sent.
	 */
	if (response->transport == HTTP_TRANSPORT_OK && is_invalid_token(response))
	{
		HttpRequest http;
		HttpResponse again;

		token_cache_forget_any(admin->name, REMOTE_PAYTRACE);
		pt_request(admin, call_of(request->operation)->path, money_fields(request), false,
				   pt_authenticate(admin, credential_hash(admin)), &http);
		http_perform(&http, &again);
		if (again.transport == HTTP_TRANSPORT_OK && is_invalid_token(&again))
		{
			PtResult   *result = palloc0(sizeof(PtResult));

			result->outcome = PT_NOT_SENT;
			result->retry_after = -1;
			result->message = psprintf("PayTrace did not accept a fresh token of administration \"%s\".",
									   admin->name);
			return result;
		}
		return result_of(&again);
	}
	return result_of(response);
}

/* "4/10/2015 4:06:30 PM" (Pacific time) → timestamptz. */
static bool
parse_export_time(const char *text, TimestampTz *result)
{
	int			month,
				day,
				year,
				hour,
				minute,
				second;
	char		meridiem[3];
	int			consumed = 0;
	char	   *iso;

	if (text == NULL || text[0] == '\0')
		return false;
	if (sscanf(text, "%d/%d/%d %d:%d:%d %2[AP]M%n", &month, &day, &year,
			   &hour, &minute, &second, meridiem, &consumed) != 7 ||
		text[consumed] != '\0' || month < 1 || month > 12 || day < 1 || day > 31 ||
		hour < 1 || hour > 12 || minute > 59 || second > 59 || minute < 0 || second < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_DATETIME_FORMAT),
				 errmsg("PayTrace export date \"%s\" is not in the form M/D/YYYY h:mm:ss AM", text)));
	hour = hour % 12 + (meridiem[0] == 'P' ? 12 : 0);
	iso = psprintf("%04d-%02d-%02d %02d:%02d:%02d " PT_EXPORT_TIME_ZONE,
				   year, month, day, hour, minute, second);
	*result = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(iso),
													  ObjectIdGetDatum(InvalidOid),
													  Int32GetDatum(-1)));
	return true;
}

static PtState
state_of(const char *status_code, const char *status_message, int *batch)
{
	*batch = 0;
	if (strncmp(status_code, "GB", 2) == 0 && status_code[2] != '\0')
	{
		char	   *end;
		long		number;

		errno = 0;
		number = strtol(status_code + 2, &end, 10);
		if (errno != 0 || *end != '\0' || number <= 0 || number > PG_INT32_MAX ||
			!isdigit((unsigned char) status_code[2]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("PayTrace status_code \"%s\" is not GB followed by a batch number", status_code)));
		*batch = (int) number;
		return PT_STATE_SETTLED;
	}
	if (pg_strcasecmp(status_code, "Settled") == 0)
		return PT_STATE_SETTLED;
	if (strcmp(status_code, "Y") == 0)
		return PT_STATE_PENDING_SETTLEMENT;
	if (strcmp(status_code, "N") == 0 && status_message != NULL)
	{
		char	   *upper = asc_toupper(status_message, strlen(status_message));

		if (strstr(upper, "AUTH"))
			return PT_STATE_AUTHORIZED;
		if (strstr(upper, "VOID"))
			return PT_STATE_VOIDED;
		if (strstr(upper, "DECL"))
			return PT_STATE_DECLINED;
	}
	return PT_STATE_OTHER;
}

static PtTransaction *
transaction_from_json(json_object *item)
{
	PtTransaction *t = palloc0(sizeof(PtTransaction));
	json_object *amount = jsonconv_member(item, "amount");
	json_object *created = jsonconv_member(item, "created");
	char	   *status_code;

	if (!jsonconv_int64_opt(item, "transaction_id", &t->transaction_id))
		t->transaction_id = jsonconv_int64(item, "check_transaction_id");
	t->type = jsonconv_string_opt(item, "transaction_type");
	if (amount == NULL || jsonconv_is_null(amount))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("field \"amount\" is missing")));
	/* A number or a string; either way its text as written. */
	t->amount = jsonconv_money_text(json_object_get_string(amount), "amount");
	t->invoice_id = jsonconv_string_opt(item, "invoice_id");
	t->customer_id = jsonconv_string_opt(item, "customer_id");
	t->approval_code = jsonconv_string_opt(item, "approval_code");
	status_code = jsonconv_string_opt(item, "status_code");
	t->status_message = jsonconv_string_opt(item, "status_message");
	t->state = state_of(status_code ? status_code : "", t->status_message, &t->batch_number);
	t->has_settled_at = parse_export_time(jsonconv_string_opt(item, "settled"), &t->settled_at);
	if (created != NULL && json_object_is_type(created, json_type_object))
		t->has_created_at = parse_export_time(jsonconv_string_opt(created, "at"), &t->created_at);
	if (t->invoice_id == NULL)
		t->invoice_id = "";
	if (t->customer_id == NULL)
		t->customer_id = "";
	return t;
}

/* The transactions of an export answer; raises on anything malformed. */
List *
paytrace_parse_export(const char *body, size_t len)
{
	char		error[128];
	json_object *root = jsonconv_parse(body, len, error, sizeof(error));
	List	   *transactions = NIL;

	if (root == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_JSON_TEXT),
				 errmsg("PayTrace sent malformed JSON in answer to a transaction export"),
				 errdetail("%s.", error)));
	PG_TRY();
	{
		json_object *success = jsonconv_member(root, "success");
		json_object *items = jsonconv_member(root, "transactions");

		if (success == NULL || !json_object_get_boolean(success))
		{
			StringInfoData message;
			StringInfoData codes;
			json_object *errors = jsonconv_member(root, "errors");

			initStringInfo(&message);
			initStringInfo(&codes);
			if (errors != NULL && json_object_is_type(errors, json_type_object))
				describe_errors(errors, &message, &codes);
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("PayTrace refused a transaction export"),
					 message.len ? errdetail("%s", message.data) : 0));
		}
		if (items != NULL && json_object_is_type(items, json_type_array))
		{
			for (size_t i = 0; i < json_object_array_length(items); i++)
				transactions = lappend(transactions,
									   transaction_from_json(json_object_array_get_idx(items, i)));
		}
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return transactions;
}

static List *
pt_export(const Administration *admin, const char *path, const char *fields)
{
	HttpResponse response;
	HttpRequest request = {0};

	pt_post(admin, path, fields, true, &response);
	if (response.transport != HTTP_TRANSPORT_OK)
	{
		request.service = SERVICE;
		request.administration = admin->name;
		request.call = path;
		http_report_transport_error(&request, &response);
	}
	return paytrace_parse_export(response.body, response.body_len);
}

List *
paytrace_export_by_id(const Administration *admin, int64 transaction_id)
{
	return pt_export(admin, "/v1/transactions/export/by_id",
					 psprintf(",\"transaction_id\":" INT64_FORMAT, transaction_id));
}

static char *
us_date(DateADT date)
{
	int			year,
				month,
				day;

	j2date(date + POSTGRES_EPOCH_JDATE, &year, &month, &day);
	return psprintf("%02d/%02d/%04d", month, day, year);
}

List *
paytrace_export_by_date_range(const Administration *admin, DateADT start, DateADT end,
							  const char *including_text)
{
	StringInfoData fields;

	initStringInfo(&fields);
	appendStringInfo(&fields, ",\"start_date\":\"%s\",\"end_date\":\"%s\"",
					 us_date(start), us_date(end));
	if (including_text != NULL)
	{
		appendStringInfoString(&fields, ",\"including_text\":");
		escape_json(&fields, including_text);
	}
	return pt_export(admin, "/v1/transactions/export/by_date_range", fields.data);
}

/* An amount that may come as a JSON number or string, exactly as written. */
static Datum
amount_member(json_object *item, const char *key)
{
	json_object *value = jsonconv_member(item, key);

	if (jsonconv_is_null(value))
		return jsonconv_money_text("0", key);
	return jsonconv_money_text(json_object_get_string(value), key);
}

static PtBatch *
batch_from_json(json_object *item)
{
	PtBatch    *b = palloc0(sizeof(PtBatch));
	int64		value;

	b->number = (int) jsonconv_int64(item, batch_fields.number);
	b->has_settled_at = parse_export_time(jsonconv_string_opt(item, batch_fields.created), &b->settled_at);
	b->transaction_count = jsonconv_int64_opt(item, batch_fields.transaction_count, &value) ? (int) value : 0;
	b->sales_amount = amount_member(item, batch_fields.sales_amount);
	b->refund_amount = amount_member(item, batch_fields.refund_amount);
	b->net_amount = amount_member(item, batch_fields.net_amount);
	b->raw = jsonconv_jsonb(item);
	return b;
}

/* POST batches/export: the settlement batches closed between two dates. */
List *
paytrace_export_batches(const Administration *admin, DateADT start, DateADT end)
{
	HttpResponse response;
	char		error[128];
	json_object *root;
	List	   *volatile batches = NIL;

	pt_post(admin, "/v1/batches/export",
			psprintf(",\"start_date\":\"%s\",\"end_date\":\"%s\"", us_date(start), us_date(end)),
			true, &response);
	if (response.transport != HTTP_TRANSPORT_OK)
	{
		HttpRequest request = {0};

		request.service = SERVICE;
		request.administration = admin->name;
		request.call = "POST /v1/batches/export";
		http_report_transport_error(&request, &response);
	}
	root = jsonconv_parse(response.body, response.body_len, error, sizeof(error));
	if (root == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_JSON_TEXT),
				 errmsg("PayTrace sent malformed JSON in answer to a batch export for administration \"%s\"",
						admin->name),
				 errdetail("%s.", error)));
	PG_TRY();
	{
		json_object *success = jsonconv_member(root, "success");
		json_object *items = jsonconv_member(root, batch_fields.list);

		if (success == NULL || !json_object_get_boolean(success))
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("PayTrace refused a batch export for administration \"%s\"", admin->name)));
		if (items != NULL && json_object_is_type(items, json_type_array))
			for (size_t i = 0; i < json_object_array_length(items); i++)
				batches = lappend(batches, batch_from_json(json_object_array_get_idx(items, i)));
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return batches;
}
