"""Shared fixtures: small GPT-2 checkpoints written by transformers itself, in both on-disk layouts.

    hf_tiny_dir        folder from GPT2LMHeadModel.save_pretrained: model.safetensors (transformer. prefix,
                       no buffers) + config.json; 2 layers, 4 heads, 32 dims, 128 positions, full vocab
    hf_tiny_hub_file   the same weights in the hub file's layout (openai-community/gpt2 model.safetensors):
                       no prefix, h.N.attn.bias mask buffers and h.N.attn.masked_bias; config.json beside it
    randomize_(model)  every parameter random, LayerNorm and biases included, so a swapped ln_1/ln_2 or a
                       dropped bias changes the logits (transformers' init leaves biases 0 and LN at 1)
    stdlib_corpus      the embedded corpus, mined from the standard library once per session
    local_bpe          a 32,768-token byte-level BPE trained with `tokenizers` on that corpus, saved by
                       transformers: the stand-in for CodeParrot's tokenizer (<|endoftext|> at id 0)
    codeparrot_tiny    a random tiny GPT-2 with CodeParrot's settings and vocabulary, local_bpe beside it

transformers is imported inside the fixtures: test files that do not use them do not pay for its import.
"""

from __future__ import annotations

import os
import resource
import sysconfig
from pathlib import Path

import pytest
import torch

TINY_HF = dict(n_layer=2, n_head=4, n_embd=32, n_positions=128, vocab_size=50257)
# CodeParrot's config.json: GPT-2 with Mistral's attention settings, a 32,768-token vocabulary, and the
# eos/bos ids of GPT-2's tokenizer (50256), which its own tokenizer does not use (<|endoftext|> is 0)
CODEPARROT_HF = dict(vocab_size=32768, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Fill every parameter with seeded noise: LayerNorm weights ~ 1 + noise, everything else ~ N(0, std)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g) * std
        is_ln_weight = p.ndim == 1 and name.endswith("weight")
        p.copy_(1.0 + 10 * noise if is_ln_weight else noise * (5 if p.ndim == 1 else 1))
    return model


def write_hf_gpt2(folder: Path, seed: int = 0, std: float = 0.02, **config) -> Path:
    """A random GPT2LMHeadModel (randomize_d with `std`) saved by transformers' own save_pretrained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config)).eval()
    randomize_(model, seed, std)
    model.save_pretrained(folder)
    return folder


def to_hub_layout(hf_folder: Path, out_file: Path) -> Path:
    """Rewrite a save_pretrained folder's weights in the hub file's layout (no prefix, mask buffers)."""
    from safetensors.torch import load_file, save_file

    sd = {k.removeprefix("transformer."): v for k, v in load_file(hf_folder / "model.safetensors").items()}
    n_pos = sd["wpe.weight"].shape[0]
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("h."))
    for i in range(n_layer):  # what the original checkpoint carries: a float causal mask per layer
        sd[f"h.{i}.attn.bias"] = torch.ones(n_pos, n_pos).tril().view(1, 1, n_pos, n_pos)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, out_file, metadata={"format": "pt"})
    (out_file.parent / "config.json").write_text((hf_folder / "config.json").read_text())
    return out_file


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory) -> Path:
    """Folder written by GPT2LMHeadModel.save_pretrained: a random tiny GPT-2 (see TINY_HF). Read-only."""
    return write_hf_gpt2(tmp_path_factory.mktemp("hf_tiny"), **TINY_HF)


@pytest.fixture(scope="session")
def hf_tiny_hub_file(hf_tiny_dir, tmp_path_factory) -> Path:
    """hf_tiny_dir's weights as a hub-layout model.safetensors (config.json beside it). Read-only."""
    return to_hub_layout(hf_tiny_dir, tmp_path_factory.mktemp("hf_tiny_hub") / "model.safetensors")


@pytest.fixture(scope="session")
def make_hf_gpt2(tmp_path_factory):
    """Factory: make_hf_gpt2(seed=0, std=0.02, **GPT2Config fields) -> a new save_pretrained folder, random
    weights."""
    return lambda seed=0, std=0.02, **config: write_hf_gpt2(
        tmp_path_factory.mktemp("hf_gpt2"), seed, std, **config
    )


@pytest.fixture(scope="session")
def hub_layout():
    """to_hub_layout(save_pretrained folder, out_file): the same weights as the hub's model.safetensors."""
    return to_hub_layout


@pytest.fixture(scope="session")
def randomize():
    """randomize_(module, seed=0): every parameter random (LayerNorm and biases too), in place."""
    return randomize_


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: unlike the wall clock, not stretched by other
    jobs sharing the machine's cores."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.fixture(scope="session")
def stdlib_corpus(tmp_path_factory) -> dict:
    """The embedded corpus: functions mined from the standard library into a fresh cache, once per session
    (records, counts, and the CPU seconds the mining took)."""
    from data import sources

    t0 = cpu_seconds()
    recs, counts = sources.load_pysrc(sources.default_pysrc_roots(), str(tmp_path_factory.mktemp("pysrc")))
    return dict(records=recs, counts=counts, cpu_seconds=cpu_seconds() - t0)


@pytest.fixture(scope="session")
def local_bpe(stdlib_corpus, tmp_path_factory) -> Path:
    """A folder holding tokenizer.json + tokenizer_config.json: a byte-level BPE of 32,768 tokens trained
    with `tokenizers` the way CodeParrot's was (GPT-2's pipeline retrained: train_new_from_iterator), on the
    corpus's docstrings and code plus the first 2 MB of the standard library's files (so the vocabulary
    fills), saved by transformers. Read-only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [r["docstring"] + "\n" + r["code"] for r in stdlib_corpus["records"]]
    root, size = sysconfig.get_paths()["stdlib"], 0
    for rel in sorted(os.listdir(root)):
        if rel.endswith(".py") and size < 2_000_000:
            texts.append(Path(root, rel).read_text(encoding="utf-8", errors="replace"))
            size += len(texts[-1])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=32768, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    assert tok.get_vocab_size() == 32768
    folder = tmp_path_factory.mktemp("local_bpe")
    end = "<|endoftext|>"
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=end, eos_token=end, unk_token=end
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def codeparrot_tiny(local_bpe, tmp_path_factory) -> Path:
    """A random GPT-2 of tiny shape (2 layers, 4 heads, 32 dims, 128 positions) with CodeParrot's settings
    and vocabulary, saved by transformers, with local_bpe's files beside it. Read-only."""
    import shutil

    folder = write_hf_gpt2(tmp_path_factory.mktemp("codeparrot_tiny"), std=0.1, **TINY_HF | CODEPARROT_HF)
    for f in local_bpe.iterdir():
        shutil.copy(f, folder / f.name)
    return folder
