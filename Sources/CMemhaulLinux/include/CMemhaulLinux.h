/*
 * CMemhaulLinux: the one C shim between memhaul and the Linux uapi.
 *
 * Debian 12 ships 6.1 kernel headers; PAGEMAP_SCAN (6.7) and
 * UFFD_FEATURE_WP_ASYNC (6.7) are newer, so their definitions are copied here.
 * Each symbol is guarded on its own so newer headers win where they exist, and
 * copied structs are checked with _Static_assert.
 *
 * Swift cannot import function-like macros (_IOWR) nor call variadic C
 * functions (ioctl, ptrace, syscall), so this shim exports ioctl numbers as
 * constants and wraps those calls in fixed-signature functions. Every wrapper
 * returns the raw kernel result (-1 with errno set on failure); retrying EINTR
 * and turning errno into a typed error is done once, in MemhaulSystem.
 */
#ifndef CMEMHAUL_LINUX_H
#define CMEMHAUL_LINUX_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>

/* ---- PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux 6.7) ---- */

#ifndef PAGE_IS_WPALLOWED
#define PAGE_IS_WPALLOWED (1ULL << 0)
#endif
#ifndef PAGE_IS_WRITTEN
#define PAGE_IS_WRITTEN (1ULL << 1)
#endif
#ifndef PAGE_IS_FILE
#define PAGE_IS_FILE (1ULL << 2)
#endif
#ifndef PAGE_IS_PRESENT
#define PAGE_IS_PRESENT (1ULL << 3)
#endif
#ifndef PAGE_IS_SWAPPED
#define PAGE_IS_SWAPPED (1ULL << 4)
#endif
#ifndef PAGE_IS_PFNZERO
#define PAGE_IS_PFNZERO (1ULL << 5)
#endif
#ifndef PAGE_IS_HUGE
#define PAGE_IS_HUGE (1ULL << 6)
#endif
#ifndef PAGE_IS_SOFT_DIRTY
#define PAGE_IS_SOFT_DIRTY (1ULL << 7)
#endif
#ifndef PAGE_IS_GUARD
#define PAGE_IS_GUARD (1ULL << 8)
#endif

#ifndef PM_SCAN_WP_MATCHING
#define PM_SCAN_WP_MATCHING (1ULL << 0)
#endif
#ifndef PM_SCAN_CHECK_WPASYNC
#define PM_SCAN_CHECK_WPASYNC (1ULL << 1)
#endif

/* The structs are defined by the same header revision as PAGEMAP_SCAN. */
#ifndef PAGEMAP_SCAN
struct page_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};

struct pm_scan_arg {
    uint64_t size;
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;
    uint64_t vec;
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

_Static_assert(sizeof(struct page_region) == 24, "page_region layout");
_Static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg layout");
_Static_assert(offsetof(struct pm_scan_arg, walk_end) == 32, "pm_scan_arg.walk_end");
_Static_assert(offsetof(struct pm_scan_arg, return_mask) == 88, "pm_scan_arg.return_mask");

/* ---- userfaultfd (include/uapi/linux/userfaultfd.h) ---- */

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1ULL << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

_Static_assert(sizeof(struct uffdio_api) == 24, "uffdio_api layout");
_Static_assert(sizeof(struct uffdio_register) == 32, "uffdio_register layout");
_Static_assert(sizeof(struct uffdio_range) == 16, "uffdio_range layout");
_Static_assert(sizeof(struct uffdio_writeprotect) == 24, "uffdio_writeprotect layout");

/* ioctl numbers, exported as constants because Swift cannot expand _IOWR. */
extern const unsigned long cmh_PAGEMAP_SCAN;
extern const unsigned long cmh_UFFDIO_API;
extern const unsigned long cmh_UFFDIO_REGISTER;
extern const unsigned long cmh_UFFDIO_UNREGISTER;
extern const unsigned long cmh_UFFDIO_WRITEPROTECT;

/* Category and flag values as typed constants for Swift. */
static const uint64_t cmh_PAGE_IS_WPALLOWED = PAGE_IS_WPALLOWED;
static const uint64_t cmh_PAGE_IS_WRITTEN = PAGE_IS_WRITTEN;
static const uint64_t cmh_PAGE_IS_FILE = PAGE_IS_FILE;
static const uint64_t cmh_PAGE_IS_PRESENT = PAGE_IS_PRESENT;
static const uint64_t cmh_PAGE_IS_SWAPPED = PAGE_IS_SWAPPED;
static const uint64_t cmh_PAGE_IS_PFNZERO = PAGE_IS_PFNZERO;
static const uint64_t cmh_PAGE_IS_HUGE = PAGE_IS_HUGE;
static const uint64_t cmh_PAGE_IS_SOFT_DIRTY = PAGE_IS_SOFT_DIRTY;
static const uint64_t cmh_PAGE_IS_GUARD = PAGE_IS_GUARD;
static const uint64_t cmh_PM_SCAN_WP_MATCHING = PM_SCAN_WP_MATCHING;
static const uint64_t cmh_PM_SCAN_CHECK_WPASYNC = PM_SCAN_CHECK_WPASYNC;
static const uint64_t cmh_UFFD_API = UFFD_API;
static const uint64_t cmh_UFFD_FEATURE_WP_UNPOPULATED = UFFD_FEATURE_WP_UNPOPULATED;
static const uint64_t cmh_UFFD_FEATURE_WP_ASYNC = UFFD_FEATURE_WP_ASYNC;
static const uint64_t cmh_UFFDIO_REGISTER_MODE_WP = UFFDIO_REGISTER_MODE_WP;
static const uint64_t cmh_UFFDIO_WRITEPROTECT_MODE_WP = UFFDIO_WRITEPROTECT_MODE_WP;

/* ---- syscall numbers used for injection into a traced target ---- */
extern const long cmh_SYS_userfaultfd;
extern const long cmh_SYS_close;
extern const long cmh_SYS_getpid;
extern const long cmh_SYS_restart_syscall;

/* ---- fixed-signature wrappers for variadic or missing libc calls ---- */

/* ioctl(2) with a pointer argument. */
int cmh_ioctl_ptr(int fd, unsigned long request, void *arg);

/* userfaultfd(2) in the calling process; used by probes only, since the
 * context binds to the caller's mm (the target's one is injected). */
int cmh_userfaultfd(int flags);

/* pidfd_open(2), pidfd_getfd(2), pidfd_send_signal(2). */
int cmh_pidfd_open(pid_t pid, unsigned int flags);
int cmh_pidfd_getfd(int pidfd, int targetfd, unsigned int flags);
int cmh_pidfd_send_signal(int pidfd, int sig, unsigned int flags);

/* process_vm_readv(2) / process_vm_writev(2). */
ssize_t cmh_process_vm_readv(pid_t pid, const struct iovec *local, unsigned long liovcnt,
                             const struct iovec *remote, unsigned long riovcnt);
ssize_t cmh_process_vm_writev(pid_t pid, const struct iovec *local, unsigned long liovcnt,
                              const struct iovec *remote, unsigned long riovcnt);

/* ptrace(2), one wrapper per request so each has a typed signature. */
long cmh_ptrace_seize(pid_t pid, unsigned long options);
long cmh_ptrace_interrupt(pid_t pid);
long cmh_ptrace_detach(pid_t pid, int sig);
long cmh_ptrace_cont(pid_t pid, int sig);
long cmh_ptrace_syscall(pid_t pid, int sig);
long cmh_ptrace_singlestep(pid_t pid, int sig);
long cmh_ptrace_listen(pid_t pid);
long cmh_ptrace_getregs(pid_t pid, struct user_regs_struct *regs);
long cmh_ptrace_setregs(pid_t pid, const struct user_regs_struct *regs);
long cmh_ptrace_getsiginfo(pid_t pid, void *siginfo);
long cmh_ptrace_setsiginfo(pid_t pid, const void *siginfo);
/* PTRACE_PEEKDATA / POKEDATA: a word at addr; peek stores into *out. */
long cmh_ptrace_peekdata(pid_t pid, unsigned long addr, unsigned long *out);
long cmh_ptrace_pokedata(pid_t pid, unsigned long addr, unsigned long data);

extern const unsigned long cmh_PTRACE_O_TRACESYSGOOD;
extern const unsigned long cmh_PTRACE_O_EXITKILL;
extern const int cmh_PTRACE_EVENT_STOP;

/* waitpid(2) with __WALL so threads and seized tasks are reported. */
pid_t cmh_waitpid_all(pid_t pid, int *status, int options);
extern const int cmh_WALL;

/* Wait-status decoding (macros in C). */
int cmh_wifexited(int status);
int cmh_wexitstatus(int status);
int cmh_wifsignaled(int status);
int cmh_wtermsig(int status);
int cmh_wifstopped(int status);
int cmh_wstopsig(int status);
/* status >> 16: the PTRACE_EVENT_* of a ptrace stop. */
int cmh_wptrace_event(int status);

/* tgkill(2), gettid(2). */
int cmh_tgkill(pid_t tgid, pid_t tid, int sig);
pid_t cmh_gettid(void);

/* pipe2(2) (glibc declares it only under _GNU_SOURCE). */
int cmh_pipe2(int fds[2], int flags);

/* errno accessors (errno is a macro over a thread-local). */
int cmh_errno(void);
void cmh_set_errno(int value);

#endif
