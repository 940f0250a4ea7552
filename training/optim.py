"""The optimizer and its schedule: AdamW, weight decay on matrices only; linear warmup, then cosine decay."""

from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (Linear weights, embeddings, LoRA A/B); never biases or LayerNorm gains."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused where the parameters live on a CPU or a GPU: one kernel per step instead of a loop of
    tensor ops, with the same state dict (docs/benchmarks.md, "Training step")."""
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    kind = {"fused": True} if fused else {"foreach": False}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95), eps=1e-8, **kind)


def get_lr(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to `peak`, then cosine decay to peak * min_ratio at `total` (step counts from 0)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return peak * min_ratio
    progress = (step - warmup) / max(1, total - warmup)  # 0 -> 1
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate; in place where it is a tensor, which a CUDA graph reads at each replay."""
    for g in optimizer.param_groups:
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr
