"""Decode steps whose shapes and addresses never change: replayed as one CUDA graph on a GPU, or run through
torch.compile on a CPU. generation/decode.py uses this when asked (cuda_graph=True or compile=True).

The eager decode step attends over the t + 1 slots cached so far, a shape that grows every step. Here every
step attends over the whole cache, with `keep` (rows, T_max) masking the slots not written yet, and writes
its key/value at `slot`, a device tensor. So the step (the blocks and the vocabulary projection) can be
captured once and replayed with a single launch: at batch 1 a GPU decode step is host-bound, mostly Python
and kernel launches around microseconds of work. On a CPU the same step is one graph for torch.compile,
where each one-row product becomes a reduction that streams its weight (model/kernels.py). Otherwise a CPU
runs the step eagerly, which is how the tests compare it with the eager decoder. Measurements:
docs/benchmarks.md ("Generation").
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from generation.kv_cache import KVCache, SlotKVCache


class FixedShapeDecoder:
    def __init__(self, model, caches: list[KVCache], keep: torch.Tensor, compile: bool = False):
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
        return self.model.lm_head(h[:, -1])  # (rows, V)

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
    """FixedShapeDecoder._step through torch.compile, made once per process; one graph per model shape
    serves every cache length (FixedShapeDecoder marks T_max dynamic).
    realize_opcount_threshold 0: inductor stores every computed vector (a LayerNorm's output, say) instead
    of recomputing it inside the reduction that reads it, which a one-row product would do once per output
    row: ln_f once per vocabulary row."""
    return torch.compile(FixedShapeDecoder._step, options={"realize_opcount_threshold": 0})
