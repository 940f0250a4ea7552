"""GPT-2's byte-pair tokenizer through tiktoken, built offline from the vendored ranks file.

tiktoken would download `r50k_base` on first use; we ship the same file (checked by its sha256, the hash
tiktoken itself expects) so tokenization works on machines without a network.
"""

from __future__ import annotations

import functools
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

RANKS_FILE = Path(__file__).with_name("gpt2.tiktoken")
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = 50256  # <|endoftext|>: separates documents, ends every training target


class Tokenizer:
    """GPT-2 BPE. `encode` treats a literal "<|endoftext|>" in text as ordinary characters."""

    def __init__(self, enc: tiktoken.Encoding):
        self.enc = enc
        self.eot = EOT
        self.vocab_size = enc.n_vocab  # 50257

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])

    def decode_bytes(self, ids) -> bytes:
        return self.enc.decode_bytes([int(i) for i in ids])


@functools.cache
def get_tokenizer() -> Tokenizer:
    """The GPT-2 tokenizer (cached: building the rank table takes ~0.1 s)."""
    ranks = load_tiktoken_bpe(str(RANKS_FILE), expected_hash=RANKS_SHA256)
    enc = tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT}
    )
    return Tokenizer(enc)
