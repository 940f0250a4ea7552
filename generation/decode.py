"""Generation with a KV cache: one prefill over the prompts, then one token per step, greedy or sampled.

    rows = generate(model, [ids_a, ids_b], max_new_tokens=64, temperature=0.2, top_p=0.95, n=5, eos=50256)

Prompts of different lengths are left-padded; each row gets its own positions and a key mask, so a row's
ids equal those of the same prompt run alone. Row b*n + j is sample j of prompt b.

Shapes: B prompts, L longest prompt, T_max = L + new tokens, V vocab, C n_embd.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

from generation.fixed_shape import FixedShapeDecoder
from generation.kv_cache import KVCache


@torch.no_grad()
def generate_stream(
    model,
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

    temperature 0 is greedy. A row stops at `eos` or when should_stop(row, its new ids) is true.
    cuda_graph: decode through FixedShapeDecoder (on a GPU one CUDA graph per step; on a CPU the same
    fixed-shape steps run eagerly, slower: every step attends over the whole cache).
    compile: on a CPU, decode one fp32 row (one prompt, n = 1) through FixedShapeDecoder under
    torch.compile, after a one-time compile; more rows, or other dtypes, decode eagerly, where oneDNN
    (model/kernels.py), which a compiled graph cannot call, is faster.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    cfg, dev = model.config, model.transformer.wte.weight.device
    if compile and (cuda_graph or dev.type != "cpu"):
        raise ValueError("compile=True decodes on a CPU; on a GPU use cuda_graph=True")
    B, L = len(prompts), max(len(p) for p in prompts)
    T_max = L + max_new_tokens
    if T_max > cfg.block_size:
        max_new_tokens = cfg.block_size - L
        if max_new_tokens <= 0:
            raise ValueError(
                f"a prompt of {L} tokens fills the context of {cfg.block_size} tokens; shorten it"
            )
        warnings.warn(
            f"generation stops at the context limit: {max_new_tokens} new tokens at most "
            f"after a {L}-token prompt (context {cfg.block_size})",
            stacklevel=2,
        )
        T_max = cfg.block_size
    idx = torch.zeros(B, L, dtype=torch.long, device=dev)
    keep = torch.zeros(B, T_max, dtype=torch.bool, device=dev)  # (B, T_max): which cache slots are real
    for b, p in enumerate(prompts):
        idx[b, L - len(p) :] = torch.tensor(p, device=dev)
        keep[b, L - len(p) : L] = True
    pos = (keep[:, :L].long().cumsum(1) - 1).clamp(min=0)  # (B, L): 0.. from each row's first real token
    padded = any(len(p) != L for p in prompts)
    dtype = model.transformer.wte.weight.dtype
    caches = [KVCache(B, cfg.n_head, T_max, cfg.n_embd // cfg.n_head, dev, dtype) for _ in range(cfg.n_layer)]
    mask = None
    if padded:  # (B, 1, L, L): causal and not a pad key
        causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
        # A pad query may see itself: a row with no visible key would make SDPA return NaN.
        mask = (causal & keep[:, None, None, :L]) | torch.eye(L, dtype=torch.bool, device=dev)
    logits = model.lm_head(model.hidden(idx, pos=pos, mask=mask, caches=caches)[:, -1])  # (B, V)
    if n > 1:  # one prefill per prompt, then n copies of its cache
        for c in caches:
            c.repeat_rows(n)
        logits, keep, pos = (t.repeat_interleave(n, dim=0) for t in (logits, keep, pos))
    next_pos = pos[:, -1:] + 1  # (B*n, 1)
    compile = compile and logits.size(0) == 1 and dtype == torch.float32
    decoder = FixedShapeDecoder(model, caches, keep, compile) if cuda_graph or compile else None
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
            h = model.hidden(nxt[:, None], pos=next_pos, mask=mask, caches=caches)  # (B*n, 1, C)
            logits = model.lm_head(h[:, -1])  # (B*n, V)
        next_pos = next_pos + 1


def generate(model, prompts: list[list[int]], **kw) -> list[list[int]]:
    """New ids per row (B*n rows), each ending at eos / where the stop condition fired."""
    rows, was_running = [], []
    for nxt, running in generate_stream(model, prompts, **kw):
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
    """x sorted ascending along the last dim, values only: on a CPU numpy's sort, which builds no index, is
    several times faster than torch.sort for a (rows, 50257) batch."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))
    return x.sort(dim=-1).values
