/*-------------------------------------------------------------------------
 *
 * jsonconv.c
 *	  json-c values → PostgreSQL datums, strictly.
 *
 * Money never passes through a double: a money value must arrive as a JSON
 * string (FreshPortal) or be taken from the JSON text as written (PayTrace
 * numbers, via jsonconv_money_text), checked against a plain decimal
 * pattern, and converted with numeric_in into numeric(12,2).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"

#include "jsonconv.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"


/* numeric(12,2) */
#define MONEY_TYPMOD ((int32) (((12 << 16) | 2) + VARHDRSZ))

json_object *
jsonconv_parse(const char *text, size_t len, char *error, size_t error_size)
{
	json_tokener *tok;
	json_object *root;
	enum json_tokener_error jerr;
	size_t		end;

	/*
	 * JSON is UTF-8, and json-c does not check it: text that is not would
	 * be stored as is into text columns.  Refused here, once, for every
	 * remote answer.
	 */
	if (text != NULL && pg_encoding_verifymbstr(PG_UTF8, text, (int) len) != (int) len)
	{
		strlcpy(error, "the body is not valid UTF-8", error_size);
		return NULL;
	}
	tok = json_tokener_new();
	if (tok == NULL)
	{
		strlcpy(error, "out of memory", error_size);
		return NULL;
	}
	root = json_tokener_parse_ex(tok, text, (int) len);
	jerr = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);

	if (root == NULL || jerr != json_tokener_success)
	{
		strlcpy(error,
				jerr == json_tokener_continue ? "unexpected end of input" :
				json_tokener_error_desc(jerr),
				error_size);
		json_object_put(root);
		return NULL;
	}
	/* Whitespace may follow the value; anything else makes it malformed. */
	while (end < len && isspace((unsigned char) text[end]))
		end++;
	if (end < len)
	{
		strlcpy(error, "unexpected data after the JSON value", error_size);
		json_object_put(root);
		return NULL;
	}
	return root;
}

json_object *
jsonconv_member(json_object *object, const char *key)
{
	json_object *value = NULL;

	if (object == NULL || !json_object_is_type(object, json_type_object))
		return NULL;
	if (!json_object_object_get_ex(object, key, &value))
		return NULL;
	return value;
}

bool
jsonconv_is_null(json_object *value)
{
	return value == NULL || json_object_is_type(value, json_type_null);
}

static void
wrong_shape(const char *key, const char *expected)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("field \"%s\" is not %s", key, expected)));
}

static bool
text_is_integer(const char *s)
{
	if (*s == '-')
		s++;
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if (!isdigit((unsigned char) *s))
			return false;
	return true;
}

bool
jsonconv_int64_opt(json_object *object, const char *key, int64 *result)
{
	json_object *value = jsonconv_member(object, key);

	if (jsonconv_is_null(value))
		return false;
	if (json_object_is_type(value, json_type_int))
	{
		/*
		 * json-c clamps integers beyond int64 to its ends without a word (two
		 * different huge ids would become one): the ends count as out of
		 * range, like the over-long strings below.
		 */
		*result = json_object_get_int64(value);
		if (*result == PG_INT64_MAX || *result == PG_INT64_MIN)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("field \"%s\" is out of range for an integer", key)));
		return true;
	}
	if (json_object_is_type(value, json_type_string) &&
		text_is_integer(json_object_get_string(value)) &&
		strlen(json_object_get_string(value)) <= 18)
	{
		*result = strtoi64(json_object_get_string(value), NULL, 10);
		return true;
	}
	wrong_shape(key, "an integer");
	return false;				/* keep compiler quiet */
}

int64
jsonconv_int64(json_object *object, const char *key)
{
	int64		result;

	if (!jsonconv_int64_opt(object, key, &result))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("field \"%s\" is missing", key)));
	return result;
}

char *
jsonconv_string_opt(json_object *object, const char *key)
{
	json_object *value = jsonconv_member(object, key);

	if (jsonconv_is_null(value))
		return NULL;
	if (!json_object_is_type(value, json_type_string))
		wrong_shape(key, "a string");
	return pstrdup(json_object_get_string(value));
}

char *
jsonconv_string(json_object *object, const char *key)
{
	char	   *result = jsonconv_string_opt(object, key);

	if (result == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("field \"%s\" is missing", key)));
	return result;
}

bool
jsonconv_bool_opt(json_object *object, const char *key, bool fallback)
{
	json_object *value = jsonconv_member(object, key);

	if (jsonconv_is_null(value))
		return fallback;
	if (!json_object_is_type(value, json_type_boolean))
		wrong_shape(key, "a boolean");
	return json_object_get_boolean(value);
}

/* A plain decimal: optional minus, 1-10 digits, optional 1-2 decimals. */
static bool
text_is_money(const char *s)
{
	int			digits = 0;
	int			decimals = 0;

	if (*s == '-')
		s++;
	while (isdigit((unsigned char) *s))
	{
		s++;
		digits++;
	}
	if (*s == '.')
	{
		s++;
		while (isdigit((unsigned char) *s))
		{
			s++;
			decimals++;
		}
		if (decimals == 0)
			return false;
	}
	return *s == '\0' && digits >= 1 && digits <= 10 && decimals <= 2;
}

Datum
jsonconv_money_text(const char *text, const char *key)
{
	if (!text_is_money(text))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("field \"%s\" is not an amount: \"%s\"", key, text),
				 errdetail("Amounts are decimal numbers with at most two decimals, such as \"1090.00\".")));
	return DirectFunctionCall3(numeric_in, CStringGetDatum(text),
							   ObjectIdGetDatum(InvalidOid),
							   Int32GetDatum(MONEY_TYPMOD));
}

Datum
jsonconv_money(json_object *object, const char *key)
{
	json_object *value = jsonconv_member(object, key);

	if (jsonconv_is_null(value))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("field \"%s\" is missing", key)));
	if (!json_object_is_type(value, json_type_string))
		wrong_shape(key, "an amount in a JSON string");
	return jsonconv_money_text(json_object_get_string(value), key);
}

/* "YYYY-MM-DD" exactly: date_in alone would also take other styles. */
static bool
text_is_iso_date(const char *s)
{
	static const char pattern[] = "dddd-dd-dd";

	if (strlen(s) != sizeof(pattern) - 1)
		return false;
	for (int i = 0; pattern[i]; i++)
		if (pattern[i] == 'd' ? !isdigit((unsigned char) s[i]) : s[i] != pattern[i])
			return false;
	return true;
}

bool
jsonconv_date_opt(json_object *object, const char *key, DateADT *result)
{
	char	   *text = jsonconv_string_opt(object, key);

	if (text == NULL)
		return false;
	if (!text_is_iso_date(text))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_DATETIME_FORMAT),
				 errmsg("field \"%s\" is not a date in the form YYYY-MM-DD: \"%s\"", key, text)));
	*result = DatumGetDateADT(DirectFunctionCall1(date_in, CStringGetDatum(text)));
	return true;
}

DateADT
jsonconv_date(json_object *object, const char *key)
{
	DateADT		result;

	if (!jsonconv_date_opt(object, key, &result))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("field \"%s\" is missing", key)));
	return result;
}

/* "YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+HH:MM|-HH:MM)": an ISO 8601 instant. */
static bool
text_is_iso_timestamp(const char *s)
{
	static const char pattern[] = "dddd-dd-ddTdd:dd:dd";
	size_t		n = sizeof(pattern) - 1;

	if (strlen(s) < n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (pattern[i] == 'd' ? !isdigit((unsigned char) s[i]) : s[i] != pattern[i])
			return false;
	s += n;
	if (*s == '.')
	{
		s++;
		if (!isdigit((unsigned char) *s))
			return false;
		while (isdigit((unsigned char) *s))
			s++;
	}
	if (strcmp(s, "Z") == 0)
		return true;
	return (s[0] == '+' || s[0] == '-') && isdigit((unsigned char) s[1]) &&
		isdigit((unsigned char) s[2]) && s[3] == ':' &&
		isdigit((unsigned char) s[4]) && isdigit((unsigned char) s[5]) && s[6] == '\0';
}

TimestampTz
jsonconv_timestamp(json_object *object, const char *key)
{
	char	   *text = jsonconv_string(object, key);

	if (!text_is_iso_timestamp(text))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_DATETIME_FORMAT),
				 errmsg("field \"%s\" is not an ISO 8601 timestamp with time zone: \"%s\"", key, text)));
	return DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(text),
												   ObjectIdGetDatum(InvalidOid),
												   Int32GetDatum(-1)));
}

/* The object as jsonb, for the raw payload columns. */
Datum
jsonconv_jsonb(json_object *object)
{
	const char *text = json_object_to_json_string_ext(object, JSON_C_TO_STRING_PLAIN);

	return DirectFunctionCall1(jsonb_in, CStringGetDatum(text));
}

/* ts as "YYYY-MM-DDTHH:MM:SS.ffffffZ" in UTC, the form FreshPortal uses. */
char *
jsonconv_format_timestamp(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
					tm.tm_year, tm.tm_mon, tm.tm_mday,
					tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}
