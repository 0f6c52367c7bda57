/*-------------------------------------------------------------------------
 *
 * money.c
 *	  The money vocabulary: amounts as numeric text, never a double, and the
 *	  refusal of a money call in PostgreSQL's voice.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/numeric.h"

#include "money.h"

/* A refusal of the call, in PostgreSQL's voice; the caller gets it as is. */
void
fp_refuse(int sqlerrcode, const char *hint, const char *fmt,...)
{
	char		message[512];
	va_list		args;

	va_start(args, fmt);
	vsnprintf(message, sizeof(message), fmt, args);
	va_end(args);
	ereport(ERROR,
			(errcode(sqlerrcode),
			 errmsg_internal("%s", message),
			 hint ? errhint("%s", hint) : 0));
}

Datum
money_numeric(const char *text)
{
	return DirectFunctionCall3(numeric_in, CStringGetDatum(text),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
}

int
money_compare(const char *a, const char *b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, money_numeric(a), money_numeric(b)));
}

char *
money_text(Datum value)
{
	return DatumGetCString(DirectFunctionCall1(numeric_out, value));
}
