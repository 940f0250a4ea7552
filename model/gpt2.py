"""GPT-2 in plain PyTorch: config presets, the modules under GPT-2's own names, forward with a loss that
projects to the vocabulary only where a target exists, and KV-cache generation.

Shapes: B batch, T time (sequence), C n_embd, nh n_head, hs head size (C // nh), V vocab, N target tokens.
Module names are GPT-2's (`wte`, `h.N.attn.c_attn`, ...) so Hugging Face weights load by copy plus a
transpose of the four Conv1D weights (see model/hf.py); `lm_head` shares its weight with `wte`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

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

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "tiny": dict(n_layer=2, n_head=4, n_embd=32, block_size=128),  # for tests
}


def config_for(preset: str, **overrides) -> GPTConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {', '.join(PRESETS)}")
    return GPTConfig(**{**PRESETS[preset], **overrides})


def _onednn_linear():
    """oneDNN's linear (the op torch.compile's CPU backend calls), or None where this torch build lacks it."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear()
ONEDNN_MIN_WEIGHT = 2**19  # entries; GPT-2 124M's smallest matrix, attn.c_proj, has 589,824


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear; on CPU in fp32 with autograd off (decoding, evaluation) oneDNN runs it instead of MKL. For
    GPT-2's matrices that reads the weights 1.5x faster for one row and 1.8x for ten (docs/benchmarks.md).
    Only for large weights: oneDNN spends ~40 us per call, which its second thread wins back from ~0.5M
    entries up (below that MKL is faster: 12 against 37 us for 128 x 512). oneDNN's op has no backward, so
    training keeps F.linear.
    Inside torch.compile (generate(compile=True)) oneDNN's op cannot run: inductor lowers it only for frozen
    weights. There one row on a CPU in fp32 is written as multiply-and-sum, which inductor turns into one
    reduction kernel that reads the weight at ~20 GB/s, the rate of a plain sum, where oneDNN reads GPT-2's
    2-9 MB matrices at ~15 (docs/benchmarks.md); anything else is F.linear."""
    if torch.compiler.is_compiling():
        if (
            x.is_cpu
            and x.dtype == torch.float32
            and x.shape[:-1].numel() == 1
            and not torch.is_grad_enabled()
        ):
            y = (weight * x.reshape(1, -1)).sum(-1).view(*x.shape[:-1], -1)  # (..., 1 row, N)
            return y if bias is None else y + bias
        return F.linear(x, weight, bias)
    if (
        _ONEDNN_LINEAR is not None
        and x.is_cpu  # first: a GPU's call (host-bound while decoding) leaves after one check
        and not torch.is_grad_enabled()
        and weight.numel() >= ONEDNN_MIN_WEIGHT
        and x.dtype == weight.dtype == torch.float32
    ):
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


# On a GPU, attention runs on the flash or memory-efficient kernels, never cuDNN's. torch tries cuDNN first
# on Hopper, and cuDNN builds a plan for every new shape: on an H100 a bucketed batch of a new length took
# ~200 ms instead of ~25, and a packed batch with its mask ~2 s. Bucketed and packed batches change shape
# at almost every step (docs/benchmarks.md).
ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_backends(device: torch.device):
    """The context the blocks run in: ATTENTION_BACKENDS on a GPU; nothing to choose on a CPU."""
    return sdpa_kernel(ATTENTION_BACKENDS) if device.type == "cuda" else nullcontext()


def _checkpointed(block: nn.Module, x, mask, cache):
    """A block under activation checkpointing: its recompute runs during backward, outside hidden()'s
    context, so it enters the context itself."""
    with attention_backends(x.device):
        return block(x, mask, cache)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped where it does nothing (eval, p = 0). A decode step would otherwise pay Python's
    cost of two dropout calls per layer for no work: ~5% of a host-bound step (docs/benchmarks.md)."""
    return F.dropout(x, p, training) if training and p > 0 else x


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) whose product goes through linear() above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd)  # q|k|v fused: C -> 3C
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, mask=None, cache=None):
        B, T, C = x.shape
        # (B, T, 3C) -> 3 x (B, nh, T, hs): one view and one permute for q, k and v together
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:  # append this step's keys/values; attend over everything cached so far
            k, v = cache.update(k, v)  # (B, nh, T_past + T, hs)
        # mask None -> plain causal (training without packing, or a prefill without padding).
        causal = mask is None and T > 1
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return dropout(self.c_proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x):
        y = self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's gelu_new
        return dropout(y, self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x, mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), mask, cache)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Preallocated keys/values for one layer: (B, nh, T_max, hs), filled left to right."""

    def __init__(self, B, nh, T_max, hs, device, dtype):
        # zeros, not empty: a fixed-shape decode step (FixedShapeDecoder) reads the unwritten slots too, under
        # a mask, and a masked NaN would still reach the output (0 x NaN)
        self.k = torch.zeros(B, nh, T_max, hs, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.len = 0

    def update(self, k, v):
        T = k.size(2)
        self.k.narrow(2, self.len, T).copy_(k)
        self.v.narrow(2, self.len, T).copy_(v)
        self.len += T
        return self.k.narrow(2, 0, self.len), self.v.narrow(2, 0, self.len)

    def repeat_rows(self, n: int):
        """n samples per prompt: copy each row's cache n times after a single prefill."""
        self.k = self.k.repeat_interleave(n, dim=0)
        self.v = self.v.repeat_interleave(n, dim=0)


class SlotKVCache:
    """A KVCache seen at fixed shapes: update() writes at `slot`, a (1,) device tensor the caller sets, and
    returns the whole (B, nh, T_max, hs) buffers; the attention mask hides the slots not written yet."""

    def __init__(self, cache: KVCache, slot: torch.Tensor):
        self.k, self.v, self.slot = cache.k, cache.v, slot

    def update(self, k, v):  # k, v: (B, nh, 1, hs)
        self.k.index_copy_(2, self.slot, k)
        self.v.index_copy_(2, self.slot, v)
        return self.k, self.v


class FixedShapeDecoder:
    """Decode steps whose shapes and addresses never change: replayed as one CUDA graph on a GPU, or run
    through torch.compile on a CPU.

    The eager decode step attends over the t + 1 slots cached so far, a shape that grows every step. Here
    every step attends over the whole cache, with `keep` (rows, T_max) masking the slots not written yet, and
    writes its key/value at `slot`, a device tensor. So the step (the blocks and the vocabulary projection,
    ~150 kernels for GPT-2 124M) can be captured once and replayed with a single launch: at batch 1 a GPU
    decode step is host-bound (~3 ms of Python and launches around microseconds of work). On a CPU the same
    step is one graph for torch.compile (compile=True), where each one-row product becomes a reduction that
    reads its weight at the memory's rate (see linear()). Otherwise a CPU runs the step eagerly, which is
    how the tests compare it with the eager decoder."""

    def __init__(self, model: GPT, caches: list[KVCache], keep: torch.Tensor, compile: bool = False):
        dev, rows = keep.device, keep.size(0)
        self.model, self.keep = model, keep  # keep: (rows, T_max) bool, updated in place
        self.ids = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)
        self.caches = [SlotKVCache(c, self.slot) for c in caches]
        self.graph = None
        self.run = self._step
        if compile:  # one graph for every cache length: T_max is dynamic from the first compile
            torch._dynamo.mark_dynamic(keep, 1)
            for c in self.caches:
                torch._dynamo.mark_dynamic(c.k, 2)
                torch._dynamo.mark_dynamic(c.v, 2)
            self.run = functools.partial(_compiled_step(), self)

    def _step(self) -> torch.Tensor:
        self.keep.index_fill_(1, self.slot, True)  # the new token's own slot
        mask = self.keep[:, None, None, :]  # (rows, 1, 1, T_max)
        h = self.model.hidden(self.ids, pos=self.pos, mask=mask, caches=self.caches)  # (rows, 1, C)
        return self.model.head_logits(h[:, -1])  # (rows, V)

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, slot: int) -> torch.Tensor:
        """Logits (rows, V) for ids (rows, 1) at positions pos (rows, 1), cached at slot. On a GPU they are
        the graph's output tensor, overwritten by the next call."""
        self.ids.copy_(ids)
        self.pos.copy_(pos)
        self.slot.fill_(slot)
        if self.keep.device.type != "cuda":
            return self.run()
        with torch.cuda.device(self.keep.device):  # capture and replay on the model's GPU
            if self.graph is None:
                # Warm up on a side stream, as capture requires; the step is idempotent (the same slot gets
                # the same values), so the replay below redoes it harmlessly.
                here, side = torch.cuda.current_stream(), torch.cuda.Stream()
                side.wait_stream(here)
                with torch.cuda.stream(side):
                    self._step()
                here.wait_stream(side)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.logits = self._step()
            self.graph.replay()
        return self.logits


@functools.cache
def _compiled_step() -> Callable[[FixedShapeDecoder], torch.Tensor]:
    """FixedShapeDecoder._step through torch.compile, made once per process. One graph per model shape
    serves every cache length (FixedShapeDecoder marks T_max dynamic): for GPT-2 124M on 2 cores it
    compiles in ~40 s the first time, ~8 s once inductor's on-disk cache holds its kernels.
    realize_opcount_threshold 0: inductor stores every computed vector (a LayerNorm's output, say) instead
    of recomputing it inside the reduction that reads it. A one-row product reads its input once per output
    row: recomputed there, ln_f ran once per vocabulary row, 50,257 times a token (docs/benchmarks.md)."""
    return torch.compile(FixedShapeDecoder._step, options={"realize_opcount_threshold": 0})


class _CrossEntropyVN(torch.autograd.Function):
    """Per-target cross-entropy over logits laid out (V, N), computed in fp32. The forward keeps softmax
    rather than log-probs, so the backward is a single in-place pass over it: (softmax - one_hot) * grad."""

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
    """Cross-entropy of each target (N,) from logits transposed to (V, N), the vocabulary down the rows.

    Why transposed: for GPT-2's (V=50257, C=768) head, MKL runs W @ h^T about 1.5x faster than the
    h @ W^T of nn.Linear, and the backward W^T @ g about 1.25x faster. With the fused backward above, the
    head + loss of a LoRA step on 1,024 targets took 1.8 s instead of 2.4 s (docs/benchmarks.md).
    Same values as F.cross_entropy(logits_t.t(), targets, reduction="none")."""

    def forward(self, logits_t: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _CrossEntropyVN.apply(logits_t, targets)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.grad_checkpoint = False  # recompute each block in backward: activations ~1 tensor per block
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
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
        """Final hidden states (B, T, C). pos (B, T) overrides 0..T-1 (packing, left padding, decoding)."""
        B, T = idx.shape
        if pos is None:
            start = caches[0].len if caches else 0
            last = start + T - 1
            pos = torch.arange(start, start + T, device=idx.device).unsqueeze(0)  # (1, T)
        else:  # reading pos.max() waits for the device: only where that costs nothing
            host = pos.device.type == "cpu" and not torch.compiler.is_compiling()  # no host reads in a graph
            last = int(pos.max()) if host else 0
        if last >= self.config.block_size:
            raise ValueError(
                f"sequence reaches position {last}, past the context of {self.config.block_size} tokens"
            )
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        with attention_backends(x.device):
            for i, block in enumerate(self.transformer.h):
                cache = caches[i] if caches else None
                if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                    x = checkpoint(_checkpointed, block, x, mask, cache, use_reentrant=False)
                else:
                    x = block(x, mask, cache)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, loss_mask=None, pos=None, mask=None, reduction="mean", static=False):
        """Logits (B, T, V) without targets; with targets (B, T) the loss over positions whose target is
        not IGNORE and whose loss_mask is set: "mean" per token, "sum" (for token-normalized accumulation) or
        "none" (the N losses, positions in row-major order).
        mask is an SDPA attention mask (B, 1, T, T), True = may attend (block-causal for packed rows).
        static=True keeps every shape independent of the data, as a CUDA graph needs (train.CudaGraphStep):
        the same loss and gradients, but the vocabulary projection runs at every position."""
        h = self.hidden(idx, pos=pos, mask=mask)  # (B, T, C)
        if targets is None:
            return self.head_logits(h)  # (B, T, V)
        valid = targets != IGNORE
        if loss_mask is not None:
            valid &= loss_mask.bool()
        if static:  # h[valid] would have as many rows as the batch has targets: weight the others 0 instead
            if reduction == "none":
                raise ValueError("static=True gives reduction 'sum' or 'mean', not 'none'")
            keep = valid.flatten()  # (B*T,)
            logits_t = self.lm_head.weight @ h.flatten(0, 1).t()  # (V, C) @ (C, B*T) -> (V, B*T)
            losses = self.loss_fn(logits_t, targets.flatten().clamp(min=0)) * keep  # 0 loss, 0 gradient
            return losses.sum() if reduction == "sum" else losses.sum() / keep.sum()
        # Project to the vocabulary only where a target exists: with the prompt masked this skips most of
        # the C x V matmul. The logits come out as (V, N), the layout MKL multiplies fastest (see
        # TargetCrossEntropy), and are the only ones ever materialized.
        logits_t = self.lm_head.weight @ h[valid].t()  # (V, C) @ (C, N) -> (V, N)
        losses = self.loss_fn(logits_t, targets[valid])  # (N,), in the order of the valid positions
        return {"mean": losses.mean, "sum": losses.sum, "none": lambda: losses}[reduction]()

    def param_counts(self) -> dict[str, int]:
        """Parameters by component (the tied lm_head counted once, under embeddings)."""
        counts = {"embeddings": 0, "attention": 0, "mlp": 0, "layernorm": 0, "other": 0}
        for name, p in self.named_parameters():  # named_parameters() yields a shared tensor once
            key = (
                "embeddings"
                if ".wte." in name or ".wpe." in name
                else "attention"
                if ".attn." in name
                else "mlp"
                if ".mlp." in name
                else "layernorm"
                if ".ln_" in name
                else "other"
            )
            counts[key] += p.numel()
        counts["total"] = sum(counts.values())
        return counts

    # ---------------------------------------------------------------- generation
    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The vocabulary projection (..., C) -> (..., V) where logits are wanted (decoding, evaluation); the
        training loss projects only its targets, in its own layout (forward)."""
        return linear(h, self.lm_head.weight)

    @torch.no_grad()
    def generate_stream(
        self,
        prompts: list[list[int]],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        n: int = 1,
        eos: int | None = None,
        should_stop: Callable[[int, list[int]], bool] | None = None,
        generator: torch.Generator | None = None,
        cuda_graph: bool = False,
        compile: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (next ids (B*n,), still-running (B*n,) bool, on the CPU) once per new token.

        Prompts of different lengths are left-padded; each row gets its own positions and a key mask, so
        a row's ids equal those of the same prompt run alone. temperature 0 is greedy. Row b*n + j is
        sample j of prompt b. A row stops at `eos` or when should_stop(row, its new ids) is true.
        cuda_graph: decode through FixedShapeDecoder (on a GPU one CUDA graph per step; on a CPU the same
        fixed-shape steps run eagerly, slower: every step attends over the whole cache).
        compile: on a CPU, decode one fp32 row (one prompt, n = 1) through FixedShapeDecoder compiled by
        torch.compile: for GPT-2 124M ~1.3x the tokens/s, after a one-time compile (_compiled_step). More
        rows, or other dtypes, decode eagerly: there oneDNN, which a compiled graph cannot call, is faster.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        dev = self.transformer.wte.weight.device
        if compile and (cuda_graph or dev.type != "cpu"):
            raise ValueError("compile=True decodes on a CPU; on a GPU use cuda_graph=True")
        B, L = len(prompts), max(len(p) for p in prompts)
        T_max = L + max_new_tokens
        if T_max > self.config.block_size:
            max_new_tokens = self.config.block_size - L
            if max_new_tokens <= 0:
                raise ValueError(
                    f"a prompt of {L} tokens fills the context of {self.config.block_size} tokens; shorten it"
                )
            warnings.warn(
                f"generation stops at the context limit: {max_new_tokens} new tokens at most "
                f"after a {L}-token prompt (context {self.config.block_size})",
                stacklevel=2,
            )
            T_max = self.config.block_size
        idx = torch.zeros(B, L, dtype=torch.long, device=dev)
        keep = torch.zeros(B, T_max, dtype=torch.bool, device=dev)  # (B, T_max): which cache slots are real
        for b, p in enumerate(prompts):
            idx[b, L - len(p) :] = torch.tensor(p, device=dev)
            keep[b, L - len(p) : L] = True
        pos = (keep[:, :L].long().cumsum(1) - 1).clamp(min=0)  # (B, L): 0.. from each row's first real token
        padded = any(len(p) != L for p in prompts)
        cfg, dtype = self.config, self.transformer.wte.weight.dtype
        hs = cfg.n_embd // cfg.n_head
        caches = [KVCache(B, cfg.n_head, T_max, hs, dev, dtype) for _ in range(cfg.n_layer)]
        mask = None
        if padded:  # (B, 1, L, L): causal and not a pad key
            causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
            # A pad query may see itself: a row with no visible key would make SDPA return NaN.
            mask = (causal & keep[:, None, None, :L]) | torch.eye(L, dtype=torch.bool, device=dev)
        logits = self.head_logits(self.hidden(idx, pos=pos, mask=mask, caches=caches)[:, -1])  # (B, V)
        if n > 1:  # one prefill per prompt, then n copies of its cache
            for c in caches:
                c.repeat_rows(n)
            logits, keep, pos = (t.repeat_interleave(n, dim=0) for t in (logits, keep, pos))
        next_pos = pos[:, -1:] + 1  # (B*n, 1)
        compile = compile and logits.size(0) == 1 and dtype == torch.float32
        decoder = FixedShapeDecoder(self, caches, keep, compile) if cuda_graph or compile else None
        running = torch.ones(logits.size(0), dtype=torch.bool)  # on the CPU: read every step
        new_ids: list[list[int]] = [[] for _ in range(logits.size(0))]
        for step in range(max_new_tokens):
            nxt = sample(logits, temperature, top_k, top_p, generator)  # (B*n,)
            ids = nxt.tolist()  # one read from the device per step, not one per row
            for r in running.nonzero().flatten().tolist():
                new_ids[r].append(ids[r])
                if (eos is not None and ids[r] == eos) or (should_stop and should_stop(r, new_ids[r])):
                    running[r] = False
            yield nxt, running.clone()
            if not running.any() or step == max_new_tokens - 1:
                return
            t = L + step  # cache slot of the token just sampled
            if decoder:
                logits = decoder(nxt[:, None], next_pos, t)
            else:
                keep[:, t] = True
                mask = keep[:, None, None, : t + 1] if padded else None  # (B*n, 1, 1, t+1)
                h = self.hidden(nxt[:, None], pos=next_pos, mask=mask, caches=caches)  # (B*n, 1, C)
                logits = self.head_logits(h[:, -1])
            next_pos = next_pos + 1

    def generate(self, prompts: list[list[int]], **kw) -> list[list[int]]:
        """New ids per row (B*n rows), each ending at eos / where the stop condition fired."""
        rows, was_running = [], []
        for nxt, running in self.generate_stream(prompts, **kw):
            ids = nxt.tolist()
            if not rows:
                rows, was_running = [[] for _ in ids], [True] * len(ids)
            for r, on in enumerate(was_running):
                if on:
                    rows[r].append(ids[r])
            was_running = running.tolist()
        return rows


def sample(logits, temperature=0.0, top_k=0, top_p=1.0, generator=None):
    """Next ids (B,) from logits (B, V): greedy at temperature 0, else top-k, then nucleus (top-p)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)  # (B, V), a tensor of our own: the steps below edit it in place
    if top_p < 1.0:  # keep the smallest set of most likely ids whose mass reaches top_p (as HF)
        ascending = _sorted_values(probs)
        # ids are dropped from the unlikely end while the dropped mass stays <= 1 - top_p; one always stays
        dropped = ascending.double().cumsum_(-1) <= 1.0 - top_p
        n_drop = dropped.sum(-1, keepdim=True).clamp_(max=probs.size(-1) - 1)
        probs.masked_fill_(probs < ascending.gather(-1, n_drop), 0.0)  # ties at the cut all stay
    # Inverse-CDF sampling: one uniform per row, looked up in the running sum (float64, so that tiny
    # probabilities keep their share). torch.multinomial draws an exponential per vocabulary entry instead.
    cdf = probs.double().cumsum_(-1)  # (B, V)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, device=cdf.device, dtype=cdf.dtype, generator=generator) * total
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))  # never the total itself (rounding)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)  # the first id whose cdf exceeds u


def _sorted_values(x: torch.Tensor) -> torch.Tensor:
    """x sorted ascending along the last dim, values only. On CPU numpy's vectorized sort does this ~7x
    faster than torch.sort, which also builds an index (10 x 50257 probabilities: 3 ms against 24 ms)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))
    return x.sort(dim=-1).values
