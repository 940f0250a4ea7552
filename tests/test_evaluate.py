"""evaluate.py: scoring, resuming, checkpoints and bad input, with a stand-in sandbox and generator (fast, no
model). The metrics themselves: tests/evaluation/."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli import UsageError
from evaluate import EvalConfig, Task, checkpoint_targets, evaluate_model, main, score
from evaluation.metrics import (
    summarize,
    syntax_ok,
)
from evaluation.report import write_report

REFS = [
    "def add(a, b):\n    return a+b\n",
    "    total = 0\n    for x in xs:\n        total = total + x\n    return total\n",
    "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "    return list(dict.fromkeys(items))\n",
]


class FakeSandbox:
    """Stands in for sandbox.Sandbox: a script 'runs clean' if it compiles and has no `raise`; a
    HumanEval completion passes if it is the canonical solution."""

    layers = ["fake"]

    def __init__(self):
        self.scripts, self.checks = [], []

    def run_scripts(self, codes, progress=False):
        self.scripts += codes
        return [{"status": "failed:raise" if "raise" in c else "passed"} for c in codes]

    def check_functions(self, pairs, progress=False):
        self.checks += pairs
        return [{"status": "passed" if c == p["canonical_solution"] else "failed:assert"} for p, c in pairs]


def split_task(prompt="Prompt: add two numbers Code: ", ref=REFS[0], prefix=""):
    return Task("test/1", "split", prompt, ref, prefix)


def test_prompt_is_never_in_the_scored_text():
    # The prompt shares most of its words with the reference: were it part of the hypothesis, an empty
    # completion would score well above 0.
    prompt = "def add(a, b):\n    return a + b\n"
    empty = score([split_task(prompt, REFS[0])], [[""]], FakeSandbox())[0]
    assert empty["completion"] == "" and empty["bleu"] == 0 and empty["rouge_l"] == 0
    exact = score([split_task(prompt, REFS[0])], [[REFS[0]]], FakeSandbox())[0]
    assert exact["bleu"] == pytest.approx(100) and exact["rouge_l"] == 1.0
    # Docstring format: the signature is in the prompt; syntax and execution see prompt + body, the text
    # metrics see the body only.
    sig = 'def add(a, b):\n    """Add two numbers."""\n'
    box = FakeSandbox()
    row = score([split_task(sig, "    return a + b\n", sig)], [["    return a + b\n"]], box)[0]
    assert row["syntax_ok"] and row["exec_clean"] and row["bleu"] == pytest.approx(100)
    assert box.scripts == [sig + "    return a + b\n"]
    summary = summarize(score([split_task(prompt, r) for r in REFS], [[""]] * len(REFS), FakeSandbox()))
    assert summary["split"]["bleu"] == 0 and summary["split"]["rouge_l"] == 0


def test_unparsable_code_is_not_sent_to_the_sandbox_and_counts_as_not_clean():
    box = FakeSandbox()
    rows = score([split_task()] * 3, [["def f(:\n"], ["def f():\n    raise ValueError\n"], [REFS[0]]], box)
    assert [r["status"] for r in rows] == ["failed:syntax", "failed:raise", "passed"]
    assert [r["exec_clean"] for r in rows] == [False, False, True] and len(box.scripts) == 2


def test_an_empty_body_is_not_valid_code_even_where_the_prompt_alone_parses():
    sig = 'def add(a, b):\n    """Add two numbers."""\n'
    box = FakeSandbox()
    row = score([split_task(sig, "    return a + b\n", sig)], [["\n"]], box)[0]
    assert syntax_ok(sig) and not row["syntax_ok"] and row["status"] == "failed:empty" and not box.scripts


def test_summarize_groups_humaneval_samples_by_problem_for_pass_at_k():
    problems = [{"task_id": f"P/{i}", "canonical_solution": "    return 1\n"} for i in range(2)]
    tasks = [
        Task(p["task_id"], "humaneval", "def f():\n", p["canonical_solution"], "def f():\n", p)
        for p in problems
    ]
    good, bad = "    return 1\n", "    return 2\n"
    outs = [[good, bad, bad, bad], [bad, bad, bad, bad]]  # problem 0: 1 of 4 correct; problem 1: none
    m = summarize(score(tasks, outs, FakeSandbox()))["humaneval"]
    assert m["problems"] == 2 and m["n_samples"] == 4 and m["passed"] == pytest.approx(1 / 8)
    assert m["pass@1"] == pytest.approx((0.25 + 0) / 2) and "pass@10" not in m


def fake_complete(text_for):
    calls = []

    def complete(model, prompts, n=1, **kw):
        calls.append(list(prompts))
        return [[text_for(p)] * n for p in prompts]

    return complete, calls


class TinyNet:
    class config:
        block_size = 1024


def test_evaluation_resumes_from_samples_jsonl_and_refuses_other_settings(tmp_path):
    tasks = [Task(f"test/{i}", "split", f"Prompt: task {i} Code: ", REFS[i], "") for i in range(4)]
    cfg = EvalConfig(batch_size=2, humaneval=False)
    complete, calls = fake_complete(lambda p: REFS[int(p.split()[2])])
    rows = evaluate_model(TinyNet(), tasks[:2], cfg, tmp_path, FakeSandbox(), complete)
    assert len(calls) == 1 and all(r["bleu"] == pytest.approx(100) for r in rows)
    rows = evaluate_model(TinyNet(), tasks, cfg, tmp_path, FakeSandbox(), complete)  # two more, two scored
    assert calls[1:] == [["Prompt: task 2 Code: ", "Prompt: task 3 Code: "]] and len(rows) == 4
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 4
    with pytest.raises(UsageError, match="other settings"):
        evaluate_model(
            TinyNet(), tasks, EvalConfig(batch_size=2, max_new_tokens=9), tmp_path, FakeSandbox(), complete
        )


def test_a_prompt_that_fills_the_context_scores_as_an_empty_completion(tmp_path):
    class Small:
        class config:
            block_size = 8

    tasks = [
        split_task("Prompt: " + "word " * 20 + "Code: "),
        Task("test/2", "split", "Prompt: x Code:", REFS[0]),
    ]
    complete, calls = fake_complete(lambda p: REFS[0])
    rows = evaluate_model(Small(), tasks, EvalConfig(), tmp_path, FakeSandbox(), complete)
    assert calls == [["Prompt: x Code:"]]
    assert [r["too_long"] for r in rows] == [True, False] and rows[0]["completion"] == ""


def test_report_header_says_loudly_when_the_model_is_random(tmp_path, capsys):
    rows = score([split_task()], [[REFS[0]]], FakeSandbox())
    report = write_report(tmp_path, rows, {"source": "random tiny", "random_init": True}, {})
    assert (tmp_path / "report.md").read_text().count("RANDOMLY INITIALIZED") == 1  # one banner, on top
    assert "RANDOMLY" not in capsys.readouterr().out  # evaluate.py printed it once, as the model loaded
    assert report["random_init"] and "RANDOMLY INITIALIZED" in report["header"]
    assert "RANDOMLY INITIALIZED" in (tmp_path / "report.md").read_text().splitlines()[2]
    assert {p.name for p in tmp_path.iterdir()} >= {
        "metrics.json",
        "metrics.csv",
        "report.md",
        "bleu_vs_exec.png",
    }
    report = write_report(tmp_path, rows, {"source": "gpt2", "random_init": False}, {})
    assert "RANDOM" not in report["header"] and "RANDOM" not in (tmp_path / "report.md").read_text()


def test_all_checkpoints_scores_each_step_once_with_its_epoch(tmp_path):
    logs = [dict(step=s, epoch=s / 4, loss=1.0) for s in (1, 2, 3, 4)] + [dict(step=4, val_loss=1.0)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    ckpts = [tmp_path / "checkpoints" / f"step-{s}" for s in (2, 4)]
    targets = checkpoint_targets(tmp_path, ckpts)  # step-4 holds final/'s weights: scored once, as final
    assert targets == [("step-2", str(ckpts[0]), 2, 0.5), ("final", None, 4, 1.0)]


TINY = ["--init", "random", "--model", "tiny"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*TINY, "--n-samples", "10"], "repeats one greedy sample"),
        ([*TINY, "--top-p", "1.5"], r"--top-p 1.5 is outside \(0, 1\]"),
        ([*TINY, "--max-new-tokens", "0"], "--max-new-tokens 0: generate at least 1 token"),
        ([*TINY, "--batch-size", "0"], "must be at least 1"),
        (["--run", "nowhere", "--weights", "w"], "not both"),
        (["--run", "nowhere", *TINY], "drop --init random"),
        ([*TINY, "--all-checkpoints"], "needs --run"),
        ([*TINY, "--checkpoint", "step-2"], "--checkpoint needs --run"),
        (["--run", "nowhere"], "--run nowhere does not exist"),
        (
            ["--compare", "runs/full"],
            "--compare needs two or more run folders side by side; got only runs/full",
        ),
    ],
)
def test_bad_input_gets_one_clear_sentence(argv, message):
    with pytest.raises(UsageError, match=message):
        main(argv)


def test_a_folder_without_config_json_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match="not a run folder"):
        main(["--run", str(tmp_path)])


def test_command_line_errors_exit_2_with_one_line():
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "--run", "runs/no-such-run", "--top-p", "0"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --run runs/no-such-run")
