"""FSDP2 on a GPU (bench/gpu.sh's fsdp step): one sharded rank on the GPU against one process on the CPU, and
the per-rank bytes the profiler predicts for gpt2-xl full fine-tuning.

    python -m bench.fsdp                      # on a GPU machine; bash bench/gpu.sh runs it
    python -m bench.fsdp --device cpu         # the same commands on the CPU (gloo), for a check of the script

1. `torchrun --nproc_per_node 1 train.py --shard fsdp` on the device in fp32 and `python train.py` on the
   CPU, the same tiny random model, data and global batch: their losses step by step and the largest
   difference (GPU and CPU kernels round differently: ~1e-5, not bit for bit).
2. The same sharded run in bf16 (parameters gathered in bf16, gradients reduced in fp32): it runs, and its
   losses stand beside the fp32 ones.
3. profiler.fsdp for gpt2-xl full fine-tuning (bf16, B=4, T=512) over 2, 4 and 8 ranks.
Writes OUT/fsdp.json with the three.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cli import opt, parse_config, run_main
from profiler.fsdp import estimate_sharded, per_rank_peak, unsharded
from profiler.memory import fmt_bytes
from training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FSDPBenchConfig:
    device: str = opt(
        "cuda", "where the sharded rank runs: cuda (the check) or cpu (a dry check of the script)"
    )
    steps: int = opt(10, "optimizer steps of each run")
    cache_dir: str = opt(".cache/data", "token cache (train.py's --cache-dir)")
    out_dir: str = opt("bench-out/fsdp", "where fsdp.json and the run folders go")


def run_args(c: FSDPBenchConfig, device: str, dtype: str, out: Path) -> list[str]:
    """train.py's flags for one run: a tiny random GPT-2, full fine-tuning, 8 x 2 rows per step."""
    return ["--model", "tiny", "--init", "random", "--lora-rank", "0", "--data", "pysrc", "--max-len", "128",
            "--batch-size", "8", "--grad-accum", "2", "--max-steps", str(c.steps), "--log-every", "1",
            "--eval-every", "0", "--save-every", "0", "--peak-tflops", "1", "--device", device,
            "--dtype", dtype, "--cache-dir", c.cache_dir, "--out-dir", str(out), "--overwrite"]  # fmt: skip


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [r["loss"] for r in rows if "loss" in r]


def train(argv: list[str], sharded: bool) -> None:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    cmd = [*(launch if sharded else [sys.executable]), str(ROOT / "train.py"), *argv]
    cmd += ["--shard", "fsdp"] if sharded else []
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def main(argv: list[str] | None = None) -> int:
    c = parse_config(FSDPBenchConfig, argv, description=__doc__.split("\n\n")[0], prog="python -m bench.fsdp")
    out = Path(c.out_dir)
    runs = {"cpu-fp32": ("cpu", "fp32", False), f"fsdp-{c.device}-fp32": (c.device, "fp32", True),
            f"fsdp-{c.device}-bf16": (c.device, "bf16", True)}  # fmt: skip
    curves = {}
    for name, (device, dtype, sharded) in runs.items():
        train(run_args(c, device, dtype, out / name), sharded)
        curves[name] = losses(out / name)
    ref, fp32, bf16 = curves.values()
    diff = max(abs(a - b) for a, b in zip(ref, fp32))
    print(f"{'step':>4} {'cpu fp32':>10} {'fsdp fp32':>10} {'fsdp bf16':>10}")
    for i, row in enumerate(zip(ref, fp32, bf16)):
        print(f"{i + 1:>4} " + " ".join(f"{x:>10.6f}" for x in row))
    print(f"one sharded rank on {c.device} vs one CPU process: max |loss difference| {diff:.2e}")

    cfg = TrainConfig(model="gpt2-xl", init="random", lora_rank=0, batch_size=4, max_len=512, dtype="bf16")
    base = unsharded(cfg)
    xl = {w: estimate_sharded(cfg, w, base) for w in (2, 4, 8)}
    print("gpt2-xl full fine-tuning, bf16, B=4 T=512, predicted per rank:")
    for w, e in xl.items():
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in e["components"].items() if v)
        gathered, peak = fmt_bytes(e["gathered"]["total"]), fmt_bytes(per_rank_peak(e))
        print(f"  {w} ranks: {parts}; gathered {gathered}; peak {peak}")
    report = dict(losses=curves, max_abs_diff_fp32=diff, gpt2_xl=xl)
    (out / "fsdp.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
