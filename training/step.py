"""One optimizer step over a step's micro-batches, and the validation loss.

The loss of a step is the sum over every target token of the step (all micro-batches, all ranks) divided
by their count, so long and short examples weigh the same per token whatever the batching (torchtune does
the same; averaging micro-batch means does not). Shapes: B rows, T positions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Batch:
    """A micro-batch as the model takes it (data/loader.py yields these fields as a dict)."""

    idx: torch.Tensor  # (B, T) input ids
    targets: torch.Tensor  # (B, T) next ids, IGNORE where there is no loss (prompt, padding)
    pos: torch.Tensor | None  # (B, T) positions when rows are packed, else None (0..T-1)
    mask: torch.Tensor | None  # (B, 1, T, T) block-causal attention mask when packed, else None (causal)
    n_targets: int  # positions with a target
    n_tokens: int  # positions that are not padding

    @classmethod
    def from_dict(cls, b: dict) -> Batch:
        n_targets, n_tokens = int(b["n_targets"]), int(b["n_tokens"])
        return cls(b["idx"], b["targets"], b.get("pos"), b.get("mask"), n_targets, n_tokens)

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.idx, self.targets, self.pos, self.mask

    def to(self, device: torch.device) -> Batch:
        moved = (None if t is None else t.to(device, non_blocking=True) for t in self.tensors())
        return Batch(*moved, self.n_targets, self.n_tokens)


def loss_sum(model, b: Batch) -> torch.Tensor:
    """The summed loss over the batch's target tokens (GPT.forward projects only those to the vocabulary)."""
    return model(b.idx, b.targets, None, b.pos, b.mask, reduction="sum")


class TrainStep:
    """step(micro_batches) -> (loss per target token, gradient norm): forward and backward over each
    micro-batch, then clip and one optimizer step.

    model is what runs forward (maybe compiled, maybe wrapped in DDP); raw_model is the module underneath,
    whose parameters are clipped. ddp: several ranks average their gradients; DDP all-reduces them once, on
    the last micro-batch; FSDP (training/fsdp.py) reduce-scatters them after each one."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, device: torch.device, *, raw_model=None,
                 scaler: torch.amp.GradScaler | None = None, amp: AbstractContextManager | None = None,
                 grad_clip: float = 1.0, ddp: bool = False):  # fmt: skip
        self.model, self.raw_model = model, raw_model if raw_model is not None else model
        self.optimizer, self.scaler, self.device = optimizer, scaler, device
        self.amp = amp if amp is not None else nullcontext()
        self.grad_clip, self.ddp = grad_clip, ddp
        self.trainable = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.sync_once = isinstance(model, torch.nn.parallel.DistributedDataParallel)

    def __call__(self, micro: list[Batch]) -> tuple[float, float]:
        n_targets = torch.tensor(float(sum(b.n_targets for b in micro)), device=self.device)
        if self.ddp:
            dist.all_reduce(n_targets)  # the step's targets on every rank
        world = dist.get_world_size() if self.ddp else 1
        scale = world / n_targets.clamp(min=1)  # x world: DDP averages gradients over ranks
        inputs = (b.to(self.device) for b in micro)  # one micro-batch on the device at a time
        step_loss, grad_norm = self.run(inputs, len(micro), scale)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ddp:
            dist.all_reduce(step_loss)
        return float(step_loss) / float(n_targets), float(grad_norm)

    def run(self, inputs: Iterable[Batch], n_micro: int, scale: torch.Tensor, loss=loss_sum) -> tuple:
        """The device work of a step, with no read back to the host: forward and backward over the
        micro-batches (each loss multiplied by `scale`), clipping, the optimizer. Returns the summed loss and
        the gradient norm as device tensors, and leaves the gradients in place (a CUDA graph reuses them)."""
        step_loss = torch.zeros((), device=scale.device)
        for i, b in enumerate(inputs):
            last = i == n_micro - 1
            with self.model.no_sync() if self.sync_once and not last else nullcontext():  # all-reduce once
                with self.amp:
                    loss_i = loss(self.model, b)
                (self.scaler.scale(loss_i * scale) if self.scaler else loss_i * scale).backward()
            step_loss += loss_i.detach()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip or float("inf"))
        if self.scaler:
            self.scaler.step(self.optimizer)  # skips the step if gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        return step_loss, grad_norm


@torch.no_grad()
def validation_loss(model, batches, n_batches: int, amp: AbstractContextManager, device) -> float:
    """Mean loss per target token over the validation loader's first n_batches (the same ones each time)."""
    model.eval()
    batches.set_epoch(0)
    total, count = 0.0, 0
    for i, d in enumerate(batches):
        if i >= n_batches:
            break
        b = Batch.from_dict(d).to(device)
        with amp:
            total += float(loss_sum(model, b))
        count += b.n_targets
    model.train()
    return total / max(count, 1)


def time_micro_batch(model, b: Batch, amp: AbstractContextManager, device: torch.device) -> float:
    """Seconds for one forward and backward of micro-batch b, for the plan's time estimate. The random state
    and the gradients are left as they were, so the run trains exactly as it would without it."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        b = b.to(device)
        start = time.perf_counter()
        with amp:
            loss = loss_sum(model, b)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds
