/*-------------------------------------------------------------------------
 *
 * json_prelude.h
 *	  Include json-c next to PostgreSQL's headers.
 *
 * PostgreSQL's fmgrprotos.h (pulled in by utils/builtins.h) declares the SQL
 * function json_object(); json-c names its value type json_object.  The
 * PostgreSQL declaration is renamed while it is read, so that json-c's type
 * keeps the name.  Include this before any header that includes
 * utils/builtins.h or utils/fmgrprotos.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_JSON_PRELUDE_H
#define FRESHPAY_JSON_PRELUDE_H

#define json_object pg_sql_json_object
#include "utils/builtins.h"
#undef json_object

#include <json.h>

#endif							/* FRESHPAY_JSON_PRELUDE_H */
