"""Keys and values of the tokens decoded so far, one cache per block, so each new token attends over them
instead of recomputing the whole prefix. GPT.hidden takes a list of these (`caches`).

Shapes: B rows (prompts x samples), nh heads, T_max cache length (prompt + new tokens), hs head size.
"""

from __future__ import annotations

import torch


class KVCache:
    """Preallocated keys/values for one layer: (B, nh, T_max, hs), filled left to right."""

    def __init__(self, B, nh, T_max, hs, device, dtype):
        # zeros, not empty: a fixed-shape decode step (generation/fixed_shape.py) reads the unwritten slots
        # too, under a mask, and a masked NaN would still reach the output (0 x NaN)
        self.k = torch.zeros(B, nh, T_max, hs, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.len = 0

    def update(self, k, v):
        """Append k, v (B, nh, T, hs); return everything cached so far, (B, nh, len, hs) each."""
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
