"""The seccomp policy, compiled once by libseccomp (PyPI `pyseccomp`) into a classic-BPF program.

The launcher installs the raw bytes with prctl, so the sandboxed interpreter (the system python3, which
cannot see our site-packages) needs no seccomp library of its own.

Default: deny with ENOSYS. Only the calls CPython and the standard library make are allowed (ALLOW), so a
system call added by a newer kernel is refused until someone lists it. Three other outcomes:
- KILL: calls that only an escape attempt makes (sockets to the outside, fork/exec, ptrace, mount, setuid,
  bpf, io_uring...) kill the whole sample with SIGSYS, which the harness reports as `blocked`.
- EPERM: calls that would let a sample leave state behind for a later one or hold memory outside its limits
  (sync, inotify, fadvise, mincore, readahead, SysV IPC, memfds, xattr writes, RWF_NOWAIT reads,
  madvise(WILLNEED/COLD/PAGEOUT)) fail like a permission error, which a program can handle.
- Calls from another ABI (x32 numbers on x86_64, int 0x80 i386 calls) hit libseccomp's bad-arch action,
  a kill.
"""

from __future__ import annotations

import errno
import functools
import tempfile

ALLOW = """
    read write readv writev pread64 pwrite64 preadv pwritev lseek close close_range
    open openat creat stat fstat lstat newfstatat statx fstatfs statfs access faccessat faccessat2
    readlink readlinkat getdents getdents64 getcwd chdir fchdir mkdir mkdirat rmdir unlink unlinkat
    rename renameat renameat2 link linkat symlink symlinkat chmod fchmod fchmodat fchmodat2
    chown fchown lchown fchownat umask truncate ftruncate fsync fdatasync fallocate
    utime utimes utimensat futimesat flock fcntl ioctl dup dup2 dup3 pipe pipe2 sendfile copy_file_range
    splice tee getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr
    select pselect6 poll ppoll epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2
    eventfd eventfd2 timerfd_create timerfd_settime timerfd_gettime signalfd signalfd4
    mmap munmap mprotect mremap brk msync
    futex set_robust_list get_robust_list set_tid_address rseq arch_prctl prctl exit exit_group
    getpid getppid gettid getuid geteuid getgid getegid getgroups getresuid getresgid getpgrp getpgid getsid
    capget kill tkill tgkill wait4 waitid
    rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait rt_sigsuspend rt_sigqueueinfo
    rt_tgsigqueueinfo sigaltstack pause restart_syscall
    nanosleep clock_nanosleep clock_gettime clock_getres gettimeofday time times getitimer setitimer alarm
    timer_create timer_settime timer_gettime timer_getoverrun timer_delete
    getrusage getrlimit setrlimit prlimit64 getpriority setpriority uname sysinfo getrandom getcpu
    sched_yield sched_getaffinity sched_getparam sched_getscheduler sched_get_priority_max
    sched_get_priority_min
    getsockopt setsockopt getsockname getpeername sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg shutdown
""".split()
UNIX_SOCKETS = "connect bind listen accept accept4".split()

# Fail with EPERM: state that would outlive the run (the host page cache, inotify on the shared files,
# flushing the host's dirty pages) or memory outside the sample's limits (SysV IPC, memfds, xattrs).
REFUSE = """
    sync syncfs sync_file_range fadvise64 readahead mincore cachestat
    inotify_init inotify_init1 inotify_add_watch inotify_rm_watch
    shmget shmat shmctl shmdt msgget msgsnd msgrcv msgctl semget semop semctl semtimedop
    mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr memfd_create memfd_secret
    setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr mlock mlock2 mlockall
""".split()

KILL = """
    fork vfork execve execveat
    ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd
    mount umount2 unshare setns pivot_root chroot open_tree move_mount fsopen fsconfig fsmount fspick
    mount_setattr
    setuid setgid setreuid setregid setresuid setresgid setgroups setfsuid setfsgid capset
    bpf io_uring_setup io_uring_enter io_uring_register keyctl add_key request_key perf_event_open
    init_module finit_module delete_module kexec_load kexec_file_load reboot swapon swapoff acct
    userfaultfd open_by_handle_at name_to_handle_at quotactl syslog iopl ioperm vhangup
    settimeofday clock_settime clock_adjtime adjtimex sethostname setdomainname mknod mknodat
    fanotify_init fanotify_mark lookup_dcookie uselib
""".split()

AF_UNIX = 1
RWF_NOWAIT = 0x8
# madvise advice that only manages a process's own memory; WILLNEED (3) fills the page cache, COLD (20)
# and PAGEOUT (21) evict shared pages: both would leave state for a later run to find.
MADVISE_OK = (0, 1, 2, 4, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)
MADVISE_REFUSED = (3, 9, 20, 21, 22, 23)  # WILLNEED, REMOVE, COLD, PAGEOUT, POPULATE_READ/WRITE
CLONE_THREAD = 0x00010000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80)


class SeccompUnavailable(RuntimeError):
    pass


def _add(f, action, name: str, *args) -> None:
    import pyseccomp as sc

    if sc.resolve_syscall(sc.system_arch(), name) < 0:
        return  # a syscall this architecture (or libseccomp version) does not have: fork on aarch64
    f.add_rule(action, name, *args)


@functools.cache
def compile_filter(private_net: bool = True) -> bytes:
    """The BPF program as bytes (8 bytes per instruction). Raises SeccompUnavailable without libseccomp.
    private_net: the run has its own network namespace, so unix sockets may connect (to each other only)."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as e:  # OSError: the module is there but libseccomp.so.2 is not
        raise SeccompUnavailable(f"pyseccomp/libseccomp is not usable: {e}") from e
    f = sc.SyscallFilter(defaction=sc.ERRNO(errno.ENOSYS))
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_NNP, 0)  # the launcher sets no_new_privs itself, before loading the bytes
    for name in ALLOW:
        _add(f, sc.ALLOW, name)
    for name in REFUSE:
        _add(f, sc.ERRNO(errno.EPERM), name)
    for name in KILL:
        _add(f, sc.KILL_PROCESS, name)
    for name in UNIX_SOCKETS:
        _add(f, sc.ALLOW if private_net else sc.KILL_PROCESS, name)
    # Unix sockets (asyncio's self-pipe, glibc asking for nscd) reach nothing outside: the abstract namespace
    # is private to the network namespace and the filesystem to the run. Any other family is an attempt to
    # reach out; with sockets limited to AF_UNIX, connect/bind/listen/accept are harmless, except without a
    # network namespace (backend none), where the host's abstract sockets would be in reach.
    for name in ("socket", "socketpair"):
        _add(f, sc.ALLOW, name, sc.Arg(0, sc.EQ, AF_UNIX))
        _add(f, sc.KILL_PROCESS, name, sc.Arg(0, sc.NE, AF_UNIX))
    # preadv2/pwritev2 (os.preadv with flags): RWF_NOWAIT would tell a cached page from an uncached one.
    for name in ("preadv2", "pwritev2"):
        _add(f, sc.ALLOW, name, sc.Arg(5, sc.MASKED_EQ, RWF_NOWAIT, 0))
        _add(f, sc.ERRNO(errno.EPERM), name, sc.Arg(5, sc.MASKED_EQ, RWF_NOWAIT, RWF_NOWAIT))
    for advice in MADVISE_OK:
        _add(f, sc.ALLOW, "madvise", sc.Arg(2, sc.EQ, advice))
    for advice in MADVISE_REFUSED:
        _add(f, sc.ERRNO(errno.EPERM), "madvise", sc.Arg(2, sc.EQ, advice))
    # clone is how threads are made: allow it only for threads (CLONE_THREAD set, no new namespaces).
    thread_bits = CLONE_THREAD | sum(CLONE_NAMESPACES)
    _add(f, sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, thread_bits, CLONE_THREAD))
    _add(f, sc.KILL_PROCESS, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    for flag in CLONE_NAMESPACES:
        _add(f, sc.KILL_PROCESS, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 is not listed: it passes its flags in memory, which seccomp cannot read, and the default ENOSYS
    # makes glibc fall back to clone.
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        return tmp.read()
