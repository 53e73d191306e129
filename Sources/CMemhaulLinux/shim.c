#define _GNU_SOURCE
#include "CMemhaulLinux.h"
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

const unsigned long cmh_PAGEMAP_SCAN = PAGEMAP_SCAN;
const unsigned long cmh_UFFDIO_API = UFFDIO_API;
const unsigned long cmh_UFFDIO_REGISTER = UFFDIO_REGISTER;
const unsigned long cmh_UFFDIO_UNREGISTER = UFFDIO_UNREGISTER;
const unsigned long cmh_UFFDIO_WRITEPROTECT = UFFDIO_WRITEPROTECT;

const long cmh_SYS_userfaultfd = SYS_userfaultfd;
const long cmh_SYS_close = SYS_close;
const long cmh_SYS_getpid = SYS_getpid;
const long cmh_SYS_restart_syscall = SYS_restart_syscall;

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

int cmh_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
int cmh_userfaultfd(int flags) { return (int)syscall(SYS_userfaultfd, flags); }

int cmh_pidfd_open(pid_t pid, unsigned int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
int cmh_pidfd_getfd(int pidfd, int targetfd, unsigned int flags) {
    return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, flags);
}
int cmh_pidfd_send_signal(int pidfd, int sig, unsigned int flags) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, flags);
}

ssize_t cmh_process_vm_readv(pid_t pid, const struct iovec *local, unsigned long liovcnt,
                             const struct iovec *remote, unsigned long riovcnt) {
    return process_vm_readv(pid, local, liovcnt, remote, riovcnt, 0);
}
ssize_t cmh_process_vm_writev(pid_t pid, const struct iovec *local, unsigned long liovcnt,
                              const struct iovec *remote, unsigned long riovcnt) {
    return process_vm_writev(pid, local, liovcnt, remote, riovcnt, 0);
}

long cmh_ptrace_seize(pid_t pid, unsigned long options) { return ptrace(PTRACE_SEIZE, pid, 0, (void *)options); }
long cmh_ptrace_interrupt(pid_t pid) { return ptrace(PTRACE_INTERRUPT, pid, 0, 0); }
long cmh_ptrace_detach(pid_t pid, int sig) { return ptrace(PTRACE_DETACH, pid, 0, (void *)(long)sig); }
long cmh_ptrace_cont(pid_t pid, int sig) { return ptrace(PTRACE_CONT, pid, 0, (void *)(long)sig); }
long cmh_ptrace_syscall(pid_t pid, int sig) { return ptrace(PTRACE_SYSCALL, pid, 0, (void *)(long)sig); }
long cmh_ptrace_singlestep(pid_t pid, int sig) { return ptrace(PTRACE_SINGLESTEP, pid, 0, (void *)(long)sig); }
long cmh_ptrace_listen(pid_t pid) { return ptrace(PTRACE_LISTEN, pid, 0, 0); }
long cmh_ptrace_getregs(pid_t pid, struct user_regs_struct *regs) { return ptrace(PTRACE_GETREGS, pid, 0, regs); }
long cmh_ptrace_setregs(pid_t pid, const struct user_regs_struct *regs) {
    return ptrace(PTRACE_SETREGS, pid, 0, (void *)regs);
}
long cmh_ptrace_getsiginfo(pid_t pid, void *siginfo) { return ptrace(PTRACE_GETSIGINFO, pid, 0, siginfo); }
long cmh_ptrace_setsiginfo(pid_t pid, const void *siginfo) {
    return ptrace(PTRACE_SETSIGINFO, pid, 0, (void *)siginfo);
}
long cmh_ptrace_peekdata(pid_t pid, unsigned long addr, unsigned long *out) {
    errno = 0;
    long word = ptrace(PTRACE_PEEKDATA, pid, (void *)addr, 0);
    if (word == -1 && errno != 0) return -1;
    *out = (unsigned long)word;
    return 0;
}
long cmh_ptrace_pokedata(pid_t pid, unsigned long addr, unsigned long data) {
    return ptrace(PTRACE_POKEDATA, pid, (void *)addr, (void *)data);
}

const unsigned long cmh_PTRACE_O_TRACESYSGOOD = PTRACE_O_TRACESYSGOOD;
const unsigned long cmh_PTRACE_O_EXITKILL = PTRACE_O_EXITKILL;
const int cmh_PTRACE_EVENT_STOP = PTRACE_EVENT_STOP;

pid_t cmh_waitpid_all(pid_t pid, int *status, int options) { return waitpid(pid, status, options | __WALL); }
const int cmh_WALL = __WALL;

int cmh_wifexited(int status) { return WIFEXITED(status); }
int cmh_wexitstatus(int status) { return WEXITSTATUS(status); }
int cmh_wifsignaled(int status) { return WIFSIGNALED(status); }
int cmh_wtermsig(int status) { return WTERMSIG(status); }
int cmh_wifstopped(int status) { return WIFSTOPPED(status); }
int cmh_wstopsig(int status) { return WSTOPSIG(status); }
int cmh_wptrace_event(int status) { return (status >> 16) & 0xff; }

int cmh_tgkill(pid_t tgid, pid_t tid, int sig) { return (int)syscall(SYS_tgkill, tgid, tid, sig); }
pid_t cmh_gettid(void) { return (pid_t)syscall(SYS_gettid); }

int cmh_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

int cmh_errno(void) { return errno; }
void cmh_set_errno(int value) { errno = value; }
