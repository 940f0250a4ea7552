"""What both benchmarks share: the machine line, round-robin timing, medians, peak memory, markdown tables.

Timings on a shared machine are noisy, so every benchmark interleaves the contenders (ours, then HF, then
ours ...) in one run, drops warm-up rounds, and reports medians and the ratio between the two.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: an integer >= 1, else argparse's one-line usage error."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return n


def model_option(parser: argparse.ArgumentParser) -> None:
    """--model, one of model.gpt2's presets (the benchmarks use their shapes, with random weights)."""
    from model.gpt2 import PRESETS

    parser.add_argument("--model", default="gpt2", choices=list(PRESETS), help="model preset (shapes only)")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device) -> str:
    """One line for under a table: where and when the numbers were measured, with which software."""
    import peft
    import transformers

    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    )
    return (
        f"{datetime.date.today().isoformat()} · {where} · torch {torch.__version__} · transformers "
        f"{transformers.__version__} · peft {peft.__version__} · Python {platform.python_version()}"
    )


def open_device(name: str, threads: int = 0) -> torch.device | None:
    """The device to benchmark on (None, after one error line, when CUDA is asked for but absent)."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU; run on a GPU machine or use --device cpu")
        return None
    if threads:
        torch.set_num_threads(threads)
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes, synchronized on a GPU so queued kernels are counted."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleave(fns: dict[str, Callable[[], float]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Run each timing function once per round, in turn, and keep the seconds of the rounds after warmup.
    Interleaving spreads a noisy neighbour's load evenly over the contenders."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + rounds):
        for name, fn in fns.items():
            dt = fn()
            if i >= warmup:
                times[name].append(dt)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def rss_bytes() -> int:
    """Resident set size now (Linux), the baseline a peak is measured from."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"
