"""training/build.py: the model to train is in training mode from step 1 whatever its source, so
activation checkpointing and dropout act from the first step (a pretrained load comes back in eval mode)."""

from __future__ import annotations

import pytest
import torch

import model.gpt2 as G
from training.build import build_model
from training.config import TrainConfig


@pytest.mark.parametrize("source", ["weights", "random"])
def test_the_model_trains_in_training_mode_from_step_one(hf_tiny_dir, monkeypatch, source):
    weights = dict(weights=str(hf_tiny_dir)) if source == "weights" else dict(init="random")
    cfg = TrainConfig(
        model="tiny", lora_rank=4, lora_dropout=0.5, grad_checkpoint=True, max_len=64, **weights
    )
    model = build_model(cfg, torch.device("cpu"), torch.float32, log=lambda *a, **k: None)
    assert model.training and all(m.training for m in model.modules())
    lora_dropout = model.transformer.h[0].attn.c_attn.dropout
    assert isinstance(lora_dropout, torch.nn.Dropout) and lora_dropout.training
    checkpointed = []
    real = G.checkpoint
    monkeypatch.setattr(G, "checkpoint", lambda *a, **k: checkpointed.append(1) or real(*a, **k))
    idx = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    model(idx, targets=idx).backward()
    assert len(checkpointed) == model.config.n_layer  # every block recomputed in backward, from step 1


def test_init_auto_takes_local_weights_and_falls_back_to_random_offline(hf_tiny_dir, monkeypatch, tmp_path):
    """--init auto: a readable --weights folder is "pretrained"; a preset with no weights, or the hub out of
    reach (HF_HUB_OFFLINE here), is "random" with a loud notice; an unreadable --weights stays an error."""
    from cli import UsageError
    from training.build import resolve_init

    said: list[str] = []
    assert resolve_init(TrainConfig(model="tiny", weights=str(hf_tiny_dir)), said.append) == "pretrained"
    assert resolve_init(TrainConfig(model="tiny"), said.append) == "random" and "RANDOM tiny" in said[-1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # nothing cached
    said.clear()
    assert resolve_init(TrainConfig(model="gpt2", max_len=64), said.append) == "random"
    assert any("RANDOM gpt2" in line and "--weights FOLDER" in line for line in said)
    with pytest.raises(UsageError, match="nowhere"):
        resolve_init(TrainConfig(model="tiny", weights=str(tmp_path / "nowhere")), said.append)
    assert resolve_init(TrainConfig(model="tiny", init="random"), said.append) == "random"
