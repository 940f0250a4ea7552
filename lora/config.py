"""LoRA's settings: one LoRAConfig, validated once, passed whole from the command line to every LoRALinear.

--lora-rank 8 --lora-targets q,v     (LoRAOptions, the fields train.py and the profiler share)
    -> cfg.lora()                    LoRAConfig(rank=8, alpha=16.0, targets=("q", "v"), ...) or None
    -> inject_lora(model, lora)      lora/lora.py: wraps the targeted nn.Linear layers
    -> LoRALinear(linear, lora)      (DoRALinear with --lora-dora; on an NF4 base, --quantize nf4, the
                                     QLoRA forms: lora.lora.lora_class picks)

--quantize nf4 is about the frozen base, not the adapter: training/build.py stores the block Linears in NF4
(model/nf4.py) before inject_lora, so it is an option here but not a LoRAConfig field.
"""

from __future__ import annotations

from dataclasses import dataclass

from cli import UsageError, opt

TARGETS = ("q", "k", "v", "c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
SHORTHANDS = {  # every attention matrix gets its own update, as W_q, W_k, W_v, W_o in the LoRA paper
    "attn": ("q", "k", "v", "attn.c_proj"),
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
    "all": ("q", "k", "v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
}


class LoRAConfigError(ValueError):
    """A LoRA setting out of range; `field` names it (rank, alpha, targets, dropout)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8  # r: the update B @ A has rank r
    alpha: float = 16.0  # the update is scaled by alpha / r (alpha / sqrt(r) with rslora)
    targets: tuple[str, ...] | str = ("q", "v")  # names from TARGETS or SHORTHANDS; stored parsed
    dropout: float = 0.0  # dropout on the adapter's input
    rslora: bool = False  # rank-stabilized scaling (Kalajdzievski 2023)
    dora: bool = False  # DoRA (Liu et al. 2024): a learned magnitude per output row (lora/dora.py)

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise LoRAConfigError("rank", f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise LoRAConfigError("alpha", f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise LoRAConfigError("dropout", f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "targets", tuple(parse_targets(self.targets)))

    @property
    def scaling(self) -> float:
        """s in W + s * B @ A."""
        return self.alpha / self.rank**0.5 if self.rslora else self.alpha / self.rank


def parse_targets(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """ "q,v,mlp.c_fc" (or a list) -> validated names in TARGETS order; shorthands attn, mlp, all expand."""
    names = [s.strip() for part in ([spec] if isinstance(spec, str) else spec) for s in part.split(",")]
    out: set[str] = set()
    for name in filter(None, names):
        if name not in TARGETS and name not in SHORTHANDS:
            short = ", ".join(f"{k} ({','.join(v)})" for k, v in SHORTHANDS.items())
            raise LoRAConfigError(
                "targets", f"unknown LoRA target {name!r}; choose from {', '.join(TARGETS)} or {short}"
            )
        out.update(SHORTHANDS.get(name, (name,)))
    if not out:
        raise LoRAConfigError("targets", f"no LoRA targets given; choose from {', '.join(TARGETS)}")
    if "c_attn" in out and out & {"q", "k", "v"}:
        raise LoRAConfigError(
            "targets", "LoRA target c_attn (one joint update over q|k|v) cannot be combined with q, k or v"
        )
    return [t for t in TARGETS if t in out]


@dataclass
class LoRAOptions:
    """LoRA (--lora-rank 0: full fine-tuning, every weight trains)."""

    lora_rank: int = opt(8, "LoRA rank r; 0 trains every weight (full fine-tune)")
    lora_alpha: float = opt(
        16.0, "LoRA alpha: the update is scaled by alpha/r (alpha/sqrt(r) with --lora-rslora)"
    )
    lora_targets: str = opt(
        "q,v",
        "comma-separated: q,k,v (slices of c_attn), c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, "
        "or attn, mlp, all",
    )
    lora_dropout: float = opt(0.0, "dropout on the LoRA input")
    lora_rslora: bool = opt(False, "rank-stabilized scaling alpha/sqrt(r)")
    lora_dora: bool = opt(False, "DoRA: also learn a magnitude per output row (weight-decomposed LoRA)")
    quantize: str = opt(
        "none",
        "nf4: store the frozen block weights in 4-bit NF4 (QLoRA; needs --lora-rank)",
        choices=["none", "nf4"],
    )

    def lora(self) -> LoRAConfig | None:
        """The validated LoRAConfig, or None for full fine-tuning (--lora-rank 0)."""
        if self.lora_rank < 0:
            raise UsageError(f"--lora-rank {self.lora_rank} is negative; pass 0 (full fine-tune) or a rank")
        if self.lora_rank == 0:
            for given, what in ((self.quantize != "none", f"--quantize {self.quantize}"),
                                (self.lora_dora, "--lora-dora")):  # fmt: skip
                if given:
                    raise UsageError(
                        f"{what} trains an adapter on a frozen base; pass --lora-rank R (e.g. 8)"
                    )
            return None
        try:
            return LoRAConfig(
                self.lora_rank,
                self.lora_alpha,
                self.lora_targets,
                self.lora_dropout,
                self.lora_rslora,
                self.lora_dora,
            )
        except LoRAConfigError as e:
            raise UsageError(f"--lora-{e.field}: {e}") from None
