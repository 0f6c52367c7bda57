/*-------------------------------------------------------------------------
 *
 * paytrace_v3.c
 *	  PayTrace JSON API v3 client, wire format in one place (contract
 *	  section 11; evidence in research/paytrace-api.md §9).
 *
 * Facts it follows, each tagged [C] confirmed, [P] probable, [G] guessed:
 *	- POST /v3/token, form-encoded client_credentials with the API user and
 *	  password → 201 {"data":{"access_token":…,"expires_in":…}} [C shape;
 *	  P lifetime].  Cached in shared memory per administration, apart from
 *	  the v1 token; a 401 renews it once.
 *	- Every call: "Authorization: Bearer", header X-Integrator-Id [C], and
 *	  merchant_id (an integer) in the JSON body [C].
 *	- Validation errors are 422 {"message":…,"data":[{"field","detail"}]}
 *	  [C]; 401 token errors; 5xx happen.
 *	- POST /v3/invoice, the payment request [C request fields]; its answer
 *	  {"data":{"invoice_id":…}} [G].
 *
 * Must not: touch tables, print secrets or tokens, decide retries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "jsonconv.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "http.h"
#include "paytrace_v3.h"
#include "token_cache.h"

#define SERVICE "PayTrace"

#define V3_TOKEN_PATH "/v3/token"	/* [C] */
#define V3_INVOICE_PATH "/v3/invoice"	/* [C] */
#define V3_INTEGRATOR_HEADER "X-Integrator-Id"	/* [C] */
#define V3_TOKEN_LIFETIME_S 900	/* when the answer does not say [P] */
#define V3_TOKEN_MARGIN_S 60

struct PtV3Call
{
	const Administration *admin;
	const char *method;
	const char *path;
	char	   *url;
	char	   *body;			/* JSON, merchant_id first */
	char	   *call;			/* "POST /v3/invoice", for messages */
	bool		idempotent;
	uint32		hash;
	int			tries;			/* sends so far: a 401 renews the token once */
	char		token[FRESHPAY_TOKEN_MAX + 1];
	char	   *integrator_header;
	HttpRequest request;
};

/* The administration must have a merchant id for v3: an ERROR names what needed it. */
void
paytrace_v3_require(const Administration *admin, const char *what)
{
	if (admin->paytrace_merchant_id <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s needs PayTrace API v3, and administration \"%s\" has no PayTrace merchant id",
						what, admin->name),
				 errhint("Set freshpay.administrations.paytrace_merchant_id to the merchant id PayTrace gave for API v3.")));
}

static uint32
v3_credential_hash(const Administration *admin)
{
	char	   *credentials = psprintf("%s\n%s", admin->paytrace_username, admin->paytrace_password);
	uint32		hash = administration_credential_hash(admin->paytrace_url, credentials);

	explicit_bzero(credentials, strlen(credentials));
	pfree(credentials);
	return hash;
}

/* POST /v3/token: a v3 bearer token, cached. */
static char *
v3_authenticate(const Administration *admin, uint32 hash)
{
	HttpRequest request = {0};
	HttpResponse response;
	char	   *body;
	char	   *volatile token = NULL;
	int64		expires_in = V3_TOKEN_LIFETIME_S;
	char		error[128];
	json_object *root;

	body = psprintf("grant_type=client_credentials&client_id=%s&client_secret=%s",
					http_url_escape(admin->paytrace_username),
					http_url_escape(admin->paytrace_password));
	request.service = SERVICE;
	request.administration = admin->name;
	request.call = "POST " V3_TOKEN_PATH;
	request.method = "POST";
	request.url = psprintf("%s%s", admin->paytrace_url, V3_TOKEN_PATH);
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
		json_object *data = root ? jsonconv_member(root, "data") : NULL;

		if (data != NULL && json_object_is_type(data, json_type_object) &&
			(response.status == 201 || response.status == 200))
		{
			token = jsonconv_string_opt(data, "access_token");
			jsonconv_int64_opt(data, "expires_in", &expires_in);
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
				 errmsg("PayTrace rejected the API v3 credentials of administration \"%s\"", admin->name),
				 errdetail("POST " V3_TOKEN_PATH " answered HTTP %ld.", response.status),
				 errhint("Check paytrace_username and paytrace_password; the API user must be allowed to use API v3.")));
	if (token == NULL || token[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("PayTrace sent no token in answer to POST " V3_TOKEN_PATH " for administration \"%s\"",
						admin->name),
				 errdetail("HTTP status %ld.", response.status),
				 errhint("Try again later; check PayTrace's status if it persists.")));

	expires_in = expires_in > 2 * V3_TOKEN_MARGIN_S ? expires_in - V3_TOKEN_MARGIN_S : expires_in / 2;
	token_cache_store(admin->name, REMOTE_PAYTRACE_V3, hash, token,
					  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), expires_in * 1000));
	return token;
}

/* A call with merchant_id first in its JSON body; members follow it (",\"x\":…"). */
static PtV3Call *
v3_post(const Administration *admin, const char *path, const char *members, bool idempotent)
{
	PtV3Call   *c = palloc0(sizeof(PtV3Call));

	paytrace_v3_require(admin, psprintf("POST %s", path));
	c->admin = admin;
	c->method = "POST";
	c->path = path;
	c->url = psprintf("%s%s", admin->paytrace_url, path);
	c->body = psprintf("{\"merchant_id\":%d%s}", admin->paytrace_merchant_id, members);
	c->call = psprintf("POST %s", path);
	c->idempotent = idempotent;
	c->hash = v3_credential_hash(admin);
	c->integrator_header = psprintf(V3_INTEGRATOR_HEADER ": %s", admin->paytrace_integrator_id);
	return c;
}

/* The request of the next send: the cached token, or a fresh one after a 401. */
static HttpRequest *
v3_request(PtV3Call *c)
{
	HttpRequest *request = &c->request;

	if (c->tries > 0 || !token_cache_lookup(c->admin->name, REMOTE_PAYTRACE_V3, c->hash,
											c->token, sizeof(c->token)))
	{
		char	   *token = v3_authenticate(c->admin, c->hash);

		strlcpy(c->token, token, sizeof(c->token));
		explicit_bzero(token, strlen(token));
	}
	c->tries++;
	memset(request, 0, sizeof(HttpRequest));
	request->service = SERVICE;
	request->administration = c->admin->name;
	request->call = c->call;
	request->method = c->method;
	request->url = c->url;
	request->bearer_token = c->token;
	request->extra_header = c->integrator_header;
	request->content_type = "application/json";
	request->body = c->body;
	request->idempotent = c->idempotent;
	return request;
}

void
paytrace_v3_send(PtV3Call *c, void *owner, int priority)
{
	(void) http_start(v3_request(c), owner, priority);
}

/*
 * Did the transfer bring the call's answer?  A 401 means the token was not
 * accepted and nothing was done: the token is forgotten and the call sent
 * once more (false).  Anything else, transport failures included, is the
 * answer, for the call's own reader to judge.
 */
bool
paytrace_v3_answered(PtV3Call *c, const HttpResponse *response, void *owner, int priority)
{
	if (response->transport != HTTP_TRANSPORT_OK || response->status != 401)
		return true;
	token_cache_forget(c->admin->name, REMOTE_PAYTRACE_V3, c->token);
	if (c->tries >= 2)
		return true;
	paytrace_v3_send(c, owner, priority);
	return false;
}

/* "field: detail; …" of a 422 answer [C], or its message, or NULL. */
static char *
v3_refusal(const HttpResponse *response)
{
	char		error[128];
	json_object *root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	StringInfoData text;

	if (root == NULL)
		return NULL;
	initStringInfo(&text);
	PG_TRY();
	{
		json_object *data = jsonconv_member(root, "data");
		char	   *message = jsonconv_string_opt(root, "message");

		if (data != NULL && json_object_is_type(data, json_type_array))
		{
			for (size_t i = 0; i < json_object_array_length(data); i++)
			{
				json_object *item = json_object_array_get_idx(data, i);
				char	   *field;
				char	   *detail;

				if (item == NULL || !json_object_is_type(item, json_type_object))
					continue;
				field = jsonconv_string_opt(item, "field");
				detail = jsonconv_string_opt(item, "detail");
				appendStringInfo(&text, "%s%s: %s", text.len ? "; " : "",
								 field ? field : "?", detail ? detail : "invalid");
			}
		}
		if (text.len == 0 && message != NULL)
			appendStringInfoString(&text, message);
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return text.len ? text.data : NULL;
}

/* "2026-10-01T12:00:00Z" */
static char *
v3_utc(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02dZ",
					tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* POST /v3/invoice: a payment request [C request fields]. */
PtV3Call *
paytrace_v3_invoice_call(const Administration *admin, const PtV3Invoice *inv)
{
	StringInfoData members;

	initStringInfo(&members);
	appendStringInfoString(&members, ",\"transaction_type\":");
	escape_json(&members, inv->transaction_type);
	appendStringInfoString(&members, ",\"invoice_number\":");
	escape_json(&members, inv->invoice_number);
	appendStringInfoString(&members, ",\"invoice_amount\":");
	escape_json(&members, inv->amount);
	appendStringInfoString(&members, ",\"is_amount_editable\":false,\"is_invoice_number_editable\":false");
	appendStringInfo(&members, ",\"expire_at\":\"%s\"", v3_utc(inv->expire_at));
	appendStringInfoString(&members, ",\"email\":");
	escape_json(&members, inv->email);
	appendStringInfoString(&members, ",\"email_required\":true,\"customer_label\":");
	escape_json(&members, inv->customer_label ? inv->customer_label : "");
	/* Never re-sent by itself: PayTrace may already have e-mailed the link. */
	return v3_post(admin, V3_INVOICE_PATH, members.data, false);
}

/* data.invoice_id of a payment request's answer [G], or NULL. */
static char *
v3_invoice_id(const HttpResponse *response)
{
	char		error[128];
	json_object *root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	char	   *volatile id = NULL;

	if (root == NULL)
		return NULL;
	PG_TRY();
	{
		json_object *data = jsonconv_member(root, "data");
		json_object *value = data ? jsonconv_member(data, "invoice_id") : NULL;

		if (value != NULL && (json_object_is_type(value, json_type_string) ||
							  json_object_is_type(value, json_type_int)))
			id = pstrdup(json_object_get_string(value));
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return id;
}

/*
 * What became of a payment request: PayTrace's id of it (sent), or NULL
 * with the outcome in *lost (true: it may have been made; false: it was
 * not) and *why.  A refusal (422) is raised as the caller's error.
 */
char *
paytrace_v3_invoice_of(PtV3Call *c, const HttpResponse *response, bool *lost, char **why)
{
	char	   *id;

	*lost = false;
	*why = NULL;
	if (response->transport == HTTP_TRANSPORT_NOT_SENT)
	{
		*why = psprintf("Not sent: %s", response->error);
		return NULL;
	}
	if (response->transport != HTTP_TRANSPORT_OK)
	{
		*lost = true;
		*why = psprintf("The answer was lost: %s", response->error);
		return NULL;
	}
	if (response->status == 401)
	{
		*why = pstrdup("PayTrace did not accept a fresh API v3 token.");
		return NULL;
	}
	if (response->status == 429 || (response->status == 503 && response->retry_after >= 0))
	{
		*why = psprintf("PayTrace asked to try again later (HTTP %ld).", response->status);
		return NULL;
	}
	if (response->status == 422)
	{
		char	   *refusal = v3_refusal(response);

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("PayTrace refused the payment request: %s", refusal ? refusal : "no reason given"),
				 errhint("Nothing was sent to the customer; correct the invoice or the e-mail address and ask again.")));
	}
	if (response->status != 200 && response->status != 201)
	{
		*lost = true;
		*why = psprintf("PayTrace answered HTTP %ld; the request may have been made.", response->status);
		return NULL;
	}
	id = v3_invoice_id(response);
	if (id == NULL || id[0] == '\0')
	{
		*lost = true;
		*why = pstrdup("PayTrace's answer had no request id; the request may have been made.");
		return NULL;
	}
	return id;
}
