"""training/report.py: metrics.jsonl rows and log lines; an MFU above 100% is never reported as a result."""

from __future__ import annotations

import json

import torch

from training.report import Progress, log_line


def rows_logged(tmp_path, peak_tflops: float) -> tuple[list[dict], list[str]]:
    lines: list[str] = []
    path = tmp_path / "metrics.jsonl"
    progress = Progress(3, 0, every=1, steps_per_epoch=3, flops_per_token=1e9, peak_tflops=peak_tflops,
                        device=torch.device("cpu"), metrics=path, log=lines.append)  # fmt: skip
    with progress:
        for step in (1, 2, 3):
            progress.step(step, loss=2.0, lr=1e-4, grad_norm=0.5, n_tokens=1000)
    return [json.loads(r) for r in path.read_text().splitlines()], lines


def test_mfu_is_the_share_of_the_peak(tmp_path):
    rows, _ = rows_logged(tmp_path, peak_tflops=1e9)  # an enormous peak: a tiny share
    assert [r["step"] for r in rows] == [1, 2, 3] and all(0 < r["mfu"] < 1e-3 for r in rows)
    assert "mfu 0.00% |" in log_line(rows[0], 3)


def test_an_mfu_above_100_percent_is_left_out_and_said_once(tmp_path):
    """1e9 FLOPs per token at 1,000 tokens a step cannot fit under a 1e-9 TFLOP/s peak: the peak is wrong."""
    rows, lines = rows_logged(tmp_path, peak_tflops=1e-9)
    assert all(r["mfu"] is None for r in rows) and all(r["tokens_per_sec"] > 0 for r in rows)
    said = [line for line in lines if "MFU would read" in line]
    assert len(said) == 1 and "--peak-tflops" in said[0]
    assert "mfu n/a |" in log_line(rows[0], 3)


def test_summary_records_the_trained_architecture_and_where_the_weights_came_from(tmp_path):
    """A run from --weights DIR names DIR, not the default preset, and records the architecture it trained."""
    from model.gpt2 import GPT, config_for
    from training.config import TrainConfig
    from training.report import write_summary

    rows = [dict(step=s, loss=2.0, tokens_per_sec=100.0, mem_bytes=2**20, elapsed_s=s) for s in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = GPT(config_for("tiny", n_layer=4))
    cfg = TrainConfig(weights="checkpoints/four-layers", lora_rank=0)  # the preset stays the default gpt2
    summary = write_summary(tmp_path, model, cfg, train_time=2.0)
    assert summary["model"] == "checkpoints/four-layers" and summary["architecture"]["n_layer"] == 4
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "plots" / "loss.png").is_file()
