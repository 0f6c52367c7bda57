/*-------------------------------------------------------------------------
 *
 * settings.h
 *	  freshpay's configuration parameters (GUCs).
 *
 * Every setting the contract names lives here and nowhere else; other files
 * read the variables, never the GUC machinery.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_SETTINGS_H
#define FRESHPAY_SETTINGS_H

extern char *freshpay_database_name;
extern bool freshpay_worker_enabled;
extern int	freshpay_sync_interval;		/* seconds; 0 = only on demand */
extern int	freshpay_max_parallel_requests;
extern int	freshpay_connect_timeout;	/* milliseconds */
extern int	freshpay_request_timeout;	/* milliseconds */
extern int	freshpay_max_attempts;
extern int	freshpay_max_declines_per_day;
extern int	freshpay_max_retry_delay;	/* milliseconds */
extern char *freshpay_ca_file;
extern bool freshpay_allow_plain_http;
extern int	freshpay_max_response_size;	/* kilobytes */
extern int	freshpay_sync_page_size;
extern int	freshpay_sync_overlap;		/* seconds */
extern int	freshpay_history_retention;	/* days */
extern char *freshpay_debug_pause_at;

extern void FreshpaySettingsInit(void);

#endif							/* FRESHPAY_SETTINGS_H */
