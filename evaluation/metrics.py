"""The metrics, as the libraries compute them, on generated code only.

Code is split into tokens by CODE_TOKEN (identifiers and numbers whole, every other symbol alone, layout
ignored) and the libraries score those tokens: sacrebleu's corpus BLEU with tokenize="none", rouge-score's
ROUGE-L F1 with CodeTokenizer (case and symbols kept). docs/evaluation.md says why.
"""

from __future__ import annotations

import ast
import re

import numpy as np

KS = (1, 10, 100)  # pass@k reported for every k <= samples per problem

CODE_TOKEN = re.compile(r"\w+|[^\w\s]")  # `foo_bar`, `42` whole; `(`, `=`, `.` one each; spaces dropped


def code_tokens(text: str) -> list[str]:
    return CODE_TOKEN.findall(text)


def _spaced(text: str) -> str:
    return " ".join(code_tokens(text))


class CodeTokenizer:
    """rouge-score tokenizer for code. Its default lowercases and drops every non-alphanumeric character,
    which would make `a(b)` equal `a[b]` and ignore every operator."""

    def tokenize(self, text: str) -> list[str]:
        return code_tokens(text)


def corpus_bleu(hyps: list[str], refs: list[str], tokenize: str = "code") -> float:
    """sacrebleu corpus BLEU (0-100). tokenize="code": CODE_TOKEN split, then sacrebleu's "none";
    any other value is passed to sacrebleu as is (e.g. "13a", its default for natural language)."""
    import sacrebleu

    if tokenize == "code":
        hyps, refs, tokenize = [_spaced(h) for h in hyps], [_spaced(r) for r in refs], "none"
    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize, force=True).score)


def sentence_bleu(hyp: str, ref: str) -> float:
    """Per-sample BLEU (sacrebleu's sentence_bleu, exp smoothing) on the same code tokens."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(_spaced(hyp), [_spaced(ref)], tokenize="none").score)


def rouge_l(hyps: list[str], refs: list[str]) -> list[float]:
    """ROUGE-L F1 per sample (rouge-score, CodeTokenizer); the corpus figure is their mean."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], tokenizer=CodeTokenizer())
    return [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]


def syntax_ok(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):  # ValueError: source with a NUL byte
        return False


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), computed as the product
    prod_{i=n-c+1..n} (1 - k/i), which never forms the huge binomials (the Codex paper's form)."""
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _ranks(x) -> np.ndarray:
    """1-based ranks, ties given their average rank (what Spearman's rho needs)."""
    x = np.asarray(x, dtype=float)
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(1, len(x) + 1)
    _, inverse = np.unique(x, return_inverse=True)
    return (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson correlation of the tie-averaged ranks (nan if one is constant)."""
    rx, ry = _ranks(x), _ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def summarize(rows: list[dict]) -> dict:
    """Corpus metrics of scored rows, one block per set, with the BLEU-vs-execution rank correlation."""
    out = {}
    for kind, ok in (("split", "exec_clean"), ("humaneval", "passed")):
        rs = [r for r in rows if r["set"] == kind]
        if not rs:
            continue
        hyps, refs = [r["completion"] for r in rs], [r["reference"] for r in rs]
        statuses: dict[str, int] = {}
        for r in rs:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        m = dict(samples=len(rs), bleu=corpus_bleu(hyps, refs), bleu_13a=corpus_bleu(hyps, refs, "13a"))
        m.update(rouge_l=float(np.mean([r["rouge_l"] for r in rs])))
        m.update(syntax_valid=float(np.mean([r["syntax_ok"] for r in rs])), statuses=statuses)
        m[ok] = float(np.mean([r[ok] for r in rs]))
        m[f"spearman_bleu_{ok}"] = spearman([r["bleu"] for r in rs], [r[ok] for r in rs])
        m["too_long"] = sum(r.get("too_long", False) for r in rs)
        if kind == "humaneval":
            by_task: dict[str, list[bool]] = {}
            for r in rs:
                by_task.setdefault(r["prompt_id"], []).append(r["passed"])
            n = min(len(v) for v in by_task.values())
            m["problems"], m["n_samples"] = len(by_task), n
            for k in (k for k in KS if k <= n):
                m[f"pass@{k}"] = float(np.mean([pass_at_k(len(v), sum(v), k) for v in by_task.values()]))
        out[kind] = m
    return out
