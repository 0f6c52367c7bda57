/*
 * freshpay 0.4 → 0.5: money safety when PayTrace is slower than freshpay
 * waits.  An outcome freshpay could not learn stays 'unknown' until PayTrace
 * shows it, or a person settles it; an authorization that has a capture is
 * no longer actionable; write-back and lookups retry until they succeed;
 * money calls are bound to freshpay.database_name; secret references cannot
 * be redirected.
 */

\echo Use "ALTER EXTENSION freshpay UPDATE TO '0.5'" to load this file. \quit

------------------------------------------------------------------------------
-- Administrations and secrets (M3, M4)
------------------------------------------------------------------------------

-- [section: administrations — edited by the admin-security work]

------------------------------------------------------------------------------
-- Unknown outcomes, the ledger and the queue
------------------------------------------------------------------------------

-- [section: money — edited by the money-safety work]
