"""Sharded training with FSDP2 (torch.distributed.fsdp.fully_shard): `torchrun ... train.py --shard fsdp`.

DDP keeps the whole model, its gradients and AdamW's state on every rank. FSDP2 keeps a 1/N slice of each
parameter per rank (rows along dim 0, a DTensor) and gathers one group of parameters at a time:

    groups      each transformer block h.N; then the root: wte with its tied lm_head (one tensor, so one
                group: torch refuses a shared parameter split over two), wpe, ln_f
    forward     all-gather a block's slices -> run the block -> free the gathered copy
    backward    all-gather again (--grad-checkpoint: recompute the block too) -> the block's gradients ->
                reduce-scatter (the mean over ranks) -> each rank keeps its slice of the gradient
    optimizer   AdamW steps each rank's slices, so its state is sharded as well
    precision   where the device has bf16: parameters gathered in bf16, gradients reduced in fp32
                (MixedPrecisionPolicy); trainable slices, their gradients and AdamW's state stay fp32

The rest of the step is train.py's: the loss normalized by the step's target tokens over all ranks (the
reduce-scatter's mean times world, as under DDP), clip_grad_norm_ over the sharded gradients (DTensors: the
global norm), the schedule, rank 0 logging. The gradients are reduce-scattered after every micro-batch, not
once per step as DDP's no_sync does: unreduced full-size gradients would undo the sharding.

Checkpoints are gathered into rank 0 and written in the single-process format (training/checkpoint.py): the
HF or PEFT weights beside state.pt, whose optimizer state is keyed as optimizer.state_dict() keys it. So a
sharded run's checkpoint is the files of a single-process one: evaluate.py reads it as ever, transformers
and PEFT load its weights, and a resume restores every rank bit for bit (each rank's RNG states are kept).
The price is rank 0's host memory for the time of a save: the whole fp32 model and AdamW's two moments
(gpt2-xl: ~19 GB), which a machine with several GPUs has. docs/training.md, "Sharded: FSDP", says why not
torch.distributed.checkpoint.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from cli import UsageError
from lora.config import LoRAConfig
from model.gpt2 import GPT
from model.hf import load_pretrained
from training import checkpoint
from training.build import meta_model

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU only


def check(cfg, distributed: bool, dtype: torch.dtype) -> None:
    """--shard fsdp (and --world): say in one sentence why it cannot run as asked (nothing is built yet)."""
    fsdp = cfg.shard == "fsdp"
    blockers = [
        (cfg.world is not None and not (fsdp and cfg.dry_run),
         f"--world {cfg.world} plans an FSDP run: pass it with --shard fsdp --dry-run (torchrun sets it)"),
        (cfg.world is not None and cfg.world < 1, f"--world {cfg.world} must be >= 1"),
        (fsdp and not distributed and not cfg.dry_run,
         "--shard fsdp runs under torchrun: torchrun --nproc_per_node N train.py --shard fsdp ... (N >= 1)"),
        (fsdp and dtype == torch.float16, "--shard fsdp has no fp16 (GradScaler): pass --dtype bf16 or fp32"),
        (fsdp and cfg.cuda_graph, "--shard fsdp is not combined with --cuda-graph"),
        (fsdp and cfg.compile, "--shard fsdp is not combined with --compile (untested together)"),
        (fsdp and cfg.profile_memory,
         "--shard fsdp: per-rank memory is measured by python -m profiler.fsdp, not --profile-memory"),
    ]  # fmt: skip
    for hit, why in blockers:
        if hit:
            raise UsageError(why)


def mixed_precision(dtype: torch.dtype) -> MixedPrecisionPolicy:
    """bf16: gather parameters in bf16 and reduce gradients in fp32; fp32: everything as it is stored."""
    if dtype == torch.bfloat16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: GPT, device: torch.device, dtype: torch.dtype) -> GPT:
    """Shard `model` in place over every rank of the default process group: one FSDP group per block, then
    the root (wte = lm_head, wpe, ln_f). Call before the optimizer is made: it must see the slices."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = mixed_precision(dtype)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)  # the root keeps its parameters gathered for backward
    return model


def gather_model(model: GPT, cfg) -> GPT | None:
    """Every rank: gather the sharded weights into one plain GPT on rank 0's CPU (same architecture, LoRA
    and dtypes as built); None on the other ranks. What sampling and the HF / PEFT exports read."""
    full = get_model_state_dict(model, options=FULL)  # {} on ranks other than 0
    if dist.get_rank() != 0:
        return None
    plain = meta_model(replace(cfg, init="random"), torch.float32)
    plain.load_state_dict(full, assign=True)  # the gathered tensors themselves, in the dtypes they had
    plain.lm_head.weight = plain.transformer.wte.weight  # assign=True sets the two names one by one: tie them
    plain.grad_checkpoint = cfg.grad_checkpoint
    plain.tokenizer = getattr(model, "tokenizer", None)  # a checkpoint's own tokenizer travels with it
    return plain.train(model.training)


def gathered_for_sampling(model: GPT, cfg, dtype: torch.dtype) -> tuple[GPT | None, torch.autocast]:
    """gather_model, and the autocast its CPU copy samples under (train.py's own is the device's, and LoRA's
    frozen weights may be bf16)."""
    return gather_model(model, cfg), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)


def _by_index(osd: dict) -> dict:
    """get_optimizer_state_dict's layout (keys are parameter names) -> optimizer.state_dict()'s (keys are
    positions in param_groups order), the one checkpoint.py saves for a single process."""
    names = [n for g in osd["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    groups, i = [], 0
    for g in osd["param_groups"]:
        groups.append({**g, "params": list(range(i, i + len(g["params"])))})
        i += len(g["params"])
    return {"state": {index[n]: s for n, s in osd["state"].items()}, "param_groups": groups}


def _by_name(sd: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict()'s layout -> set_optimizer_state_dict's (parameter names, param_groups order)."""
    name = {p: n for n, p in model.named_parameters()}
    names = [name[p] for g in optimizer.param_groups for p in g["params"]]
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": {names[i]: s for i, s in sd["state"].items()}, "param_groups": groups}


class _Gathered:
    """What checkpoint.save_checkpoint reads of an optimizer (its state dict), gathered from every rank."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def _on_rank0(fn):
    """fn() on rank 0; a UsageError there (a full disk) is raised on every rank, so none waits forever."""
    result, error = None, [None]
    if dist.get_rank() == 0:
        try:
            result = fn()
        except UsageError as e:
            error[0] = str(e)
    dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise UsageError(error[0])
    return result


def save_checkpoint(out: Path, step: int, model, optimizer, scaler, batches, cfg,
                    lora: LoRAConfig | None) -> Path | None:  # fmt: skip
    """Every rank: checkpoints/step-N as a single process writes it (rank 0 writes), plus each rank's RNG
    states, so that dropout continues on every rank as it would have."""
    plain = gather_model(model, cfg)
    osd = get_optimizer_state_dict(model, optimizer, options=FULL)
    rngs = [None] * dist.get_world_size()
    dist.all_gather_object(rngs, checkpoint.rng_state())
    state = (plain, _Gathered(_by_index(osd) if plain is not None else {}), scaler, batches, cfg, lora)
    return _on_rank0(lambda: checkpoint.save_checkpoint(out, step, *state, extra={"rng_ranks": rngs}))


def load_checkpoint(ckpt: Path, model, optimizer, scaler, batches, lora: LoRAConfig | None,
                    device: torch.device) -> int:  # fmt: skip
    """Every rank: restore a checkpoint into the sharded model and optimizer; rank 0 reads the files and
    the slices go out from it. Returns the step."""
    rank, full, state = dist.get_rank(), {}, None
    if rank == 0:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
        if lora is None:
            full = load_pretrained(str(ckpt)).state_dict()
        else:
            full = state["trainable"]
    from_rank0 = dict(full_state_dict=True, broadcast_from_rank0=True)
    strict = lora is None  # LoRA: the trainable A and B only
    set_model_state_dict(model, full, options=StateDictOptions(**from_rank0, strict=strict))
    osd = _by_name(state["optimizer"], model, optimizer) if rank == 0 else {}
    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(**from_rank0))
    for g in optimizer.param_groups:  # as an eager step wants them
        g["lr"], g["capturable"] = float(g["lr"]), False
    small = [None if state is None else {k: state.get(k) for k in ("step", "batches", "rng", "rng_ranks")}]
    dist.broadcast_object_list(small, src=0)
    s = small[0]
    batches.load_state_dict(s["batches"])
    same_world = s["rng_ranks"] is not None and len(s["rng_ranks"]) == dist.get_world_size()
    checkpoint.set_rng_state(s["rng_ranks"][rank] if same_world else s["rng"])
    return s["step"]
