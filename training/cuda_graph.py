"""The train step as one CUDA graph (train.py --cuda-graph): captured once, replayed for every batch of the
same shapes.

Why: at GPT-2 124M shapes a GPU runs a step's kernels faster than Python and autograd can launch them; a
graph records the launches once and each replay is a single call, so the step takes the kernels' time
(docs/benchmarks.md, "On an H100, the step as one CUDA graph"). Off by default: where a step's kernels take
longer than launching them, the static loss (which projects every position) costs a little.

What capture needs, and how it gets it:
  fixed addresses  each batch is copied into the same input tensors; the target count and the learning
                   rate live in device tensors, updated before each replay (set_lr); AdamW is capturable.
                   The gradients the capture allocates are overwritten, not accumulated, by each replay.
  fixed shapes     static_loss_sum: the loss covers every position, non-targets weighted 0. Packed batches
                   (--pack) all have one shape; a batch of another shape (an epoch's short last batch)
                   takes the eager step.
  no host reads    nothing in TrainStep.run reads a value back; the loss is read after the replay.
  warm-up          the first steps run eagerly on a side stream, so that lazy set-up (cuBLAS handles,
                   optimizer state, autograd's streams) is done before capture, as CUDA graphs require.
Shapes: B rows, T positions, C n_embd, V vocab.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from cli import UsageError
from model.gpt2 import IGNORE
from training.config import TrainConfig
from training.step import Batch, TrainStep


def use_cuda_graph(cfg: TrainConfig, device: torch.device, dtype: torch.dtype, ddp: bool) -> bool:
    """--cuda-graph: capture the train step (CudaGraphStep), or say in one sentence why it cannot be."""
    if not cfg.cuda_graph:
        return False
    blockers = [
        (device.type != "cuda", "needs a CUDA device"),
        (not cfg.pack, "needs --pack, where every batch has one shape"),
        (ddp, "is not supported under DDP"),
        (dtype == torch.float16, "is not supported with fp16's GradScaler (use bf16 or fp32)"),
        (cfg.compile, "is not combined with --compile"),
        (cfg.grad_checkpoint, "is not combined with --grad-checkpoint"),
    ]
    for hit, why in blockers:
        if hit:
            raise UsageError(f"--cuda-graph {why}")
    return True


def static_loss(model, idx, targets, loss_mask=None, pos=None, mask=None, reduction="sum") -> torch.Tensor:
    """GPT.forward's loss ("sum" or "mean") with every shape independent of the data, as a CUDA graph needs:
    the vocabulary projection runs at every position and the positions without a target weigh 0, where
    GPT.forward projects only the targets (h[valid] has as many rows as the batch has targets)."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"the static loss gives reduction 'sum' or 'mean', not {reduction!r}")
    h = model.hidden(idx, pos=pos, mask=mask)  # (B, T, C)
    keep = targets != IGNORE
    if loss_mask is not None:
        keep &= loss_mask.bool()
    keep = keep.flatten()  # (B*T,)
    logits_t = model.lm_head.weight @ h.flatten(0, 1).t()  # (V, C) @ (C, B*T) -> (V, B*T)
    losses = model.loss_fn(logits_t, targets.flatten().clamp(min=0)) * keep  # 0 loss, 0 gradient off-target
    return losses.sum() if reduction == "sum" else losses.sum() / keep.sum()


def static_loss_sum(model, b: Batch) -> torch.Tensor:
    return static_loss(model, b.idx, b.targets, None, b.pos, b.mask)


def batch_shapes(micro: list[Batch]) -> tuple:
    """What must match for a captured graph to take these micro-batches."""
    return tuple(tuple(None if t is None else tuple(t.shape) for t in b.tensors()) for b in micro)


class CudaGraphStep(TrainStep):
    """TrainStep as one CUDA graph. Not with DDP, fp16's GradScaler, torch.compile or gradient
    checkpointing (use_cuda_graph decides)."""

    def __init__(self, model, optimizer, device: torch.device, dtype: torch.dtype, *, raw_model=None,
                 grad_clip: float = 1.0, warmup: int = 2):  # fmt: skip
        # autocast's weight cache must be off inside a capture
        amp = torch.autocast("cuda", dtype, cache_enabled=False) if dtype != torch.float32 else nullcontext()
        super().__init__(model, optimizer, device, raw_model=raw_model, amp=amp, grad_clip=grad_clip)
        self.warmup = warmup
        for g in optimizer.param_groups:  # device tensors, read by the graph at each replay
            g["capturable"] = True
            g["lr"] = torch.tensor(float(g["lr"]), device=device)
        self.scale = torch.ones((), device=device)  # 1 / the step's target count
        self.graph, self.shapes, self.steps, self.eager_steps = None, None, 0, 0
        self.inputs, self.loss, self.grad_norm = None, None, None  # the graph's inputs and outputs (_capture)

    def __call__(self, micro: list[Batch]) -> tuple[float, float]:
        n_targets = float(sum(b.n_targets for b in micro))
        self.scale.fill_(1.0 / max(n_targets, 1.0))
        self.steps += 1
        if self.graph is None and self.steps <= self.warmup:
            return self._warm_up(micro, n_targets)
        shapes = batch_shapes(micro)
        if self.graph is None:
            self._capture([b.to(self.device) for b in micro], shapes)  # this batch fills the inputs
        elif shapes == self.shapes:
            for static, b in zip(self.inputs, micro):
                for dst, src in zip(static.tensors(), b.tensors()):
                    if dst is not None:
                        dst.copy_(src, non_blocking=True)
        else:  # another shape (an epoch's short last batch): an eager step
            self.eager_steps += 1
            return super().__call__(micro)
        self.graph.replay()
        return float(self.loss) / n_targets, float(self.grad_norm)

    def _device_step(self, inputs: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """The work the graph holds, run eagerly (warm-up) or captured."""
        return self.run(inputs, len(inputs), self.scale, loss=static_loss_sum)

    def _warm_up(self, micro: list[Batch], n_targets: float) -> tuple[float, float]:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            loss, norm = self._device_step([b.to(self.device) for b in micro])
            self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return float(loss) / n_targets, float(norm)

    def _capture(self, inputs: list[Batch], shapes: tuple) -> None:
        self.inputs, self.shapes = inputs, shapes
        self.optimizer.zero_grad(set_to_none=True)  # so that backward allocates the gradients in the graph
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss, self.grad_norm = self._device_step(inputs)
        self.optimizer.zero_grad(set_to_none=True)  # eager steps start from none; the graph keeps its own
