/*-------------------------------------------------------------------------
 *
 * paytrace_int.h
 *	  What paytrace.c, paytrace_export.c and paytrace_level3.c share, and
 *	  nobody else sees.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_PAYTRACE_INT_H
#define FRESHPAY_PAYTRACE_INT_H

#include "lib/stringinfo.h"

#include "administration.h"
#include "jsonconv.h"
#include "http.h"
#include "paytrace.h"

#define SERVICE "PayTrace"

extern PtQuery *paytrace_query_new(const Administration *admin, const char *path, char *fields);
extern void paytrace_query_perform(PtQuery *query, HttpResponse *response);
extern void paytrace_describe_errors(json_object *errors, StringInfo message, StringInfo codes);

#endif							/* FRESHPAY_PAYTRACE_INT_H */
