#ifndef CMEMHAUL_SIGNALS_H
#define CMEMHAUL_SIGNALS_H
#include <signal.h>

/* Linked only into the memhaul executable. A constructor blocks SIGINT, SIGTERM
 * and SIGHUP before main() and before any thread exists, so every thread the
 * process ever creates inherits the blocked mask and the only way these signals
 * are taken is sigwait(2) on the dedicated signal thread (ShutdownSignals). */

/* 1 once the constructor has blocked the set. */
int cms_blocked_early(void);
/* The set the constructor blocked (SIGINT, SIGTERM, SIGHUP). */
void cms_shutdown_set(sigset_t *set);
/* sigwait(2) on that set; returns the signal number, or -1. */
int cms_wait(void);
/* Unblocks the set in the calling thread (commands without a signal thread). */
void cms_unblock_in_this_thread(void);
#endif
