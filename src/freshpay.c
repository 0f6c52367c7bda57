/*-------------------------------------------------------------------------
 *
 * freshpay.c
 *	  Entry point: module magic and _PG_init.
 *
 * freshpay keeps tokens in shared memory and runs a background worker, so
 * it must be loaded through shared_preload_libraries; anything else is
 * refused with a hint.  _PG_init only calls the subsystems' initialisers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "settings.h"
#include "shared.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("freshpay must be loaded via shared_preload_libraries"),
				 errhint("Add freshpay to shared_preload_libraries in postgresql.conf and restart the server.")));

	FreshpaySettingsInit();
	FreshpaySharedInit();
	FreshpayWorkerRegister();
}
