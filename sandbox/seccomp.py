"""The seccomp policy, compiled once by libseccomp (PyPI `pyseccomp`) into a classic-BPF program.

The launcher installs the raw bytes with prctl, so the sandboxed interpreter (the system python3, which
cannot see our site-packages) needs no seccomp library of its own. Default: allow. Everything below kills
the whole sample with SIGSYS, which the harness reports as `blocked`. Calls from another ABI (x32 numbers on
x86_64, int 0x80 i386 calls) hit libseccomp's bad-arch action, also a kill.
"""

from __future__ import annotations

import functools
import tempfile

DENY = """
    socket socketpair connect accept accept4 bind listen
    fork vfork execve execveat
    ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd
    mount umount2 unshare setns pivot_root chroot open_tree move_mount fsopen fsconfig fsmount fspick
    mount_setattr
    setuid setgid setreuid setregid setresuid setresgid setgroups setfsuid setfsgid capset
    bpf io_uring_setup io_uring_enter io_uring_register keyctl add_key request_key perf_event_open
    init_module finit_module delete_module kexec_load kexec_file_load reboot swapon swapoff acct
    userfaultfd open_by_handle_at name_to_handle_at quotactl syslog iopl ioperm vhangup
    settimeofday clock_settime clock_adjtime adjtimex sethostname setdomainname mknod mknodat
    fanotify_init lookup_dcookie uselib
""".split()

CLONE_THREAD = 0x00010000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80)


class SeccompUnavailable(RuntimeError):
    pass


@functools.cache
def compile_filter() -> bytes:
    """The BPF program as bytes (8 bytes per instruction). Raises SeccompUnavailable without libseccomp."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as e:  # OSError: the module is there but libseccomp.so.2 is not
        raise SeccompUnavailable(f"pyseccomp/libseccomp is not usable: {e}") from e
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_NNP, 0)  # the launcher sets no_new_privs itself, before loading the bytes
    for name in DENY:
        try:
            f.add_rule(sc.KILL_PROCESS, name)
        except (ValueError, RuntimeError, OSError):
            pass  # a syscall this architecture does not have (fork and vfork on aarch64, iopl on arm)
    # clone is how threads are made: allow it only for threads (CLONE_THREAD set, no new namespaces).
    f.add_rule(sc.KILL_PROCESS, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    for flag in CLONE_NAMESPACES:
        f.add_rule(sc.KILL_PROCESS, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, which seccomp cannot read: ENOSYS makes glibc fall back to clone.
    f.add_rule(sc.ERRNO(38), "clone3")
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        return tmp.read()
