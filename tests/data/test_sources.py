"""data/sources.py: CodeXGLUE through `datasets` (local parquet in the hub's exact schema), the mined corpus
and its CodeSearchNet filters, and the quick offline fallback of --data auto."""

import ast
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli import UsageError
from data import sources
from data.prepare import DataConfig, resolve_source

# CodeXGLUE stores a method with its first line unindented, the rest at the original depth, docstring inside.
SETTEXT = (
    "def settext(self, text, cls='current'):\n"
    '        """Set the text for this element.\n\n'
    "        Arguments:\n"
    "            text (str): The text\n"
    '        """\n'
    "        self.replace(TextContent, value=text, cls=cls)\n"
    "        return text"
)
PY2 = (
    '@classmethod\n    def load(cls, path):\n        "Load a thing from a path."\n'
    '        print "loading"\n        return cls(path)'
)

CODEXGLUE_SCHEMA = pa.schema(
    [
        ("id", pa.int32()), ("repo", pa.string()), ("path", pa.string()), ("func_name", pa.string()),
        ("original_string", pa.string()), ("language", pa.string()), ("code", pa.string()),
        ("code_tokens", pa.list_(pa.string())), ("docstring", pa.string()),
        ("docstring_tokens", pa.list_(pa.string())), ("sha", pa.string()), ("url", pa.string()),
    ]
)  # fmt: skip


def codexglue_row(i: int, code: str, docstring: str, func_name: str) -> dict:
    return dict(
        id=i, repo="owner/repo", path=f"pkg/mod{i}.py", func_name=func_name, original_string=code,
        language="python", code=code, code_tokens=code.split(), docstring=docstring,
        docstring_tokens=docstring.split()[:8], sha="0" * 40, url=f"https://github.com/owner/repo#L{i}",
    )  # fmt: skip


def write_codexglue(folder: Path, schema=CODEXGLUE_SCHEMA) -> list[str]:
    """The hub's layout: python/{train,validation,test}-00000-of-00001.parquet."""
    rows = {
        "train": [
            codexglue_row(0, SETTEXT, "Set the text for this element.\n\nArguments:\n    text: The text",
                          "Foo.settext"),
            codexglue_row(1, PY2, "Load a thing from a path.", "Foo.load"),
        ],
        "validation": [codexglue_row(0, "def f(x):\n    'Double x.'\n    return 2 * x", "Double x.", "f")],
        "test": [codexglue_row(0, "def g(x):\n    '''Triple x.'''\n    return 3 * x", "Triple x.", "g")],
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for split, rs in rows.items():
        table = pa.Table.from_pylist(rs, schema=CODEXGLUE_SCHEMA).select(schema.names)
        files.append(str(folder / f"{split}-00000-of-00001.parquet"))
        pq.write_table(table, files[-1])
    return files


def test_codexglue_parquet_loads_through_datasets_with_docstring_stripped_and_splits_kept(tmp_path):
    files = write_codexglue(tmp_path / "python")
    rows = list(sources.load_codexglue(files, str(tmp_path / "cache")))
    counts = sources.Counter()
    recs = list(sources.strip_codexglue(rows, counts))
    assert [(r["split"], r["func_name"]) for r in recs] == [
        ("train", "Foo.settext"), ("train", "Foo.load"), ("validation", "f"), ("test", "g"),
    ]  # fmt: skip
    settext, load = recs[0], recs[1]
    assert "Set the text" not in settext["code"] and "Arguments" not in settext["code"]
    assert settext["code"] == (
        "def settext(self, text, cls='current'):\n"
        "    self.replace(TextContent, value=text, cls=cls)\n"
        "    return text"
    )
    ast.parse(settext["code"])  # indentation made consistent
    assert settext["docstring"] == "Set the text for this element.\n\nArguments:\n    text: The text"
    assert (
        load["code"] == '@classmethod\ndef load(cls, path):\n    print "loading"\n    return cls(path)'
    )  # Python 2
    assert load["signature"] == "@classmethod\ndef load(cls, path):"
    assert recs[2]["code"] == "def f(x):\n    return 2 * x" and not counts


def test_codexglue_files_missing_a_column_is_one_clear_error(tmp_path):
    schema = pa.schema([f for f in CODEXGLUE_SCHEMA if f.name != "docstring"])
    files = write_codexglue(tmp_path, schema)
    with pytest.raises(UsageError, match=r"lacks the column\(s\) docstring; CodeXGLUE's schema is id, repo"):
        sources.load_codexglue(files, str(tmp_path / "cache"))


def test_unreadable_or_corrupt_data_file_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match="nope.parquet is not a readable file"):
        sources.load_codexglue([str(tmp_path / "nope.parquet")], str(tmp_path))
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(UsageError, match="could not read .*train.parquet"):
        sources.load_codexglue([str(bad)], str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "code, expected",
    [
        ("def f(): return 1", None),  # one line: no body to learn
        ('def f(a,\n      b) -> "T":\n    # c\n    """d"""\n    return a',
         ('def f(a,\n      b) -> "T":', "    return a")),
        ("def f():\n    x = 'not a docstring'.strip()\n    return x",
         ("def f():", "    x = 'not a docstring'.strip()\n    return x")),
        ("x = 1", None),
        ('def f():\n    """Only a docstring."""', None),
    ],
)  # fmt: skip
def test_split_function(code, expected):
    assert sources.split_function(code) == expected


def write_tree(root: Path) -> Path:
    """A small source tree with one function per CodeSearchNet filter, and files that cannot be read."""
    body = "    a = 1\n    b = 2\n    return a + b\n"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "good.py").write_text(
        f'def add_numbers(x):\n    """Add two numbers together.\n\n    More text."""\n{body}\n'
        f'class Box:\n    def open_lid(self):\n        """Open the lid of the box."""\n'
        + "".join("    " + line + "\n" for line in body.splitlines())
        + f'\n    def __repr__(self):\n        """Dunder methods are dropped."""\n        return "b"\n\n'
        f'def test_something():\n    """A test is dropped by name."""\n{body}\n'
        f'def short_doc():\n    """Two words."""\n{body}\n'
        f'def tiny():\n    """Too short a function."""\n    return 1\n\n'
        f"def undocumented():\n{body}"
    )
    (root / "pkg" / "zcopy.py").write_text(
        f'def add_numbers(x):\n    """Same code, other docstring."""\n{body}'
    )
    (root / "pkg" / "empty.py").write_text("")
    (root / "pkg" / "latin1.py").write_bytes(
        b"def f():\n    return '\xe9\xff'\n"
    )  # no coding line: not UTF-8
    (root / "pkg" / "broken.py").write_text("def broken(:\n    pass\n")
    return root


def test_mining_filters_like_codesearchnet_and_counts_what_it_skips(tmp_path):
    root = write_tree(tmp_path / "tree")
    recs, counts = sources.load_pysrc([str(root)], str(tmp_path / "cache"))
    assert [r["id"] for r in recs] == ["pkg/good.py::add_numbers", "pkg/good.py::Box.open_lid"]
    assert recs[0]["docstring"] == "Add two numbers together."  # first paragraph
    assert recs[1]["code"] == "def open_lid(self):\n    a = 1\n    b = 2\n    return a + b"  # dedented
    assert counts == dict(
        files=5, functions=8, dunder_method=1, name_has_test=1, short_docstring=1, short_function=1,
        no_docstring=1, duplicate_code=1, empty_file=1, undecodable_file=1, unparsable_file=1,
    )  # fmt: skip


def test_mining_is_deterministic_serial_parallel_and_cached(tmp_path):
    root = write_tree(tmp_path / "tree")
    for i in range(30):  # enough files for the process pool
        (root / f"m{i:02d}.py").write_text(
            f'def f{i}(x):\n    """Return x plus {i}."""\n    y = x\n    return y + {i}\n'
        )
    serial, _ = sources.mine_root(str(root), str(tmp_path / "c1"), workers=1)
    parallel, _ = sources.mine_root(str(root), str(tmp_path / "c2"), workers=2)
    cached, _ = sources.mine_root(str(root), str(tmp_path / "c2"), workers=2)
    assert serial == parallel == cached and len(serial) == 33
    assert all(r["split"] == sources.hash_split(f"{r['path']}::{r['func_name']}") for r in serial)


@pytest.mark.slow
def test_stdlib_mining_yields_at_least_4000_functions_within_60_cpu_seconds(stdlib_corpus):
    recs = stdlib_corpus["records"]  # mined into a fresh cache once per session (conftest.py), timed there
    assert len(recs) >= 4000, stdlib_corpus["counts"]
    assert stdlib_corpus["cpu_seconds"] < 60  # so under 60 s of wall time with one free core (~9 s on two)
    assert len({r["id"] for r in recs}) == len(recs)
    assert {r["split"] for r in recs} == {"train", "validation", "test"}


def test_auto_falls_back_to_the_mined_corpus_quickly_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    lines = []
    t0 = time.perf_counter()
    src = resolve_source(DataConfig(data="auto", cache_dir=str(tmp_path)), log=lines.append)
    assert time.perf_counter() - t0 < 10
    assert src.kind == "pysrc"
    assert "pysrc" in lines[0] and "offline mode is set" in lines[0]
    with pytest.raises(UsageError, match="--data codexglue needs the hub but offline mode is set"):
        resolve_source(DataConfig(data="codexglue", cache_dir=str(tmp_path)), log=lines.append)


def test_auto_uses_codexglue_from_the_hub_cache_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    snap = tmp_path / "datasets--google--code_x_glue_ct_code_to_text" / "snapshots" / "abc123" / "python"
    files = write_codexglue(snap)
    src = resolve_source(DataConfig(data="auto", cache_dir=str(tmp_path / "c")), log=lambda *a: None)
    assert src.kind == "codexglue" and src.files == sorted(files)


def test_bad_jsonl_lines_are_named_by_line_number(tmp_path):
    """The first few bad lines of a jsonl file are logged with their line numbers, the rest counted."""
    good = '{"docstring": "Add one.", "code": "def f(x):\\n    return x + 1\\n"}\n'
    lines = [good, "{not json\n", good, '{"docstring": "no code"}\n'] + ["[1, 2]\n"] * 6
    path = tmp_path / "data.jsonl"
    path.write_text("".join(lines))
    said: list[str] = []
    records, counts = sources.load_jsonl(str(path), log=said.append, show=3)
    assert len(records) == 2 and counts == {"not_json": 1, "no_code": 7}
    assert said[:3] == [
        f"data: {path} line 2: not json, skipped",
        f"data: {path} line 4: no code, skipped",
        f"data: {path} line 5: no code, skipped",
    ]
    assert said[3] == f"data: {path}: 5 more bad lines skipped (counts below)" and len(said) == 4
