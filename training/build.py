"""The model to train: GPT-2 with pretrained or random weights, the frozen block weights in NF4 for QLoRA
(--quantize nf4), LoRA injected per the run's LoRAConfig, the frozen weights' dtype chosen, the fast kernels
swapped in; and its tokenizer (resolve_tokenizer), which the data is tokenized with and which every
checkpoint of the run carries. The profiler builds the same model on the meta device (no weights) to predict
its memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from cli import UsageError
from data.tokenizer import Tokenizer, get_tokenizer, tokenizer_of
from lora.lora import inject_lora
from model.gpt2 import GPT, config_for
from model.hf import (
    HUB_IDS,
    CheckpointError,
    find_tokenizer,
    load_pretrained,
    preset_tokenizer,
    resolve,
    save_pretrained,
    tokenizer_for,
)
from model.kernels import use_fast_kernels
from model.nf4 import NF4Linear, quantize_model
from training.config import TrainConfig


def build_model(cfg: TrainConfig, device: torch.device, dtype: torch.dtype, log: Callable = print,
                save_base_to: Path | None = None, tokenizer: Tokenizer | None = None) -> GPT:  # fmt: skip
    """The GPT to train: LoRA per cfg.lora() (None: every weight trains), `tokenizer` (resolve_tokenizer's)
    as its own. A LoRA run on random weights saves them as save_base_to/base, since its adapter means
    nothing without them."""
    lora = cfg.lora()
    if cfg.init == "random":
        torch.manual_seed(cfg.seed)
        model = GPT(config_for(cfg.model))
        log(
            f"!!! --init random: {cfg.model} with RANDOM weights. Fine for smoke tests and speed; "
            "the generated code will be noise. !!!"
        )
    else:
        source = cfg.weights or HUB_IDS[cfg.model]
        model = load_pretrained(source)
        log(f"loaded {source}")
    if cfg.max_len > model.config.block_size:
        raise UsageError(f"--max-len {cfg.max_len} exceeds the model's context of {model.config.block_size}")
    if tokenizer is not None:
        model.tokenizer = tokenizer
        tokenizer_of(model)  # one that does not fit the vocabulary stops here, with one sentence
    if lora is not None:
        if save_base_to is not None and not (save_base_to / "base").exists():
            save_pretrained(model, save_base_to / "base")
        if cfg.quantize == "nf4":  # QLoRA: the block Linears' weights in 4 bits (from fp32, as loaded)
            quantize_model(model)
        if dtype == torch.bfloat16:
            # Frozen Linear weights (and biases) live in bf16: half the memory, and autocast stops re-casting
            # them every step. Embeddings, LayerNorms and the adapters (made next, in fp32) stay fp32.
            for mod in model.modules():
                if isinstance(mod, (torch.nn.Linear, NF4Linear)) and mod is not model.lm_head:
                    for p in mod.parameters(recurse=False):
                        p.data = p.data.to(torch.bfloat16)
        inject_lora(model, lora, verbose=False)  # every parameter frozen, the adapters added
    model.to(device)
    use_fast_kernels(model)
    model.grad_checkpoint = cfg.grad_checkpoint
    return (
        model.train()
    )  # load_pretrained hands back an eval-mode model: dropout and checkpointing would be off


def resolve_init(cfg: TrainConfig, log: Callable = print) -> str:
    """--init auto -> "pretrained" where the weights are a local folder, in the hub cache or can be fetched,
    else "random", said loudly. Called before any data work, so an offline user learns it at once. An
    explicit --weights that cannot be read stays an error: a fallback would change what the user asked."""
    if cfg.init != "auto":
        return cfg.init
    if cfg.weights is None and cfg.model not in HUB_IDS:  # tiny: no published weights to look for
        log(f"--init auto: {cfg.model} has no published weights; this run trains a RANDOM {cfg.model}")
        return "random"
    try:
        resolve(cfg.weights or HUB_IDS[cfg.model])  # a local folder or file, the cache, or a download
        return "pretrained"
    except CheckpointError as e:
        if cfg.weights is not None:
            raise
        log(f"!!! --init auto: {e}")
        log(f"!!! So this run trains a RANDOM {cfg.model}: the pipeline runs end to end, but its losses and "
            "scores mean nothing. For the real weights, connect to the hub or pass --weights FOLDER "
            "(or --init pretrained to stop here instead). !!!")  # fmt: skip
        return "random"


def resolve_tokenizer(cfg: TrainConfig) -> Tokenizer:
    """The run's tokenizer, known before any weights are read: --tokenizer; else the one that goes with
    --weights (a tokenizer.json beside them, or their hub repo's); else the preset's (CodeParrot's own,
    fetched alone from the hub, or GPT-2's); GPT-2's where none is found."""
    if cfg.tokenizer:
        return find_tokenizer(cfg.tokenizer)
    if cfg.weights is not None and cfg.init != "random":
        return tokenizer_for(cfg.weights) or get_tokenizer()
    return preset_tokenizer(cfg.model) or get_tokenizer()


def meta_model(cfg: TrainConfig, dtype: torch.dtype) -> GPT:
    """build_model on the meta device: the real architecture, LoRA and dtype policy, no weights (nothing
    loaded, downloaded or allocated, and the global RNG untouched)."""
    meta = torch.device("meta")
    with torch.random.fork_rng(devices=[]), meta:
        return build_model(replace(cfg, init="random"), meta, dtype, log=lambda *a, **k: None)
