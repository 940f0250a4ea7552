"""data/tokenizer.py: GPT-2's own ids, offline from the vendored ranks file whose sha256 is checked."""

from __future__ import annotations

import hashlib

import pytest

import data.tokenizer as tokenizer_module
from data.tokenizer import EOT, RANKS_FILE, RANKS_SHA256, get_tokenizer


def test_vendored_ranks_file_has_the_expected_sha256():
    assert hashlib.sha256(RANKS_FILE.read_bytes()).hexdigest() == RANKS_SHA256


def test_a_corrupted_ranks_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "gpt2.tiktoken"
    data = RANKS_FILE.read_bytes()
    bad.write_bytes(data[:-10] + b"AAAAAAAAAA")  # same size, different bytes
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))  # never reuse a cached good copy
    monkeypatch.setattr(tokenizer_module, "RANKS_FILE", bad)
    with pytest.raises(ValueError, match="[Hh]ash"):
        get_tokenizer.__wrapped__()  # the uncached builder


@pytest.mark.parametrize(
    "text, ids",
    [
        ("Hello world", [15496, 995]),
        ("The", [464]),
        (" the", [262]),
        ("\n", [198]),
        ("def add(a, b):", [4299, 751, 7, 64, 11, 275, 2599]),
    ],
)
def test_ids_are_gpt2s_own(text, ids):
    assert get_tokenizer().encode(text) == ids


def test_vocabulary_and_end_of_text():
    tok = get_tokenizer()
    assert tok.vocab_size == 50257 and tok.eot == EOT == 50256
    assert tok.decode([EOT]) == "<|endoftext|>"


def test_literal_end_of_text_in_text_is_plain_characters():
    tok = get_tokenizer()
    ids = tok.encode("a<|endoftext|>b")  # would raise with tiktoken's default encode()
    assert EOT not in ids
    assert tok.decode(ids) == "a<|endoftext|>b"


@pytest.mark.parametrize(
    "text",
    [
        'def f(x):\n    """Return x squared."""\n    return x ** 2\n',
        "\t  mixed   whitespace \r\n and trailing  ",
        "unicode: café, naïve, 数学, emoji 🐍🚀",
        "",
    ],
)
def test_round_trip(text):
    tok = get_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_encode_batch_equals_encode_one_by_one():
    tok = get_tokenizer()
    texts = ["Hello world", "def f():\n    pass", "<|endoftext|>", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_decode_bytes_keeps_a_split_multibyte_character():
    tok = get_tokenizer()
    ids = tok.encode("🐍")
    assert len(ids) > 1  # the emoji is several byte-level tokens
    assert b"".join(tok.decode_bytes([i]) for i in ids) == "🐍".encode()
