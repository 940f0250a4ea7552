"""training/step.py: the loader's dicts become Batches, and a step's gradient is that of its mean token loss
however the tokens are split into micro-batches."""

import copy

import numpy as np
import torch

from data.loader import Batches
from model.gpt2 import GPT, config_for
from training.step import Batch, TrainStep


class ToyExamples:
    """Variable-length examples with a prompt prefix that carries no loss (what data.prepare produces)."""

    def __init__(self, n: int = 8, seed: int = 0):
        g = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            length = int(g.integers(8, 40))
            prompt = int(g.integers(2, length - 3))
            self.items.append((g.integers(0, 50000, length), np.arange(length) >= prompt))
        self.lengths = np.array([len(ids) for ids, _ in self.items])

    def __len__(self):
        return len(self.items)

    def example(self, i):
        return self.items[i]


def test_a_batch_carries_the_loaders_fields_and_moves_them_together():
    (d,) = Batches(ToyExamples(), batch_size=8, max_len=64, pack=True, shuffle=False)
    b = Batch.from_dict(d)
    assert b.tensors() == (d["idx"], d["targets"], d["pos"], d["mask"])
    assert (b.n_targets, b.n_tokens) == (d["n_targets"], d["n_tokens"]) and b.n_targets < b.n_tokens
    moved = b.to(torch.device("meta"))
    assert all(t.device.type == "meta" for t in moved.tensors()) and moved.n_targets == b.n_targets
    (unpacked,) = Batches(ToyExamples(), batch_size=8, max_len=64, shuffle=False)
    assert Batch.from_dict(unpacked).to(torch.device("cpu")).mask is None


def test_accumulation_is_normalized_by_the_target_tokens_of_the_whole_step():
    """batch 8 x accum 1 and batch 2 x accum 4 over the same examples: the same gradient (SGD lr=1 step)."""
    torch.manual_seed(0)
    base = GPT(config_for("tiny"))
    ds = ToyExamples()
    grads = []
    for batch_size in (8, 2):
        model = copy.deepcopy(base)
        micro = [Batch.from_dict(d) for d in Batches(ds, batch_size, max_len=64, shuffle=False)]
        assert sum(len(b.idx) for b in micro) == 8
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        TrainStep(model, opt, torch.device("cpu"), grad_clip=0.0)(micro)
        grads.append({n: base.state_dict()[n] - p for n, p in model.state_dict().items()})
    assert len({len(b) for b in [grads[0], grads[1]]}) == 1
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=0)
    assert any(g.abs().max() > 1e-4 for g in grads[0].values())  # a real step happened
