/*-------------------------------------------------------------------------
 *
 * fuzz.h
 *	  What the fuzz harness (harness.c) and the stubs (stubs.c) share.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_FUZZ_H
#define FRESHPAY_FUZZ_H

/* The answer the stubbed http_perform() gives to every request from now on. */
extern void fuzz_http_answer(long status, const char *body, size_t len);
/* The same body with statuses[i] for the i-th request (the last repeats). */
extern void fuzz_http_answers(const long *statuses, int n, const char *body, size_t len);
/* Whether the stubbed token cache holds a token (else the client logs in). */
extern void fuzz_token_cached(bool cached);
/* Free the answers of the current input; back to 200, "", token cached. */
extern void fuzz_http_reset(void);

#endif							/* FRESHPAY_FUZZ_H */
