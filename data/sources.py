"""Where training functions come from. Every source yields the same record:

    {id, docstring, code, func_name, repo, path, split, signature}

`code` is the function with its docstring removed (the training target) and its indentation made consistent
(`def` at column 0, body at 4 spaces); `signature` is its first part, the decorators and `def ...:` line(s),
so `code == signature + "\\n" + body`. `docstring` is the text the model is prompted with.

Sources:
  codexglue   CodeXGLUE code-to-text (Python) from the hub, or local parquet/jsonl files in its schema; both
              go through `datasets.load_dataset` and the same conversion (`codexglue_records`).
  pysrc       functions with docstrings mined with `ast` from Python source trees (the standard library by
              default), filtered the way CodeSearchNet filtered GitHub code. Works offline.
  jsonl:PATH  the user's own `{docstring, code}` lines.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import io
import json
import os
import re
import socket
import sysconfig
import tokenize
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cli import UsageError

SPLITS = ("train", "validation", "test")
CODEXGLUE_HUB = ("google/code_x_glue_ct_code_to_text", "python")
CODEXGLUE_COLUMNS = (
    "id", "repo", "path", "func_name", "original_string", "language",
    "code", "code_tokens", "docstring", "docstring_tokens", "sha", "url",
)  # fmt: skip
CODEXGLUE_NEEDED = ("id", "repo", "path", "func_name", "code", "docstring")  # the columns we read
MINER_VERSION = 2  # bump when mining or filtering changes, so cached corpora are rebuilt


# ---------------------------------------------------------------- one function's text
def split_function(code: str) -> tuple[str, str] | None:
    """(signature, body) of one function's source, its docstring removed; None if it is not a `def` with an
    indented body. CodeXGLUE's `code` has its first line unindented and the rest at the original depth,
    and may be Python 2, so this reads tokens (which both dialects share) rather than an `ast`."""
    lines = code.splitlines()
    toks = tokenize.generate_tokens(io.StringIO(code).readline)  # lazy: we stop after the docstring
    sig_end = def_col = def_row = None
    depth, doc_end_row, body_row = 0, None, None
    try:
        for tok in toks:
            if def_row is None:
                if tok.type == tokenize.NAME and tok.string == "def":
                    def_row, def_col = tok.start
                continue
            if sig_end is None:
                if tok.type == tokenize.OP and tok.string in "([{":
                    depth += 1
                elif tok.type == tokenize.OP and tok.string in ")]}":
                    depth -= 1
                elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
                    sig_end = tok.end
                continue
            if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.INDENT):
                continue
            if tok.type == tokenize.NEWLINE and body_row is None and doc_end_row is None:
                body_row = -1  # the def line ended; the body starts on a later line
                continue
            if body_row != -1:
                return None  # `def f(): return 1`: a one-line function has no body to learn
            if tok.type == tokenize.STRING and doc_end_row is None:
                nxt = next(toks)
                while nxt.type == tokenize.STRING:  # "a" "b": implicit concatenation
                    nxt = next(toks)
                if nxt.type == tokenize.NEWLINE:  # a bare string statement: the docstring
                    doc_end_row = nxt.start[0]
                    continue
            body_row, body_col = tok.start
            break
    except (tokenize.TokenError, IndentationError, SyntaxError, StopIteration):
        return None
    if sig_end is None or body_row in (None, -1):
        return None
    if doc_end_row is not None and body_row <= doc_end_row:
        return None  # `"""doc"""; x = 1`: the docstring shares its line with code
    # Decorators before the def: everything moves left by the def's column. A def on the first line (as
    # CodeXGLUE stores methods): the body moves so it starts at 4 spaces.
    shift = def_col if def_row > 1 else max(body_col - 4, 0)
    sig_lines = lines[: sig_end[0]]
    sig_lines[-1] = sig_lines[-1][: sig_end[1]]
    body = "\n".join(_dedent(line, shift) for line in lines[body_row - 1 :]).rstrip()
    signature = "\n".join(_dedent(line, shift) for line in sig_lines).rstrip()
    return (signature, body) if body.strip() else None  # a docstring and nothing else: no body to learn


def _dedent(line: str, n: int) -> str:
    """Remove up to n leading spaces (lines inside a multi-line string may have fewer)."""
    if n == 0:
        return line.rstrip()
    stripped = line[:n].lstrip(" ")
    return (stripped + line[n:]).rstrip()


def first_paragraph(docstring: str) -> str:
    """The docstring's first paragraph on one line (CodeSearchNet's summary)."""
    text = docstring.strip().replace("\r\n", "\n")
    return " ".join(re.split(r"\n\s*\n", text, maxsplit=1)[0].split())


def code_fingerprint(code: str) -> str:
    """Whitespace-insensitive hash of a function's code (duplicates, leakage)."""
    return hashlib.sha1(" ".join(code.split()).encode()).hexdigest()


def doc_fingerprint(docstring: str) -> str:
    return hashlib.sha1(first_paragraph(docstring).lower().encode()).hexdigest()


def hash_split(key: str) -> str:
    """Deterministic 90 / 5 / 5 split (CodeXGLUE's proportions are 90 / 5 / 5)."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


def make_record(
    code: str, docstring: str, *, id: str, func_name: str, repo: str, path: str, split: str
) -> dict | None:
    """A record with the docstring stripped from `code`; None if `code` is not a function with a body."""
    parts = split_function(code)
    if parts is None:
        return None
    signature, body = parts
    if not func_name:
        m = re.search(r"def\s+(\w+)", signature)
        func_name = m.group(1) if m else ""
    return dict(
        id=id, docstring=inspect.cleandoc(docstring), code=signature + "\n" + body, func_name=func_name,
        repo=repo, path=path, split=split, signature=signature,
    )  # fmt: skip


# ---------------------------------------------------------------- CodeXGLUE
def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used right now, or None if it answers. Quick on purpose:
    `datasets` itself retries for ~25 s before giving up."""
    if any(
        os.environ.get(v, "0").lower() not in ("0", "", "false")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        return "offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError as e:
        return f"{endpoint.hostname} is unreachable ({e})"
    return None


def cached_codexglue_files() -> list[str]:
    """Parquet files of CodeXGLUE's Python config in the local hub cache (from an earlier download)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    repo_dir = Path(HF_HUB_CACHE) / ("datasets--" + CODEXGLUE_HUB[0].replace("/", "--"))
    return sorted(str(p) for p in repo_dir.glob(f"snapshots/*/{CODEXGLUE_HUB[1]}/*.parquet"))


def split_of_file(path: str) -> str | None:
    name = Path(path).name.lower()
    for pat, split in (("train", "train"), ("valid", "validation"), ("dev", "validation"), ("test", "test")):
        if pat in name:
            return split
    return None


def load_codexglue(data_files: list[str] | None, cache_dir: str, log: Callable = print) -> Iterator[dict]:
    """Rows from the hub (data_files None; data/prepare.py checks first that it answers) or from local files
    in CodeXGLUE's schema, assigned to splits by file name (train / valid|validation|dev / test; the hub's
    own files are named so), other files split by a hash of (path, func_name)."""
    import datasets

    if data_files is None:
        log(f"data: loading {CODEXGLUE_HUB[0]} ({CODEXGLUE_HUB[1]}) from the hub")
        return codexglue_records(_load(lambda: datasets.load_dataset(*CODEXGLUE_HUB), CODEXGLUE_HUB[0]))
    for f in data_files:
        if not os.path.isfile(f) or not os.access(f, os.R_OK):
            raise UsageError(f"--data-files {f} is not a readable file; pass parquet or jsonl files")
    kinds = {"parquet" if f.endswith(".parquet") else "json" for f in data_files}
    if len(kinds) > 1 or not all(
        f.endswith((".parquet", ".jsonl", ".json", ".jsonl.gz")) for f in data_files
    ):
        raise UsageError("--data-files must all be .parquet or all .jsonl files")
    by_split: dict[str, list[str]] = {}
    for f in data_files:
        by_split.setdefault(split_of_file(f) or "unsplit", []).append(f)
    files = ", ".join(data_files)
    dsd = _load(
        lambda: datasets.load_dataset(
            kinds.pop(), data_files=by_split, cache_dir=os.path.join(cache_dir, "hf-datasets")
        ),
        files,
    )
    return codexglue_records(dsd, source=files)


def _load(fn, what: str):
    """Run a `datasets` load; a file it cannot read becomes one sentence, not a traceback."""
    try:
        return fn()
    except Exception as e:  # datasets/pyarrow raise many types for unreadable input
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"could not read {what}: {msg}") from e


def codexglue_records(dsd, source: str = CODEXGLUE_HUB[0]) -> Iterator[dict]:
    """Convert a DatasetDict in CodeXGLUE's schema (hub or local) into records, checking the schema first."""
    for name, ds in dsd.items():
        missing = [c for c in CODEXGLUE_NEEDED if c not in ds.column_names]
        if missing:
            raise UsageError(
                f"{source} lacks the column(s) {', '.join(missing)}; "
                f"CodeXGLUE's schema is {', '.join(CODEXGLUE_COLUMNS)}"
            )
    return _codexglue_rows(dsd)


def _codexglue_rows(dsd) -> Iterator[dict]:
    for name, ds in dsd.items():
        split = {"valid": "validation", "dev": "validation"}.get(name, name)
        for batch in ds.select_columns(list(CODEXGLUE_NEEDED)).iter(batch_size=4096):
            for i in range(len(batch["code"])):
                row = {k: batch[k][i] for k in CODEXGLUE_NEEDED}
                s = split if split in SPLITS else hash_split(f"{row['path']}::{row['func_name']}")
                yield dict(row, split=s, id=f"{split}-{row['id']}")


# ---------------------------------------------------------------- mined Python sources
def default_pysrc_roots() -> list[str]:
    return [sysconfig.get_paths()["stdlib"]]


def list_py_files(root: str) -> list[str]:
    """Python files under root, relative and sorted (deterministic order). Inside the standard library,
    installed packages (site-packages) are not stdlib and are skipped; pass them with --pysrc-roots."""
    root_p = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root_p):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")
        )
        rel = os.path.relpath(dirpath, root_p)
        out += [os.path.normpath(os.path.join(rel, f)) for f in filenames if f.endswith(".py")]
    return sorted(out)


def mine_file(root: str, rel: str) -> tuple[list[dict], Counter]:
    """Candidate functions of one file (module- and class-level defs with a docstring), before dedup."""
    counts: Counter = Counter(files=1)
    try:
        raw = Path(root, rel).read_bytes()
    except OSError:
        return [], Counter(files=1, unreadable_file=1)
    if not raw.strip():
        return [], Counter(files=1, empty_file=1)
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        text = raw.decode(encoding)
        tree = ast.parse(text)
    except (SyntaxError, UnicodeDecodeError, ValueError, LookupError, RecursionError, MemoryError) as e:
        return [], Counter(
            files=1, **{"undecodable_file" if isinstance(e, UnicodeError) else "unparsable_file": 1}
        )
    lines = text.splitlines()
    records, seen = [], Counter()
    for node, qualname in _functions(tree.body, ""):
        doc = ast.get_docstring(node)
        counts["functions"] += 1
        if not doc:
            counts["no_docstring"] += 1
            continue
        if "test" in node.name.lower():
            counts["name_has_test"] += 1
            continue
        if node.name.startswith("__") and node.name.endswith("__"):
            counts["dunder_method"] += 1
            continue
        summary = first_paragraph(doc)
        if len(summary.split()) < 3:
            counts["short_docstring"] += 1
            continue
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        col = node.col_offset
        code = "\n".join(_dedent(line, col) for line in lines[start - 1 : node.end_lineno])  # slice by lines
        seen[qualname] += 1  # a property's getter and setter share a name: the second is ...#2
        uid = f"{rel}::{qualname}" + (f"#{seen[qualname]}" if seen[qualname] > 1 else "")
        rec = make_record(
            code, summary, id=uid, func_name=qualname, repo=Path(root).name, path=rel,
            split=hash_split(f"{rel}::{qualname}"),
        )  # fmt: skip
        if rec is None:
            counts["no_function_body"] += 1
            continue
        if len([ln for ln in rec["code"].splitlines() if ln.strip()]) < 3:
            counts["short_function"] += 1
            continue
        records.append(rec)
    return records, counts


def _functions(body: list, prefix: str) -> Iterator[tuple[ast.AST, str]]:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node, prefix + node.name
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")


def _mine_file_args(args):
    return mine_file(*args)


def tree_fingerprint(root: str) -> tuple[list[str], str]:
    """The tree's Python files and a hash of their names, sizes and modification times (the cache key)."""
    files = list_py_files(root)
    h = hashlib.sha256(f"{MINER_VERSION}|{os.path.abspath(root)}".encode())
    for rel in files:
        st = os.stat(os.path.join(root, rel))
        h.update(f"|{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
    return files, h.hexdigest()[:20]


def mine_root(
    root: str, cache_dir: str, workers: int | None = None, log: Callable = print
) -> tuple[list, Counter]:
    """All candidate functions of one source tree, in file order; cached by the tree's file list, sizes and
    modification times, so a second run reads one JSON file."""
    if not os.path.isdir(root):
        raise UsageError(f"--pysrc-roots {root} is not a directory; pass source trees to mine")
    files, digest = tree_fingerprint(root)
    cache = Path(cache_dir, "pysrc", digest + ".json")
    if cache.is_file():
        data = json.loads(cache.read_text())
        return data["records"], Counter(data["counts"])
    workers = workers or os.cpu_count() or 1
    records, counts = [], Counter()
    if workers > 1 and len(files) > 50:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_mine_file_args, [(root, f) for f in files], chunksize=32)
            for recs, c in results:
                records += recs
                counts += c
    else:
        for f in files:
            recs, c = mine_file(root, f)
            records += recs
            counts += c
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"records": records, "counts": counts}))
    os.replace(tmp, cache)
    return records, counts


def load_pysrc(roots: list[str], cache_dir: str, log: Callable = print) -> tuple[list[dict], Counter]:
    """Mined functions from several trees, duplicates (by whitespace-normalized code) dropped, first kept."""
    records, counts, seen = [], Counter(), set()
    for root in roots:
        recs, c = mine_root(root, cache_dir, log=log)
        counts += c
        for r in recs:
            fp = code_fingerprint(r["code"])
            if fp in seen:
                counts["duplicate_code"] += 1
                continue
            seen.add(fp)
            records.append(r)
    return records, counts


# ---------------------------------------------------------------- the user's jsonl
def load_jsonl(path: str, log: Callable = print, show: int = 5) -> tuple[list[dict], Counter]:
    """`{docstring, code}` per line (optional id, func_name, split); bad lines are counted, not fatal, and
    the first `show` of them are logged with their line numbers, so the file can be fixed."""
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise UsageError(
            f"--data jsonl:{path} is not a readable file; pass a file of {{docstring, code}} lines"
        )
    records, counts = [], Counter()

    def skip(lineno: int, why: str) -> None:
        counts[why] += 1
        if sum(counts.values()) <= show:
            log(f"data: {path} line {lineno}: {why.replace('_', ' ')}, skipped")

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                skip(lineno, "not_utf8")
                continue
            except ValueError:
                skip(lineno, "not_json")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("code"), str) or not obj["code"].strip():
                skip(lineno, "no_code")
                continue
            if not isinstance(obj.get("docstring"), str) or not obj["docstring"].strip():
                skip(lineno, "no_docstring")
                continue
            rid = str(obj.get("id", f"{Path(path).name}:{lineno}"))
            split = obj.get("split") if obj.get("split") in SPLITS else hash_split(obj["code"])
            rec = make_record(
                obj["code"], obj["docstring"], id=rid, func_name=str(obj.get("func_name", "")),
                repo=str(obj.get("repo", "")), path=str(obj.get("path", path)), split=split,
            )  # fmt: skip
            if rec is None:  # not a def: keep it as plain code, usable with the study's prompt format
                code = obj["code"].strip("\n").rstrip()
                rec = dict(
                    id=rid, docstring=obj["docstring"].strip(), code=code,
                    func_name=str(obj.get("func_name", "")),
                    repo=str(obj.get("repo", "")), path=str(obj.get("path", path)), split=split, signature="",
                )  # fmt: skip
            records.append(rec)
    if sum(counts.values()) > show:
        log(f"data: {path}: {sum(counts.values()) - show:,} more bad lines skipped (counts below)")
    if not records and not counts:
        counts["empty_file"] += 1
    return records, counts


def strip_codexglue(rows: Iterable[dict], counts: Counter) -> Iterator[dict]:
    """CodeXGLUE rows -> records: the docstring is cut out of `code`, so the target never repeats the
    prompt."""
    for row in rows:
        code, doc = row.get("code"), row.get("docstring")
        if not isinstance(code, str) or not code.strip():
            counts["no_code"] += 1
            continue
        if not isinstance(doc, str) or not doc.strip():
            counts["no_docstring"] += 1
            continue
        rec = make_record(
            code, doc, id=row["id"], func_name=row["func_name"] or "", repo=row["repo"] or "",
            path=row["path"] or "", split=row["split"],
        )  # fmt: skip
        if rec is None:
            counts["no_function_body"] += 1
            continue
        yield rec
