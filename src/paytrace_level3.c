/*-------------------------------------------------------------------------
 *
 * paytrace_level3.c
 *	  PayTrace's Level 3 calls (level_three/visa, level_three/mastercard):
 *	  an approved, unsettled Visa or Mastercard sale or capture gets its
 *	  invoice's lines, which lowers the interchange fee of purchasing cards.
 *
 * Facts it follows (research/paytrace-api.md §3.3, [C] unless tagged):
 * transaction_id required; invoice_id, tax_amount at the top; line_items
 * with description, product_id, quantity, unit_cost, amount; Mastercard's
 * lines say debit_or_credit "D"; success is response_code 170.  Amounts
 * are dollars as JSON numbers, written as stored, never through a double.
 * Descriptions are cut to 35 characters [P: moqui does].
 *
 * Must not: touch tables, print secrets or tokens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "utils/json.h"

#include "paytrace.h"
#include "paytrace_int.h"

#define LEVEL3_DESCRIPTION_MAX 35	/* characters [P] */
#define LEVEL3_APPROVED 170		/* response_code of success [C] */

static void
append_text(StringInfo body, const char *key, const char *value)
{
	appendStringInfo(body, ",\"%s\":", key);
	escape_json(body, value);
}

/* POST level_three/visa or level_three/mastercard with the invoice's lines. */
PtQuery *
paytrace_level3_query(const Administration *admin, const PtLevel3 *level3)
{
	StringInfoData fields;
	ListCell   *lc;
	bool		first = true;

	initStringInfo(&fields);
	appendStringInfo(&fields, ",\"transaction_id\":" INT64_FORMAT, level3->transaction_id);
	append_text(&fields, "invoice_id", level3->invoice_number);
	appendStringInfo(&fields, ",\"tax_amount\":%s,\"line_items\":[", level3->tax_amount);
	foreach(lc, level3->lines)
	{
		PtLevel3Line *line = lfirst(lc);
		const char *description = line->description ? line->description : "";
		int			cut = pg_mbcliplen(description, strlen(description), LEVEL3_DESCRIPTION_MAX);

		appendStringInfoString(&fields, first ? "{" : ",{");
		first = false;
		appendStringInfoString(&fields, "\"description\":");
		escape_json(&fields, pnstrdup(description, cut));
		if (line->product_id != NULL)
			append_text(&fields, "product_id", line->product_id);
		appendStringInfo(&fields, ",\"quantity\":%s,\"unit_cost\":%s,\"amount\":%s",
						 line->quantity, line->unit_cost, line->amount);
		if (level3->mastercard)
			appendStringInfoString(&fields, ",\"debit_or_credit\":\"D\"");
		appendStringInfoChar(&fields, '}');
	}
	appendStringInfoChar(&fields, ']');
	return paytrace_query_new(admin, level3->mastercard ? "/v1/level_three/mastercard" : "/v1/level_three/visa",
							  fields.data);
}

/*
 * What became of a Level 3 call: approved (170), refused (PayTrace's
 * errors, in the message), or unknown (no readable answer).  (A lost
 * answer never gets here: paytrace_answered raised it, for the caller to
 * retry; Level 3 moves no money.)
 */
PtResult *
paytrace_level3_of(PtQuery *query, const HttpResponse *response)
{
	PtResult   *result = paytrace_parse_result(response->status, response->body, response->body_len);

	/* 170 is Level 3's own success; never a money call's. */
	if (result->outcome == PT_UNKNOWN && result->response_code == LEVEL3_APPROVED && response->status == 200)
		result->outcome = PT_APPROVED;
	return result;
}
