"""training/optim.py: the schedule, and which parameters decay."""

import pytest

from lora.config import LoRAConfig
from lora.lora import inject_lora
from model.gpt2 import GPT, config_for
from training.optim import get_lr, make_optimizer


def test_get_lr_warms_up_then_decays_to_the_floor():
    lrs = [get_lr(s, 1.0, warmup=10, total=100, min_ratio=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone cosine decay after warmup
    assert lrs[100] == pytest.approx(0.1)


@pytest.mark.parametrize("lora", [None, LoRAConfig(rank=4, targets="all")])
def test_weight_decay_falls_on_trainable_matrices_only(lora):
    model = GPT(config_for("tiny"))
    if lora is not None:
        inject_lora(model, lora, verbose=False)
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert opt.defaults["fused"]  # parameters on the CPU: one fused kernel per step
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in decay["params"] + no_decay["params"]} == trainable
    assert (len(no_decay["params"]) == 0) == (lora is not None)  # LoRA: only A and B train, both matrices
