/*-------------------------------------------------------------------------
 *
 * sync_state.c
 *	  freshpay.sync_state: each stream's cursor and the counts of its last
 *	  pull, in the caller's transaction (SPI connected).
 *
 * The row is locked FOR UPDATE, so concurrent syncs of the same
 * administration and stream queue up instead of racing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "sync_state.h"

/* Lock this stream's cursor row (creating it on first use) and read it. */
bool
sync_state_lock(const char *administration, const char *stream, TimestampTz *cursor)
{
	Oid			types[] = {TEXTOID, TEXTOID};
	Datum		values[] = {CStringGetTextDatum(administration), CStringGetTextDatum(stream)};
	bool		isnull;
	int			rc;

	rc = SPI_execute_with_args(
		"INSERT INTO freshpay.sync_state (administration, stream) VALUES ($1, $2)"
		" ON CONFLICT (administration, stream) DO NOTHING",
		2, types, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "could not create the sync cursor: %s", SPI_result_code_string(rc));
	rc = SPI_execute_with_args(
		"SELECT cursor FROM freshpay.sync_state"
		" WHERE administration OPERATOR(pg_catalog.=) $1"
		"   AND stream OPERATOR(pg_catalog.=) $2"
		" FOR UPDATE",
		2, types, values, NULL, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not lock the sync cursor: %s", SPI_result_code_string(rc));
	*cursor = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 1, &isnull));
	return !isnull;
}

void
sync_state_store(const char *administration, const char *stream,
			 bool has_cursor, TimestampTz cursor, const SyncCounts *counts)
{
	Oid			types[] = {TEXTOID, TEXTOID, TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID};
	Datum		values[] = {
		CStringGetTextDatum(administration), CStringGetTextDatum(stream),
		TimestampTzGetDatum(cursor), Int64GetDatum(counts->fetched),
		Int64GetDatum(counts->inserted), Int64GetDatum(counts->updated)
	};
	char		nulls[] = {' ', ' ', has_cursor ? ' ' : 'n', ' ', ' ', ' '};
	int			rc;

	/* A pull that saw no server time (only empty answers) keeps its cursor. */
	rc = SPI_execute_with_args(
		"UPDATE freshpay.sync_state"
		"   SET cursor = COALESCE($3, cursor),"
		"       last_synced_at = pg_catalog.now(),"
		"       last_fetched = $4, last_inserted = $5, last_updated = $6"
		" WHERE administration OPERATOR(pg_catalog.=) $1"
		"   AND stream OPERATOR(pg_catalog.=) $2",
		6, types, values, nulls, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "could not store the sync cursor: %s", SPI_result_code_string(rc));
}

/* Record a pull of a stream without a cursor (the PayTrace ones). */
void
sync_state_record(const char *administration, const char *stream, const SyncCounts *counts)
{
	TimestampTz no_cursor;

	(void) sync_state_lock(administration, stream, &no_cursor);
	sync_state_store(administration, stream, false, 0, counts);
}
