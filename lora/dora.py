"""DoRA (Liu et al. 2024, "Weight-Decomposed Low-Rank Adaptation"): LoRA + a learned magnitude per output row.

Write each row of the adapted weight as a length times a direction: W' = m * (W + s B A) / ||W + s B A||,
with the norm taken per output row (out,) and m (out,) trained beside A and B. LoRA moves direction and
length together; DoRA lets the magnitude move on its own, which the paper finds closer to full fine-tuning.
m starts at ||W||, so at step 0 (B = 0) m / ||W|| = 1 and the layer is the base layer exactly.

    y = g * (x W^T + s x A^T B^T) + b,     g = m / ||W + s B A||   (out,), the norm detached (paper, 4.3)

The row norms without the (out, in) matrix W + s B A (PEFT builds it, and B A, at every step):

    ||W_i + s (B A)_i||^2 = ||W_i||^2 + 2 s <W_i, (B A)_i> + s^2 ||(B A)_i||^2
                          = w2_i      + 2 s sum_k B_ik (A W^T)_ki + s^2 sum_k B_ik (B A A^T)_ik

||W||^2 (out,) is computed once (W is frozen); A W^T is (R, out), a batch of R inputs through the frozen
layer (so an NF4 base dequantizes as usual); A A^T is (R, R). Shapes: R = n*r (A's rows), out = W's rows.

A q/v slice adapter on c_attn (lora/lora.py) trains m for the rows of its slices only; the k rows keep
m = ||W_k||, so g = 1 there: the identity. PEFT's `lora_magnitude_vector` is c_attn-wide (3C,): that is the
vector written for it (lora/peft_io.py), with ||W_k|| on the k rows.

This is a mixin: `class DoRALinear(DoRA, LoRALinear)` in lora/lora.py, where add_lora picks it for
LoRAConfig(dora=True). It overrides forward, the merged weight and merge/unmerge; the rest is LoRALinear's.
The walkthrough is docs/lora.md, "DoRA".
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _cast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t in x's dtype, unless autocast picks the matmul dtype itself (lora/lora.py's rule)."""
    return t if torch.is_autocast_enabled(x.device.type) else t.to(x.dtype)


class DoRA:
    """LoRALinear + `lora_magnitude_vector` (m): (out,), or (n * out/3,) for a slice adapter (its slices'
    rows, q over v). A mixin: mixed into LoRALinear (and its NF4 form) by lora.lora.add_lora."""

    def __init__(self, linear: nn.Module, cfg, slices: tuple[bool, ...] | None = None):
        super().__init__(linear, cfg, slices)
        with torch.no_grad():
            w2 = self.dense_weight().float().pow(2).sum(dim=1)  # (out,) ||W_i||^2, once: W is frozen
        self.register_buffer("weight_sq", w2, persistent=False)
        rows = w2.sqrt()  # m = ||W|| at B = 0: the layer starts as the base layer
        if slices is not None:
            rows = torch.cat([r for r, on in zip(rows.split(self.slice_out), slices) if on])
        self.lora_magnitude_vector = nn.Parameter(rows)  # fp32, like A and B
        self.merge_scale = None  # g at merge time, so that unmerge can divide it out again

    def magnitude(self) -> torch.Tensor:
        """m over every output row (out,): a slice adapter's trained rows, ||W|| on the slices that are off"""
        if self.slices is None:
            return self.lora_magnitude_vector
        trained = iter(self.lora_magnitude_vector.split(self.slice_out))
        fixed = self.weight_sq.sqrt().split(self.slice_out)
        return torch.cat([next(trained) if on else f for f, on in zip(fixed, self.slices)])

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """||W + s B A|| per output row (out,), fp32, without forming any (out, in) matrix."""
        A, B, s = (
            self.lora_A.detach().float(),
            self.full_B().detach().float(),
            self.scaling,
        )  # (R, in), (out, R)
        with torch.autocast(A.device.type, enabled=False):  # fp32, as the norm of ||W||^2 beside it
            WAt = self.base_forward(A, bias=False).float().T  # (out, R): W A^T, R rows through the base
        cross = (B * WAt).sum(dim=1)  # <W_i, (B A)_i>
        lora = (B * (B @ (A @ A.T))).sum(dim=1)  # ||(B A)_i||^2
        return (self.weight_sq + 2 * s * cross + s * s * lora).clamp(min=0).sqrt()

    def scale(self) -> torch.Tensor:
        """g = m / ||W + s B A|| (out,), fp32: gradients reach m, never the norm."""
        return self.magnitude() / self.weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T, in)
        if self.merged:  # W already holds g * (W + s B A)
            return self.base_forward(x)
        xd = self.dropout(x)
        y = self.base_forward(x, bias=False)  # (B, T, out) x W^T
        u = (self.scaling * (xd @ _cast(self.lora_A, x).T)) @ _cast(self.full_B(), x).T  # s x A^T B^T
        g = self.scale()  # (out,) fp32, broadcast over (B, T)
        if xd is x:  # no dropout: the paper's form
            out = g * (y + u)
        else:  # with dropout, as PEFT: the magnitude rescales the base path on the dropped-out input
            out = y + (g - 1) * self.base_forward(xd, bias=False) + g * u
        out = out.to(y.dtype)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """W' - W = (g - 1) W + g s B A in fp32, (out, in): what merging adds to W."""
        g = self.scale().detach()[:, None]
        return (g - 1) * self.dense_weight().float() + g * super().delta_weight()

    @torch.no_grad()
    def merge(self) -> None:
        """W <- g * (W + s B A), keeping g to undo it. Idempotent."""
        if not self.merged:
            self.merge_scale = self.scale()
            super().merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W' / g - s B A (in fp32, cast back). Idempotent."""
        if self.merged:
            W, g = self.weight, self.merge_scale[:, None]
            W.copy_((W.float() / g - super().delta_weight()).to(W.dtype))
            self.weight_sq = W.float().pow(2).sum(dim=1)  # ||W||^2 of W as it is back now
            self.merged, self.merge_scale = False, None
