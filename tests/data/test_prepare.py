"""data/prepare.py: prompt formats, the loss mask (no loss on the prompt, loss on each EOS), the token cache
and its reuse, bad input counted and skipped, the leakage guard, and the CLI."""

import json

import numpy as np
import pytest

from cli import UsageError
from data.humaneval import load_problems, problem_record
from data.prepare import DataConfig, TokenDataset, format_prompt, main, prepare, prompt_and_target
from data.tokenizer import EOT, get_tokenizer


def func(i: int, lines: int = 2) -> dict:
    body = "".join(f"    y{k} = x * {i + k}\n" for k in range(lines))
    code = f'def scale_{i}(x):\n    """Scale x by the number {i}."""\n{body}    return y0'
    return {"docstring": f"Scale x by the number {i}.", "code": code, "split": "train"}


def write_jsonl(path, rows) -> str:
    with open(path, "wb") as f:
        for r in rows:
            f.write(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n")
    return str(path)


def config(tmp_path, rows, **kw) -> DataConfig:
    return DataConfig(
        data="jsonl:" + write_jsonl(tmp_path / "data.jsonl", rows), cache_dir=str(tmp_path / "c"), **kw
    )


def test_study_format_prompt_carries_no_loss_and_every_eos_does(tmp_path):
    rows = [func(i) for i in range(5)] + [dict(func(9), split="validation")]
    ds = prepare(config(tmp_path, rows), splits=("train",), log=lambda *a: None)["train"]
    tok = get_tokenizer()
    assert len(ds) == 5
    for i in range(len(ds)):
        ids, mask = ds.example(i)
        rec = ds.records(i)
        prompt_len = len(tok.encode(format_prompt(rec["docstring"], rec["func_name"], "study")))
        assert tok.decode(ids[:prompt_len]) == f"Prompt: Scale x by the number {i}.\nCode:\n"
        assert not mask[:prompt_len].any() and mask[prompt_len:].all()  # loss on code and EOS only
        assert ids[-1] == EOT and mask[-1]
        assert tok.decode(ids[prompt_len:-1]) == rec["code"] + "\n"
        assert "Scale x" not in rec["code"]  # docstring stripped from the target
    assert ds.num_target_tokens == sum(int(ds.example(i)[1].sum()) for i in range(len(ds)))


def test_docstring_format_has_humaneval_shape_and_the_body_as_target(tmp_path):
    ds = prepare(
        config(tmp_path, [func(3)], prompt_format="docstring"), splits=("train",), log=lambda *a: None
    )
    ids, mask = ds["train"].example(0)
    tok = get_tokenizer()
    start = int(np.argmax(mask))
    assert tok.decode(ids[:start]) == 'def scale_3(x):\n    """Scale x by the number 3."""\n'
    assert tok.decode(ids[start:]) == "    y0 = x * 3\n    y1 = x * 4\n    return y0\n<|endoftext|>"


def test_docstring_format_of_a_humaneval_record_reproduces_its_prompt_shape():
    problem = load_problems()[2]  # truncate_number: one def, no helper functions
    prompt, target = prompt_and_target(problem_record(problem), "docstring")
    assert prompt.startswith('def truncate_number(number: float) -> float:\n    """Given a positive floating')
    assert target == problem["canonical_solution"]


def test_multiline_docstring_is_indented_under_the_signature():
    text = format_prompt("First line.\n\nArgs:\n  x: a number", fmt="docstring", signature="def f(x):")
    assert text == 'def f(x):\n    """First line.\n\n    Args:\n      x: a number\n    """\n'
    assert format_prompt("Add.", "Calc.add", "docstring") == 'def add():\n    """Add."""\n'


def test_train_on_prompt_puts_loss_on_every_token_after_the_first(tmp_path):
    ds = prepare(config(tmp_path, [func(1)], train_on_prompt=True), splits=("train",), log=lambda *a: None)
    ids, mask = ds["train"].example(0)
    assert not mask[0] and mask[1:].all()


def test_second_prepare_hits_the_cache_and_a_new_setting_misses_it(tmp_path):
    cfg = config(tmp_path, [func(i) for i in range(3)])
    first, second, other = [], [], []
    a = prepare(cfg, splits=("train",), log=first.append)["train"]
    b = prepare(cfg, splits=("train",), log=second.append)["train"]
    prepare(DataConfig(**{**cfg.__dict__, "max_len": 256}), splits=("train",), log=other.append)
    assert any("building" in line for line in first) and not any("cache hit" in line for line in first)
    assert any("cache hit" in line for line in second) and not any("building" in line for line in second)
    assert any("building" in line for line in other)
    assert all((a.example(i)[0] == b.example(i)[0]).all() for i in range(len(a)))
    assert isinstance(b, TokenDataset) and b.tokens.dtype == np.uint16


def test_bad_input_is_counted_and_skipped_with_a_summary_line(tmp_path):
    long = func(7, lines=200)  # ~2,000 tokens: longer than the context
    rows = [
        func(1),
        b"{not json\n",
        b'{"docstring": "x"}\n',
        b'{"docstring": "caf\xe9", "code": "x"}\n',
        long,
    ]
    rows += [{"docstring": "", "code": "def f():\n    return 1"}, func(2)]
    lines = []
    ds = prepare(config(tmp_path, rows, max_len=128), splits=("train",), log=lines.append)["train"]
    assert len(ds) == 2
    summary = "\n".join(lines)
    assert "skipped 4 inputs:" in summary
    for reason in ("not_json 1", "no_code 1", "not_utf8 1", "no_docstring 1"):
        assert reason in summary
    assert "dropped too_long 1" in summary


def test_empty_or_unreadable_input_is_one_clear_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UsageError, match="gave no usable training examples .*empty_file 1"):
        prepare(
            DataConfig(data=f"jsonl:{tmp_path / 'empty.jsonl'}", cache_dir=str(tmp_path)), log=lambda *a: None
        )
    with pytest.raises(UsageError, match="missing.jsonl is not a readable file"):
        prepare(DataConfig(data=f"jsonl:{tmp_path / 'missing.jsonl'}", cache_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="--data nonsense is not one of"):
        prepare(DataConfig(data="nonsense"))


def test_leakage_guard_drops_humaneval_solutions_and_copies_of_eval_examples(tmp_path):
    he = problem_record(load_problems()[2])
    held_out = dict(func(5), split="test")
    rows = [
        func(1),
        dict(func(2), code=he["code"], docstring="Some other description here."),  # HumanEval's code
        dict(func(3), docstring=he["docstring"]),  # HumanEval's docstring
        dict(func(4), code=held_out["code"], docstring="Other words."),  # a test example's code
        dict(func(6), docstring=held_out["docstring"]),  # a test example's docstring
        held_out,
    ]
    lines = []
    ds = prepare(config(tmp_path, rows), splits=("train", "test"), log=lines.append)
    assert [ds["train"].records(i)["func_name"] for i in range(len(ds["train"]))] == ["scale_1"]
    assert len(ds["test"]) == 1
    assert (
        "leakage guard dropped 4 train examples: leak_humaneval 2, leak_eval_code 1, leak_eval_docstring 1"
        in ("\n".join(lines))
    )


def test_max_train_examples_is_a_deterministic_sample_in_source_order(tmp_path):
    rows = [func(i) for i in range(40)]
    a = prepare(config(tmp_path, rows, max_train_examples=10), splits=("train",), log=lambda *a: None)[
        "train"
    ]
    names = [int(a.records(i)["func_name"].split("_")[1]) for i in range(len(a))]
    assert len(names) == 10 and names == sorted(names) and names != list(range(10))


def test_cli_prints_stats_and_an_example(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [func(i) for i in range(3)])
    assert main(["--data", f"jsonl:{path}", "--cache-dir", str(tmp_path / "c"), "--splits", "train"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "examples" in out and "p50" in out and "--- example 0" in out
    assert "Prompt: Scale x by the number 0.\nCode:\n\u2502def scale_0(x):" in out


def test_many_too_long_examples_are_named_with_the_flag_that_keeps_them(tmp_path):
    """Half the training functions longer than --max-len: a line says how many of how many, and which flag;
    the dataset knows its drops (train.py names them when a split ends up too small)."""
    rows = [func(i, lines=2 if i % 2 else 40) for i in range(8)]
    lines = []
    ds = prepare(config(tmp_path, rows, max_len=96), splits=("train",), log=lines.append)["train"]
    assert len(ds) == 4 and ds.dropped == {"too_long": 4}
    assert "data: 4 of 8 training examples are longer than --max-len 96 tokens and were left out" in lines[-1]
    lines.clear()
    prepare(config(tmp_path, rows[1::2], max_len=96), splits=("train",), log=lines.append)
    assert not any("were left out" in ln for ln in lines)  # none dropped: no such line
