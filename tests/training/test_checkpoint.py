"""training/checkpoint.py: checkpoints are written atomically and resume exactly (the end-to-end resume is in
tests/test_train.py)."""

import pytest
import torch

import runs
from cli import UsageError
from model.gpt2 import GPT, config_for
from training.checkpoint import save_checkpoint
from training.config import TrainConfig


class Loader:
    def state_dict(self):
        return {"epoch": 0, "position": 3}


def test_a_checkpoint_cut_mid_write_is_never_picked_up(tmp_path):
    (tmp_path / "checkpoints" / "step-4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-4" / runs.COMPLETE_MARK).write_text("4\n")
    (tmp_path / "checkpoints" / "step-8").mkdir()  # no COMPLETE mark: the writer died
    (tmp_path / "checkpoints" / ".tmp-step-12").mkdir()
    assert runs.latest_checkpoint(tmp_path).name == "step-4"


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = TrainConfig(model="tiny", init="random", lora_rank=0, keep_checkpoints=2)
    model = GPT(config_for("tiny"))
    opt = torch.optim.AdamW(model.parameters())
    first = save_checkpoint(tmp_path, 4, model, opt, None, Loader(), cfg, cfg.lora())

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UsageError, match="previous checkpoint is intact"):
        save_checkpoint(tmp_path, 8, model, opt, None, Loader(), cfg, cfg.lora())
    assert runs.latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-4"]
