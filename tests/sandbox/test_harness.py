"""The sandbox's verdicts, wire format, backends and CLI. The attacks live in test_sandbox_attacks.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from sandbox import Sandbox, SandboxUnavailable
from sandbox.__main__ import load_problems
from sandbox.launcher import decode, encode

ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="namespaces and the uid drop need root (CI runs as root)"
)
ALL_LAYERS = [
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


@pytest.fixture(scope="module")
def sb():
    if os.geteuid() != 0:
        pytest.skip("the direct backend needs root (CI runs as root)")
    with Sandbox(timeout=5.0, workers=2) as box:
        yield box


def test_wire_format_round_trips_builtin_values():
    value = [1, -(2**200), 1.5, float("inf"), "é\n", b"\x00", (1,), {"a": {1, 2}}, set(), None, True, 2j]
    assert decode(encode(value)[4:]) == value


@pytest.mark.parametrize("bad", [float("nan"), object(), type("I", (int,), {})(3), [frozenset()]])
def test_wire_format_refuses_anything_but_exact_builtin_types(bad):
    with pytest.raises((TypeError, ValueError)):
        encode(bad)


def test_decode_accepts_literals_only():
    with pytest.raises(ValueError):
        decode(b"__import__('os').system('id')")


COLLIDING = [["I", hex(i * (2**61 - 1))] for i in range(1, 25000)]  # ints that all hash to 0


@pytest.mark.parametrize(
    "hostile",
    [
        ["S", *COLLIDING],  # a set that is quadratic to build
        ["D", *(x for pair in zip(COLLIDING, range(len(COLLIDING))) for x in pair)],
        ["L", *COLLIDING],  # a list a test could pass to set()
        ["L", *(["S"] for _ in range(170000))],  # 1 MiB of empty sets: more values than allowed
        "[" * 300000,  # nesting deeper than any parser's stack
    ],
    ids=["colliding_set", "colliding_dict", "colliding_list", "empty_sets", "deep_nesting"],
)
def test_decode_refuses_hostile_messages_in_bounded_time(hostile):
    body = (hostile if type(hostile) is str else json.dumps(hostile, separators=(",", ":"))).encode()
    assert len(body) <= 1 << 20
    t0 = time.perf_counter()
    with pytest.raises((ValueError, RecursionError)):
        decode(body)
    assert time.perf_counter() - t0 < 1.0


@ROOT_ONLY
def test_probe_reports_every_layer_as_root(sb):
    assert sb.backend == "direct"
    assert sb.layers == ALL_LAYERS


def test_script_that_returns_passes_with_its_output(sb):
    r = sb.run_script("print('hello')\nimport math\nassert math.sqrt(4) == 2")
    assert (r["status"], r["stdout"], r["layers"]) == ("passed", "hello\n", sb.layers)


@pytest.mark.parametrize(
    "code, status",
    [
        ("raise ValueError('no')", "failed:ValueError"),
        ("import sys\nsys.exit(0)", "passed"),  # as plain python3: exit status 0 after normal shutdown
        ("import sys\nsys.exit(3)", "failed:exit"),
        ("import os\nos._exit(0)", "failed:exit"),
        ("def f(:\n", "failed:SyntaxError"),
        ("x = bytearray(1 << 40)", "memory"),
        ("import os\nos.fork()", "blocked"),
    ],
)
def test_script_verdicts(sb, code, status):
    assert sb.run_script(code)["status"] == status


def test_the_result_carries_the_exit_status_pid_1_saw(sb):
    assert sb.run_script("import sys\nsys.exit(3)")["exit_code"] == 3
    assert sb.run_script("print(1)")["exit_code"] == 0
    assert sb.run_script("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")["exit_code"] is None


def test_timeout_is_enforced_on_the_wall_clock(sb):
    fast = Sandbox(timeout=0.5, workers=1)
    r = fast.run_script("import time\ntime.sleep(30)")
    fast.close()
    assert r["status"] == "timeout" and r["duration"] < 3


def test_run_scripts_keeps_input_order(sb):
    results = sb.run_scripts([f"print({i})" for i in range(6)])
    assert [r["stdout"] for r in results] == [f"{i}\n" for i in range(6)]


def test_check_function_calls_the_candidate_through_the_stub(sb):
    problem = {
        "prompt": "def add(a, b):\n",
        "test": "def check(c):\n    assert c(2, b=3) == 5\n",
        "entry_point": "add",
    }
    assert sb.check_function(problem, "    return a + b\n")["status"] == "passed"
    assert sb.check_function(problem, "    return a - b\n")["status"] == "failed:assertion"
    assert sb.check_function(problem, "    raise KeyError(1)\n")["status"] == "failed:KeyError"


def test_humaneval_canonical_all_pass_and_return_none_all_fail(sb):
    """The harness checks itself: 164/164 reference solutions pass, 0/164 `return None` controls do."""
    problems = list(load_problems().values())
    assert len(problems) == 164
    pairs = [(p, p["canonical_solution"]) for p in problems] + [(p, "    return None\n") for p in problems]
    results = sb.check_functions(pairs)
    canonical, control = results[:164], results[164:]
    assert [r["task_id"] for r in canonical if r["status"] != "passed"] == []
    assert [r["task_id"] for r in control if r["status"] == "passed"] == []
    assert all(r["layers"] == sb.layers for r in results)


def test_no_isolation_is_refused_without_the_unsafe_flag():
    with pytest.raises(SandboxUnavailable, match="unsafe"):
        Sandbox(backend="none")


@ROOT_ONLY
def test_unsafe_backend_still_drops_root():
    box = Sandbox(backend="none", unsafe_no_sandbox=True, workers=1)
    assert box.layers == ["rlimits", "uid", "no_new_privs", "seccomp"]
    r = box.run_script("import os\nassert os.getuid() != 0")
    assert r["status"] == "passed"


@pytest.mark.skipif(not shutil.which("bwrap"), reason="bubblewrap is not installed (CI installs it with apt)")
def test_bubblewrap_fallback_isolates_too():
    box = Sandbox(backend="bwrap", workers=1, timeout=3.0)
    assert {"netns", "mountns", "pidns", "no_new_privs", "seccomp"} <= set(box.layers)
    r = box.run_script("import os\nprint(sorted(os.listdir('/')))")
    assert r["status"] == "passed" and "work" not in r["stdout"] and "root" not in r["stdout"]
    assert box.run_script("import socket\nsocket.socket()")["status"] == "blocked"


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


@ROOT_ONLY
def test_cli_run_prints_the_result_as_json(tmp_path):
    (tmp_path / "prog.py").write_text("print(6 * 7)")
    out = _cli("run", "prog.py", "--json", cwd=tmp_path)
    result = json.loads(out.stdout)
    assert (out.returncode, result["status"], result["stdout"]) == (0, "passed", "42\n")


@ROOT_ONLY
def test_cli_humaneval_scores_a_samples_file(tmp_path):
    problems = load_problems()
    rows = [
        {"task_id": "HumanEval/0", "completion": problems["HumanEval/0"]["canonical_solution"]},
        {"task_id": "HumanEval/2", "completion": "    return None\n"},
    ]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _cli("humaneval", "--samples", "s.jsonl", "--workers", "2", cwd=tmp_path)
    assert out.returncode == 0 and "passed 1/2" in out.stdout
    written = [json.loads(line) for line in (tmp_path / "s_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in written] == [True, False]


def test_cli_usage_errors_exit_2(tmp_path):
    out = _cli("humaneval", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: pass exactly one of")
