/*-------------------------------------------------------------------------
 *
 * jsonconv.h
 *	  Converting json-c values into PostgreSQL datums at the boundary.
 *
 * Generic helpers only: which key means what belongs to the API clients.
 * json-c objects are malloc'd; the clients own them and release them in
 * PG_FINALLY, converting everything they keep into palloc'd values first.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_JSONCONV_H
#define FRESHPAY_JSONCONV_H

#include "json_prelude.h"

#include "datatype/timestamp.h"
#include "utils/date.h"

extern json_object *jsonconv_parse(const char *text, size_t len,
								   char *error, size_t error_size);
extern json_object *jsonconv_member(json_object *object, const char *key);
extern bool jsonconv_is_null(json_object *value);

/* Each raises an ERROR naming key when the value has the wrong shape. */
extern int64 jsonconv_int64(json_object *object, const char *key);
extern bool jsonconv_int64_opt(json_object *object, const char *key, int64 *result);
extern char *jsonconv_string(json_object *object, const char *key);
extern char *jsonconv_string_opt(json_object *object, const char *key);
extern bool jsonconv_bool_opt(json_object *object, const char *key, bool fallback);
extern Datum jsonconv_money(json_object *object, const char *key);
extern Datum jsonconv_money_text(const char *text, const char *key);
extern DateADT jsonconv_date(json_object *object, const char *key);
extern bool jsonconv_date_opt(json_object *object, const char *key, DateADT *result);
extern TimestampTz jsonconv_timestamp(json_object *object, const char *key);
extern Datum jsonconv_jsonb(json_object *object);

extern char *jsonconv_format_timestamp(TimestampTz ts);

#endif							/* FRESHPAY_JSONCONV_H */
