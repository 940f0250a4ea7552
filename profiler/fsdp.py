"""Per-rank memory of sharded training (train.py --shard fsdp, training/fsdp.py): predicted and measured.

    python -m profiler.fsdp --model gpt2-xl --lora-rank 0 --batch-size 4 --max-len 512 --dtype bf16
    python train.py --dry-run --shard fsdp --world 4 --model gpt2-xl --lora-rank 0   # the same, in the plan

FSDP2 slices each parameter along dim 0 (d0 rows) over N ranks: rank r holds rows [r*c, min((r+1)*c, d0))
with c = ceil(d0 / N), inside a buffer of c rows on every rank (padded, so that all-gathers are equal-sized):

    params       sum over parameters of c * numel / d0 * element size: padded, the same on every rank
    grads        the same over the trainable parameters, in their (fp32) dtype: each group's gradients are
                 slices of one padded reduce-scatter output
    optimizer    AdamW's exp_avg and exp_avg_sq are zeros_like the rank's unpadded rows (rank 0 holds the
                 most), plus a 4-byte step per parameter
    activations  the single-process estimate for the rank's micro-batch (profiler/memory.py), less autocast's
    logits       weight copies where the gathered weights are bf16 already
    gathered     the gathers' transient: the root group (wte = lm_head, wpe, ln_f) stays gathered for the
                 whole step; two blocks (the one running and the next, prefetched); in backward one block's
                 full-size gradients in the compute dtype and its fp32 reduce-scatter input, or at the end
                 the root's, whichever is larger. An upper bound from FSDP2's schedule, not measured
Measured (measure_rank): parameters, gradients (read just before the optimizer step) and AdamW state, each
tensor's storage counted once, so padding counts as it is allocated. Shapes: N ranks, c rows per slice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from cli import opt, parse_config, run_main
from profiler.memory import MemoryConfig, check, estimate, fmt_bytes, train_config
from training.build import meta_model

GPU_GIB = (16, 24, 40, 80)  # common GPU memory sizes the dry run answers for


# ------------------------------------------------------------------------------------ slices
def slice_rows(d0: int, world: int, rank: int) -> tuple[int, int]:
    """(rows rank holds, rows its padded buffer has): torch.chunk's split of d0 rows into `world` parts."""
    c = math.ceil(d0 / world)
    return max(0, min(c, d0 - rank * c)), c


def sharded_bytes(model, world: int, rank: int = 0) -> dict:
    """Predicted bytes on `rank` of a model (on the meta device will do) sharded over `world` ranks."""
    out = dict(params_frozen=0, params_trainable=0, grads=0, optimizer=0, padding=0)
    for p in model.parameters():  # the tied wte / lm_head once
        held, padded = slice_rows(p.shape[0], world, rank)
        row = p.numel() // p.shape[0] * p.element_size()
        out["params_trainable" if p.requires_grad else "params_frozen"] += padded * row
        out["padding"] += (padded - held) * row
        if p.requires_grad:
            out["grads"] += padded * row
            out["optimizer"] += 2 * held * row + 4  # exp_avg, exp_avg_sq; the step
    return out


def gathered_bytes(model, compute: torch.dtype | None) -> dict:
    """The transient of gathering (see the module docstring): compute None = each parameter's own dtype."""

    def size(params, grads=False):
        params = [p for p in params if p.requires_grad or not grads]
        each = [p.numel() * (torch.finfo(compute).bits // 8 if compute else p.element_size()) for p in params]
        return sum(each) + (4 * sum(p.numel() for p in params) if grads else 0)  # + the fp32 reduce input

    blocks = list(model.transformer.h)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    root = [p for p in model.parameters() if id(p) not in in_blocks]
    block = max(size(b.parameters()) for b in blocks)
    block_grads = max(size(b.parameters(), True) for b in blocks)
    root_params, root_grads = size(root), size(root, True)
    return dict(root=root_params, block=block, total=root_params + max(2 * block + block_grads, root_grads))


# ------------------------------------------------------------------------------------ the estimate
def unsharded(cfg) -> tuple[dict, torch.nn.Module]:
    """What every world's estimate starts from: the single-process estimate and the model on meta."""
    single = estimate(cfg)
    return single, meta_model(cfg, getattr(torch, single["config"]["dtype"]))


def estimate_sharded(cfg, world: int, base: tuple[dict, torch.nn.Module] | None = None) -> dict:
    """Per-rank bytes of cfg's training step sharded over `world` ranks: rank 0, which holds the most (the
    padding is the last rank's). base: unsharded(cfg), when the caller has it."""
    single, model = base or unsharded(cfg)
    dtype = getattr(torch, single["config"]["dtype"])
    compute = torch.bfloat16 if dtype == torch.bfloat16 else None  # training/fsdp.py's MixedPrecisionPolicy
    shard = sharded_bytes(model, world)
    copies = single["details"]["weight_copies"] if compute else 0  # the gathered weights are bf16 already
    comp = dict(
        params_frozen=shard["params_frozen"],
        params_trainable=shard["params_trainable"],
        grads=shard["grads"],
        optimizer=shard["optimizer"],
        activations=single["components"]["activations"] - copies,
        logits=single["components"]["logits"],
    )
    gathered = gathered_bytes(model, compute)
    d = single["details"]
    total = sum(comp.values())
    return dict(
        world=world,
        components=comp,
        padding=sharded_bytes(model, world, world - 1)["padding"],
        gathered=gathered,
        total=total,
        peak_upper_bound=total + gathered["total"] + d["loss_transient"] + d["checkpoint_recompute"],
        load_peak=sum(p.numel() * p.element_size() for p in model.parameters()),  # built whole, then sharded
        config=single["config"],
        how="predicted: slices per torch.chunk, padded buffers; activations as profiler.memory.estimate",
    )


def per_rank_peak(est: dict) -> int:
    """What one GPU must hold: the step's peak, or the whole model while it is built before sharding."""
    return max(est["peak_upper_bound"], est["load_peak"])


def format_sharded(cfg, world: int, worlds: tuple[int, ...] = (1, 2, 4, 8)) -> str:
    """train.py --dry-run --shard fsdp: the per-rank breakdown over `world` ranks, then the per-rank peak for
    other worlds and the fewest ranks that fit each common GPU size."""
    base = unsharded(cfg)
    est = estimate_sharded(cfg, world, base)
    c, n = est["config"], world
    mixed = "bf16 gathers, fp32 reduce" if c["dtype"] == "bfloat16" else f"{c['dtype']} throughout"
    lines = [f"FSDP2 over {n} rank{'s' * (n > 1)}, per rank (rank 0; {mixed}):"]
    for k, v in est["components"].items():
        lines.append(f"  {k:17s} {fmt_bytes(v):>12s}")
    g = est["gathered"]
    lines += [
        f"  {'total':17s} {fmt_bytes(est['total']):>12s}  (last rank's padding: {fmt_bytes(est['padding'])})",
        f"  gathered while running: {fmt_bytes(g['total'])} (root group {fmt_bytes(g['root'])}, a block "
        f"{fmt_bytes(g['block'])})",
        f"  peak per rank (upper bound): {fmt_bytes(est['peak_upper_bound'])}; the whole model, built on "
        f"each rank before sharding: {fmt_bytes(est['load_peak'])}",
    ]
    others = {w: estimate_sharded(cfg, w, base) for w in worlds if w != n}
    peaks = {w: per_rank_peak(e) for w, e in sorted({n: est, **others}.items())}
    lines.append("  per-rank peak by ranks: " + ", ".join(f"{w}: {fmt_bytes(b)}" for w, b in peaks.items()))
    fits = []
    for gib in GPU_GIB:
        ok = [w for w, b in peaks.items() if b <= gib * 2**30]
        fits.append(f"{gib} GiB: {min(ok)}" if ok else f"{gib} GiB: more than {max(peaks)}")
    lines.append("  fewest ranks per GPU size: " + ", ".join(fits))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ measurement
def storage_bytes(tensors) -> int:
    """Bytes of the storages under `tensors` (a DTensor's local slice), each storage once: padding counts."""
    seen, total = set(), 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        st = local.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def measure_rank(model, optimizer, step) -> dict:
    """Run step() (one training step of the sharded model) and return this rank's bytes: parameters as they
    are held, gradients just before the optimizer step, AdamW's state after it."""
    seen = {}

    def before(*a):
        seen["grads"] = storage_bytes(p.grad for p in model.parameters() if p.grad is not None)

    handle = optimizer.register_step_pre_hook(before)
    try:
        step()
    finally:
        handle.remove()
    params = list(model.parameters())
    state = [t for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t)]
    return dict(
        params_frozen=storage_bytes(p for p in params if not p.requires_grad),
        params_trainable=storage_bytes(p for p in params if p.requires_grad),
        grads=seen["grads"],
        optimizer=storage_bytes(state),
    )


# ------------------------------------------------------------------------------------ CLI
@dataclass
class ShardedMemoryConfig:
    model: str = opt("gpt2-xl", "architecture preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny")
    lora_rank: int = opt(0, "LoRA rank r; 0 = full fine-tune")
    lora_targets: str = opt("q,v", "LoRA targets, as train.py takes them")
    batch_size: int = opt(4, "examples per micro-batch per rank")
    max_len: int | None = opt(None, "tokens per row (T); default min(512, the model's context)")
    pack: bool = opt(False, "packed rows with a block-causal mask")
    train_on_prompt: bool = opt(False, "every position a target (else 0.6 of them)")
    dtype: str = opt("bf16", "fp32 or bf16 (bf16: FSDP2 gathers in bf16, reduces in fp32)",
                     choices=["fp32", "bf16"])  # fmt: skip
    device: str = opt("cuda", "the device planned for (none needs to be here)")
    grad_checkpoint: bool = opt(False, "recompute each block in backward")
    world: int = opt(2, "ranks to plan for")
    json: bool = opt(False, "print JSON (bytes) instead of a table")


def main(argv: list[str] | None = None) -> int:
    c = parse_config(ShardedMemoryConfig, argv, description=__doc__.split("\n\n")[0],
                     prog="python -m profiler.fsdp")  # fmt: skip
    mc = MemoryConfig(**{k: getattr(c, k) for k in vars(c) if k in MemoryConfig.__dataclass_fields__})
    check(mc)
    cfg = train_config(mc)
    print(json.dumps(estimate_sharded(cfg, c.world), indent=2) if c.json else format_sharded(cfg, c.world))
    return 0


if __name__ == "__main__":
    run_main(main)
