"""The training loss: cross-entropy of each target token, from logits laid out (V, N).

GPT.forward computes logits only at the N positions that have a target, as lm_head.weight @ h^T, which puts
the vocabulary down the rows: for GPT-2's (V, C) head MKL multiplies in this layout faster than in
nn.Linear's h @ W^T, forward and backward (docs/benchmarks.md, "The loss"). The backward below is one
in-place pass over the saved softmax, so no second (V, N) buffer is made.

Shapes: V vocab, N target tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class _CrossEntropyVN(torch.autograd.Function):
    """Per-target cross-entropy over logits (V, N), computed in fp32. The forward keeps softmax rather than
    log-probs, so the backward is a single in-place pass over it: (softmax - one_hot) * grad."""

    @staticmethod
    def forward(ctx, logits_t, targets):  # (V, N) any float dtype, (N,) int64 -> (N,) float32
        x = logits_t.float()
        top = x.amax(0)  # (N,)
        shifted = x.gather(0, targets[None])[0] - top  # logit of the target, minus the max
        # bf16 logits: x is our own fp32 copy, so softmax overwrites it (one (V, N) fp32 buffer, not two)
        probs = (x.sub_(top) if x is not logits_t else torch.sub(x, top)).exp_()  # (V, N), unnormalized
        total = probs.sum(0)  # (N,)
        losses = total.log() - shifted  # logsumexp - logit of the target
        ctx.save_for_backward(probs.div_(total), targets)
        ctx.logits_dtype = logits_t.dtype
        return losses

    @staticmethod
    def backward(ctx, grad):  # grad (N,) -> d logits_t (V, N); a second backward would be refused
        probs, targets = ctx.saved_tensors
        probs.scatter_add_(0, targets[None], probs.new_full((1, targets.numel()), -1.0))
        return probs.mul_(grad).to(ctx.logits_dtype), None


class TargetCrossEntropy(nn.Module):
    """losses (N,) = cross-entropy of targets (N,) under logits_t (V, N). Same values as
    F.cross_entropy(logits_t.t(), targets, reduction="none")."""

    def forward(self, logits_t: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _CrossEntropyVN.apply(logits_t, targets)
