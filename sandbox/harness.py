"""The trusted side: launch one caged process per sample, enforce the wall clock, and compute verdicts.

    sb = Sandbox(timeout=5.0)                      # probes the host; refuses to run without isolation
    sb.run_script("print(1)")                      # {"status": "passed", "stdout": "1\\n", ...}
    sb.check_function(problem, completion)         # HumanEval: check() runs here, the candidate in the cage

Nothing the sample says is believed except a literal on the result pipe, parsed by `ast.literal_eval`.
Script mode passes only if the per-run nonce comes back after the code returned and the process then
exited 0. Function mode passes only if the dataset's check() returns here, on the trusted side, calling
the candidate through a stub that ships plain data over the pipe; the candidate never sees the test.
"""

from __future__ import annotations

import builtins
import functools
import os
import queue
import secrets
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cli import UsageError
from sandbox import launcher
from sandbox.seccomp import SeccompUnavailable, compile_filter

LAUNCHER = os.path.abspath(launcher.__file__)
DIRECT_LAYERS = [
    "rlimits",
    "netns",
    "mountns",
    "pidns",
    "ipcns",
    "utsns",
    "image",
    "uid",
    "no_new_privs",
    "seccomp",
]
STATUSES = ("passed", "failed:<reason>", "timeout", "memory", "blocked", "crash", "sandbox_error")
OUTPUT_CHARS = 8192  # stdout/stderr kept in a result (the files themselves are capped by RLIMIT_FSIZE)
MAX_RESULT_BYTES = 64 << 20  # all bytes one run may send us; more is a protocol violation
SCRIPT_FRAME = 4096  # script mode's messages are a label and a marker
BUILTIN_EXCEPTIONS = frozenset(
    n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)
)


class SandboxUnavailable(UsageError):
    """Isolation could not be set up and --unsafe-no-sandbox was not given."""


class _Fault(BaseException):
    """The sample stopped answering (died, timed out, broke the protocol). BaseException, so a check()
    with `except Exception` cannot swallow it into a pass."""


class CandidateError(Exception):
    """The candidate raised inside the sandbox; carries only its type name and message, as strings."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


@dataclass
class _Run:
    """One live sample: its launcher process and the harness ends of its pipes."""

    proc: subprocess.Popen | None  # the launcher when started per run (bwrap, none); None: zygote-forked
    req: int  # harness -> sample (nonce, calls)
    res: int  # sample -> harness (untrusted literals)
    status: int  # launcher/init/pre-code sample -> harness (trusted lines)
    lifeline: int  # EOF once every process of the run is gone
    kill: int  # closing it makes the launcher exit
    out: int
    err: int
    deadline: float
    started: float
    buf: bytearray = field(default_factory=bytearray)
    status_buf: bytearray = field(default_factory=bytearray)
    messages: list = field(default_factory=list)
    received: int = 0
    res_open: bool = True
    status_open: bool = True
    layers: list = field(default_factory=list)
    error: str | None = None
    wait_status: int | None = None
    timed_out: bool = False
    violation: str | None = None
    allowed: int = 1  # messages the sample may have sent by now; one more is a protocol violation
    frame_cap: int = launcher.MAX_MESSAGE


def _reason(name) -> tuple[str, str]:
    """The status for a failure the sample labels with an exception name: the harness's own word (a builtin
    exception's name, `memory`, or `failed:exception`), never text the sample chose."""
    name = name if type(name) is str else ""
    if name == "MemoryError":
        return name, "memory"
    return name[:80], (f"failed:{name}" if name in BUILTIN_EXCEPTIONS else "failed:exception")


def _quote(text: str) -> str:
    """Sample text made safe to show: control characters escaped, length capped."""
    return text[:300].encode("unicode_escape").decode("ascii") if not text.isprintable() else text[:300]


def _is_exc(message) -> bool:
    return type(message) is tuple and len(message) == 3 and message[0] == "exc"


def _read_capped(fd: int) -> str:
    data = os.pread(fd, OUTPUT_CHARS * 4, 0)
    return data.decode("utf-8", "replace")[:OUTPUT_CHARS]


@functools.lru_cache(maxsize=1024)
def _compiled(source: str, name: str):
    return compile(source, name, "exec")


def _trusted_prompt(prompt: str):
    """The prompt compiled for the trusted side; a bare signature gets a `pass` body so it compiles."""
    try:
        return _compiled(prompt, "<prompt>")
    except SyntaxError:
        return _compiled(prompt.rstrip("\n") + "\n    pass\n", "<prompt>")


def _find_python(python: str | None) -> str:
    if python:
        return python
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SandboxUnavailable("no system python3 found for sandboxed code; pass python=/path/to/python3")


# Run by the sandbox's interpreter: what it needs from the host (printed as JSON). Importing every extension
# module maps every shared library one of them needs; the symlinks that name those libraries (sonames) and
# the ELF interpreter come along so the dynamic loader finds them in the image.
_PROBE = r"""
import importlib, json, os, struct, sys, zoneinfo
std = os.path.dirname(os.__file__)
for d in sys.path:
    if os.path.isdir(d) and d.startswith(std + "/"):
        for name in os.listdir(d):
            if name.endswith(".so"):
                try:
                    importlib.import_module(name.split(".")[0])
                except BaseException:
                    pass
maps = [line.split(None, 5) for line in open("/proc/self/maps")]
libs = {m[5].strip() for m in maps if len(m) == 6 and m[5].startswith("/")}
libs = {p for p in libs if os.path.isfile(p) and not p.startswith(std + "/")}
links = set()
for d in {os.path.dirname(p) for p in libs}:
    for e in os.scandir(d):
        if e.is_symlink() and os.path.realpath(e.path) in libs:
            links.add(e.path)
with open(sys.executable, "rb") as f:
    elf = f.read(1 << 16)
phoff, = struct.unpack_from("<Q", elf, 0x20)
size, num = struct.unpack_from("<HH", elf, 0x36)
for i in range(num):
    kind, = struct.unpack_from("<I", elf, phoff + i * size)
    if kind == 3:  # PT_INTERP
        off, = struct.unpack_from("<Q", elf, phoff + i * size + 8)
        n, = struct.unpack_from("<Q", elf, phoff + i * size + 32)
        links.add(elf[off:off + n].rstrip(b"\0").decode())
data = [p for p in [*zoneinfo.TZPATH, "/usr/lib/locale"] if os.path.isdir(p)]
print(json.dumps(dict(prefixes=sorted({sys.prefix, sys.base_prefix}), std=std,
                      files=sorted(libs | links | {sys.executable}), data=data)))
"""
STDLIB_SKIP = ("site-packages", "dist-packages", "test", "config-*", "__phello__", "idlelib")


@functools.lru_cache(maxsize=8)
def _host_files(python: str) -> dict:
    """What the sandbox's interpreter reads from the host: its prefixes, stdlib, libraries and data."""
    import json

    out = subprocess.run(
        [python, "-I", "-S", "-c", _PROBE],
        stdin=subprocess.DEVNULL,  # readline, imported by the probe, must not see a terminal
        capture_output=True,
        text=True,
        env={},
        timeout=60,
    )
    if out.returncode != 0:
        why = out.stderr.strip()[-300:]
        raise SandboxUnavailable(f"the sandbox interpreter {python} does not run: {why}")
    return json.loads(out.stdout.splitlines()[-1])


def _root_spec(files: dict) -> list:
    """The host folders a bwrap or unisolated run sees: system dirs (symlinks kept) + the interpreter's."""
    spec, bound = [], []
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            spec.append(("symlink", path, os.readlink(path)))
        elif os.path.isdir(path):
            spec.append(("bind", path, path))
            bound.append(path)
    for prefix in dict.fromkeys(os.path.realpath(p) for p in files["prefixes"]):
        if not any(prefix == b or prefix.startswith(b + "/") for b in bound):
            spec.append(("bind", prefix, prefix))
            bound.append(prefix)
    return spec


def _image_spec(files: dict) -> list:
    """(host path, names to skip) copied into the direct backend's image: the run sees nothing else."""
    tops = [p for p in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32") if os.path.islink(p)]
    return (
        [(p, None) for p in tops]
        + [(p, []) for p in files["files"] + files["data"]]
        + [(files["std"], list(STDLIB_SKIP))]
    )


class Sandbox:
    """Runs untrusted Python in a cage per sample, `workers` at a time. See the module docstring."""

    def __init__(
        self,
        timeout: float = 5.0,
        memory_mb: int = 1024,
        workers: int | None = None,
        python: str | None = None,
        unsafe_no_sandbox: bool = False,
        backend: str = "auto",
        tmp_mb: int = 64,
        output_mb: int = 8,
        base_uid: int = 61000,
    ):
        if backend not in ("auto", "direct", "bwrap", "none"):
            raise UsageError(f"backend {backend!r} is not one of auto, direct, bwrap, none")
        self.timeout, self.memory_mb, self.tmp_mb = float(timeout), int(memory_mb), int(tmp_mb)
        self.fsize = int(output_mb) << 20
        self.workers = workers or os.cpu_count() or 1
        self.python = _find_python(python)
        self.base_uid = base_uid
        self._slots: queue.Queue = queue.Queue()
        for i in range(self.workers):
            self._slots.put(i)
        self._files = _host_files(self.python)
        self._root = _root_spec(self._files)
        self._lock = threading.Lock()
        self._ctl: socket.socket | None = None
        self._zygote: subprocess.Popen | None = None
        self.backend, self.layers = self._probe(backend, unsafe_no_sandbox)

    # -- capability probe ---------------------------------------------------------------------------------

    def _probe(self, backend: str, unsafe: bool) -> tuple[str, list]:
        """Try the strongest backend first; keep the first whose probe run passes with all its layers."""
        try:
            compile_filter()
            have_seccomp = True
        except SeccompUnavailable as e:
            if not unsafe:
                msg = f"{e}; install libseccomp2 and pyseccomp, or pass --unsafe-no-sandbox"
                raise SandboxUnavailable(msg) from e
            have_seccomp = False
        order = {"auto": ["direct", "bwrap"], "direct": ["direct"], "bwrap": ["bwrap"], "none": []}[backend]
        if unsafe:
            order.append("none")
        why = [] if order else ["backend none needs unsafe_no_sandbox=True"]
        for name in order:
            if name == "direct" and os.geteuid() != 0:
                why.append("direct: needs root")
                continue
            if name == "bwrap" and not shutil.which("bwrap"):
                why.append("bwrap: not installed")
                continue
            self._seccomp = compile_filter(private_net=name != "none").hex() if have_seccomp else ""
            self.backend, self.layers = name, self._layers_for(name)
            r = self.run_script("import sys\nassert sys.flags.isolated")
            if r["status"] == "passed" and r["layers"] == self.layers:
                return name, self.layers
            why.append(f"{name}: {r['status']} {r.get('detail', '')}".strip())
        raise SandboxUnavailable(
            "no isolation is available here (" + "; ".join(why) + "); run as root, install bubblewrap "
            "(apt-get install bubblewrap), or pass --unsafe-no-sandbox to run untrusted code unisolated"
        )

    def _layers_for(self, backend: str) -> list:
        seccomp = ["seccomp"] if self._seccomp else []
        if backend == "direct":
            return DIRECT_LAYERS[:-1] + seccomp
        if backend == "bwrap":
            uid = ["uid"] if os.geteuid() != 0 else ["userns"]
            return ["rlimits", "netns", "mountns", "pidns", "ipcns", "utsns", *uid, "no_new_privs", *seccomp]
        return ["rlimits", *(["uid"] if os.geteuid() == 0 else []), "no_new_privs", *seccomp]

    # -- one run ------------------------------------------------------------------------------------------

    def _base_config(self) -> dict:
        return dict(
            backend=self.backend,
            image=_image_spec(self._files) if self.backend == "direct" else None,
            stage="/tmp",
            memory_mb=self.memory_mb,
            cpu_s=int(self.timeout) + 1,
            fsize=self.fsize,
            nproc=64,
            tmp_mb=self.tmp_mb,
            root=self._root,
            layers=self.layers,
            seccomp=self._seccomp,
        )

    def _command(self, cfg: dict, role: str = "launch") -> list:
        if self.backend != "bwrap":
            return [self.python, "-I", "-S", LAUNCHER, role, repr(cfg)]
        py = [self.python, "-I", "-S", "/launcher.py", role, repr(cfg)]
        cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
        cmd += ["--hostname", "sandbox", "--cap-drop", "ALL"]
        if os.geteuid() == 0:  # root outside: become an unprivileged uid inside a user namespace
            cmd += ["--unshare-user", "--uid", str(cfg["uid_bwrap"]), "--gid", str(cfg["uid_bwrap"])]
        for kind, path, target in self._root:
            cmd += ["--symlink", target, path] if kind == "symlink" else ["--ro-bind", path, path]
        size = str(self.tmp_mb << 20)
        cmd += [
            "--ro-bind",
            LAUNCHER,
            "/launcher.py",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--size",
            size,
            "--tmpfs",
            "/tmp",
        ]
        cmd += ["--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/", "--chdir", "/tmp", "--"]
        return cmd + py

    def _zygote_socket(self) -> socket.socket:
        """The warm launcher process of the direct backend, started on first use (see launcher.zygote)."""
        if self._ctl is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            cfg = dict(self._base_config(), control_fd=theirs.fileno())
            self._zygote = subprocess.Popen(
                self._command(cfg, "zygote"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env={},
                cwd="/",
                start_new_session=True,
            )
            theirs.close()
            self._ctl = ours
        return self._ctl

    def close(self) -> None:
        """Stop the zygote (it also stops by itself when this process exits)."""
        if self._ctl is not None:
            self._ctl.close()
            self._zygote.wait()
            self._ctl = self._zygote = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self, mode: str, code: str, slot: int, entry_point: str | None = None) -> _Run:
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        st_r, st_w = os.pipe()
        life_r, life_w = os.pipe()
        kill_r, kill_w = os.pipe()  # the launcher exits (taking the run down) when we close kill_w
        out = os.memfd_create("stdout", os.MFD_CLOEXEC)
        err = os.memfd_create("stderr", os.MFD_CLOEXEC)
        code_fd = os.memfd_create("code", os.MFD_CLOEXEC)
        os.write(code_fd, code.encode("utf-8", "surrogatepass"))
        os.lseek(code_fd, 0, os.SEEK_SET)
        fds = [req_r, res_w, st_w, life_w, code_fd, kill_r]
        uid = self.base_uid + slot
        per_run = dict(uid=uid, uid_bwrap=uid, mode=mode, entry_point=entry_point)
        started, proc = time.monotonic(), None
        try:
            if self.backend == "direct":
                with self._lock:
                    socket.send_fds(self._zygote_socket(), [repr(per_run).encode()], fds + [out, err])
            else:
                names = ("req_fd", "res_fd", "status_fd", "lifeline_fd", "code_fd", "kill_fd")
                cfg = dict(self._base_config(), **per_run, **dict(zip(names, fds)))
                # bwrap maps the uid itself. Without namespaces a root harness still drops to the worker uid:
                # with no pid namespace, a root sample's kill(-1) would reach every process on the host.
                if self.backend == "bwrap" or os.geteuid() != 0:
                    cfg["uid"] = None
                proc = subprocess.Popen(
                    self._command(cfg),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    pass_fds=fds,
                    env={},
                    cwd="/",
                    start_new_session=True,
                )
        except OSError:
            pass  # a dead zygote or a missing binary: every pipe reads EOF, the run is a sandbox_error
        finally:
            for fd in fds:
                os.close(fd)
        os.set_blocking(req_w, False)
        return _Run(proc, req_w, res_r, st_r, life_r, kill_w, out, err, started + self.timeout, started)

    def _pump(self, run: _Run, done) -> bool:
        """Read both pipes until `done()` or the deadline. False when the deadline passed first."""
        while not done():
            fds = [fd for fd, live in ((run.res, run.res_open), (run.status, run.status_open)) if live]
            left = run.deadline - time.monotonic()
            if not fds:
                return True
            if left <= 0:
                run.timed_out = True
                return False
            ready, _, _ = select.select(fds, [], [], left)
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if fd == run.res:
                    self._take_result_bytes(run, chunk)
                else:
                    self._take_status_bytes(run, chunk)
        return True

    def _take_result_bytes(self, run: _Run, chunk: bytes) -> None:
        if not chunk:
            run.res_open = False
            return
        run.received += len(chunk)
        run.buf += chunk
        if run.received > MAX_RESULT_BYTES:
            run.violation, run.res_open = "result stream too large", False
            return
        while len(run.buf) >= 4 and not run.violation:
            n = int.from_bytes(run.buf[:4], "big")
            if n > run.frame_cap:
                run.violation, run.res_open = "oversized message", False
                return
            if len(run.buf) < 4 + n:
                return
            if len(run.messages) >= run.allowed:  # only what was asked for is ever parsed
                run.violation, run.res_open = "unexpected message", False
                return
            body, run.buf = bytes(run.buf[4 : 4 + n]), run.buf[4 + n :]
            try:
                run.messages.append(launcher.decode(body))
            except Exception:  # noqa: BLE001 - ValueError, RecursionError, MemoryError
                run.violation, run.res_open = "unparsable message", False

    def _take_status_bytes(self, run: _Run, chunk: bytes) -> None:
        if not chunk:
            run.status_open = False
            return
        run.status_buf += chunk
        *lines, rest = run.status_buf.split(b"\n")
        run.status_buf = bytearray(rest)
        for raw in lines:
            kind, _, text = raw.decode("utf-8", "replace").partition(" ")
            if kind == "L":
                run.layers = text.split()
            elif kind == "E":
                run.error = run.error or text[:500]
            elif kind == "W" and text.isdigit():
                run.wait_status = int(text)

    def _finish(self, run: _Run) -> tuple[str, str]:
        """Kill whatever is left of the run, wait until every process of it is gone, collect output."""
        os.close(run.kill)
        if run.proc is not None:
            try:
                os.killpg(run.proc.pid, signal.SIGKILL)  # the group leader is unreaped, so its pgid is ours
            except ProcessLookupError:
                pass
        # The ns init holds the lifeline and dies last (after the kernel has killed the rest of its pid ns).
        end = time.monotonic() + 10
        while time.monotonic() < end and select.select([run.lifeline], [], [], end - time.monotonic())[0]:
            if not os.read(run.lifeline, 4096):
                break
        if run.proc is not None:
            run.proc.wait()
        self._drain(run)
        stdout, stderr = _read_capped(run.out), _read_capped(run.err)
        for fd in (run.req, run.res, run.status, run.lifeline, run.out, run.err):
            os.close(fd)
        return stdout, stderr

    def _drain(self, run: _Run) -> None:
        """Read what the (now dead) processes left in the pipes."""
        end = time.monotonic() + 2
        while (run.res_open or run.status_open) and time.monotonic() < end:
            fds = [fd for fd, live in ((run.res, run.res_open), (run.status, run.status_open)) if live]
            for fd in select.select(fds, [], [], max(0.0, end - time.monotonic()))[0]:
                chunk = os.read(fd, 1 << 16)
                self._take_result_bytes(run, chunk) if fd == run.res else self._take_status_bytes(run, chunk)

    def _process_status(self, run: _Run, label) -> tuple[str, str]:
        """Status of a run that did not pass, from trusted facts first; the sample's own ("exc", name, text)
        label only picks among failure words and is quoted as data in the detail."""
        if run.error:
            return "sandbox_error", run.error
        if run.violation:
            return "failed:protocol", run.violation
        if run.timed_out:
            return "timeout", f"wall clock {self.timeout:g}s"
        if run.layers != self.layers:
            return "sandbox_error", f"the sandbox confirmed layers {run.layers}, expected {self.layers}"
        if run.wait_status is None:
            return "sandbox_error", "the sandbox reported no exit status"
        ws = run.wait_status
        if os.WIFSIGNALED(ws):
            sig = os.WTERMSIG(ws)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            if sig == signal.SIGSYS:
                return "blocked", "killed by seccomp (forbidden system call)"
            if sig == signal.SIGXCPU:
                return "timeout", "CPU time limit"
            if sig == signal.SIGXFSZ:
                return "failed:output_limit", "output or file size limit"
            return "crash", f"killed by {name}"
        code = os.WEXITSTATUS(ws)
        if _is_exc(label):
            name, reason = _reason(label[1])
            text = label[2] if type(label[2]) is str else ""
            return reason, f"exit code {code}; the sample reported {name!r}: {_quote(text)}"[:500]
        if code == 0:
            return "failed:exit", "exited 0 without the interpreter's normal shutdown (os._exit)"
        return "failed:exit", f"exit code {code}"

    def _acquire(self) -> int:
        return self._slots.get()

    def _result(self, run: _Run, status: str, detail: str, stdout: str, stderr: str) -> dict:
        ws = run.wait_status
        return {
            "status": status,
            "exit_code": os.WEXITSTATUS(ws) if ws is not None and os.WIFEXITED(ws) else None,
            "duration": round(time.monotonic() - run.started, 4),
            "stdout": stdout,
            "stderr": stderr,
            "layers": run.layers,
            "detail": detail,
        }

    # -- script mode --------------------------------------------------------------------------------------

    def run_script(self, code: str) -> dict:
        """Run a program; passed exactly when the process, run as `python3 FILE` runs it, exits 0 after the
        interpreter's normal shutdown (threads joined, atexit hooks run), as the trusted pid 1 saw it."""
        slot = self._acquire()
        try:
            run = self._start("script", code, slot)
            run.allowed, run.frame_cap = 2, SCRIPT_FRAME  # at most a failure label, then the shutdown marker
            nonce = secrets.token_hex(16)
            try:
                os.write(run.req, launcher.encode(nonce))  # 40 bytes: always fits an empty pipe
            except OSError:
                pass  # the launcher died before reading; the status will say why
            self._pump(run, lambda: run.violation or not (run.res_open or run.status_open))
            stdout, stderr = self._finish(run)
        finally:
            self._slots.put(slot)
        labels = [m for m in run.messages if _is_exc(m)]
        if any(m != ("done", nonce) and not _is_exc(m) for m in run.messages):
            run.violation = run.violation or "unexpected message"
        ok = (
            run.wait_status == 0
            and ("done", nonce) in run.messages
            and not (run.error or run.timed_out or run.violation)
            and run.layers == self.layers
        )
        status, detail = ("passed", "") if ok else self._process_status(run, labels[0] if labels else None)
        return self._result(run, status, detail, stdout, stderr)

    def run_scripts(self, codes: list[str], progress: bool = False) -> list[dict]:
        """run_script over a worker pool; results in input order."""
        return self._map(self.run_script, [(c,) for c in codes], progress, "scripts")

    # -- function mode ------------------------------------------------------------------------------------

    def check_function(self, problem: dict, completion: str) -> dict:
        """HumanEval-style: `prompt + completion` in the cage, the dataset's check() here, on plain data."""
        entry = problem["entry_point"]
        slot = self._acquire()
        try:
            run = self._start("function", problem["prompt"] + completion + "\n", slot, entry)
            self._pump(run, lambda: run.messages or not run.res_open or run.violation)
            first = run.messages[0] if run.messages else None
            status, detail = None, ""
            if first == ("ready",) and not run.violation and run.layers == self.layers:
                status, detail = self._check(run, problem)
            elif first is not None and not _is_exc(first):
                run.violation = run.violation or "unexpected first message"
            if status is None and not run.violation:  # let it end by itself, so its exit status can be read
                self._pump(run, lambda: not run.res_open and not run.status_open)
            stdout, stderr = self._finish(run)
        finally:
            self._slots.put(slot)
        if status is None:  # never got ready, or the stub saw the sample stop answering
            status, detail = self._process_status(run, first if first != ("ready",) else None)
        out = self._result(run, status, detail, stdout, stderr)
        if "task_id" in problem:
            out["task_id"] = problem["task_id"]
        return out

    def _check(self, run: _Run, problem: dict) -> tuple[str | None, str]:
        """Run check(candidate) on the trusted side. (None, "") means: classify from the process."""
        candidate = _Candidate(self, run)
        namespace: dict = {}
        try:
            # The prompt is dataset code (trusted): it may define helpers the test uses (poly, encode_cyclic).
            exec(_trusted_prompt(problem["prompt"]), namespace)
            namespace[problem["entry_point"]] = candidate
            exec(_compiled(problem["test"], "<test>"), namespace)
            check = namespace["check"]
        except Exception as e:  # noqa: BLE001
            return "sandbox_error", f"the problem's prompt/test does not run on the trusted side: {e!r}"[:500]
        try:
            check(candidate)
        except _Fault:
            pass
        except CandidateError as e:
            if candidate.fault is None:
                name, reason = _reason(e.name)
                return reason, f"the candidate raised {name!r}: {_quote(e.message)}"[:500]
        except AssertionError as e:
            if candidate.fault is None:
                return "failed:assertion", str(e)[:500]
        except Exception as e:  # noqa: BLE001 - the test raising on a wrong answer (TypeError, ...)
            if candidate.fault is None:
                return f"failed:{type(e).__name__}", str(e)[:500]
        if candidate.fault is not None and candidate.fault.startswith("harness:"):
            return "sandbox_error", candidate.fault
        if candidate.fault is not None:
            return None, ""
        return "passed", ""

    def check_functions(self, pairs: list[tuple[dict, str]], progress: bool = False) -> list[dict]:
        """check_function over a worker pool; results in input order."""
        return self._map(self.check_function, pairs, progress, "samples")

    def _map(self, fn, arg_tuples: list, progress: bool, unit: str) -> list[dict]:
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(fn, *args) for args in arg_tuples]
            if progress:
                from tqdm import tqdm

                for f in tqdm(futures, unit=unit, desc="sandbox"):
                    f.result()
            return [f.result() for f in futures]


class _Candidate:
    """Stands in for the entry point inside check(): ships arguments as literals, returns a literal."""

    def __init__(self, sandbox: Sandbox, run: _Run):
        self._sb, self._run, self.fault = sandbox, run, None

    def __call__(self, *args, **kwargs):
        run = self._run
        if self.fault is not None:
            raise _Fault(self.fault)
        try:
            data = launcher.encode((list(args), kwargs))
        except (TypeError, ValueError) as e:
            self.fault = f"harness: the test passes a value that cannot cross the sandbox boundary: {e}"
            raise _Fault(self.fault) from None
        view = memoryview(data)
        while view:
            if not select.select([], [run.req], [], max(0.0, run.deadline - time.monotonic()))[1]:
                run.timed_out = True
                self.fault = "timeout"
                raise _Fault(self.fault)
            try:
                view = view[os.write(run.req, view) :]
            except (BrokenPipeError, BlockingIOError) as e:
                if isinstance(e, BlockingIOError):
                    continue
                self.fault = "died"
                raise _Fault(self.fault) from None
        n = len(run.messages)
        run.allowed = n + 1
        self._sb._pump(run, lambda: len(run.messages) > n or not run.res_open or run.violation)
        if run.timed_out or run.violation or len(run.messages) <= n:
            self.fault = "timeout" if run.timed_out else (run.violation or "died")
            raise _Fault(self.fault)
        reply = run.messages[n]
        if type(reply) is tuple and len(reply) == 2 and reply[0] == "ok":
            return reply[1]
        if _is_exc(reply):
            raise CandidateError(_reason(reply[1])[0], reply[2] if type(reply[2]) is str else "")
        run.violation = self.fault = "malformed reply"
        raise _Fault(self.fault)
