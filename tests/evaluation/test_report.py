"""evaluation/report.py: the full-vs-LoRA comparison tabulates cost and quality per run, from summary.json
or, without it, from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import UsageError
from evaluation.report import compare


def make_run(root, name, rank, summary=None, logs=(), split=None):
    run = root / name
    (run / "eval" / "t").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"lora_rank": rank, "init": "pretrained"}))
    if summary:
        (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    metrics = {"split": split or {}, "humaneval": {"pass@1": 0.05}}
    (run / "eval" / "t" / "metrics.json").write_text(json.dumps({"metrics": metrics, "random_init": False}))
    return str(run)


def test_compare_tabulates_cost_and_quality_per_run(tmp_path):
    cost = dict(trainable_params=124439808, peak_mem_bytes=3 * 2**30, train_time_s=600, tokens_per_sec=900.0)
    quality = dict(bleu=17.03, rouge_l=0.444, exec_clean=0.4)
    full = make_run(tmp_path, "full", 0, dict(cost, final_val_loss=1.25), split=quality)
    logs = [
        dict(step=10, loss=2.0, tokens_per_sec=1000.0, mem_bytes=2**30, elapsed_s=60),
        dict(step=10, val_loss=1.5),
    ]
    lora = make_run(tmp_path, "lora8", 8, logs=logs, split=dict(bleu=16.2, rouge_l=0.438, exec_clean=0.3))
    rows = compare([full, lora], tmp_path / "cmp")
    assert rows[0]["method"] == "full fine-tune" and rows[1]["method"] == "LoRA r=8"
    assert (
        rows[0]["peak_mem_gib"] == 3.0 and rows[0]["train_time_min"] == 10.0 and rows[0]["val_loss"] == 1.25
    )
    # Without summary.json: metrics.jsonl gives speed, memory, time and the last validation loss.
    assert (
        rows[1]["tokens_per_sec"] == 1000.0 and rows[1]["peak_mem_gib"] == 1.0 and rows[1]["val_loss"] == 1.5
    )
    assert rows[1]["train_time_min"] == 1.0 and rows[1]["trainable_params"] is None
    md = (tmp_path / "cmp" / "compare.md").read_text()
    row = (
        "| full | full fine-tune | 124,439,808 | 3.00 | 10.0 | 900 | 1.2500 | 17.03 | 0.444 | 40.0% | 5.0% |"
    )
    assert row + " — |" in md  # no pass@10 with one sample: a dash, not a zero
    assert (tmp_path / "cmp" / "compare.csv").is_file() and (tmp_path / "cmp" / "compare.png").is_file()


def test_an_undefined_rank_correlation_is_said_in_words():
    """Spearman's rho is NaN where one side has a single value (every sample failed, say): the report says
    "undefined", never "nan"."""
    from evaluation.report import fmt_rho

    assert fmt_rho(float("nan")) == "undefined (all values equal)"
    assert fmt_rho(0.12345) == "0.123"


def test_compare_never_replaces_a_comparison_of_other_runs_silently(tmp_path, capsys):
    a, b, c = (make_run(tmp_path, n, r, split=dict(bleu=0.0, exec_clean=0.0)) for n, r in
               (("a", 0), ("b", 8), ("c", 64)))  # fmt: skip
    out = tmp_path / "cmp"
    compare([a, b], out)
    first = (out / "compare.md").read_text()
    compare([a, b], out)  # the same runs again: updated, and said
    assert "replacing the earlier comparison of these runs" in capsys.readouterr().out
    with pytest.raises(UsageError, match="holds a comparison of other runs \\(a, b\\); pass --out-dir"):
        compare([a, c], out)
    assert (out / "compare.md").read_text() == first  # untouched
    compare([a, c], out, overwrite=True)
    assert json.loads((out / "compare.json").read_text())["runs"] == [str(Path(r).resolve()) for r in (a, c)]
