"""evaluate.py end to end: a random tiny GPT-2 in a run folder, the real data path, generator and sandbox;
and the self-check over all 164 HumanEval problems."""

import json

import pytest
import torch

from evaluate import main
from evaluation.report import compare

FUNCTIONS = [
    ("Add two numbers.", "def add(a, b):\n    return a + b"),
    ("Reverse a string.", "def rev(s):\n    return s[::-1]"),
    ("Square every number.", "def squares(xs):\n    return [x * x for x in xs]"),
    (
        "Return the largest item.",
        "def biggest(xs):\n    best = xs[0]\n    for x in xs:\n        best = max(best, x)",
    ),
]


@pytest.fixture
def tiny_run(tmp_path):
    """A run folder in train.py's layout (see runs.py) holding a random tiny GPT-2 as final/ and step-2."""
    from model.gpt2 import GPT, config_for
    from model.hf import save_pretrained

    data = tmp_path / "functions.jsonl"
    with data.open("w") as f:
        for i in range(200):  # ~3% land in the hash-chosen test split
            doc, code = FUNCTIONS[i % len(FUNCTIONS)]
            f.write(
                json.dumps({"docstring": f"{doc} Variant {i}.", "code": code.replace("(", f"_{i}(", 1)})
                + "\n"
            )
    run = tmp_path / "run"
    torch.manual_seed(0)
    save_pretrained(GPT(config_for("tiny")), run / "final")
    save_pretrained(GPT(config_for("tiny")), run / "checkpoints" / "step-2")
    (run / "checkpoints" / "step-2" / "COMPLETE").write_text("2\n")
    config = dict(model="tiny", init="random", weights=None, lora_rank=0, data=f"jsonl:{data}",
                  data_files=None, pysrc_roots=None, max_train_examples=None, max_len=128,
                  prompt_format="study", train_on_prompt=False, cache_dir=str(tmp_path / "c"))  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    logs = [
        dict(step=s, epoch=s / 4, loss=10.0, tokens_per_sec=100.0, mem_bytes=2**28, elapsed_s=s)
        for s in (1, 2, 3, 4)
    ]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in logs + [dict(step=4, val_loss=9.5)])
    )
    return run


@pytest.mark.slow
def test_random_tiny_run_end_to_end_writes_every_file_and_says_random(tiny_run, capsys):
    argv = ["--run", str(tiny_run), "--all-checkpoints", "--limit", "3", "--humaneval-limit", "3",
            "--max-new-tokens", "8", "--tag", "smoke"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "RANDOMLY INITIALIZED MODEL" in out
    root = tiny_run / "eval" / "smoke"
    assert {"curves.png", "metrics.csv", "metrics.json"} <= {p.name for p in root.iterdir()}
    for ckpt in ("step-2", "final"):
        files = {p.name for p in (root / ckpt).iterdir()}
        assert {"samples.jsonl", "metrics.json", "metrics.csv", "report.md", "bleu_vs_exec.png"} <= files
        report = json.loads((root / ckpt / "metrics.json").read_text())
        assert report["random_init"] and report["header"].startswith("!!!")
        assert "RANDOMLY INITIALIZED MODEL" in (root / ckpt / "report.md").read_text()
        rows = [json.loads(line) for line in (root / ckpt / "samples.jsonl").read_text().splitlines()]
        assert {r["set"] for r in rows} == {"split", "humaneval"} and len(rows) == 3 + 3
        assert all(r["status"] for r in rows) and report["metrics"]["humaneval"]["problems"] == 3
    curves = json.loads((root / "metrics.json").read_text())
    assert [(p["checkpoint"], p["step"], p["epoch"]) for p in curves] == [
        ("step-2", 2, 0.5),
        ("final", 4, 1.0),
    ]
    rows = compare([str(tiny_run)], tiny_run.parent / "cmp")
    assert rows[0]["eval"] == "eval/smoke/final" and rows[0]["random_init"] and rows[0]["val_loss"] == 9.5


@pytest.mark.slow
def test_self_check_passes_all_164_canonical_solutions_and_fails_the_controls(capsys):
    assert main(["--self-check"]) == 0
    out = capsys.readouterr().out
    assert "[ok] canonical HumanEval solutions pass: 164/164" in out
    assert "[ok] wrong-answer control (every body `return None`) fails: 0/164 passed" in out
    assert "BLEU 100.00, ROUGE-L 1.000" in out and "FAIL" not in out
