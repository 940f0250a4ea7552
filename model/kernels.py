"""Faster kernels for the model, chosen outside model/gpt2.py: one call swaps them in.

    model = use_fast_kernels(model)   # every nn.Linear -> CPULinear (same parameters, same state dict);
                                      # on a GPU, attention runs on flash / memory-efficient kernels

model/gpt2.py is plain PyTorch and runs as it is; this file only makes some of its calls faster, with the
same numbers. The entry points (train.py, evaluate.py, generate.py, the benchmarks) call use_fast_kernels
once after building the model, as PEFT picks a backend layer for a module. Why each choice pays, with the
measurements: docs/benchmarks.md ("CPU decoding" and "Attention kernels on a GPU").
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _onednn_linear():
    """oneDNN's linear (the op torch.compile's CPU backend calls), or None where this torch build lacks it."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


ONEDNN_LINEAR = _onednn_linear()
ONEDNN_MIN_WEIGHT = 2**19  # entries; below this oneDNN's per-call cost outweighs its faster weight reads


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with two CPU fast paths that give the same numbers when no gradient is needed (decoding):

    - eager, fp32: oneDNN's linear reads a large weight faster than MKL does for a few rows. Only for large
      weights (its fixed cost per call), and never with autograd on (the op has no backward).
    - inside torch.compile (generation/fixed_shape.py), fp32, one row: multiply-and-sum, which inductor
      turns into one reduction that streams the weight at the memory's rate (oneDNN cannot be traced)."""
    if torch.compiler.is_compiling():
        one_row = x.is_cpu and x.dtype == torch.float32 and x.shape[:-1].numel() == 1
        if one_row and not torch.is_grad_enabled():
            y = (
                (weight * x.reshape(1, -1)).sum(-1).view(*x.shape[:-1], -1)
            )  # (out, in) * (1, in) -> (..., out)
            return y if bias is None else y + bias
        return F.linear(x, weight, bias)
    if (
        ONEDNN_LINEAR is not None
        and x.is_cpu  # first: a GPU's call (host-bound while decoding) leaves after one check
        and not torch.is_grad_enabled()
        and weight.numel() >= ONEDNN_MIN_WEIGHT
        and x.dtype == weight.dtype == torch.float32
    ):
        return ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class CPULinear(nn.Linear):
    """nn.Linear (the same parameters and state dict) whose product goes through linear() above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_fast_kernels(model: nn.Module) -> nn.Module:
    """Swap every plain nn.Linear of `model` for a CPULinear holding the same Parameter objects (so tied
    weights stay tied and nothing is copied), and, where the model is on a GPU, keep attention off cuDNN.
    LoRA layers are left alone: their base product is the plain one, and an inference model merges them
    away first (lora.lora.merge_and_unload). Returns the model."""
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:
            continue
        fast = CPULinear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        fast.weight, fast.bias = module.weight, module.bias  # the same tensors, under the same names
        fast.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, fast)
    if any(p.is_cuda for p in model.parameters()):
        gpu_attention_without_cudnn()
    return model


def gpu_attention_without_cudnn() -> None:
    """Let scaled_dot_product_attention pick flash, memory-efficient or math kernels on a GPU, never cuDNN's.

    torch tries cuDNN first on Hopper, and cuDNN builds a plan for every new shape: length-bucketed and
    packed batches change shape at almost every step, so each step would pay for a new plan
    (docs/benchmarks.md, "Attention kernels on a GPU"). This is torch's process-wide switch, so it also
    holds for the recompute of a checkpointed block in backward."""
    torch.backends.cuda.enable_cudnn_sdp(False)
