"""Records -> token cache: the prompt format, one tokenization pass, the loss mask, the leakage guard, stats.

    python -m data.prepare --data pysrc                  # the embedded corpus (standard library), offline
    python -m data.prepare --data codexglue --data-files train.parquet,valid.parquet,test.parquet

Prompt formats (the prompt carries no loss unless --train-on-prompt; the target is the code, then
<|endoftext|> so the model learns to stop):

    study      prompt  Prompt: {docstring}<NL>Code:<NL>
               target  def f(x):<NL>    return x<NL>                    (the study's format)
    docstring  prompt  def f(x):<NL>    <3 quotes>{docstring}<3 quotes><NL>
               target      return x<NL>                             (HumanEval's prompt shape)

Cache, one folder per hash of (source, filters, format, tokenizer, max length) under --cache-dir; the
tokenizer is the model's (GPT-2's, or a checkpoint's own tokenizer.json: data/tokenizer.py), named by the
digest of its ids:
    meta.json                      config, source, tokenizer, counts, stats; written last (present = complete)
    {split}/tokens.u16             every example's ids back to back (uint16 memmap: vocabularies < 65536)
    {split}/index.npz              offsets (n+1,) int64 into tokens; target_start (n,) int32
    {split}/records.jsonl, .idx    the source record of each example (for evaluation prompts), and offsets

Loss mask: token j of example i is a training target (its prediction from tokens < j counts) iff
j >= target_start[i]; target_start is the prompt's length (or 1 with --train-on-prompt).
Truncation policy: an example longer than --max-len tokens is dropped and counted (`too_long`), never cut:
a cut function would teach the model to stop mid-body or never emit <|endoftext|>.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cli import UsageError, opt, parse_config, run_main
from data import sources
from data.tokenizer import EOT, Tokenizer, get_tokenizer, load_tokenizer

CACHE_VERSION = 1  # bump when the cache layout or example construction changes
FORMATS = ("study", "docstring")
DEFAULT_MAX_LEN = 512  # tokens per example: the study's length


@dataclass
class DataConfig:
    """The training data: its source, filters, prompt format and token cache."""

    data: str = opt(
        "auto",
        "auto (CodeXGLUE if reachable or cached, else the embedded corpus), codexglue, pysrc, or jsonl:PATH",
    )
    data_files: str | None = opt(None, "comma-separated local CodeXGLUE-schema parquet/jsonl files")
    pysrc_roots: str | None = opt(None, "comma-separated extra Python source trees for the embedded corpus")
    max_train_examples: int | None = opt(None, "use the first N training examples (the study used 10000)")
    max_len: int | None = opt(
        None,
        "tokens per example, prompt + code + EOS; longer ones are dropped "
        "(default 512, or the model's context if shorter)",
    )
    prompt_format: str = opt(
        "study", "study ('Prompt: ... Code: ...') or docstring (HumanEval-style def)", choices=FORMATS
    )
    train_on_prompt: bool = opt(False, "also put loss on the prompt tokens (the study did)")
    cache_dir: str = opt(".cache/data", "where tokenized datasets are cached")

    def __post_init__(self) -> None:
        if self.max_len is None:  # no model here to be shorter than; train.py's TrainConfig knows one
            self.max_len = DEFAULT_MAX_LEN


# ---------------------------------------------------------------- prompt format
def format_prompt(
    docstring: str, func_name: str | None = None, fmt: str = "study", signature: str | None = None
) -> str:
    """The text the model sees before it writes code. The docstring format needs the function's `def` line:
    pass `signature` (records carry it); with only a name it becomes `def name():`."""
    if fmt == "study":
        return f"Prompt: {docstring.strip()}\nCode:\n"
    if fmt == "docstring":
        if not signature:
            signature = f"def {(func_name or 'solution').split('.')[-1]}():"
        indent = "    "
        lines = docstring.strip().replace('"""', r"\"\"\"").splitlines() or [""]
        if len(lines) == 1:
            doc = f'{indent}"""{lines[0]}"""'
        else:
            doc = f'{indent}"""{lines[0]}\n' + "".join((indent + ln).rstrip() + "\n" for ln in lines[1:])
            doc += f'{indent}"""'
        return f"{signature}\n{doc}\n"
    raise ValueError(f"unknown prompt format {fmt!r}; choose from {', '.join(FORMATS)}")


def prompt_and_target(rec: dict, fmt: str) -> tuple[str, str] | None:
    """(prompt, target text) of one record; None if the format cannot express it (no `def` to put the
    docstring under). The target ends in a newline; <|endoftext|> is appended as a token."""
    if fmt == "docstring":
        if not rec["signature"]:
            return None
        body = rec["code"][len(rec["signature"]) + 1 :]
        return format_prompt(rec["docstring"], rec["func_name"], fmt, rec["signature"]), body + "\n"
    return format_prompt(rec["docstring"], rec["func_name"], fmt), rec["code"] + "\n"


def record_prompt(rec: dict, fmt: str) -> str:
    """The evaluation prompt of a record (its signature included for the docstring format)."""
    return format_prompt(rec["docstring"], rec["func_name"], fmt, rec.get("signature"))


# ---------------------------------------------------------------- the token cache
class TokenDataset:
    """One split of a token cache. `example(i)` -> (ids (L,) int64, loss_mask (L,) bool), where loss_mask[j]
    says token j is a target: its prediction from tokens < j counts (prompt False, code and EOT True). `eot`:
    the tokenizer's end-of-text id, which ends every example."""

    def __init__(self, path: str | Path, eot: int = EOT):
        self.path = Path(path)
        self.eot = eot
        index = np.load(self.path / "index.npz")
        self.offsets, self.target_start = index["offsets"], index["target_start"]
        self.lengths = np.diff(self.offsets)  # (n,) tokens per example
        n_tok = int(self.offsets[-1])
        self.tokens = (
            np.memmap(self.path / "tokens.u16", dtype=np.uint16, mode="r", shape=(n_tok,)) if n_tok else None
        )
        self.num_tokens = n_tok
        self.num_target_tokens = int((self.lengths - self.target_start).sum())
        self._rec_offsets = np.load(self.path / "records.idx.npy")
        self._rec_file = None

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def dropped(self) -> dict[str, int]:
        """Examples of this split left out of the cache, by reason (too_long, ...): the cache's meta.json."""
        meta = self.path.parent / "meta.json"
        return json.loads(meta.read_text())["dropped"].get(self.path.name, {}) if meta.is_file() else {}

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]], dtype=np.int64)
        mask = np.arange(len(ids)) >= self.target_start[i]
        return ids, mask

    def records(self, i: int) -> dict:
        """The source record of example i: id, docstring, code, func_name, signature, repo, path, split."""
        if self._rec_file is None:
            self._rec_file = open(self.path / "records.jsonl", "rb")
        self._rec_file.seek(int(self._rec_offsets[i]))
        return json.loads(self._rec_file.readline())

    def __getstate__(self):  # picklable for DataLoader workers: the open file is reopened on demand
        return {**self.__dict__, "_rec_file": None}


class _SplitWriter:
    """Appends tokenized examples of one split to its cache folder."""

    def __init__(self, path: Path):
        path.mkdir(parents=True)
        self.path = path
        self.tok_f = open(path / "tokens.u16", "wb")
        self.rec_f = open(path / "records.jsonl", "wb")
        self.offsets, self.target_start, self.rec_offsets = [0], [], []

    def add(self, examples: list[tuple[list[int], int, dict]]) -> None:
        """Append (ids, target_start, record) triples: one write per file per chunk."""
        if not examples:
            return
        flat = itertools.chain.from_iterable(ids for ids, _, _ in examples)
        total = sum(len(ids) for ids, _, _ in examples)
        self.tok_f.write(np.fromiter(flat, dtype=np.uint16, count=total).tobytes())
        lines = [json.dumps(rec, ensure_ascii=False).encode() + b"\n" for _, _, rec in examples]
        pos = self.rec_f.tell()
        for (ids, start, _), line in zip(examples, lines):
            self.offsets.append(self.offsets[-1] + len(ids))
            self.target_start.append(start)
            self.rec_offsets.append(pos)
            pos += len(line)
        self.rec_f.write(b"".join(lines))

    def close(self) -> dict:
        self.tok_f.close()
        self.rec_f.close()
        offsets = np.asarray(self.offsets, dtype=np.int64)
        np.savez(
            self.path / "index.npz", offsets=offsets, target_start=np.asarray(self.target_start, np.int32)
        )
        np.save(self.path / "records.idx.npy", np.asarray(self.rec_offsets, dtype=np.int64))
        lengths = np.diff(offsets)
        target = int(lengths.sum() - np.asarray(self.target_start, dtype=np.int64).sum())
        pct = {f"p{q}": int(np.percentile(lengths, q)) if len(lengths) else 0 for q in (50, 90, 99, 100)}
        return dict(examples=len(lengths), tokens=int(lengths.sum()), target_tokens=target, lengths=pct)


# ---------------------------------------------------------------- which source
@dataclass
class Source:
    kind: str  # codexglue | pysrc | jsonl
    label: str  # what the log says
    identity: list  # what the cache key hashes: names, and sizes/mtimes of local inputs
    files: list[str] = field(default_factory=list)  # codexglue files or jsonl path
    roots: list[str] = field(default_factory=list)  # pysrc trees


def _split_list(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def _file_identity(files: list[str]) -> list:
    out = []
    for f in files:
        st = os.stat(f) if os.path.exists(f) else None
        out.append([os.path.abspath(f), st.st_size if st else -1, st.st_mtime_ns if st else -1])
    return out


def resolve_source(cfg: DataConfig, log: Callable = print) -> Source:
    """Which data to use; `auto` prefers CodeXGLUE (local files, the hub, the hub cache), else the mined
    corpus, and says why."""
    data = cfg.data
    if data == "auto":
        if cfg.data_files:
            data = "codexglue"
        else:
            reason = sources.hub_unreachable_reason()
            cached = sources.cached_codexglue_files()
            if reason is None or cached:
                data = "codexglue"
                log(f"data: --data auto -> codexglue ({'the hub answers' if reason is None else 'cached'})")
            else:
                data = "pysrc"
                log(
                    f"data: --data auto -> pysrc, the embedded Python corpus: the hub is not usable: {reason}"
                )
    if data == "codexglue":
        files = _split_list(cfg.data_files)
        if files:
            return Source(
                "codexglue", f"codexglue files {', '.join(files)}", _file_identity(files), files=files
            )
        reason = sources.hub_unreachable_reason()
        if reason is not None:
            cached = sources.cached_codexglue_files()
            if not cached:
                raise UsageError(
                    f"--data codexglue needs the hub but {reason}, and no copy is cached; "
                    "pass --data-files with local parquet/jsonl files, or --data pysrc"
                )
            log(f"data: the hub is not reachable ({reason}); using the cached copy")
            return Source("codexglue", "codexglue (hub cache)", _file_identity(cached), files=cached)
        return Source(
            "codexglue", f"codexglue {'/'.join(sources.CODEXGLUE_HUB)} (hub)", list(sources.CODEXGLUE_HUB)
        )
    if data == "pysrc":
        roots = sources.default_pysrc_roots() + _split_list(cfg.pysrc_roots)
        for r in roots:
            if not os.path.isdir(r):
                raise UsageError(f"--pysrc-roots {r} is not a directory; pass source trees to mine")
        ident = [[os.path.abspath(r), sources.tree_fingerprint(r)[1]] for r in roots]
        return Source("pysrc", f"pysrc {', '.join(roots)}", ident, roots=roots)
    if data.startswith("jsonl:"):
        path = data[len("jsonl:") :]
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise UsageError(
                f"--data {data}: {path} is not a readable file; pass a file of {{docstring, code}} lines"
            )
        return Source("jsonl", f"jsonl {path}", _file_identity([path]), files=[path])
    raise UsageError(f"--data {cfg.data} is not one of auto, codexglue, pysrc, jsonl:PATH")


def cache_key(cfg: DataConfig, src: Source, tok: Tokenizer) -> str:
    key = dict(
        version=CACHE_VERSION, miner=sources.MINER_VERSION, source=src.kind, identity=src.identity,
        fmt=cfg.prompt_format, train_on_prompt=cfg.train_on_prompt, max_len=cfg.max_len,
        max_train=cfg.max_train_examples, tokenizer=tok.digest,  # GPT-2's: the vendored file's sha256
    )  # fmt: skip
    return f"{src.kind}-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- building
def load_records(src: Source, cfg: DataConfig, log: Callable) -> tuple[list[dict], Counter]:
    """All records of the source (every split) and the counts of what was skipped and why."""
    if src.kind == "pysrc":
        return sources.load_pysrc(src.roots, cfg.cache_dir, log=log)
    if src.kind == "jsonl":
        return sources.load_jsonl(src.files[0], log=log)
    rows = sources.load_codexglue(src.files or None, cfg.cache_dir, log=log)
    counts: Counter = Counter()
    records = []
    for recs, c in _parallel_strip(rows):
        records += recs
        counts += c
    return records, counts


def _strip_chunk(rows: list[dict]) -> tuple[list[dict], Counter]:
    counts: Counter = Counter()
    return list(sources.strip_codexglue(rows, counts)), counts


def _parallel_strip(rows: Iterator[dict], chunk: int = 2048) -> Iterator[tuple[list[dict], Counter]]:
    """Docstring stripping reads tokens in pure Python: spread it over the cores, in order."""
    workers = os.cpu_count() or 1
    chunks = _chunks(rows, chunk)
    if workers == 1:
        yield from map(_strip_chunk, chunks)
        return
    with ProcessPoolExecutor(workers) as pool:
        while True:
            wave = [c for _, c in zip(range(4 * workers), chunks)]  # bounded memory: a few chunks in flight
            if not wave:
                return
            yield from pool.map(_strip_chunk, wave)


def _chunks(it, n):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def leakage_guard(records: list[dict]) -> tuple[list[dict], Counter]:
    """Training records minus any whose normalized code or docstring matches a HumanEval problem or a
    validation/test example (so neither evaluation can be answered from memory)."""
    from data.humaneval import humaneval_records, summary

    he_code, he_doc = set(), set()
    for r in humaneval_records():
        he_code.add(sources.code_fingerprint(r["code"]))
        he_doc |= {sources.doc_fingerprint(r["docstring"]), sources.doc_fingerprint(summary(r["docstring"]))}
    ev_code, ev_doc = set(), set()
    for r in records:
        if r["split"] != "train":
            ev_code.add(sources.code_fingerprint(r["code"]))
            ev_doc.add(sources.doc_fingerprint(r["docstring"]))
    kept, counts = [], Counter()
    for r in records:
        if r["split"] == "train":
            code, doc = sources.code_fingerprint(r["code"]), sources.doc_fingerprint(r["docstring"])
            if code in he_code or doc in he_doc:
                counts["leak_humaneval"] += 1
                continue
            if code in ev_code:
                counts["leak_eval_code"] += 1
                continue
            if doc in ev_doc:
                counts["leak_eval_docstring"] += 1
                continue
        kept.append(r)
    return kept, counts


def _subsample(train: list[dict], n: int | None) -> list[dict]:
    """The n training records with the smallest hash of their id, in source order: an unbiased, deterministic
    sample (CodeXGLUE is ordered by repository, so its first n would be a few repositories)."""
    if n is None or n >= len(train):
        return train
    order = sorted(range(len(train)), key=lambda i: hashlib.sha1(train[i]["id"].encode()).digest())
    return [train[i] for i in sorted(order[:n])]


def encode_all(tok, texts: list[str], chunk: int = 512) -> list[list[int]]:
    """tiktoken on threads (its BPE runs without the GIL), one task per chunk of texts: tiktoken's own batch
    API makes one task per text, whose overhead outweighs the encoding of a short function."""
    parts = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return [ids for part in pool.map(lambda p: [tok.encode(t) for t in p], parts) for ids in part]


def build(cfg: DataConfig, src: Source, out: Path, log: Callable, tok: Tokenizer) -> dict:
    """Load, guard, tokenize with `tok` and write every split of the cache into `out` (atomically)."""
    t0 = time.perf_counter()
    records, skipped = load_records(src, cfg, log)
    t_load = time.perf_counter() - t0
    records, leaks = leakage_guard(records)
    by_split = {s: [r for r in records if r["split"] == s] for s in sources.SPLITS}
    by_split["train"] = _subsample(by_split["train"], cfg.max_train_examples)
    if not by_split["train"]:
        raise UsageError(
            f"{src.label} gave no usable training examples (skipped: {_fmt_counts(skipped) or 'none'})"
        )
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t1 = time.perf_counter()
    stats, dropped = {}, {}
    for split, recs in by_split.items():
        w, drop = _SplitWriter(tmp / split), Counter()
        for chunk in _chunks(recs, 4096):
            pairs = [(r, prompt_and_target(r, cfg.prompt_format)) for r in chunk]
            drop["no_def_for_docstring_format"] += sum(p is None for _, p in pairs)
            pairs = [(r, p) for r, p in pairs if p is not None]
            prompts = encode_all(tok, [p[0] for _, p in pairs])
            targets = encode_all(tok, [p[1] for _, p in pairs])
            examples = []
            for (r, _), p_ids, t_ids in zip(pairs, prompts, targets):
                ids = p_ids + t_ids + [tok.eot]
                if len(ids) > cfg.max_len:
                    drop["too_long"] += 1
                    continue
                examples.append((ids, 1 if cfg.train_on_prompt else len(p_ids), r))
            w.add(examples)
        stats[split], dropped[split] = w.close(), +drop
    t_tok = time.perf_counter() - t1
    n_tok = sum(s["tokens"] for s in stats.values())
    meta = dict(
        config=dataclasses.asdict(cfg), source=src.label, skipped=+skipped, leakage=+leaks, dropped=dropped,
        tokenizer=dict(name=tok.name, digest=tok.digest, eot=tok.eot, vocab_size=tok.vocab_size),
        stats=stats, seconds=dict(load=round(t_load, 2), tokenize=round(t_tok, 2)),
        tokens_per_sec=round(n_tok / max(t_tok, 1e-9)),
    )  # fmt: skip
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return meta


def _fmt_counts(c: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))


def report(meta: dict, log: Callable) -> None:
    """The summary lines: skipped inputs, leakage, then per split examples, tokens, lengths, drops."""
    sk = {k: v for k, v in meta["skipped"].items() if k not in ("files", "functions")}
    if "functions" in meta["skipped"]:
        log(f"data: mined {meta['skipped']['files']:,} files, {meta['skipped']['functions']:,} functions")
    log(f"data: skipped {sum(sk.values()):,} inputs: {_fmt_counts(sk) or 'none'}")
    log(
        f"data: leakage guard dropped {sum(meta['leakage'].values()):,} train examples: "
        f"{_fmt_counts(meta['leakage']) or 'none'}"
    )
    for split, s in meta["stats"].items():
        d = meta["dropped"][split]
        lens = s["lengths"]
        log(
            f"data: {split:<10} {s['examples']:>9,} examples {s['tokens']:>12,} tokens "
            f"({s['target_tokens']:,} target)"
            f" | length p50 {lens['p50']} p90 {lens['p90']} p99 {lens['p99']} max {lens['p100']}"
            f" | dropped {_fmt_counts(d) or 'none'}"
        )
    too_long, kept = meta["dropped"].get("train", {}).get("too_long", 0), meta["stats"]["train"]["examples"]
    if too_long > 0.1 * (too_long + kept):  # a count alone does not say it is a setting
        log(f"data: {too_long:,} of {too_long + kept:,} training examples are longer than --max-len "
            f"{meta['config']['max_len']} tokens and were left out; a larger --max-len (up to the model's "
            "context) keeps them")  # fmt: skip


def why_small(ds: TokenDataset, cfg: DataConfig) -> str:
    """Why a split holds so few examples, and the flag that changes it ("" when nothing was left out)."""
    causes = []
    d = ds.dropped
    if d.get("too_long"):
        causes.append(f"{d['too_long']:,} were dropped as longer than --max-len {cfg.max_len} tokens (raise "
                      "--max-len, up to the model's context)")  # fmt: skip
    if d.get("no_def_for_docstring_format"):
        causes.append(f"{d['no_def_for_docstring_format']:,} have no def line for --prompt-format docstring "
                      "(use --prompt-format study)")  # fmt: skip
    if ds.path.name == "train" and cfg.max_train_examples is not None:
        causes.append(f"--max-train-examples {cfg.max_train_examples:,} keeps at most that many")
    return "; ".join(causes)


def prepare(
    cfg: DataConfig, splits=("train", "validation"), log: Callable = print, tokenizer: Tokenizer | None = None
) -> dict[str, TokenDataset]:
    """The token cache for cfg and the model's tokenizer (GPT-2's when None), built on first use, as one
    TokenDataset per requested split."""
    tok = tokenizer or get_tokenizer()
    if cfg.prompt_format not in FORMATS:
        raise UsageError(f"--prompt-format {cfg.prompt_format} is not one of {', '.join(FORMATS)}")
    if not 8 <= cfg.max_len <= 65536:
        raise UsageError(f"--max-len {cfg.max_len} must be between 8 and 65536 tokens")
    if cfg.max_train_examples is not None and cfg.max_train_examples < 1:
        raise UsageError(f"--max-train-examples {cfg.max_train_examples} must be at least 1")
    if tok.vocab_size > 65536:
        raise UsageError(
            f"the tokenizer {tok.name} has {tok.vocab_size:,} ids; the token cache stores ids as uint16 "
            "(at most 65,536)"
        )
    bad = [s for s in splits if s not in sources.SPLITS]
    if bad:
        raise UsageError(f"unknown split {bad[0]!r}; choose from {', '.join(sources.SPLITS)}")
    src = resolve_source(cfg, log)
    if tok.name != "gpt2":
        log(f"data: tokenizer {tok.name}: {tok.vocab_size:,} ids, <|endoftext|> = {tok.eot}")
    out = Path(cfg.cache_dir) / cache_key(cfg, src, tok)
    if (out / "meta.json").is_file():
        meta = json.loads((out / "meta.json").read_text())
        log(f"data: {src.label}: cache hit {out}")
    else:
        log(f"data: {src.label}: building {out}")
        meta = build(cfg, src, out, log, tok)
        n_tok = sum(s["tokens"] for s in meta["stats"].values())
        log(
            f"data: built in {sum(meta['seconds'].values()):.1f} s (load {meta['seconds']['load']} s, "
            f"tokenize {meta['seconds']['tokenize']} s: {n_tok:,} tokens, "
            f"{meta['tokens_per_sec']:,} tokens/s)"
        )
    report(meta, log)
    eot = meta.get("tokenizer", {}).get("eot", EOT)  # caches built before meta named it: GPT-2's
    return {s: TokenDataset(out / s, eot) for s in splits}


# ---------------------------------------------------------------- CLI
@dataclass
class PrepareConfig(DataConfig):
    splits: str = field(default="train,validation,test", metadata={"help": "splits to report on"})
    show: int = field(default=1, metadata={"help": "print this many training examples (prompt | target)"})
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "a tokenizer.json (file or folder) to tokenize with (default GPT-2's)"},
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PrepareConfig, argv, description="Build (or find) the token cache for a data source.")
    data_cfg = DataConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataConfig)})
    tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else get_tokenizer()
    out = prepare(data_cfg, splits=tuple(_split_list(cfg.splits)), tokenizer=tok)
    ds = out.get("train") or next(iter(out.values()))
    for i in range(min(cfg.show, len(ds))):
        ids, mask = ds.example(i)
        start = int(np.argmax(mask))
        print(f"--- example {i} ({len(ids)} tokens, loss on {int(mask.sum())})")
        print(tok.decode(ids[:start]) + "\u2502" + tok.decode(ids[start:-1]) + "<|endoftext|>")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    run_main(main)
