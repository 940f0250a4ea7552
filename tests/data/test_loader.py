"""data/loader.py: targets shifted and masked, packing that keeps examples apart (same logits as alone),
length bucketing, determinism, exact resume, and DDP sharding."""

import json

import numpy as np
import pytest
import torch

from data.loader import Batches
from data.prepare import DataConfig, prepare
from data.tokenizer import EOT
from model.gpt2 import GPT, IGNORE, config_for


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """About 50 training functions of 48..125 tokens, prepared through the real token cache."""
    tmp = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    with open(tmp / "d.jsonl", "w") as f:
        for i in range(50):
            body = "".join(f"    y = y * {k} + x\n" for k in range(int(rng.integers(1, 10))))
            code = f"def poly_{i}(x):\n    y = 1\n{body}    return y"
            f.write(
                json.dumps({"docstring": f"Polynomial number {i} of x.", "code": code, "split": "train"})
                + "\n"
            )
    cfg = DataConfig(data=f"jsonl:{tmp / 'd.jsonl'}", cache_dir=str(tmp / "c"), max_len=128)
    return prepare(cfg, splits=("train",), log=lambda *a: None)["train"]


def examples_in(b: dict) -> int:
    return int((b["targets"] != IGNORE).sum())


def test_targets_are_the_next_token_where_the_loss_mask_says_so_and_ignore_elsewhere(ds):
    (b,) = list(Batches(ds, batch_size=len(ds), max_len=128, shuffle=False))
    which = {tuple(ds.example(j)[0][:-1].tolist()): j for j in range(len(ds))}  # bucketing reorders rows
    for row in range(len(ds)):
        n = int((b["idx"][row] != EOT).sum())
        full, mask = ds.example(which[tuple(b["idx"][row, :n].tolist())])
        assert n == len(full) - 1
        expected = np.where(mask[1:], full[1:], IGNORE)
        assert torch.equal(b["targets"][row, :n], torch.from_numpy(expected))
        assert (b["targets"][row, n:] == IGNORE).all()  # padding carries no loss
    assert b["pos"] is None and b["mask"] is None
    assert b["n_tokens"] == int(ds.lengths.sum()) - len(ds)
    assert b["n_targets"] == ds.num_target_tokens == examples_in(b)


def segments(pos_row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of positions 0, 1, 2, ... in a packed row (pads are runs of length 1)."""
    starts = (pos_row == 0).nonzero().flatten().tolist() + [len(pos_row)]
    return [(s, e - s) for s, e in zip(starts, starts[1:])]


def test_packed_examples_have_the_logits_they_have_alone(ds):
    torch.manual_seed(0)
    model = GPT(config_for("tiny")).eval()
    b = max(
        Batches(ds, batch_size=2, max_len=128, pack=True, seed=1), key=lambda b: int((b["pos"] == 0).sum())
    )
    T = b["idx"].shape[1]
    assert b["mask"].shape == (2, 1, T, T) and b["pos"].shape == (2, T)
    with torch.no_grad():
        packed = model(b["idx"], pos=b["pos"], mask=b["mask"])  # (B, T, V)
        checked = 0
        for row in range(2):
            for s, n in segments(b["pos"][row]):
                if n == 1 and b["targets"][row, s] == IGNORE:
                    continue  # padding
                alone = model(b["idx"][row : row + 1, s : s + n])  # (1, n, V), plain causal attention
                torch.testing.assert_close(packed[row, s : s + n], alone[0], atol=1e-5, rtol=1e-5)
                checked += 1
    assert checked >= 3  # a row held several examples, so the mask had something to keep apart


class FirstN:
    """The first n examples of a dataset (what Batches reads: len, lengths, example)."""

    def __init__(self, ds, n):
        self.ds, self.lengths = ds, ds.lengths[:n]

    def __len__(self):
        return len(self.lengths)

    def example(self, i):
        return self.ds.example(i)


def test_packed_batch_loss_equals_the_padded_batch_loss(ds):
    torch.manual_seed(0)
    model = GPT(config_for("tiny")).eval()
    small = FirstN(ds, 8)
    (padded,) = Batches(small, batch_size=8, max_len=128, shuffle=False)
    (packed,) = Batches(small, batch_size=8, max_len=128, pack=True, shuffle=False)
    assert packed["idx"].shape[0] < 8  # fewer rows than examples
    with torch.no_grad():
        losses = [
            model(b["idx"], b["targets"], pos=b["pos"], mask=b["mask"], reduction="sum")
            for b in (padded, packed)
        ]
    assert padded["n_targets"] == packed["n_targets"]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-4)


def test_every_example_appears_once_per_epoch_padded_and_packed(ds):
    for pack in (False, True):
        targets = sum(b["n_targets"] for b in Batches(ds, batch_size=4, max_len=128, pack=pack, seed=3))
        assert targets == ds.num_target_tokens


def test_length_bucketing_pads_less_than_random_batches(ds):
    def pad_fraction(bs):
        total = sum(b["idx"].numel() for b in bs)
        return 1 - sum(b["n_tokens"] for b in bs) / total

    bucketed = list(Batches(ds, batch_size=4, max_len=128, seed=0))
    rng = np.random.default_rng(0).permutation(len(ds))
    random_T = [max(ds.lengths[rng[s : s + 4]] - 1) * len(rng[s : s + 4]) for s in range(0, len(ds), 4)]
    random_pad = 1 - (ds.lengths.sum() - len(ds)) / sum(random_T)
    assert pad_fraction(bucketed) < random_pad / 2


def test_same_seed_same_order_other_seed_or_epoch_another(ds):
    def order(seed, epoch=0):
        bs = Batches(ds, batch_size=4, max_len=128, seed=seed)
        bs.set_epoch(epoch)
        return [b["idx"][:, :8].tolist() for b in bs]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != order(0, epoch=1)


@pytest.mark.parametrize("pack", [False, True])
def test_resume_from_state_dict_continues_the_same_order(ds, pack):
    whole = Batches(ds, batch_size=4, max_len=128, pack=pack, seed=5)
    reference = [b["idx"] for _ in range(2) for b in whole]  # two epochs uninterrupted
    first = Batches(ds, batch_size=4, max_len=128, pack=pack, seed=5)
    it = iter(first)
    seen = [next(it)["idx"] for _ in range(3)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint file
    resumed = Batches(ds, batch_size=4, max_len=128, pack=pack, seed=5)
    resumed.load_state_dict(state)
    rest = [b["idx"] for b in resumed] + [b["idx"] for b in resumed]
    got = seen + rest
    assert len(got) == len(reference) and all(torch.equal(a, b) for a, b in zip(got, reference))
    with pytest.raises(ValueError, match="batch_size was 4, now 8"):
        Batches(ds, batch_size=8, max_len=128, pack=pack, seed=5).load_state_dict(state)


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_get_equal_counts_and_together_cover_the_epoch(ds, drop_last):
    W = 3
    ranks = [
        Batches(ds, batch_size=4, max_len=128, rank=r, world_size=W, drop_last=drop_last) for r in range(W)
    ]
    counts = [len(r) for r in ranks]
    assert len(set(counts)) == 1 and counts[0] > 0
    batches = [tuple(b["idx"][:, :12].flatten().tolist()) for r in ranks for b in r]
    if drop_last:  # full batches only, as many per rank: the last len(ds) // 4 % W are dropped
        assert all(b["idx"].shape[0] == 4 for r in ranks for b in r)
        assert len(set(batches)) == len(batches) == len(ds) // 4 // W * W
    else:  # every batch of the epoch reaches some rank; the list wraps around to even the counts
        assert len(set(batches)) == -(-len(ds) // 4)
        assert len(batches) == -(-len(set(batches)) // W) * W


def test_an_example_longer_than_max_len_is_refused(ds):
    with pytest.raises(ValueError, match="more than max_len=16"):
        Batches(ds, batch_size=2, max_len=16)
