"""training/hardware.py: the peak MFU is read against, and the process's own peak memory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.hardware import cuda_tf32, peak_tflops


@pytest.mark.parametrize(
    "name, capability, tf32, bf16, fp32",
    [
        ("NVIDIA H100 80GB HBM3", (9, 0), False, 989.0, 67.0),  # fp32 without TF32: the plain fp32 units
        ("NVIDIA H100 80GB HBM3", (9, 0), True, 989.0, 494.5),  # TF32 allowed: half the bf16 tensor rate
        ("Tesla V100-SXM2-16GB", (7, 0), True, 125.0, 15.7),  # no TF32 before Ampere, whatever the flag
    ],
)
def test_gpu_peak_for_mfu_follows_the_dtype_and_tf32(monkeypatch, name, capability, tf32, bf16, fp32):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # what users call to allow TF32
    try:
        assert cuda_tf32() is tf32
        gpu = torch.device("cuda")
        assert peak_tflops(gpu, torch.bfloat16) == bf16
        assert peak_tflops(gpu, torch.float32) == fp32
    finally:
        torch.set_float32_matmul_precision(before)


def test_peak_rss_is_the_process_own_not_inherited_from_its_parent():
    """peak_rss_bytes (train.py's CPU memory, the profiler's and the benchmarks' peaks) reads this process's
    own high-water mark: getrusage's ru_maxrss would hand a child its parent's peak, so a profiler
    subprocess started by a big process would report the parent's memory."""
    big = bytearray(1536 * 2**20)
    big[::4096] = b"\x01" * len(big[::4096])  # touch every page: 1.5 GiB resident in this process
    code = (
        "import resource; from training.hardware import peak_rss_bytes; "
        "print(peak_rss_bytes(), resource.getrusage(0).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    del big
    assert done.returncode == 0, done.stderr[-2000:]
    own, inherited_kib = (int(v) for v in done.stdout.split())
    assert inherited_kib * 1024 >= 1536 * 2**20  # what ru_maxrss says: the parent's peak (the trap)
    assert own < 1024 * 2**20  # the child imported torch and training, well under the parent's 1.5 GiB


def test_the_cpu_peak_is_the_best_timing_seen_on_this_machine(tmp_path, monkeypatch):
    """A run timed on a busy machine (low) reads MFU against the best peak an earlier run measured; a
    higher timing raises the cached peak; each dtype has its own."""
    from training import hardware

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    timings = iter([0.5, 0.2, 0.8, 0.1])
    monkeypatch.setattr(hardware, "measure_cpu_peak_tflops", lambda dtype: next(timings))
    cpu = torch.device("cpu")
    assert [peak_tflops(cpu, torch.float32) for _ in range(3)] == [0.5, 0.5, 0.8]
    assert peak_tflops(cpu, torch.bfloat16) == 0.1
    cache = json.loads((tmp_path / "gpt2-code-ft" / "cpu-peak.json").read_text())
    assert sorted(cache.values()) == [0.1, 0.8]
