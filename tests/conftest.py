"""Shared fixtures: small GPT-2 checkpoints written by transformers itself, in both on-disk layouts.

    hf_tiny_dir        folder from GPT2LMHeadModel.save_pretrained: model.safetensors (transformer. prefix,
                       no buffers) + config.json; 2 layers, 4 heads, 32 dims, 128 positions, full vocab
    hf_tiny_hub_file   the same weights in the hub file's layout (openai-community/gpt2 model.safetensors):
                       no prefix, h.N.attn.bias mask buffers and h.N.attn.masked_bias; config.json beside it
    randomize_(model)  every parameter random, LayerNorm and biases included, so a swapped ln_1/ln_2 or a
                       dropped bias changes the logits (transformers' init leaves biases 0 and LN at 1)

transformers is imported inside the fixtures: test files that do not use them do not pay for its import.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_HF = dict(n_layer=2, n_head=4, n_embd=32, n_positions=128, vocab_size=50257)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Fill every parameter with seeded noise: LayerNorm weights ~ 1 + noise, everything else ~ N(0, std)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g) * std
        is_ln_weight = p.ndim == 1 and name.endswith("weight")
        p.copy_(1.0 + 10 * noise if is_ln_weight else noise * (5 if p.ndim == 1 else 1))
    return model


def write_hf_gpt2(folder: Path, seed: int = 0, **config) -> Path:
    """A random GPT2LMHeadModel (randomize_d) saved by transformers' own save_pretrained into `folder`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config)).eval()
    randomize_(model, seed)
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
    """Factory: make_hf_gpt2(seed=0, **GPT2Config fields) -> a new save_pretrained folder, random weights."""
    return lambda seed=0, **config: write_hf_gpt2(tmp_path_factory.mktemp("hf_gpt2"), seed, **config)


@pytest.fixture(scope="session")
def hub_layout():
    """to_hub_layout(save_pretrained folder, out_file): the same weights as the hub's model.safetensors."""
    return to_hub_layout


@pytest.fixture(scope="session")
def randomize():
    """randomize_(module, seed=0): every parameter random (LayerNorm and biases too), in place."""
    return randomize_
