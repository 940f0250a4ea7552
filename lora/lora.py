"""LoRA (Hu et al. 2021) on GPT-2: a frozen weight W plus a trainable low-rank update s * B @ A.

            x (.., in)
                |
      +---------+---------+
      |                   |        A (r, in)   Kaiming-uniform: a random projection down to r dims
  W (out, in)        dropout(x)    B (out, r)  zeros: at step 0 B @ A = 0, so the model IS the base model
   frozen                 |        s = alpha / r (rslora: alpha / sqrt(r)), so changing r keeps the
      |              A:  in -> r       update's size comparable and the learning rate need not move
      |              B:   r -> out
      |                   |
      +--- y = x W^T + b + s * dropout(x) A^T B^T ---> (.., out)

Only A and B train: r * (in + out) numbers instead of in * out. GPT-2's attention input projection
`c_attn` is fused (q|k|v, C -> 3C); the LoRA paper adapts W_q and W_v separately, so a slice adapter keeps
one rank-r pair per enabled slice and its update is exactly zero on the slices that are off:

    A (n*r, C) = [A_q]      B_full (3C, n*r) = [B_q  0 ]  <- q rows      dW = s * B_full @ A
                 [A_v]                         [ 0   0 ]  <- k rows (off)   = [s B_q A_q; 0; s B_v A_v]
                                               [ 0  B_v]  <- v rows

That block-structured (A, B_full) is also how a slice adapter is written for PEFT (see lora/peft_io.py).

Two variants keep this class and change one part each (PEFT: tuners/lora/{layer,bnb,dora}.py); add_lora is
the one place that picks: DoRA (lora/dora.py, LoRAConfig(dora=True)) adds a learned magnitude per output
row; QLoRA (lora/qlora.py) runs the frozen path on a 4-bit NF4 weight (model/nf4.py) when the layer wrapped
is an NF4Linear. Both only override base_forward, dense_weight, forward or merge.
Shapes: B batch, T time, C n_embd, r rank, n number of enabled slices. The walkthrough is docs/lora.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lora.config import LoRAConfig
from lora.dora import DoRA
from lora.qlora import NF4Base
from model.nf4 import NF4Linear, nf4_numel


def _cast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t in x's dtype, unless autocast will pick the matmul dtype itself (then no extra copy)."""
    return t if torch.is_autocast_enabled(x.device.type) else t.to(x.dtype)


class LoRALinear(nn.Module):
    """Wraps an nn.Linear: `weight`/`bias` keep their names (and stay frozen), `lora_A`/`lora_B` train.
    (An NF4Linear's `weight` is a model.nf4.NF4Weight; QLoRALinear runs the frozen path on it.)
    slices, e.g. (True, False, True), splits the output into equal parts (q|k|v) and adapts the ones on."""

    def __init__(self, linear: nn.Linear, cfg: LoRAConfig, slices: tuple[bool, ...] | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The same Parameter objects, under the same names: the base state-dict keys do not change.
        self.weight, self.bias = linear.weight, linear.bias
        self.slices = slices
        n = sum(slices) if slices else 1  # number of rank-r pairs
        self.slice_out = self.out_features // len(slices) if slices else self.out_features
        rank = cfg.rank
        self.rank, self.alpha, self.rslora = rank, cfg.alpha, cfg.rslora
        self.scaling = cfg.scaling  # alpha / r, or alpha / sqrt(r) with rslora
        kw = dict(device=linear.weight.device, dtype=torch.float32)  # fp32 even on a bf16 base
        self.lora_A = nn.Parameter(torch.empty(n * rank, self.in_features, **kw))  # (n*r, in): A_q over A_v
        self.lora_B = nn.Parameter(torch.zeros(n * self.slice_out, rank, **kw))  # (n*out_s, r): B_q over B_v
        for A in self.lora_A.split(rank):  # nn.Linear's own init (PEFT's too), fan_in = in
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.merged = False

    def full_B(self) -> torch.Tensor:
        """(out, n*r): B with a zero block wherever a slice is off or belongs to another slice's A rows."""
        if self.slices is None:
            return self.lora_B  # (out, r)
        so, nr = self.slice_out, self.lora_A.size(0)
        blocks = iter(torch.block_diag(*self.lora_B.split(so)).split(so))  # n x (so, n*r): B_i in its columns
        zero = self.lora_B.new_zeros(so, nr)
        return torch.cat([next(blocks) if on else zero for on in self.slices])  # (out, n*r)

    def base_forward(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """The frozen path x W^T (+ b)."""
        b = None if self.bias is None or not bias else _cast(self.bias, x)
        return F.linear(x, _cast(self.weight, x), b)

    def dense_weight(self) -> torch.Tensor:
        """W (out, in) as stored."""
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T, in), e.g. (B, T, 768) into c_attn
        y = self.base_forward(x)  # (B, T, out), c_attn: (B, T, 2304)
        if self.merged:  # W already holds s * B @ A
            return y
        a = self.dropout(x) @ _cast(self.lora_A, x).T  # (B, T, n*r), q,v at r=8: (B, T, 16)
        return y + (self.scaling * a) @ _cast(self.full_B(), x).T  # (B, T, n*r) @ (n*r, out) -> (B, T, out)

    def delta_weight(self) -> torch.Tensor:
        """dW = s * B @ A in fp32, (out, in); zero rows on the slices that are off."""
        return self.scaling * (self.full_B().detach().float() @ self.lora_A.detach().float())

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + dW (in fp32, cast back): inference without the extra matmuls. Idempotent."""
        if not self.merged:
            self.weight.copy_((self.weight.float() + self.delta_weight()).to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - dW: back to training the adapter. Idempotent."""
        if self.merged:
            self.weight.copy_((self.weight.float() - self.delta_weight()).to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        on = "" if self.slices is None else "".join(c for c, s in zip("qkv", self.slices) if s)
        return f"in={self.in_features}, out={self.out_features}, r={self.rank}, scaling={self.scaling:g} {on}"


class DoRALinear(DoRA, LoRALinear):
    """LoRALinear with DoRA's magnitude vector (lora/dora.py)."""


class QLoRALinear(NF4Base, LoRALinear):
    """LoRALinear on a 4-bit NF4 base (lora/qlora.py)."""


class QDoRALinear(DoRA, NF4Base, LoRALinear):
    """DoRA on a 4-bit NF4 base."""


def lora_class(base: nn.Module, cfg: LoRAConfig) -> type[LoRALinear]:
    """The one place a variant is chosen: by the layer wrapped (an NF4Linear, model/nf4.py, gets the 4-bit
    frozen path) and by cfg.dora."""
    nf4 = isinstance(base, NF4Linear)
    if cfg.dora:
        return QDoRALinear if nf4 else DoRALinear
    return QLoRALinear if nf4 else LoRALinear


def add_lora(
    model: nn.Module, name: str, cfg: LoRAConfig, slices: tuple[bool, ...] | None = None
) -> LoRALinear:
    """Replace the nn.Linear (or NF4Linear) at `name` (e.g. "transformer.h.0.attn.c_attn") by a LoRA layer
    around it, of the class lora_class picks."""
    parent_name, _, child = name.rpartition(".")
    base = model.get_submodule(name)
    layer = lora_class(base, cfg)(base, cfg, slices)
    setattr(model.get_submodule(parent_name), child, layer)
    return layer


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(model: nn.Module, cfg: LoRAConfig, verbose: bool = True) -> list[str]:
    """Freeze every parameter, wrap the targeted Linears in LoRALinear; returns the wrapped module names."""
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers; inject into a plain model")
    model.requires_grad_(False)
    qkv = tuple(t in cfg.targets for t in "qkv")  # which slices of the fused c_attn to adapt
    matched = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Linear, NF4Linear)):
            continue
        if name.endswith(".attn.c_attn") and ("c_attn" in cfg.targets or any(qkv)):
            add_lora(model, name, cfg, None if "c_attn" in cfg.targets else qkv)
        elif any(name.endswith("." + t) for t in cfg.targets):
            add_lora(model, name, cfg)
        else:
            continue
        matched.append(name)
    if not matched:
        raise ValueError(f"no module of this model matches the LoRA targets {','.join(cfg.targets)}")
    if verbose:
        r = trainable_report(model)
        kind = ("DoRA" if cfg.dora else "LoRA") + (" on an NF4 base" if nf4_numel(model) else "")
        print(f"{kind} r={cfg.rank} alpha={cfg.alpha} on {len(matched)} modules ({','.join(cfg.targets)})")
        print(f"trainable params: {r['trainable']:,} || all params: {r['total']:,} || "
              f"trainable%: {r['trainable_pct']:.4f}")  # fmt: skip
    return matched


def merge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.unmerge()


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter into its weight and put a plain nn.Linear back in its place (for inference: the
    model is then GPT-2 again, and model/kernels.py can swap its layers). Returns the model."""
    for name, m in lora_layers(model).items():
        m.merge()
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias  # the same (now merged) tensors
        plain.train(m.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, plain)
    return model


ADAPTER_TENSORS = ("lora_A", "lora_B", "lora_magnitude_vector")  # the last: DoRA's m


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (`...c_attn.lora_A`, `...lora_B`, DoRA's `...lora_magnitude_vector`): what
    a LoRA checkpoint needs to hold."""
    return {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in ADAPTER_TENSORS}


def trainable_report(model: nn.Module) -> dict:
    """Trainable vs all parameters (a tied weight counted once, an NF4 weight as its number of weights), and
    the LoRA modules."""
    params = list(model.parameters())  # parameters() yields a shared tensor once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params) + nf4_numel(model)
    return dict(trainable=trainable, total=total, trainable_pct=100 * trainable / max(total, 1),
                lora_modules=list(lora_layers(model)))  # fmt: skip
