"""Batches from a token cache, for one DDP rank.

Shapes: B batch (rows), T time (positions in a row). An example of L tokens gives L-1 input positions:
idx = ids[:-1], targets = ids[1:] where the loss mask says the token is a target, else IGNORE.

Two ways to fill a batch:
  padded (default)  one example per row, right-padded to the longest in the batch. Examples are shuffled, then
                    sorted by length inside windows of 50 batches (length bucketing), so a batch's rows have
                    similar lengths and little padding; the batch order is shuffled again. pos and mask are
                    None: plain causal attention, and a real token never sees a pad to its right.
  packed (pack)     several examples per row of max_len positions, each with its own positions 0.. and a
                    block-causal mask, so an example never attends to another: its logits equal those of the
                    example run alone.

Every rank plans the same epoch from (seed, epoch) and takes batches rank, rank + W, ...; all ranks get the
same number of batches (the list wraps around, or with drop_last the remainder is dropped) so DDP never
waits on a rank that has run out. `state_dict()` is (epoch, position): a resumed run continues the same order.
"""

from __future__ import annotations

import numpy as np
import torch

from data.tokenizer import EOT
from model.gpt2 import IGNORE

BUCKET_BATCHES = 50  # length-bucketing window, in batches: bigger = less padding, less randomness
OPEN_ROWS = 8  # packing: an example goes into the first of the last 8 unfinished rows with room for it


class Batches:
    def __init__(
        self, ds, batch_size: int, max_len: int, pack: bool = False, shuffle: bool = True, seed: int = 0,
        rank: int = 0, world_size: int = 1, drop_last: bool = False,
    ):  # fmt: skip
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}"
            )
        longest = int(ds.lengths.max()) - 1 if len(ds) else 0
        if longest > max_len:
            raise ValueError(
                f"an example has {longest} input tokens, more than max_len={max_len}; prepare with it"
            )
        self.ds, self.batch_size, self.max_len, self.pack = ds, batch_size, max_len, pack
        self.shuffle, self.seed, self.rank, self.world_size, self.drop_last = (
            shuffle,
            seed,
            rank,
            world_size,
            drop_last,
        )
        self.inputs = np.maximum(np.asarray(ds.lengths, dtype=np.int64) - 1, 0)  # input positions per example
        # pads: the tokenizer's <|endoftext|> (any id would do: a pad has no loss, no token attends to it)
        self.pad = int(getattr(ds, "eot", EOT))
        self.epoch, self.position = 0, 0
        self._plan_cache: tuple[int, list] | None = None

    # ------------------------------------------------------------ the epoch's plan
    def _plan(self, epoch: int) -> list[list]:
        """This rank's batches for the epoch: lists of example indices (padded) or of rows (packed)."""
        if self._plan_cache and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        n, B = len(self.ds), self.batch_size
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.pack:
            units = self._pack_rows(order)
        else:  # length bucketing: sort inside windows, so neighbours in a batch have similar lengths
            w = B * BUCKET_BATCHES
            units = [
                int(i) for s in range(0, n, w) for i in sorted(order[s : s + w], key=lambda i: self.inputs[i])
            ]
        batches = [units[s : s + B] for s in range(0, len(units), B)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.drop_last:  # the one short batch (wherever shuffling put it)
            batches = [b for b in batches if len(b) == B]
        W = self.world_size
        per_rank = len(batches) // W if self.drop_last else -(-len(batches) // W)
        if batches and len(batches) < per_rank * W:  # wrap around so every rank gets per_rank batches
            batches = batches + batches[: per_rank * W - len(batches)]
        plan = batches[self.rank :: W][:per_rank]
        self._plan_cache = (epoch, plan)
        return plan

    def _pack_rows(self, order: np.ndarray) -> list[list[int]]:
        """Rows of examples whose input positions add up to at most max_len (first fit, a few open rows)."""
        rows, open_rows, room = [], [], []  # open_rows[k] has room[k] positions left
        for i in order.tolist():
            need = int(self.inputs[i])
            for k, r in enumerate(room):
                if need <= r:
                    open_rows[k].append(i)
                    room[k] -= need
                    break
            else:
                open_rows.append([i])
                room.append(self.max_len - need)
                if len(open_rows) > OPEN_ROWS:
                    rows.append(open_rows.pop(0))
                    room.pop(0)
        return rows + open_rows

    # ------------------------------------------------------------ iteration and state
    def __len__(self) -> int:
        """Batches in the current epoch for this rank (packed: depends on the epoch's order)."""
        return len(self._plan(self.epoch))

    def __iter__(self):
        """Batches from the current position to the end of the epoch; then the next epoch starts."""
        plan = self._plan(self.epoch)
        if self.position >= len(plan):
            self.epoch, self.position = self.epoch + 1, 0
            plan = self._plan(self.epoch)
        while self.position < len(plan):
            unit = plan[self.position]
            self.position += 1  # before yielding: a checkpoint taken after this batch resumes at the next
            yield self._collate(unit)
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return dict(epoch=self.epoch, position=self.position, seed=self.seed, batch_size=self.batch_size,
                    pack=self.pack, world_size=self.world_size)  # fmt: skip

    def load_state_dict(self, d: dict) -> None:
        for k in ("seed", "batch_size", "pack", "world_size"):
            if d.get(k, getattr(self, k)) != getattr(self, k):
                raise ValueError(f"cannot resume the data order: {k} was {d[k]}, now {getattr(self, k)}")
        self.epoch, self.position = int(d["epoch"]), int(d["position"])

    # ------------------------------------------------------------ tensors
    def _collate(self, unit: list) -> dict:
        rows = unit if self.pack else [[i] for i in unit]
        T = max(int(sum(self.inputs[i] for i in row)) for row in rows)
        B = len(rows)
        idx = np.full((B, T), self.pad, dtype=np.int64)
        targets = np.full((B, T), IGNORE, dtype=np.int64)
        real = np.zeros((B, T), dtype=bool)  # not padding
        pos = np.zeros((B, T), dtype=np.int64)
        start = np.broadcast_to(
            np.arange(T), (B, T)
        ).copy()  # where each position's example starts (pad: itself)
        for b, row in enumerate(rows):
            t = 0
            for i in row:
                ids, is_target = self.ds.example(i)
                n = len(ids) - 1
                idx[b, t : t + n] = ids[:-1]
                targets[b, t : t + n] = np.where(is_target[1:], ids[1:], IGNORE)
                real[b, t : t + n] = True
                pos[b, t : t + n] = np.arange(n)
                start[b, t : t + n] = t
                t += n
        out = dict(
            idx=torch.from_numpy(idx), targets=torch.from_numpy(targets), pos=None, mask=None,
            n_tokens=int(real.sum()), n_targets=int((targets != IGNORE).sum()),
        )  # fmt: skip
        if self.pack:  # block-causal: query i sees keys start(i) .. i, its own example's past and itself
            j = torch.arange(T)
            mask = (j <= j[:, None]) & (j >= torch.from_numpy(start)[:, :, None])  # (B, T, T)
            out["pos"], out["mask"] = torch.from_numpy(pos), mask[:, None]  # (B, 1, T, T)
        return out
