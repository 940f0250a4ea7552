"""What a new batch shape costs: our train-step times over a set of batches seen for the first time (every
shape new to the process) and over the same batches again (every shape seen), for the study's pad-to-512
batches and for length-bucketed and packed batches of the embedded corpus. LoRA r=8 on c_attn.

    python -m bench.shapes --device cuda                    # as the model runs: attention without cuDNN
    python -m bench.shapes --device cuda --cudnn-attention  # torch picks (cuDNN first on Hopper)

Run the two in separate processes, as here: what a shape leaves behind (cuDNN plans, cuBLAS heuristics,
the allocator's blocks) lasts as long as the process. This is the measurement behind model/kernels.py's
gpu_attention_without_cudnn (docs/benchmarks.md, "Attention kernels on a GPU").
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from bench import common as C
from bench.train import Spec, Subset, auto_dtype, build_ours, study_batch
from data.loader import Batches
from data.prepare import DataConfig, prepare
from model.gpt2 import config_for


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.shapes", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    C.model_option(p)
    p.add_argument(
        "--examples", type=C.positive_int, default=64, help="random training examples of the corpus"
    )
    p.add_argument("--batch-size", type=C.positive_int, default=4)
    p.add_argument("--cache-dir", default=".cache/data", help="token cache folder (train.py's)")
    p.add_argument("--cudnn-attention", action="store_true", help="leave the attention backend to torch")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.open_device(args.device)
    if device is None:
        return 2
    chosen = torch.backends.cuda.cudnn_sdp_enabled()  # process-wide: restored after the run
    try:
        print(measure(args, device))
    finally:
        torch.backends.cuda.enable_cudnn_sdp(chosen)
    print(f"\n{C.machine_line(device)}")
    return 0


def measure(args, device) -> str:
    L = min(512, config_for(args.model).block_size)
    ds = prepare(DataConfig(data="pysrc", max_len=L, cache_dir=args.cache_dir), splits=("train",))["train"]
    pick = np.random.default_rng(0).choice(len(ds), size=min(args.examples, len(ds)), replace=False)
    sub, B = Subset(ds, pick), args.batch_size
    dtype = auto_dtype(device)
    _, step = build_ours(Spec("ours", "c_attn", dtype, str(device), model=args.model), device)
    if args.cudnn_attention:  # undo the model's choice (use_fast_kernels turns cuDNN off): torch picks
        torch.backends.cuda.enable_cudnn_sdp(True)
    pipelines = {
        f"pad to {L}": [
            study_batch(sub, list(range(s, min(s + B, len(sub)))), L) for s in range(0, len(sub), B)
        ],
        "length-bucketed": list(Batches(sub, B, L, pack=False, shuffle=True, seed=0)),
        "packed (block-causal)": list(Batches(sub, B, L, pack=True, shuffle=True, seed=0)),
    }
    keys = ("idx", "targets", "pos", "mask", "n_tokens", "n_targets")

    def seconds(batch: dict) -> float:
        on = {k: batch[k].to(device) if hasattr(batch[k], "to") else batch[k] for k in keys}
        return C.timed(lambda: step(on), device)

    for b in pipelines[f"pad to {L}"][:2]:  # warm-up: CUDA context, kernels, the optimizer state
        seconds(b)
    rows = []
    for name, batches in pipelines.items():
        first = sum(seconds(b) for b in batches)
        again = sum(seconds(b) for b in batches)
        shapes = len({tuple(b["idx"].shape) for b in batches})
        rows.append([name, len(batches), shapes, f"{first:.2f}", f"{again:.2f}",
                     f"{1e3 * (first - again) / len(batches):,.0f}"])  # fmt: skip
        print(f"  {name}: first pass {first:.2f} s, again {again:.2f} s", flush=True)
    header = ["batches", "n", "distinct shapes", "first pass s", "again s", "extra ms per batch, first pass"]
    attention = "torch's own backend order" if args.cudnn_attention else "without cuDNN (model/kernels.py)"
    return (
        f"\nOur train step over {len(sub)} corpus examples, LoRA r=8 on c_attn, {dtype}, batch {B}; "
        f"attention: {attention}:\n\n" + C.markdown_table(header, rows)
    )


if __name__ == "__main__":
    sys.exit(main())
