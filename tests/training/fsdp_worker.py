"""What tests/training/test_fsdp.py launches once under torchrun (2 CPU ranks, gloo): every sharded case in
one launch, since each launch pays for a torch import per rank. Writes OUT/results.pt (rank 0):

    cases[name]   {fsdp: (losses, grad norms), single: (...), fsdp_weights, single_weights}: full fine-tuning
                  and LoRA, with and without --grad-checkpoint, 3 steps of 4 micro-batches of different target
                  counts (rank r takes micro-batches r, r + 2: the same global batch as the single process)
    bytes[name]   per rank, measured by profiler.fsdp.measure_rank on a first step: tiny full (fp32), tiny
                  LoRA (bf16 gathers: bf16 frozen slices), GPT-2 124M full (built on the meta device, then
                  only the slices allocated)
and OUT/<case>/final (+ merged/, base/ for LoRA) as train.py writes them, from the gathered weights.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/training/fsdp_worker.py OUT
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from profiler.fsdp import measure_rank  # noqa: E402
from profiler.memory import synthetic_batch  # noqa: E402
from training import checkpoint, fsdp  # noqa: E402
from training.build import build_model, meta_model  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.optim import get_lr, make_optimizer, set_lr  # noqa: E402
from training.step import Batch, TrainStep  # noqa: E402

CPU = torch.device("cpu")
TINY = TrainConfig(model="tiny", init="random", max_len=24, dtype="fp32", grad_clip=0.5)
CASES = {
    "full": replace(TINY, lora_rank=0),
    "full-ckpt": replace(TINY, lora_rank=0, grad_checkpoint=True),
    "lora": replace(TINY, lora_rank=4, lora_targets="all"),
    "lora-ckpt": replace(TINY, lora_rank=4, lora_targets="all", grad_checkpoint=True),
}
STEPS, MICRO = 3, 4  # optimizer steps; micro-batches per step over all ranks


def micro_batches(step: int) -> list[Batch]:
    """The global batch of a step: 4 micro-batches of 2 rows, each with its own share of targets."""
    rows = [synthetic_batch(2, 24, 50257, 0.3 + 0.15 * i, seed=10 * step + i) for i in range(MICRO)]
    return [Batch.from_dict(b) for b in rows]


def train(cfg: TrainConfig, sharded: bool, save_base_to: Path | None = None):
    """STEPS steps as train.py takes them; returns the model, its (loss, grad norm) per step."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    model = build_model(cfg, CPU, torch.float32, log=lambda *a, **k: None, save_base_to=save_base_to)
    if sharded:
        fsdp.shard(model, CPU, torch.float32)
    lr = cfg.lr or (5e-5 if cfg.lora_rank == 0 else 2e-4)
    opt = make_optimizer(model, lr, cfg.weight_decay)
    step = TrainStep(model, opt, CPU, grad_clip=cfg.grad_clip, ddp=sharded)
    out = []
    for s in range(STEPS):
        set_lr(opt, get_lr(s, lr, 1, STEPS, 0.1))
        out.append(step(micro_batches(s)[rank::world]))
    return model, opt, out


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def byte_case(cfg: TrainConfig, dtype: torch.dtype, meta: bool) -> dict:
    """One sharded step of cfg measured on this rank. meta: build on the meta device, shard, then allocate
    the slices only (what a 124M model needs here: no rank ever holds it whole)."""
    torch.manual_seed(0)
    if meta:
        model = meta_model(cfg, dtype)
        fsdp.shard(model, CPU, dtype)
        model.to_empty(device=CPU)
        with torch.no_grad():
            for p in model.parameters():
                p.to_local().normal_(0, 0.02)
    else:
        model = fsdp.shard(build_model(cfg, CPU, dtype, log=lambda *a, **k: None), CPU, dtype)
    opt = make_optimizer(model, 1e-4, 0.01)
    amp = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else None
    step = TrainStep(model, opt, CPU, amp=amp, grad_clip=1.0, ddp=True)
    T = min(cfg.max_len, 16)
    batch = [Batch.from_dict(synthetic_batch(1, T, 50257, 0.5, seed=dist.get_rank()))]
    return measure_rank(model, opt, lambda: step(batch))


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {"cases": {}, "bytes": {}}
    for name, cfg in CASES.items():
        save = name.endswith("-ckpt")  # final/ (and merged/) as train.py writes them, from these two
        base = out / name if save and cfg.lora_rank and rank == 0 else None
        model, _, fsdp_curve = train(cfg, sharded=True, save_base_to=base)
        plain = fsdp.gather_model(model, cfg)  # every rank takes part; rank 0 gets the whole model
        if rank == 0:
            if save:
                checkpoint.save_final(out / name, plain, cfg, cfg.lora())
            single, _, single_curve = train(cfg, sharded=False)
            results["cases"][name] = dict(fsdp=fsdp_curve, single=single_curve, fsdp_weights=weights(plain),
                                          single_weights=weights(single))  # fmt: skip
        dist.barrier()
    byte_cases = {
        "tiny-full": (CASES["full"], torch.float32, False),
        "tiny-lora-bf16": (replace(CASES["lora"], dtype="bf16"), torch.bfloat16, False),
        "gpt2-full": (replace(TINY, model="gpt2", lora_rank=0, max_len=16), torch.float32, True),
    }
    for name, (cfg, dtype, meta) in byte_cases.items():
        measured = [None] * dist.get_world_size()
        dist.all_gather_object(measured, byte_case(cfg, dtype, meta))
        results["bytes"][name] = measured
    if rank == 0:
        torch.save(results, out / "results.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main(Path(sys.argv[1]))
