"""Tokenizers through tiktoken: GPT-2's, built offline from the vendored ranks file, or a checkpoint's own
byte-level BPE (its tokenizer.json, as transformers writes it: CodeParrot's, say) converted to the same kind
of encoding.

tiktoken would download `r50k_base` on first use; we ship the same file (checked by its sha256, the hash
tiktoken itself expects) so tokenization works on machines without a network.

A byte-level BPE tokenizer.json holds a vocabulary {token: id} and a list of merges over an alphabet of 256
printable characters, one per byte (bytes_to_unicode); text is cut by GPT-2's regex before BPE. tiktoken
merges, step by step, the adjacent pair whose concatenation has the lowest rank; `tokenizers` merges the pair
listed first among the merges. With rank = id the two agree when every merged token was numbered in the
order of its merge, as BPE trainers number them (tests/data/test_tokenizer.py checks the ids against
`tokenizers` on the embedded corpus and HumanEval); a file whose merges are out of that order loads with a
warning. What tiktoken cannot reproduce (a normalizer, a prefix space, non-special added tokens, ...) is
refused with one sentence naming the key.

The tokenizer travels with the model: model/hf.py sets `model.tokenizer` to the checkpoint's own (the
tokenizer.json beside its weights) and `tokenizer_of(model)` hands it out, GPT-2's for a model without one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

from cli import UsageError

RANKS_FILE = Path(__file__).with_name("gpt2.tiktoken")
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = 50256  # GPT-2's <|endoftext|>: separates documents, ends every training target
EOT_TEXT = "<|endoftext|>"
TOKENIZER_JSON = "tokenizer.json"
# What transformers saves beside a tokenizer: copied with the tokenizer into every checkpoint we write
TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")  # fmt: skip


class TokenizerError(UsageError):
    """A tokenizer that cannot be loaded: one sentence naming the file, the key and what to do."""


class Tokenizer:
    """A byte-level BPE. `encode` treats a literal "<|endoftext|>" in text as ordinary characters."""

    def __init__(self, enc: tiktoken.Encoding, eot: int = EOT, digest: str = RANKS_SHA256, files=()):
        self.enc = enc
        self.name = enc.name  # "gpt2", or the folder its tokenizer.json was read from
        self.eot = eot  # <|endoftext|>: ends every training target, stops generation
        self.vocab_size = enc.n_vocab  # 50257 for GPT-2
        self.digest = digest  # names the ids (the data cache's key): equal digests, equal ids
        self.files: tuple[Path, ...] = tuple(files)  # what it was read from (none: GPT-2's, vendored)

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])

    def decode_bytes(self, ids) -> bytes:
        return self.enc.decode_bytes([int(i) for i in ids])

    def __deepcopy__(self, memo):  # immutable: a copied model shares its tokenizer
        return self


@functools.cache
def get_tokenizer() -> Tokenizer:
    """GPT-2's tokenizer (cached: building the rank table takes ~0.1 s)."""
    enc = tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=_gpt2_ranks(), special_tokens={EOT_TEXT: EOT}
    )
    return Tokenizer(enc)


@functools.cache
def _gpt2_ranks() -> dict[bytes, int]:
    return load_tiktoken_bpe(str(RANKS_FILE), expected_hash=RANKS_SHA256)


def tokenizer_of(model) -> Tokenizer:
    """The tokenizer that came with `model` (its `tokenizer`, set where it was loaded or built), else
    GPT-2's. One with more ids than the model's vocabulary is refused: they would index past the embedding."""
    tok = getattr(model, "tokenizer", None) or get_tokenizer()
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and tok.vocab_size > vocab:
        raise TokenizerError(
            f"the model has a vocabulary of {vocab:,} tokens but its tokenizer ({tok.name}) has "
            f"{tok.vocab_size:,}; load the model with its own tokenizer.json (beside its weights, or "
            "--tokenizer)"
        )
    return tok


# ------------------------------------------------------------------ a checkpoint's tokenizer.json
def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a tokenizer.json file (or of the folder holding one); GPT-2's own vocabulary gives
    get_tokenizer()'s, so its ids and data cache are shared. Cached per file and version."""
    path = Path(path).expanduser()
    file = path / TOKENIZER_JSON if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(
            f"{path} has no {TOKENIZER_JSON}; pass a tokenizer.json or the folder a tokenizer was saved to"
        )
    st = file.stat()
    return _load(file.resolve(), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load(file: Path, size: int, mtime_ns: int) -> Tokenizer:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(
            f"{file} is not valid JSON ({e}); restore it or save the tokenizer again"
        ) from None
    specials, eot = _special_tokens(file, data)
    ranks = _ranks(file, data.get("model") or {}, specials)
    if eot == EOT and ranks == _gpt2_ranks():  # GPT-2's own tokenizer.json (the hub's gpt2 has one)
        return get_tokenizer()
    _check_merge_order(file, data["model"], specials)
    enc = tiktoken.Encoding(
        name=str(file.parent), pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens=specials
    )
    h = hashlib.sha256(f"{r50k_pat_str}|{eot}|{sorted(specials.items())}".encode())
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, "little") + len(token).to_bytes(4, "little") + token)
    # what save_tokenizer copies: transformers' files beside it, or a lone file of another name
    files = [file.with_name(f) for f in TOKENIZER_FILES if file.with_name(f).is_file()]
    return Tokenizer(
        enc, eot=eot, digest=h.hexdigest(), files=files if file.name == TOKENIZER_JSON else [file]
    )


def save_tokenizer(tok: Tokenizer, folder: str | Path) -> None:
    """Copy the files `tok` was read from into `folder` (a tokenizer.json of another name as tokenizer.json),
    so a checkpoint written there carries its tokenizer. GPT-2's, vendored, writes nothing: every GPT-2 tool
    has it."""
    for f in tok.files:
        dest = Path(folder) / (f.name if f.name in TOKENIZER_FILES else TOKENIZER_JSON)
        if not (dest.exists() and dest.samefile(f)):
            shutil.copyfile(f, dest)


def _refuse(file: Path, key: str, value, why: str) -> TokenizerError:
    return TokenizerError(
        f"{file} sets {key}={value!r}, which {why}; this toolkit loads GPT-2-style byte-level BPE tokenizers"
    )


def _special_tokens(file: Path, data: dict) -> tuple[dict[str, int], int]:
    """({text: id} of the special tokens, the end-of-text id), after checking the pipeline around the BPE."""
    pre, dec = data.get("pre_tokenizer") or {}, data.get("decoder") or {}
    checks = [  # (key, value, what it must be, why)
        ("normalizer", data.get("normalizer"), None, "changes the text before BPE"),
        ("pre_tokenizer.type", pre.get("type"), "ByteLevel", "is not GPT-2's byte-level split"),
        ("pre_tokenizer.add_prefix_space", pre.get("add_prefix_space", False), False, "adds a space to text"),
        ("pre_tokenizer.use_regex", pre.get("use_regex", True), True, "drops GPT-2's regex split"),
        ("decoder.type", dec.get("type"), "ByteLevel", "is not GPT-2's byte-level decoding"),
    ]
    for key, value, want, why in checks:
        if value != want:
            raise _refuse(file, key, value, why)
    specials = {}
    for t in data.get("added_tokens") or []:
        if not t.get("special"):  # `tokenizers` cuts these out of the text before BPE; tiktoken cannot
            raise _refuse(file, "added_tokens", t.get("content"), "is a non-special added token")
        specials[t["content"]] = t["id"]
    eot = specials.get(EOT_TEXT)
    if eot is None:
        raise TokenizerError(
            f"{file} has no special {EOT_TEXT} token; this toolkit ends every training target with it and "
            "stops generation there: use a tokenizer that has one"
        )
    return specials, eot


def _ranks(file: Path, model: dict, specials: dict[str, int]) -> dict[bytes, int]:
    """{token bytes: id} of the BPE vocabulary (special tokens apart), the ranks tiktoken merges by."""
    checks = [
        ("model.type", model.get("type"), "BPE", "is not byte-pair encoding"),
        ("model.dropout", model.get("dropout") or None, None, "samples a different split each time"),
        (
            "model.continuing_subword_prefix",
            model.get("continuing_subword_prefix") or None,
            None,
            "marks pieces",
        ),
        ("model.end_of_word_suffix", model.get("end_of_word_suffix") or None, None, "marks word ends"),
        ("model.byte_fallback", model.get("byte_fallback", False), False, "is not byte-level BPE"),
    ]
    for key, value, want, why in checks:
        if value != want:
            raise _refuse(file, key, value, why)
    to_bytes = {ord(c): b for b, c in _bytes_to_unicode().items()}  # str.translate's table: char -> byte
    ranks = {}
    for token, i in model.get("vocab", {}).items():
        if token in specials:
            continue
        try:  # each character stands for one byte: translate to chr(byte), then latin-1 is that byte
            ranks[token.translate(to_bytes).encode("latin-1")] = i
        except UnicodeEncodeError:
            raise _refuse(file, "model.vocab", token, "is not written in the byte-level alphabet") from None
    missing = 256 - sum(len(t) == 1 for t in ranks)
    if missing:
        raise TokenizerError(
            f"{file} has no token for {missing} of the 256 bytes, so some text cannot be encoded; train the "
            "tokenizer with the full byte-level alphabet (ByteLevel.alphabet())"
        )
    return ranks


def _check_merge_order(file: Path, model: dict, specials: dict[str, int]) -> None:
    """Warn where tiktoken (lowest-id concatenation first) may split text unlike `tokenizers` (first listed
    merge first): merges whose new ids do not rise with their position, or tokens no merge makes."""
    vocab = model.get("vocab", {})
    last, out_of_order, made = -1, 0, set()
    for m in model.get("merges", []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m  # "a b" (older files) or ["a", "b"]
        made.add(a + b)
        i = vocab.get(a + b, -1)
        if i <= last:
            out_of_order += 1
        last = max(last, i)
    unmade = sum(len(t) > 1 and t not in made and t not in specials for t in vocab)
    if out_of_order or unmade:
        print(
            f"warning: {file}: {out_of_order} merges out of id order and {unmade} tokens no merge makes; "
            "tiktoken may split some rare text differently from the tokenizers library",
            file=sys.stderr,
        )


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes stand for themselves, the other 68
    bytes are written as the characters from U+0100 on, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
