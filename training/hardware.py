"""What the hardware can do and what the run uses of it: the peak MFU is read against, the model FLOPs per
token, and peak memory (the CUDA allocator's, or the process's resident set on a CPU)."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from model.nf4 import nf4_numel

GPU_PEAK_TFLOPS = {  # name: (dense bf16/fp16 tensor-core peak, plain fp32 peak), from the vendors' sheets
    "H100": (989.0, 67.0),
    "H200": (989.0, 67.0),
    "A100": (312.0, 19.5),
    "L4": (121.0, 30.3),
    "A10": (125.0, 31.2),
    "V100": (125.0, 15.7),
    "T4": (65.0, 8.1),
    "4090": (165.0, 82.6),
    "3090": (71.0, 35.6),
}


def peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The TFLOP/s MFU is read against: a GPU's table peak for the dtype, or a timed matmul on a CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (half, fp32) in GPU_PEAK_TFLOPS.items():
            if key in name:
                if dtype != torch.float32:
                    return half
                # fp32 matmuls reach the tensor cores (TF32, half the bf16 rate) only where torch allows
                # TF32 (off by default) on Ampere or newer; otherwise they run on the plain fp32 units.
                ampere = torch.cuda.get_device_capability(device)[0] >= 8
                return half / 2 if cuda_tf32() and ampere else fp32
        return 100.0
    return cached_cpu_peak_tflops(dtype)


def cached_cpu_peak_tflops(dtype: torch.dtype) -> float:
    """This CPU's peak for dtype: the best of this run's timing and every earlier one on this machine (CPU
    model, dtype, threads), kept in $XDG_CACHE_HOME/gpt2-code-ft/cpu-peak.json (~/.cache by default). A run
    started while the machine is busy times low; with the best ever seen, its MFU is still read against the
    machine's real peak. Delete the file to start over."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "gpt2-code-ft" / "cpu-peak.json"
    key = f"{cpu_name()} | {dtype} | {torch.get_num_threads()} threads"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    now = round(measure_cpu_peak_tflops(dtype), 4)
    if now > known.get(key, 0.0):
        known[key] = now
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, path)
        except OSError:  # a read-only home: this run's timing is used, nothing else changes
            return now
    return known[key]


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# (m, k, n) products timed for a CPU's peak: squares, and the shapes of GPT-2 124M's MLP on a 4 x 256 batch
PEAK_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (1024, 768, 3072), (1024, 3072, 768))


def measure_cpu_peak_tflops(dtype: torch.dtype, reps: int = 5) -> float:
    """The best dense matmul throughput this CPU shows, over PEAK_SHAPES and `reps` timings of each: the
    denominator of MFU on a CPU. One timing of one shape can read low on a busy machine, and a peak read low
    would put MFU above 100%."""
    g = torch.Generator().manual_seed(0)  # leaves the global RNG (dropout, data) untouched
    best = 0.0
    for m, k, n in PEAK_SHAPES:
        a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
        a @ b  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
    return best / 1e12


def cuda_tf32() -> bool:
    """Whether fp32 CUDA matmuls may use TF32, however it was switched on: set_float32_matmul_precision,
    the fp32_precision flags, or the older allow_tf32 (which raises if read after the newer API was used)."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)  # torch >= 2.9
    if precision is None:
        return bool(matmul.allow_tf32)
    if precision == "none":  # inherits the global setting
        precision = getattr(torch.backends, "fp32_precision", "ieee")
    return precision == "tf32"


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 x trainable + 4 x frozen parameters (frozen weights still pass
    gradients to their inputs, but need no weight gradient), plus attention scores 12 * L * T * C."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad) + nf4_numel(model)  # QLoRA
    c = model.config
    return 6 * trainable + 4 * frozen + 12 * c.n_layer * seq_len * c.n_embd


def memory_bytes(device: torch.device) -> int:
    """Peak memory so far: CUDA allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set size: Linux's VmHWM. Not getrusage's ru_maxrss, which a process
    inherits from its parent across fork + exec: a worker started by a 1.5 GB parent reads 1.5 GB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: the best there is
