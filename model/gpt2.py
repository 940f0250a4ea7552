"""GPT-2 in plain PyTorch: the config and its presets, the modules under GPT-2's own names, and a forward
pass whose loss projects to the vocabulary only where a target exists.

Shapes: B batch, T time (sequence), C n_embd, nh n_head, hs head size (C // nh), H the MLP's width (4C in
GPT-2), V vocab, N target tokens.
Module names are GPT-2's (`wte`, `h.N.attn.c_attn`, ...) so Hugging Face weights load by copy plus a
transpose of the four Conv1D weights (model/hf.py); `lm_head` shares its weight with `wte`.

This file is the model and nothing else. Beside it: model/loss.py (the cross-entropy the forward calls),
model/kernels.py (faster kernels swapped in by `use_fast_kernels`), generation/ (KV cache and decoding).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.loss import TargetCrossEntropy

IGNORE = -100  # target id that carries no loss (same convention as HF)


@dataclass
class GPTConfig:
    block_size: int = 1024  # context length (n_positions)
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # GPT-2 trained with 0.1; fine-tuning usually turns it off
    layer_norm_epsilon: float = 1e-5
    # What GPT-2-architecture checkpoints vary, under config.json's names (model/hf.py reads them):
    n_inner: int | None = None  # the MLP's width; None = 4 * n_embd
    activation_function: str = "gelu_new"  # the MLP's nonlinearity, a key of ACTIVATIONS
    scale_attn_weights: bool = True  # attention scores divided by sqrt(hs)
    scale_attn_by_inverse_layer_idx: bool = False  # ... and by the layer's number 1..n_layer (CodeParrot)
    reorder_and_upcast_attn: bool = False  # scores and softmax in fp32: what SDPA always does (see below)

    def to_dict(self) -> dict:
        return asdict(self)


_CODEPARROT = dict(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)
PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "tiny": dict(n_layer=2, n_head=4, n_embd=32, block_size=128),  # for tests
    # GPT-2 pretrained on Python, with its own 32,768-token BPE and Mistral's attention-stability settings
    "codeparrot-small": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=32768, **_CODEPARROT),  # 110M
    "codeparrot": dict(n_layer=48, n_head=25, n_embd=1600, vocab_size=32768, **_CODEPARROT),  # 1.5B
}


def config_for(preset: str, **overrides) -> GPTConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {', '.join(PRESETS)}")
    return GPTConfig(**{**PRESETS[preset], **overrides})


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped where it does nothing (eval, p = 0): decoding calls it twice a layer per token."""
    return F.dropout(x, p, training) if training and p > 0 else x


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q|k|v fused: C -> 3C
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        # scores = q.k * scale: GPT-2's 1/sqrt(hs); CodeParrot's also / (layer + 1), so deep layers start calm
        self.scale = (cfg.n_embd // cfg.n_head) ** -0.5 if cfg.scale_attn_weights else 1.0
        self.scale /= (layer + 1) if cfg.scale_attn_by_inverse_layer_idx else 1

    def forward(self, x, mask=None, cache=None):
        B, T, C = x.shape
        # (B, T, 3C) -> 3 x (B, nh, T, hs): one view and one permute for q, k and v together
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:  # decoding (generation/kv_cache.py): attend over every key cached so far
            k, v = cache.update(k, v)  # (B, nh, T_past + T, hs)
        # mask None -> plain causal (training without packing, or a prefill without padding).
        causal = mask is None and T > 1
        p = self.dropout if self.training else 0.0
        # Every SDPA kernel accumulates the scores and the softmax in fp32, even under bf16/fp16 autocast:
        # what reorder_and_upcast_attn asks of HF's attention, so that flag needs no code here.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, scale=self.scale
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return dropout(self.c_proj(y), self.dropout, self.training)


_GELU_TANH = partial(F.gelu, approximate="tanh")  # GELU's tanh approximation
ACTIVATIONS = {  # config.json's activation_function -> the MLP's nonlinearity
    "gelu_new": _GELU_TANH,  # GPT-2's
    "gelu_pytorch_tanh": _GELU_TANH,  # the same, by torch's name
    "gelu_fast": _GELU_TANH,  # the same formula with rounded constants (< 1e-6 apart)
    "gelu": F.gelu,  # the exact GELU (erf)
    "relu": F.relu,
}


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = cfg.n_inner or 4 * cfg.n_embd  # H: 4C in GPT-2
        self.c_fc = nn.Linear(cfg.n_embd, hidden)  # C -> H
        self.c_proj = nn.Linear(hidden, cfg.n_embd)  # H -> C
        self.act = ACTIVATIONS[cfg.activation_function]
        self.dropout = cfg.dropout

    def forward(self, x):
        y = self.c_proj(self.act(self.c_fc(x)))
        return dropout(y, self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x, mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), mask, cache)  # pre-norm residual blocks, as GPT-2
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.grad_checkpoint = False  # recompute each block in backward: activations ~1 tensor per block
        self.tokenizer = None  # the checkpoint's own (model/hf.py sets it); None: GPT-2's (data/tokenizer.py)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.loss_fn = TargetCrossEntropy()  # no weights: a module so profilers can hook the loss
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def hidden(self, idx, pos=None, mask=None, caches=None):
        """Final hidden states (B, T, C). pos (B, T) overrides 0..T-1 (packing, left padding, decoding);
        caches, one per block, hold the keys and values of earlier tokens (generation/kv_cache.py)."""
        B, T = idx.shape
        if pos is None:
            start = caches[0].len if caches else 0
            if start + T > self.config.block_size:
                raise ValueError(
                    f"sequence reaches position {start + T - 1}, past the context of "
                    f"{self.config.block_size} tokens"
                )
            pos = torch.arange(start, start + T, device=idx.device).unsqueeze(0)  # (1, T)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            cache = caches[i] if caches else None
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                # keep only the block's input; its activations are recomputed in backward
                x = checkpoint(block, x, mask, cache, use_reentrant=False)
            else:
                x = block(x, mask, cache)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, loss_mask=None, pos=None, mask=None, reduction="mean"):
        """Logits (B, T, V) without targets; with targets (B, T) the loss over positions whose target is
        not IGNORE and whose loss_mask is set: "mean" per token, "sum" (for token-normalized accumulation) or
        "none" (the N losses, positions in row-major order).
        mask is an SDPA attention mask (B, 1, T, T), True = may attend (block-causal for packed rows)."""
        h = self.hidden(idx, pos=pos, mask=mask)  # (B, T, C)
        if targets is None:
            return self.lm_head(h)  # (B, T, V)
        valid = targets != IGNORE
        if loss_mask is not None:
            valid &= loss_mask.bool()
        # Project to the vocabulary only where a target exists: with the prompt masked this skips most of
        # the V x C matmul. The logits are laid out (V, N), vocabulary down the rows (model/loss.py: why).
        logits_t = self.lm_head.weight @ h[valid].t()  # (V, C) @ (C, N) -> (V, N)
        losses = self.loss_fn(logits_t, targets[valid])  # (N,), in the order of the valid positions
        return {"mean": losses.mean, "sum": losses.sum, "none": lambda: losses}[reduction]()

    def param_counts(self) -> dict[str, int]:
        """Parameters by component (the tied lm_head counted once, under embeddings)."""
        counts = {"embeddings": 0, "attention": 0, "mlp": 0, "layernorm": 0, "other": 0}
        for name, p in self.named_parameters():  # named_parameters() yields a shared tensor once
            if ".wte." in name or ".wpe." in name:
                key = "embeddings"
            elif ".attn." in name:
                key = "attention"
            elif ".mlp." in name:
                key = "mlp"
            elif ".ln_" in name:
                key = "layernorm"
            else:
                key = "other"
            counts[key] += p.numel()
        counts["total"] = sum(counts.values())
        return counts
