"""The attack suite: hostile programs, each with the verdict it must get, and the host checked after every
run (canary file, loopback listener, harness secret, leftover processes, host /tmp and /dev/shm, harness).

Placeholders in the programs: __PORT__ (a loopback listener of ours), __CANARY__ (a host file),
__SECRET__ (the env var name holding a secret of the harness), __HARNESS__ (our pid).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandbox import Sandbox

ANY_FAILED = "failed:*"
MEMORY_OVERHEAD_MB = 64  # kernel-side memory of a run beyond its limits: pipes, page tables, thread stacks
ERROR_OPENING = {"failed:FileNotFoundError", "failed:PermissionError", "failed:OSError"}

# name -> (program, allowed statuses)
SCRIPT_ATTACKS: dict[str, tuple[str, set]] = {
    # --- time ---
    "busy_loop": ("while True: pass", {"timeout"}),
    "loop_swallowing_exceptions": (
        "while True:\n    try:\n        while True: pass\n    except BaseException:\n        pass",
        {"timeout"},
    ),
    "loop_ignoring_signals": (
        "import signal\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGALRM, signal.SIGHUP):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True: pass",
        {"timeout"},
    ),
    "sleep": ("import time\ntime.sleep(100)", {"timeout"}),
    # --- processes ---
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", {"blocked"}),
    "thread_bomb": (
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(100,)).start()",
        # plain python3 raises RuntimeError, then waits for its non-daemon threads: past the deadline
        {"failed:RuntimeError", "memory", "timeout"},
    ),
    "subprocess": ("import subprocess\nsubprocess.run(['ls', '/'])", {"blocked"}),
    "os_system": ("import os\nos.system('echo PWNED > /tmp/PWNED_system')", {"blocked"}),
    "posix_spawn": ("import os\nos.posix_spawn('/bin/ls', ['ls'], {})", {"blocked"}),
    "daemonized_grandchild": (
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        import time\n"
        "        time.sleep(1000)\n",
        {"blocked"},
    ),
    "execve_shell": ("import os\nos.execv('/bin/sh', ['sh', '-c', 'id'])", {"blocked"}),
    # --- memory and stack ---
    "memory_bomb_incremental": ("x = []\nwhile True:\n    x.append(bytearray(10**8))", {"memory"}),
    "memory_bomb_single": ("x = ' ' * (10**11)", {"memory"}),
    "deep_recursion": ("def f():\n    return f()\nf()", {"failed:RecursionError"}),
    "c_stack_overflow": (
        "import pickle, sys\nsys.setrecursionlimit(10**8)\nx = []\nfor _ in range(10**6):\n    x = [x]\n"
        "pickle.dumps(x)",
        {"crash"},  # the C pickler recurses: past the 8 MiB stack it is SIGSEGV
    ),
    # --- output and disk ---
    "stdout_flood": ("while True:\n    print('x' * 100000)", {"failed:output_limit"}),
    "stderr_flood": ("import sys\nwhile True:\n    sys.stderr.write('y' * 100000)", {"failed:output_limit"}),
    "fill_tmp_one_file": (
        "with open('/tmp/fill', 'wb') as f:\n    while True:\n        f.write(b'0' * 2**20)",
        {"failed:output_limit", "failed:OSError"},
    ),
    "fill_tmp_many_files": (
        "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'0' * (4 << 20))\n    i += 1",
        {"failed:OSError"},
    ),
    "fill_dev_shm": (
        "i = 0\nwhile True:\n    open(f'/dev/shm/f{i}', 'wb').write(b'0' * (4 << 20))\n    i += 1",
        {"failed:OSError"},
    ),
    "too_many_files": ("fs = [open('/dev/null') for _ in range(100000)]", {"failed:OSError"}),
    # --- the filesystem outside the work dir ---
    # the host path names a file in the private /tmp tmpfs: the write works there, the host copy is untouched
    "write_canary": ("open('__CANARY__', 'w').write('PWNED')", {"passed"}),
    "delete_canary": ("import os\nos.remove('__CANARY__')", ERROR_OPENING),
    "write_root": ("open('/PWNED_root', 'w').write('x')", ERROR_OPENING),
    "write_usr": ("open('/usr/PWNED_usr', 'w').write('x')", ERROR_OPENING),
    "write_repo": ("open('/work/main/PWNED_repo', 'w').write('x')", ERROR_OPENING),
    "delete_usr": ("import shutil\nshutil.rmtree('/usr/lib/python3')", ERROR_OPENING),
    "read_etc_shadow": ("print(open('/etc/shadow').read())", ERROR_OPENING),
    "symlink_to_root": (
        "import os\nos.symlink('/', '/tmp/r')\nprint(open('/tmp/r/etc/shadow').read())",
        ERROR_OPENING,
    ),
    "list_host_dirs": ("import os\nprint(os.listdir('/root'), os.listdir('/work'))", ERROR_OPENING),
    "sysrq_trigger": ("open('/proc/sysrq-trigger', 'w').write('b')", ERROR_OPENING),
    "mknod_device": ("import os\nos.mknod('/tmp/sda', 0o600 | 0o060000, os.makedev(8, 0))", {"blocked"}),
    # --- other processes' secrets ---
    "read_all_environ": (
        "import os\nfor p in os.listdir('/proc'):\n    try:\n"
        "        print(open(f'/proc/{p}/environ', 'rb').read())\n    except OSError:\n        pass",
        {"passed"},  # it runs, and sees only the sandbox's own (empty) environment
    ),
    "own_environ": (
        "import os\nprint(dict(os.environ))\nprint(os.environ['__SECRET__'])",
        {"failed:KeyError"},
    ),
    # --- network ---
    "loopback_connect": (
        "import socket\nsocket.create_connection(('127.0.0.1', __PORT__), timeout=1).sendall(b'PWNED')",
        {"blocked"},
    ),
    "dns_lookup": (
        "import socket\nprint(socket.getaddrinfo('example.com', 80))",
        {"blocked", "failed:gaierror"},
    ),
    # --- raw syscalls through ctypes (x86_64 numbers; aarch64 gets blocked or an error too) ---
    "ctypes_socket": ("import ctypes\nctypes.CDLL(None).syscall(41, 2, 1, 0)", {"blocked"}),
    "ctypes_x32_socket": ("import ctypes\nctypes.CDLL(None).syscall(0x40000000 | 41, 2, 1, 0)", {"blocked"}),
    "ctypes_unshare_user": ("import ctypes\nctypes.CDLL(None).unshare(0x10000000)", {"blocked"}),
    "ctypes_setuid_root": ("import ctypes\nctypes.CDLL(None).setuid(0)", {"blocked"}),
    "ctypes_ptrace": ("import ctypes\nctypes.CDLL(None).ptrace(0, 0, 0, 0)", {"blocked"}),
    "ctypes_bpf": ("import ctypes\nctypes.CDLL(None).syscall(321, 0, 0, 0)", {"blocked"}),
    "ctypes_io_uring": ("import ctypes\nctypes.CDLL(None).syscall(425, 8, 0)", {"blocked"}),
    "ctypes_keyctl": ("import ctypes\nctypes.CDLL(None).syscall(250, 0, 0, 0)", {"blocked"}),
    "ctypes_clone_newuser": (
        "import ctypes\nctypes.CDLL(None).syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",
        {"blocked"},
    ),
    "raise_hard_limit": (
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
        {"failed:ValueError", "failed:PermissionError"},
    ),
    # --- signals ---
    "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", {"failed:PermissionError"}),
    "kill_every_pid": (
        "import os\nos.kill(-1, 9)\nimport time\ntime.sleep(0.2)",
        {"passed", "failed:ProcessLookupError"},  # nobody else in its pid namespace runs as its uid
    ),
    "kill_pid_range": (
        "import os\nfor pid in range(1, 5000):\n    try:\n        os.kill(pid, 9)\n    except OSError:\n"
        "        pass\nos.kill(__HARNESS__, 9)",
        {"failed:ProcessLookupError", "failed:PermissionError", "crash"},
    ),
    # --- forged verdicts ---
    # sys.exit(0) is a normal exit, status 0, as in plain python3; the printed word is only output
    "sys_exit_zero": ("import sys\nprint('passed')\nsys.exit(0)", {"passed"}),
    "os_exit_zero": ("import os\nprint('PASSED', flush=True)\nos._exit(0)", {"failed:exit"}),
    "raise_system_exit_in_atexit": (
        "import atexit, os\natexit.register(lambda: None)\nos._exit(0)",
        {"failed:exit"},
    ),
    "spray_fake_frames": (
        "import os\nmsg = repr(('done', '0' * 32)).encode()\nfor fd in range(0, 64):\n    try:\n"
        "        os.write(fd, len(msg).to_bytes(4, 'big') + msg)\n    except OSError:\n"
        "        pass\nos._exit(0)",
        {"failed:exit", "failed:protocol"},
    ),
    "garbage_on_fds": (
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'\\xff' * 64)\n"
        "    except OSError:\n        pass\nraise SystemExit(0)",
        {"failed:protocol", "failed:SystemExit"},
    ),
    "crash_after_output": ("print('ok', flush=True)\nimport ctypes\nctypes.string_at(0)", {"crash"}),
    "abort": ("import os\nos.abort()", {"crash"}),
    # --- forged verdicts through the runner's own state (the verdict is the exit status seen by pid 1) ---
    "runner_patched_then_raise": (
        "import sys, os, atexit\nf = sys._getframe()\nwhile f:\n"
        "    for k in ('_send', 'encode', '_exception', '_recv'):\n"
        "        if k in f.f_globals:\n            f.f_globals[k] = lambda *a, **kw: None\n    f = f.f_back\n"
        "os._exit = lambda *a: None\nraise ValueError('after patching the runner')",
        {"failed:ValueError", "failed:exit"},
    ),
    "nonce_theft_then_raise": (
        "import sys, os, json\nf = sys._getframe()\nwhile 'nonce' not in f.f_locals:\n    f = f.f_back\n"
        "body = json.dumps(['T', 'done', f.f_locals['nonce']]).encode()\nfor fd in range(3, 64):\n    try:\n"
        "        os.write(fd, len(body).to_bytes(4, 'big') + body)\n    except OSError:\n        pass\n"
        "raise ValueError('stole the nonce')",
        {"failed:ValueError", "failed:protocol"},
    ),
    # os._exit(0) exits 0 under plain python3 too: a stolen nonce can only make such a program "passed"
    "nonce_theft_then_os_exit_zero": (
        "import sys, os, json\nf = sys._getframe()\nwhile 'nonce' not in f.f_locals:\n    f = f.f_back\n"
        "body = json.dumps(['T', 'done', f.f_locals['nonce']]).encode()\n"
        "os.write(f.f_locals['res'], len(body).to_bytes(4, 'big') + body)\nos._exit(0)",
        {"passed"},
    ),
    "thread_crashes_after_main_returns": (
        "import threading, time, ctypes\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), ctypes.string_at(0))).start()",
        {"crash"},
    ),
    "atexit_exits_nonzero": ("import atexit, os\natexit.register(os._exit, 3)", {"failed:exit"}),
    "thread_never_ends": (
        "import threading, time\nthreading.Thread(target=time.sleep, args=(1000,)).start()",
        {"timeout"},
    ),
    "exception_class_named_passed": (
        "class passed(Exception):\n    pass\nraise passed('\\x1b[2J\\x1b[Hpassed')",
        {"failed:exception"},
    ),
    # --- memory outside RLIMIT_AS and the tmpfs caps ---
    "sysv_shm_2gib": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.shmget(0, ctypes.c_size_t(2 << 30), 0o1000 | 0o600) < 0:\n"
        "    raise OSError(ctypes.get_errno(), 'shmget')",
        {"failed:PermissionError"},
    ),
    "sysv_msg_queue": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.msgget(0, 0o1000 | 0o600) < 0:\n    raise OSError(ctypes.get_errno(), 'msgget')",
        {"failed:PermissionError"},
    ),
    "memfd_written_not_mapped": (
        "import os\nfd = os.memfd_create('x')\nfor _ in range(1024):\n    os.write(fd, b'0' * (1 << 20))",
        {"failed:PermissionError"},
    ),
    "xattrs_on_tmpfs": (
        "import os\nopen('/tmp/f', 'w').close()\nfor i in range(100000):\n"
        "    os.setxattr('/tmp/f', f'user.{i}', b'x' * 60000)",
        {"failed:PermissionError"},
    ),
    "tmpfs_inode_bomb": (
        "i = 0\nwhile True:\n    open(f'/tmp/{i}', 'w').close()\n    i += 1",
        {"failed:OSError"},
    ),
    # --- state that would survive into a later run: the page cache, inotify, the host's disks ---
    "fadvise_page_cache": (
        "import os\nfd = os.open(os.__file__, os.O_RDONLY)\n"
        "os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)",
        {"failed:PermissionError"},
    ),
    "mincore_page_cache": (
        "import ctypes, mmap, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "f = open(os.__file__, 'rb')\nm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)\n"
        "addr = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(m)))\n"
        "vec = ctypes.create_string_buffer(len(m) // 4096 + 1)\n"
        "if libc.mincore(addr, ctypes.c_size_t(len(m)), vec) != 0:\n"
        "    raise OSError(ctypes.get_errno(), 'mincore')",
        {"failed:PermissionError"},
    ),
    "readahead_page_cache": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = os.open(os.__file__, os.O_RDONLY)\n"
        "if libc.readahead(fd, ctypes.c_long(0), ctypes.c_size_t(1 << 20)) != 0:\n"
        "    raise OSError(ctypes.get_errno(), 'readahead')",
        {"failed:PermissionError"},
    ),
    "rwf_nowait_probe": (
        "import os\nfd = os.open(os.__file__, os.O_RDONLY)\n"
        "os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)",
        {"failed:PermissionError"},
    ),
    "madvise_pageout": (
        "import mmap, os\nf = open(os.__file__, 'rb')\nm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
        "m.madvise(21)",  # MADV_PAGEOUT
        {"failed:PermissionError"},
    ),
    "inotify_on_shared_files": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nif libc.inotify_init1(0) < 0:\n"
        "    raise OSError(ctypes.get_errno(), 'inotify_init1')",
        {"failed:PermissionError"},
    ),
    "sync_host_disks": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.sync()\n"
        "if libc.syncfs(1) != 0:\n    raise OSError(ctypes.get_errno(), 'syncfs')",
        {"failed:PermissionError"},
    ),
    # a call the policy does not list (pidfd_open) gets ENOSYS, as from an older kernel: default deny
    "unlisted_syscall": (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.syscall(434, os.getpid(), 0) < 0:\n    raise OSError(ctypes.get_errno(), 'pidfd_open')",
        {"failed:OSError"},
    ),
    # --- what must keep working ---
    "threads_still_work": (
        "import threading\nout = []\n"
        "ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]\n"
        "[t.start() for t in ts]\n[t.join() for t in ts]\nassert sorted(out) == list(range(8))",
        {"passed"},
    ),
    "tmp_is_writable": ("open('/tmp/x', 'w').write('hi')\nassert open('/tmp/x').read() == 'hi'", {"passed"}),
}

# A tiny function-mode problem: the test stays on the trusted side.
ADD = {
    "task_id": "toy/add",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(20, 22) == 42\n",
    "entry_point": "add",
}

FUNCTION_ATTACKS: dict[str, tuple[str, set]] = {
    "equals_everything_object": (
        "    class E:\n        def __eq__(self, o): return True\n    return E()\n",
        {"failed:TypeError"},
    ),
    "int_subclass_equals_everything": (
        "    class I(int):\n        def __eq__(self, o): return True\n    return I(0)\n",
        {"failed:TypeError"},
    ),
    "str_subclass": (
        "    class S(str):\n        def __eq__(self, o): return True\n    return S('')\n",
        {"failed:TypeError"},
    ),
    "patched_builtins": (
        "    import builtins\n    builtins.AssertionError = type('A', (Exception,), {})\n"
        "    builtins.__dict__['__import__'] = None\n    return 0\n",
        {"failed:assertion"},
    ),
    "frame_walk_for_check": (
        "    import sys, gc\n    f = sys._getframe()\n    while f is not None:\n"
        "        f.f_globals.pop('check', None)\n        f = f.f_back\n"
        "    for o in gc.get_objects():\n        if getattr(o, '__name__', '') == 'check':\n"
        "            o.__code__ = (lambda c: None).__code__\n    return -1\n",
        {"failed:assertion"},
    ),
    "os_exit_zero_in_call": ("    import os\n    os._exit(0)\n", {"failed:exit"}),
    "sys_exit_in_call": ("    import sys\n    sys.exit(0)\n", {"failed:SystemExit"}),
    "exit_at_import": ("    return a + b\nimport sys\nsys.exit(0)\n", {"failed:SystemExit"}),
    "raises_assertion_error_name": ("    raise AssertionError('passed')\n", {"failed:AssertionError"}),
    "prewritten_answers": (
        "    return 0\nimport os\nfor fd in range(3, 64):\n    try:\n"
        "        m = repr(('ok', 3)).encode()\n        os.write(fd, len(m).to_bytes(4, 'big') + m)\n"
        "    except OSError:\n        pass\n",
        {"failed:assertion", "failed:protocol"},
    ),
    "garbage_reply": (
        "    import os\n    for fd in range(3, 64):\n        try:\n"
        "            os.write(fd, b'\\x7f\\xff\\xff\\xff')\n"
        "        except OSError:\n            pass\n    return a + b\n",
        {"failed:protocol"},
    ),
    "huge_reply": ("    return 'x' * (8 << 20)\n", {"failed:ValueError"}),
    "infinite_loop_in_call": ("    while True:\n        pass\n", {"timeout"}),
    "syntax_error": ("    return a +\n", {"failed:SyntaxError"}),
}


@pytest.fixture(scope="module")
def host():
    if os.geteuid() != 0:
        pytest.skip(
            "the attack suite asserts the full isolation level, which needs root here (CI runs as root)"
        )
    secret_name, secret = "SANDBOX_TEST_SECRET", secrets.token_hex(16)
    os.environ[secret_name] = secret
    canary = Path("/tmp") / f"sandbox_canary_{secrets.token_hex(4)}"
    canary.write_text("canary")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    sb = Sandbox(timeout=3.0, memory_mb=256, workers=2)
    # kill(-1) and friends are only safe to run with a pid namespace and an unprivileged uid
    assert {"pidns", "uid", "seccomp", "netns", "mountns"} <= set(sb.layers), sb.layers
    yield dict(sb=sb, secret=secret, secret_name=secret_name, canary=canary, listener=listener)
    sb.close()
    listener.close()
    canary.unlink()
    del os.environ[secret_name]


def _program(host: dict, code: str) -> str:
    return (
        code.replace("__PORT__", str(host["listener"].getsockname()[1]))
        .replace("__CANARY__", str(host["canary"]))
        .replace("__SECRET__", host["secret_name"])
        .replace("__HARNESS__", str(os.getpid()))
    )


def _sandbox_pids(sb: Sandbox) -> list[int]:
    """Live (non-zombie) processes running as one of the sandbox's worker uids."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields["Uid"].split()[0])
        if sb.base_uid <= uid < sb.base_uid + sb.workers and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def assert_host_intact(host: dict, result: dict) -> None:
    sb = host["sb"]
    assert host["canary"].read_text() == "canary"
    for where in ("/tmp", "/dev/shm", "/", "/work/main", "/usr"):
        assert not [n for n in os.listdir(where) if "PWNED" in n], f"something was written to {where}"
    for where in ("/tmp", "/dev/shm"):
        owners = {os.lstat(os.path.join(where, n)).st_uid for n in os.listdir(where)}
        assert not any(sb.base_uid <= u < sb.base_uid + sb.workers for u in owners), (
            f"sandbox file in {where}"
        )
    with pytest.raises(BlockingIOError):
        host["listener"].accept()  # nobody connected to our loopback listener
    text = result["stdout"] + result["stderr"] + result["detail"]
    assert host["secret"] not in text
    assert _sandbox_pids(sb) == [], "a sandboxed process outlived its run"
    assert sb._zygote is None or sb._zygote.poll() is None, "the harness's launcher died"
    assert result["layers"] == sb.layers


def _matches(status: str, allowed: set) -> bool:
    return status in allowed or (ANY_FAILED in allowed and status.startswith("failed:"))


@pytest.mark.parametrize("name", sorted(SCRIPT_ATTACKS))
def test_script_attack_gets_its_verdict_and_leaves_the_host_intact(host, name):
    code, allowed = SCRIPT_ATTACKS[name]
    result = host["sb"].run_script(_program(host, code))
    assert _matches(result["status"], allowed), (name, result)
    assert_host_intact(host, result)


@pytest.mark.parametrize("name", sorted(FUNCTION_ATTACKS))
def test_function_attack_never_passes_and_leaves_the_host_intact(host, name):
    completion, allowed = FUNCTION_ATTACKS[name]
    result = host["sb"].check_function(ADD, completion)
    assert result["status"] != "passed"
    assert _matches(result["status"], allowed), (name, result)
    assert_host_intact(host, result)


def test_the_suite_is_at_least_forty_programs():
    assert len(SCRIPT_ATTACKS) + len(FUNCTION_ATTACKS) >= 40


# --- the trusted side under hostile replies: bounded time per sample, whatever a reply holds ------------

# A candidate that writes its own frame on the result pipe (found in the runner's frame), then answers.
RAW_REPLY = (
    "    import sys, os, json\n    f = sys._getframe()\n"
    "    while 'res' not in f.f_locals:\n        f = f.f_back\n"
    "    body = (__BODY__).encode()\n    os.write(f.f_locals['res'], len(body).to_bytes(4, 'big') + body)\n"
    "    return a + b\n"
)
HOSTILE_REPLIES = {
    "colliding_set": "json.dumps(['T', 'ok', ['S', *(['I', hex(i * (2**61 - 1))] for i in range(1, 25000))]"
    "])",
    "empty_sets": '\'["T","ok",["L"\' + \',["S"]\' * 170000 + \']]\'',
    "deep_nesting": "'[' * 300000",
    "flood_of_frames": "json.dumps(['T', 'ok', 3])",  # then the real answer follows: one frame too many
}


@pytest.mark.parametrize("name", sorted(HOSTILE_REPLIES))
def test_a_hostile_reply_is_refused_within_the_timeout_plus_a_second(host, name):
    sb = host["sb"]
    completion = RAW_REPLY.replace("__BODY__", HOSTILE_REPLIES[name])
    t0 = time.monotonic()
    result = sb.check_function(ADD, completion)
    elapsed = time.monotonic() - t0
    assert result["status"] in {"failed:protocol", "failed:assertion"}, result
    assert elapsed < sb.timeout + 1.0 and result["duration"] < sb.timeout + 1.0
    assert_host_intact(host, result)


def test_a_hostile_reply_does_not_delay_other_samples(host):
    sb = host["sb"]
    hostile = RAW_REPLY.replace("__BODY__", HOSTILE_REPLIES["colliding_set"])
    results = sb.check_functions([(ADD, hostile)] + [(ADD, "    return a + b\n")] * 3)
    assert [r["status"] for r in results[1:]] == ["passed"] * 3
    assert max(r["duration"] for r in results) < sb.timeout + 1.0


# --- memory: everything a run can hold, measured on the host while it holds it --------------------------

MEMORY_HOG = """
import ctypes, fcntl, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
chunk = 64 << 20
def shm():  # written through a mapping, then unmapped: held by the segment, outside RLIMIT_AS
    for _ in range(16):
        addr = libc.shmat(libc.shmget(0, ctypes.c_size_t(chunk), 0o1000 | 0o600), None, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), 'shm')
        ctypes.memset(addr, 1, chunk)
        libc.shmdt(ctypes.c_void_p(addr))
def memfd():  # written, never mapped
    fd = os.memfd_create('m')
    for _ in range(16 * 64):
        os.write(fd, b'1' * (1 << 20))
def xattrs():  # xattrs take no tmpfs blocks
    open('/tmp/x', 'w').close()
    for i in range(20000):
        os.setxattr('/tmp/x', f'user.{i}', b'1' * 60000)
for attempt in (shm, memfd, xattrs):
    try:
        attempt()
    except OSError:
        pass
hold = []
try:
    while True:
        hold.append(b'1' * (8 << 20))  # written, so resident
except MemoryError:
    pass
for d in ('/tmp', '/dev/shm'):
    try:
        for i in range(1000):
            with open(f'{d}/fill{i}', 'wb') as f:
                f.write(b'1' * (4 << 20))
    except OSError:
        pass
pipes = []
try:
    while True:
        r, w = os.pipe()
        pipes.append((r, w))
        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        os.set_blocking(w, False)
        while True:
            os.write(w, b'1' * 65536)
except OSError:
    pass
print('holding', flush=True)
time.sleep(1000)
"""


def _memory_charged() -> int:
    """Bytes charged to this process's memory cgroup (this test and its children only) when it can be read,
    else the host's used memory."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            f = Path(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
        elif hierarchy == "0":
            f = Path(f"/sys/fs/cgroup{path}/memory.current")
        else:
            continue
        if f.is_file():
            return int(f.read_text())
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) << 10


def test_host_memory_held_by_a_run_stays_within_its_limit_plus_the_stated_overhead(host):
    sb = Sandbox(timeout=4.0, memory_mb=256, workers=1, tmp_mb=32)
    try:
        baseline, peak = _memory_charged(), 0
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(sb.run_script, MEMORY_HOG)
            while not future.done():
                peak = max(peak, _memory_charged())
                time.sleep(0.02)
            result = future.result()
    finally:
        sb.close()
    held = (peak - baseline) >> 20
    print(f"a run held {held} MiB at its peak")
    limit = sb.memory_mb + 2 * sb.tmp_mb + 2 * (sb.fsize >> 20) + MEMORY_OVERHEAD_MB
    assert result["status"] == "timeout" and result["stdout"] == "holding\n", result
    assert 150 < held <= limit, f"a run held {held} MiB; its bound is {limit} MiB"
    assert_host_intact(dict(host, sb=sb), dict(result, layers=sb.layers))


# --- no state survives from one run to the next --------------------------------------------------------

SECRET_BITS = [True, False, False, True, False, True, True, False]
GUESS = {
    "task_id": "toy/guess",
    "prompt": "def guess(i):\n",
    "test": "def check(candidate):\n"
    + "".join(f"    assert candidate({i}) == {b}\n" for i, b in enumerate(SECRET_BITS)),
    "entry_point": "guess",
}
# No logic: it learns the answers from earlier runs, through any store that survives one. A run learns one bit
# per call (the next call arrives only if the last answer was accepted), so with a store it passes within
# len(SECRET_BITS) + 1 runs.
LEARNER = """    import json
    global _known
    if i == 0:
        _known = {}
        for p in __STORES__:
            try:
                _known.update(json.load(open(p)))
            except Exception:
                pass
    else:
        _known[str(i - 1)][1] = True  # we were called again: the last answer was accepted
    g, ok = _known.get(str(i), [True, False])
    if str(i) in _known and not ok:
        g = not g  # answered before and never called again: that answer was wrong
    _known[str(i)] = [g, False]
    for p in __STORES__:
        try:
            with open(p, 'w') as f:
                json.dump(_known, f)
        except Exception:
            pass
    return g
"""


def test_a_logic_free_completion_never_passes_however_often_it_runs(host):
    store = Path(tempfile.mkdtemp(prefix="sandbox_store_"))  # in /tmp: the worker uid can reach it
    store.chmod(0o777)
    try:
        _learn(host, store)
    finally:
        shutil.rmtree(store)


def _learn(host: dict, store: Path) -> None:
    # The control: with a store that survives (the unisolated backend sees the host's files), it learns.
    unsafe = Sandbox(backend="none", unsafe_no_sandbox=True, workers=1, timeout=3.0)
    control = LEARNER.replace("__STORES__", repr([f"{store}/learned"]))
    statuses = [unsafe.check_function(GUESS, control)["status"] for _ in range(len(SECRET_BITS) + 1)]
    assert statuses[-1] == "passed" and statuses[0] != "passed", statuses
    (store / "learned").unlink()
    learner = LEARNER.replace("__STORES__", repr(["/tmp/learned", "/dev/shm/learned", f"{store}/learned"]))
    # Sandboxed: alternating between two harnesses (two zygotes, two images), as separate invocations would.
    second = Sandbox(timeout=3.0, memory_mb=256, workers=1)
    try:
        runs = [
            (host["sb"], second)[k % 2].check_function(GUESS, learner) for k in range(2 * len(SECRET_BITS))
        ]
    finally:
        second.close()
    assert [r["status"] for r in runs] == ["failed:assertion"] * len(runs)
    assert list(store.iterdir()) == []
    assert_host_intact(host, runs[-1])
