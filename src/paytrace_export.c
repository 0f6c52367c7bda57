/*-------------------------------------------------------------------------
 *
 * paytrace_export.c
 *	  PayTrace's exports: transactions by id or by date range, settlement
 *	  batches, and the mapping of their rows onto PtTransaction / PtBatch.
 *
 * Facts it follows (research/paytrace-api.md): dates "M/D/YYYY h:mm:ss AM"
 * without a zone (taken as Pacific time, PayTrace's home; a guess),
 * status_code "Y", "N" or "GB<batch>", numbers that come as JSON numbers or
 * strings.  Amounts are read from the JSON text as written, never through a
 * double.
 *
 * Must not: touch tables, print secrets or tokens.
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
#include "paytrace_int.h"

/* Export dates carry no zone; PayTrace is in Spokane, WA. [G] */
#define PT_EXPORT_TIME_ZONE "America/Los_Angeles"

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

/*
 * The first six digits of credit_card.masked_number, when the export was
 * asked to include them (include_bin [C]: "first 6 and last 4 digits"; the
 * form "401200******5439" is [G]); "" otherwise.
 */
static void
card_bin(json_object *item, char bin[7])
{
	json_object *card = jsonconv_member(item, "credit_card");
	char	   *masked = card && json_object_is_type(card, json_type_object)
		? jsonconv_string_opt(card, "masked_number") : NULL;

	bin[0] = '\0';
	if (masked == NULL || strlen(masked) < 10)
		return;
	for (int i = 0; i < 6; i++)
		if (!isdigit((unsigned char) masked[i]))
			return;
	memcpy(bin, masked, 6);
	bin[6] = '\0';
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
	card_bin(item, t->bin);
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

/* One item of an export's list as a struct, or NULL to leave it out. */
typedef void *(*ExportItem) (json_object *item);

/*
 * The items of an export answer's list (member), each through from_json.
 * Malformed JSON, or an answer that is not a success (PayTrace's errors in
 * the detail), is an ERROR naming what was asked; so is a missing list when
 * required (otherwise it is an empty one).
 */
static List *
export_items(const char *body, size_t len, const char *what, const char *member,
			 bool required, ExportItem from_json)
{
	char		error[128];
	json_object *root = jsonconv_parse(body, len, error, sizeof(error));
	List	   *volatile items = NIL;

	if (root == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_JSON_TEXT),
				 errmsg("PayTrace sent malformed JSON in answer to %s", what),
				 errdetail("%s.", error)));
	PG_TRY();
	{
		json_object *success = jsonconv_member(root, "success");
		json_object *list = jsonconv_member(root, member);
		bool		has_list = list != NULL && json_object_is_type(list, json_type_array);

		if (success == NULL || !json_object_get_boolean(success) || (required && !has_list))
		{
			StringInfoData message;
			StringInfoData codes;
			json_object *errors = jsonconv_member(root, "errors");

			initStringInfo(&message);
			initStringInfo(&codes);
			if (errors != NULL && json_object_is_type(errors, json_type_object))
				paytrace_describe_errors(errors, &message, &codes);
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("PayTrace refused %s", what),
					 message.len ? errdetail("%s", message.data) : 0));
		}
		if (has_list)
		{
			for (size_t i = 0; i < json_object_array_length(list); i++)
			{
				void	   *item = from_json(json_object_array_get_idx(list, i));

				if (item != NULL)
					items = lappend(items, item);
			}
		}
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return items;
}

static void *
transaction_item(json_object *item)
{
	return transaction_from_json(item);
}

/* The transactions of an export answer; raises on anything malformed. */
List *
paytrace_parse_export(const char *body, size_t len)
{
	return export_items(body, len, "a transaction export", "transactions", false, transaction_item);
}

/* The transactions of an export's answer. */
List *
paytrace_export_of(PtQuery *query, const HttpResponse *response)
{
	return paytrace_parse_export(response->body, response->body_len);
}

static List *
pt_export(PtQuery *query)
{
	HttpResponse response;

	paytrace_query_perform(query, &response);
	return paytrace_export_of(query, &response);
}

/* POST transactions/export/by_id */
PtQuery *
paytrace_export_by_id_query(const Administration *admin, int64 transaction_id)
{
	return paytrace_query_new(admin, "/v1/transactions/export/by_id",
							  psprintf(",\"transaction_id\":" INT64_FORMAT, transaction_id));
}

List *
paytrace_export_by_id(const Administration *admin, int64 transaction_id)
{
	return pt_export(paytrace_export_by_id_query(admin, transaction_id));
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

/* POST transactions/export/by_date_range, optionally only those including a text. */
PtQuery *
paytrace_export_by_date_range_query(const Administration *admin, DateADT start, DateADT end,
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
	return paytrace_query_new(admin, "/v1/transactions/export/by_date_range", fields.data);
}

/*
 * POST transactions/export/by_date_range for one transaction, with its
 * card's BIN (include_bin and the transaction_id filter [C]).
 */
PtQuery *
paytrace_export_card_query(const Administration *admin, int64 transaction_id, DateADT start,
						   DateADT end)
{
	return paytrace_query_new(admin, "/v1/transactions/export/by_date_range",
							  psprintf(",\"start_date\":\"%s\",\"end_date\":\"%s\","
									   "\"transaction_id\":" INT64_FORMAT ",\"include_bin\":true",
									   us_date(start), us_date(end), transaction_id));
}

/* Visa: 4; Mastercard: 51-55 and 2221-2720 (the card networks' published ranges). */
PtBrand
paytrace_brand_of(const char *bin)
{
	int			two,
				four;

	if (bin == NULL || strlen(bin) < 6)
		return PT_BRAND_UNKNOWN;
	two = (bin[0] - '0') * 10 + (bin[1] - '0');
	four = two * 100 + (bin[2] - '0') * 10 + (bin[3] - '0');
	if (bin[0] == '4')
		return PT_BRAND_VISA;
	if ((two >= 51 && two <= 55) || (four >= 2221 && four <= 2720))
		return PT_BRAND_MASTERCARD;
	return PT_BRAND_OTHER;
}

List *
paytrace_export_by_date_range(const Administration *admin, DateADT start, DateADT end,
							  const char *including_text)
{
	return pt_export(paytrace_export_by_date_range_query(admin, start, end, including_text));
}

/*
 * A card profile of customer/export [C shape, research §4.1]: its last four
 * digits and expiry month and year, and nothing else of the card.  The year
 * may come with two digits, as in transaction exports [G].  ACH profiles
 * (no credit_card) are left out.
 */
static PtProfile *
profile_from_json(json_object *item)
{
	json_object *card = jsonconv_member(item, "credit_card");
	PtProfile  *p;
	char	   *masked;
	int64		month = 0,
				year = 0;
	size_t		len;

	if (card == NULL || !json_object_is_type(card, json_type_object))
		return NULL;
	p = palloc0(sizeof(PtProfile));
	p->customer_id = jsonconv_string(item, "customer_id");
	masked = jsonconv_string_opt(card, "masked_number");
	len = masked ? strlen(masked) : 0;
	if (len >= 4 && strspn(masked + len - 4, "0123456789") == 4)
		memcpy(p->last4, masked + len - 4, 5);
	if (jsonconv_int64_opt(card, "expiration_month", &month) && month >= 1 && month <= 12 &&
		jsonconv_int64_opt(card, "expiration_year", &year) && year >= 0 && year <= 2999)
	{
		p->expiry_month = (int) month;
		p->expiry_year = (int) (year < 100 ? 2000 + year : year);
	}
	return p;
}

static void *
profile_item(json_object *item)
{
	return profile_from_json(item);
}

/* POST customer/export: every vault profile's card, made here and now (the pull). */
List *
paytrace_export_profiles(const Administration *admin)
{
	HttpResponse response;
	List	   *profiles;

	paytrace_query_perform(paytrace_query_new(admin, "/v1/customer/export", ""), &response);
	profiles = export_items(response.body, response.body_len, "customer/export", "customers", true,
							profile_item);
	explicit_bzero(response.body, response.body_len);
	return profiles;
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

static void *
batch_item(json_object *item)
{
	return batch_from_json(item);
}

/* POST batches/export: the settlement batches closed between two dates. */
List *
paytrace_export_batches(const Administration *admin, DateADT start, DateADT end)
{
	HttpResponse response;

	paytrace_query_perform(paytrace_query_new(admin, "/v1/batches/export",
											  psprintf(",\"start_date\":\"%s\",\"end_date\":\"%s\"",
													   us_date(start), us_date(end))),
						   &response);
	return export_items(response.body, response.body_len,
						psprintf("a batch export for administration \"%s\"", admin->name),
						batch_fields.list, false, batch_item);
}
