"""What an adapter folder holds: `python -m lora.inspect ADAPTER_DIR`.

Rank, alpha, scaling, targets, parameter count, and per adapted module the Frobenius norm of its update
dW = s * B @ A (for c_attn also per q/k/v slice): which layers training moved, and how far. Reads adapters
written by lora.peft_io.save_adapter and by PEFT; needs no base model.
"""

from __future__ import annotations

import argparse
import sys

from cli import run_main
from lora.config import TARGETS
from lora.peft_io import peft_name, read_adapter


def describe(folder: str) -> str:
    cfg, modules = read_adapter(folder)
    r, alpha, rs = cfg["r"], cfg["lora_alpha"], bool(cfg.get("use_rslora"))
    targets, trainable, stored = set(), 0, 0
    rows = [f"{'module':<32} {'rank':>4}  {'dW shape':>11}  {'|dW|_F':>10}  q / k / v"]
    for m in modules:
        A, B, on = m["A"], m["B"], m["slices"]  # A (R, in), B (out, R)
        targets |= {"qkv"[i] for i, s in enumerate(on) if s} if on else {peft_name(m["name"])}
        stored += A.numel() + B.numel()
        trainable += A.numel() + (B.numel() // 3 if on else B.numel())  # a slice's B_i fills 1/3 of the rows
        dW = m["scaling"] * (B @ A)  # (out, in)
        per_slice = " / ".join(f"{t.norm():.3g}" for t in dW.chunk(3)) if m["name"].endswith("c_attn") else ""
        shape, rank = f"{dW.shape[0]}x{dW.shape[1]}", f"{sum(on)}x{m['rank'] // sum(on)}" if on else m["rank"]
        rows.append(f"{m['name']:<32} {rank:>4}  {shape:>11}  {dW.norm():>10.4g}  {per_slice}".rstrip())
    slices = any(m["slices"] for m in modules)
    lines = [
        f"adapter     {folder}  (base model: {cfg.get('base_model_name_or_path')})",
        f"rank {r}, alpha {alpha}, scaling {alpha / (r**0.5 if rs else r):g} "
        f"(alpha / {'sqrt(r)' if rs else 'r'}), dropout {cfg.get('lora_dropout', 0.0)}",
        "targets     " + ", ".join(sorted(targets, key=lambda t: TARGETS.index(t) if t in TARGETS else 99)),
        f"parameters  {trainable:,}"
        + (f" (stored for PEFT as block-structured c_attn adapters: {stored:,})" if slices else ""),
        "",
        *rows,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("adapter_dir", help="folder with adapter_config.json and adapter_model.safetensors")
    args = parser.parse_args(argv)
    print(describe(args.adapter_dir))
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
