#include "CMemhaulSignals.h"
#include <pthread.h>

static int blocked_early = 0;

void cms_shutdown_set(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGHUP);
}

__attribute__((constructor)) static void cms_block_before_main(void) {
    sigset_t set;
    cms_shutdown_set(&set);
    if (pthread_sigmask(SIG_BLOCK, &set, 0) == 0) blocked_early = 1;
}

int cms_blocked_early(void) { return blocked_early; }

int cms_wait(void) {
    sigset_t set;
    cms_shutdown_set(&set);
    int sig = 0;
    if (sigwait(&set, &sig) != 0) return -1;
    return sig;
}

void cms_unblock_in_this_thread(void) {
    sigset_t set;
    cms_shutdown_set(&set);
    pthread_sigmask(SIG_UNBLOCK, &set, 0);
}
