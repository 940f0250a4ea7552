"""The trusted launcher: run as `python3 -I -S launcher.py CONFIG_JSON` by the harness, it builds the cage and
then becomes the sandboxed interpreter. Standard library only, one file: with `-I` the interpreter does not
put this file's folder on sys.path, so nothing else of ours can be imported here.

Process tree of one run (direct backend, as root):

    harness (trusted)
      └─ launcher            host pid ns, root: unshare(mount, net, pid, ipc, uts), fork
           └─ ns init        pid 1 of the new ns, root: private read-only root + tmpfs /tmp, /dev/shm; fork
                └─ sample    pid 2: rlimits, setuid(worker uid), no_new_privs, seccomp, then untrusted code

Every step before the untrusted code fails closed: an error is reported on the status fd (which only
trusted processes hold) and the run is a sandbox_error. Nothing the sample writes is trusted: it reaches
the harness only as framed literals on the result fd, which the harness parses with `ast.literal_eval`.

Imported by the harness for `encode`/`decode` (the wire format); importing has no side effects.
"""

import json  # here, not in encode/decode: a sample that breaks __import__ must still get its replies out
import os
import sys

MAX_MESSAGE = 1 << 20  # bytes per framed message, both directions
MAX_DEPTH = 64  # nesting of a value on the wire
SETUP_FAILED = 121  # exit code of a sample child whose setup failed (also reported on the status fd)
TMP_INODES = 4096  # files + folders in each of /tmp and /dev/shm


# ---------------------------------------------------------------------------------------------------------
# Wire format: 4-byte big-endian length + JSON of a tagged value made of exact builtin types.
# Scalars are plain JSON (null, true, false, small ints, finite floats, strings); everything else is a list
# whose first element names the type: ["L", ...] list, ["T", ...] tuple, ["S", ...] set,
# ["D", k1, v1, ...] dict, ["B", hex] bytes, ["C", re, im] complex, ["I", hex] big int, ["F", "inf"] infinity.
# JSON because the harness parses what the sample sends: `json.loads` is linear C code, and the tagged value
# is then rebuilt under caps on items, depth and hash collisions (see `decode`), so no reply can make the
# trusted side slow (ast.literal_eval builds a syntax tree ~300x the message, and a set of ints that all
# hash alike is quadratic to build).

MAX_ITEMS = 1 << 16  # values per message
MAX_COLLISIONS = 8  # distinct values sharing one hash, per message


def _to_wire(v, depth: int):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(v)
    if v is None or t is bool or t is str:
        return v
    if t is int:
        return v if abs(v) < 1 << 60 else ["I", hex(v)]  # hex has no int-to-str digit limit
    if t is float:
        if v != v:
            raise ValueError("nan cannot cross the wire")
        return v if abs(v) != float("inf") else ["F", "inf" if v > 0 else "-inf"]
    if t is complex:
        if v != v or abs(v) == float("inf"):
            raise ValueError("non-finite complex cannot cross the wire")
        return ["C", v.real, v.imag]
    if t is bytes:
        return ["B", v.hex()]
    tag = {list: "L", tuple: "T", set: "S"}.get(t)
    if tag:
        return [tag, *(_to_wire(x, depth + 1) for x in v)]
    if t is dict:
        out = ["D"]
        for k, x in v.items():
            out += [_to_wire(k, depth + 1), _to_wire(x, depth + 1)]
        return out
    raise TypeError(f"{t.__name__} cannot cross the wire (only exact builtin types)")


def encode(value) -> bytes:
    """One framed message: length + tagged JSON. Raises TypeError/ValueError for values that cannot cross."""
    body = json.dumps(_to_wire(value, 0), separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE}")
    return len(body).to_bytes(4, "big") + body


class _Builder:
    """Rebuilds a tagged value with at most MAX_ITEMS values and MAX_COLLISIONS unequal values per hash."""

    def __init__(self):
        self.items, self.by_hash = 0, {}

    def build(self, w, depth: int):
        self.items += 1
        if self.items > MAX_ITEMS or depth > MAX_DEPTH:
            raise ValueError("message has too many values or is nested too deeply")
        t = type(w)
        if t is int or t is float:
            return self._counted(w)
        if w is None or t is bool or t is str:
            return w
        if t is not list or not w or type(w[0]) is not str:
            raise ValueError("malformed value")
        tag, rest = w[0], w[1:]
        if tag == "I" and len(rest) == 1 and type(rest[0]) is str and len(rest[0]) <= 1 << 16:
            return self._counted(int(rest[0], 16))
        if tag == "F" and rest in (["inf"], ["-inf"]):
            return float(rest[0])
        if tag == "B" and len(rest) == 1 and type(rest[0]) is str:
            return bytes.fromhex(rest[0])
        if tag == "C" and len(rest) == 2 and all(type(x) in (int, float) for x in rest):
            return self._counted(complex(*rest))
        items = [self.build(x, depth + 1) for x in rest]
        if tag == "L":
            return items
        if tag == "T":
            return self._counted(tuple(items))
        if tag == "S":
            return set(self._counted(x) for x in items)
        if tag == "D" and len(items) % 2 == 0:
            return {self._counted(k): x for k, x in zip(items[::2], items[1::2])}
        raise ValueError("malformed value")

    def _counted(self, v):
        """Refuse a message with many unequal values of one hash (strings are hashed with a secret seed)."""
        if type(v) in (str, bytes):
            return v
        try:
            h = hash(v)
        except TypeError:  # a tuple holding a list: fine as a value, and set() refuses it as a member
            return v
        seen = self.by_hash.setdefault(h, [])
        if v not in seen:  # `in` compares with at most MAX_COLLISIONS values
            if len(seen) >= MAX_COLLISIONS:
                raise ValueError("too many values with the same hash")
            seen.append(v)
        return v


def decode(body: bytes):
    """Parse one message body in time and memory linear in its size, whatever it holds. Only exact builtin
    values come out: no call, attribute, name or subclass can be expressed."""
    if len(body) > MAX_MESSAGE:
        raise ValueError("message too large")
    if body.count(b",") >= MAX_ITEMS:  # an upper bound on the values, counted in C before building any
        raise ValueError("message has too many values")

    def refuse(name):
        raise ValueError(f"{name} is not allowed on the wire")

    return _Builder().build(json.loads(body, parse_constant=refuse), 0)


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 16))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv(fd: int):
    n = int.from_bytes(_read_exact(fd, 4), "big")
    if n > MAX_MESSAGE:
        raise ValueError("message too large")
    return decode(_read_exact(fd, n))


def _send(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ---------------------------------------------------------------------------------------------------------
# Kernel interfaces through ctypes (no compiled helper to build or trust).

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

_libc = None


def _c():
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s):
    return None if s is None else os.fsencode(s)


def _mount(src, target, fstype, flags, data=None) -> None:
    _check(_c().mount(_b(src), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def _prctl(option: int, arg: int) -> None:
    import ctypes

    _check(_c().prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


def _install_seccomp(bpf: bytes) -> None:
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))  # struct sock_filter is 8 bytes
    ret = _c().prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog), 0, 0)
    _check(ret, "seccomp")


# ---------------------------------------------------------------------------------------------------------
# The cage.


def _report(cfg: dict, line: str) -> None:
    """A line on the status fd, which only trusted processes (launcher, ns init, pre-code sample) hold."""
    os.write(cfg["status_fd"], (line.replace("\n", " ") + "\n").encode())


def _build_root(cfg: dict) -> None:
    """Private, read-only root with only the interpreter's files, fresh /proc and size-capped tmpfs."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates back to the host
    new = cfg["stage"]  # an existing directory, free to cover: the ns is private
    _mount("sandbox", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=256,mode=755")
    for kind, path, source in cfg["root"]:  # ("bind", "/usr", "/usr") | ("symlink", "/lib", "usr/lib")
        dest = new + path
        if kind == "symlink":
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.symlink(source, dest)
            continue
        os.makedirs(dest, exist_ok=True)
        _mount(source, dest, None, MS_BIND | MS_REC)
        _mount(None, dest, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(new + "/dev/shm")
    for dev in ("null", "zero", "random", "urandom"):
        open(new + "/dev/" + dev, "w").close()
        _mount("/dev/" + dev, new + "/dev/" + dev, None, MS_BIND)
    # nr_inodes: inodes cost kernel memory that the size cap does not count
    tmp_opts = f"size={cfg['tmp_mb']}m,nr_inodes={TMP_INODES},mode=1777"
    os.makedirs(new + "/tmp")
    _mount("tmp", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts)
    _mount("shm", new + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, tmp_opts)
    os.makedirs(new + "/proc")
    _mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(new)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only the new root.
    _check(_c().syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _check(_c().umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _check(_c().sethostname(b"sandbox", 7), "sethostname")


def _copy_in(path: str, image: str, skip: tuple | None = ()) -> None:
    """Copy a host file or folder into the image at the same path, recreating every symlink on the way.
    skip: names not to copy; None: the symlink `path` only, not what it points to."""
    import shutil

    if skip is None:
        os.symlink(os.readlink(path), image + path)
        return
    parts = path.strip("/").split("/")
    cur = ""
    for i, part in enumerate(parts):
        cur += "/" + part
        if os.path.islink(cur):
            if not os.path.lexists(image + cur):
                os.symlink(os.readlink(cur), image + cur)
            target = os.path.normpath(os.path.join(os.path.dirname(cur), os.readlink(cur)))
            _copy_in("/".join([target, *parts[i + 1 :]]), image, skip)
            return
        if i < len(parts) - 1:
            os.makedirs(image + cur, mode=0o755, exist_ok=True)
    if os.path.isdir(cur):
        ignore = shutil.ignore_patterns(*skip)
        shutil.copytree(cur, image + cur, True, ignore, shutil.copy, dirs_exist_ok=True)  # symlinks kept
    elif os.path.isfile(cur) and not os.path.lexists(image + cur):
        shutil.copy(cur, image + cur)


def _build_image(cfg: dict) -> list:
    """The zygote's private copy of the interpreter's files, in a tmpfs of its own mount namespace (freed
    with it). Runs bind it instead of the host's /usr: tmpfs pages are always resident, so reading them
    leaves no trace in the host page cache for a later run to time. Returns the run root's spec."""
    _check(_c().unshare(CLONE_NEWNS), "unshare(image)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("image", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    image = "/tmp/image"
    os.mkdir(image, 0o755)
    os.mkdir("/tmp/stage", 0o755)
    pid = os.fork()  # the copy (and shutil, and the modules it imports) stays out of the runs' interpreter
    if pid == 0:
        try:
            for path, skip in cfg["image"]:
                _copy_in(path, image, None if skip is None else tuple(skip))
        except BaseException as e:  # noqa: BLE001
            os.write(2, f"{type(e).__name__}: {e}\n".encode())
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        raise OSError("copying the interpreter's files failed")
    root = []
    for name in sorted(os.listdir(image)):
        full = image + "/" + name
        link = os.path.islink(full)
        root.append(("symlink", "/" + name, os.readlink(full)) if link else ("bind", "/" + name, full))
    return root


def _limit(cfg: dict) -> None:
    import resource

    mem = cfg["memory_mb"] << 20
    cpu = cfg["cpu_s"]
    for res, soft, hard in (
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at soft, SIGKILL at hard: busy loops cannot outlive it
        (resource.RLIMIT_FSIZE, cfg["fsize"], cfg["fsize"]),  # stdout/stderr files and anything in /tmp
        (resource.RLIMIT_NOFILE, 64, 64),
        (resource.RLIMIT_NPROC, cfg["nproc"], cfg["nproc"]),  # per uid: bounds thread bombs
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
    ):
        resource.setrlimit(res, (soft, hard))


def _sample(cfg: dict) -> None:
    """Child that becomes the sample: drop everything, then run the untrusted code. Never returns."""
    try:
        _limit(cfg)
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
            if os.getuid() != cfg["uid"] or os.geteuid() != cfg["uid"]:
                raise OSError("uid drop did not stick")
        _prctl(PR_SET_PDEATHSIG, 9)  # after the uid change, which clears it
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.chdir("/tmp")
        if cfg["seccomp"]:
            _install_seccomp(bytes.fromhex(cfg["seccomp"]))
        _report(cfg, "L " + " ".join(cfg["layers"]))
        os.close(cfg["status_fd"])  # from here on only trusted processes can write status lines
    except BaseException as e:  # noqa: BLE001 - any failure before the code runs is a sandbox error
        _report(cfg, f"E sample setup: {type(e).__name__}: {e}")
        os._exit(SETUP_FAILED)
    _run_untrusted(cfg)


def _supervise(cfg: dict) -> None:
    """Pid 1 of the namespaces (direct backend): fork the sample, report its wait status. Never returns."""
    pid = os.fork()
    if pid == 0:
        _sample(cfg)
    for fd in (cfg["req_fd"], cfg["res_fd"], cfg["code_fd"]):
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    _report(cfg, f"W {status}")
    os._exit(0)


def _ns_init(cfg: dict, go_fd: int) -> None:
    """Pid 1 of the new namespaces: build the root, then supervise. Dies with the launcher."""
    try:
        _prctl(PR_SET_PDEATHSIG, 9)
        if os.read(go_fd, 1) != b"g":  # launcher already gone: the death signal may have been missed
            os._exit(1)
        os.close(go_fd)
        _build_root(cfg)
        os.setsid()  # the sample cannot signal the launcher's process group
    except BaseException as e:  # noqa: BLE001
        _report(cfg, f"E namespace setup: {type(e).__name__}: {e}")
        os._exit(1)
    _supervise(cfg)


def launch(cfg: dict) -> None:
    """One run. Forks the ns init (direct) or the sample (bwrap, none), then waits for it to finish or for
    the harness to close the kill pipe, which kills it (and, direct, its whole pid namespace)."""
    direct = cfg["backend"] == "direct"
    if cfg.get("image_error"):
        _report(cfg, "E building the interpreter image: " + cfg["image_error"])
        os._exit(1)
    try:
        _prctl(PR_SET_PDEATHSIG, 9)  # our parent (zygote or harness) dies -> so do we, and so on down
        if os.getppid() != cfg["parent_pid"]:
            os._exit(1)
        if direct:
            flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
            _check(_c().unshare(flags), "unshare")
        go_r, go_w = os.pipe()
    except BaseException as e:  # noqa: BLE001
        _report(cfg, f"E launcher: {type(e).__name__}: {e}")
        os._exit(1)
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.close(cfg["kill_fd"])
        if direct:
            _ns_init(cfg, go_r)
        os.close(go_r)
        _sample(cfg)
    os.close(go_r)
    # We keep lifeline_fd until we exit: by then our child is reaped, and (direct) the ns init is reaped only
    # once the kernel has killed and reaped every other process of its pid namespace.
    for fd in ("req_fd", "res_fd", "code_fd") + (("status_fd",) if direct else ()):
        os.close(cfg[fd])
    child = os.pidfd_open(pid)
    if direct:
        os.write(go_w, b"g")
    os.close(go_w)
    import select

    ready, _, _ = select.select([cfg["kill_fd"], child], [], [])
    if child not in ready:
        os.kill(pid, 9)  # our own unreaped child: the pid cannot have been reused
    _, status = os.waitpid(pid, 0)
    if child in ready and not direct:
        _report(cfg, f"W {status}")
    os._exit(0)


def zygote(cfg: dict) -> None:
    """Serve runs for one harness: each request (a config + its fds over a unix socket) is forked off this
    warm interpreter, so a run costs a fork instead of an interpreter start. Exits when the harness does."""
    import atexit  # noqa: F401 - imported once here, not by every run (script mode uses them)
    import linecache  # noqa: F401
    import select
    import socket
    import types  # noqa: F401

    ctl = socket.socket(fileno=cfg["control_fd"])
    if cfg.get("image"):
        try:
            cfg = dict(cfg, root=_build_image(cfg), stage="/tmp/stage")
        except BaseException as e:  # noqa: BLE001 - every run reports it: a sandbox_error, never a silent fallback
            cfg = dict(cfg, image_error=f"{type(e).__name__}: {e}")
    while True:
        while True:  # reap finished launchers
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not select.select([ctl], [], [], 1.0)[0]:
            continue
        msg, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 16)
        if not msg:
            os._exit(0)
        run = dict(cfg, **eval(msg.decode(), {"__builtins__": {}}), parent_pid=os.getpid())
        names = ("req_fd", "res_fd", "status_fd", "lifeline_fd", "code_fd", "kill_fd", "out", "err")
        run.update(zip(names, fds))
        if os.fork() == 0:
            ctl.detach()  # its fd is closed below; the object must not close a reused number later
            keep = set(fds)
            os.dup2(run["out"], 1)
            os.dup2(run["err"], 2)
            for fd in map(int, os.listdir("/proc/self/fd")):
                if fd > 2 and fd not in keep:
                    try:
                        os.close(fd)  # the control socket, and the listing's own fd (already closed)
                    except OSError:
                        pass
            os.close(run["out"])
            os.close(run["err"])
            launch(run)
        for fd in fds:
            os.close(fd)


def main(argv: list[str]) -> None:
    cfg = eval(argv[2], {"__builtins__": {}})  # the repr of a dict of literals, written by the harness
    if argv[1] == "zygote":
        zygote(cfg)
    else:
        launch(dict(cfg, parent_pid=os.getppid()))


# ---------------------------------------------------------------------------------------------------------
# Inside the cage: run the code. Everything below may be tampered with by the code it runs; the harness
# trusts none of it beyond "a literal arrived on the result fd".


def _exception(e: BaseException) -> tuple:
    try:
        return ("exc", type(e).__name__[:80], str(e)[:500])
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return ("exc", "Exception", "")


def _run_script(code: str, req: int, res: int) -> None:
    """Run the program as `python3 FILE` would, in a fresh __main__, and end the process the way the
    interpreter ends it: an exception is printed and exits 1, SystemExit exits with its code, and normal
    shutdown (non-daemon threads joined, atexit hooks run, stdout flushed) decides the exit status, which
    the trusted pid 1 reports. Raises SystemExit, unwinding frames that catch nothing, to the interpreter's
    own exit; never returns.

    The one message this sends for the verdict, ("done", nonce) from the first-registered (so last-run)
    atexit hook, only tells a normal shutdown from os._exit(0); the harness requires exit status 0 as well.
    ("exc", name, message) labels a failure; both are untrusted."""
    import atexit
    import builtins
    import linecache
    import types

    nonce = _recv(req)
    os.close(req)
    atexit.register(os.write, res, encode(("done", nonce)))  # < PIPE_BUF: one atomic write
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv = ["main.py"]
    linecache.cache["main.py"] = (len(code), None, code.splitlines(True), "main.py")  # for inspect.getsource
    try:
        exec(compile(code, "main.py", "exec"), main.__dict__)
    except SystemExit:
        raise  # the interpreter turns it into the exit status, exactly as for `python3 FILE`
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(res, encode(_exception(e)))
        except BaseException:  # noqa: BLE001 - a hostile __str__: the exit status still says 1
            pass
        try:
            e.__traceback__ = e.__traceback__.tb_next  # the traceback without this frame
            sys.excepthook(type(e), e, e.__traceback__)
        except BaseException:  # noqa: BLE001 - a hostile hook: the exit status still says 1
            pass
        raise SystemExit(1) from None
    raise SystemExit(0)


def _run_untrusted(cfg: dict) -> None:
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the output cap should kill, visibly
    req, res = cfg["req_fd"], cfg["res_fd"]
    with os.fdopen(cfg["code_fd"], "rb") as f:
        code = f.read().decode("utf-8", "replace")
    if cfg["mode"] == "script":
        _run_script(code, req, res)

    # function mode: define the candidate, then answer calls until the harness closes the request pipe
    namespace: dict = {}
    try:
        exec(compile(code, "<sample>", "exec"), namespace)
        fn = namespace[cfg["entry_point"]]
        _send(res, encode(("ready",)))
    except BaseException as e:  # noqa: BLE001
        _send(res, encode(_exception(e)))
        os._exit(1)
    while True:
        try:
            args, kwargs = _recv(req)
        except EOFError:
            os._exit(0)
        try:
            reply = encode(("ok", fn(*args, **kwargs)))
        except BaseException as e:  # noqa: BLE001
            reply = encode(_exception(e))
        _send(res, reply)


if __name__ == "__main__":
    main(sys.argv)
