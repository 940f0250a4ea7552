"""train.py's options: the shared groups (model, LoRA, data, device) and the training loop's own
(optimization, speed and memory, the run), one --help section each, and the checks that stop bad settings
before anything is loaded or written."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cli import DeviceOptions, ModelOptions, UsageError, opt, resolve_dtype
from data.prepare import DEFAULT_MAX_LEN, DataConfig
from lora.config import LoRAConfig, LoRAOptions
from model.gpt2 import PRESETS, config_for
from model.hf import HUB_IDS


@dataclass
class OptimOptions:
    """Optimization: the batch, the learning rate and its schedule, the length of the run."""

    batch_size: int = opt(8, "examples per micro-batch per process")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    lr: float | None = opt(None, "peak learning rate (default 2e-4 with LoRA, 5e-5 full)")
    weight_decay: float = opt(
        0.01, "AdamW decay on matrices (Linear, embedding, LoRA A/B); none on biases/LN"
    )
    warmup_steps: int | None = opt(None, "linear warmup steps (default 5% of the run)")
    min_lr_ratio: float = opt(0.1, "cosine decays to lr * this")
    grad_clip: float = opt(1.0, "clip the global gradient norm (0 = off)")
    epochs: float = opt(1.0, "passes over the training set (ignored with --max-steps)")
    max_steps: int | None = opt(None, "optimizer steps to run (overrides --epochs)")
    seed: int = opt(0, "seed for init, data order, dropout")


@dataclass
class SpeedOptions:
    """Speed and memory: packed rows, compiled or graph-captured steps, activation checkpointing, MFU."""

    pack: bool = opt(False, "pack several examples per row with a block-causal mask (no padding)")
    compile: bool = opt(False, "torch.compile the model")
    cuda_graph: bool = opt(
        False,
        "capture each train step as one CUDA graph (GPU, --pack): pays where steps are small, host-bound",
    )
    grad_checkpoint: bool = opt(False, "recompute each block in backward (less activation memory)")
    shard: str = opt(
        "none",
        "under torchrun: none (DDP: every rank holds the whole model) or fsdp (FSDP2: parameters, gradients "
        "and AdamW state sharded over the ranks)",
        choices=["none", "fsdp"],
    )
    world: int | None = opt(None, "--dry-run --shard fsdp: the ranks to plan for (default: torchrun's, or 1)")
    peak_tflops: float | None = opt(None, "hardware peak for MFU (default: GPU table, or measured on CPU)")


@dataclass
class RunOptions:
    """The run: its folder, checkpoints, evaluations, logs and early stopping."""

    out_dir: str | None = opt(None, "run folder (default runs/<model>-<full|loraR>)")
    resume: str | None = opt(
        None,
        "continue a run: auto (latest complete checkpoint) or a checkpoint folder",
        nargs="?",
        const="auto",
    )
    overwrite: bool = opt(False, "replace an existing run folder")
    eval_every: int = opt(200, "validate (loss + one sample) every N steps; 0 = only at the end")
    eval_batches: int = opt(20, "validation batches per evaluation")
    save_every: int = opt(500, "checkpoint every N steps; 0 = only at the end")
    keep_checkpoints: int = opt(2, "complete checkpoints kept (older ones deleted)")
    log_every: int = opt(10, "log every N steps")
    report_to: str = opt(
        "none", "also write metrics.jsonl's rows as TensorBoard scalars (RUN/tensorboard/)",
        choices=["none", "tensorboard"],
    )  # fmt: skip
    early_stopping_patience: int = opt(
        0, "stop after N evaluations in a row without a new best validation loss, keeping best/ (0 = off)"
    )
    profile_memory: bool = opt(False, "measure memory per component on the first steps -> memory.json")


@dataclass
class TrainConfig(
    ModelOptions, LoRAOptions, DataConfig, OptimOptions, DeviceOptions, SpeedOptions, RunOptions
):
    """train.py's options: these first in --help, then each option group's under its own heading."""

    init: str = opt(
        "auto",
        "pretrained, random, or auto: the pretrained weights when they are local or can be fetched, else a "
        "RANDOM GPT-2 (said loudly: the pipeline runs, its numbers mean nothing)",
        choices=["auto", "pretrained", "random"],
    )
    config: str | None = opt(None, "YAML (see configs/), TOML or JSON file of these options; flags override")
    print_config: bool = opt(False, "print the resolved config as JSON and exit")
    dry_run: bool = opt(False, "build everything, print the plan and memory estimate, train nothing")

    def __post_init__(self) -> None:
        # --max-len's default: 512, or the model's context if shorter (DataConfig alone has no model: 512)
        if self.max_len is None and self.model in PRESETS:
            self.max_len = min(DEFAULT_MAX_LEN, config_for(self.model).block_size)


def validate(cfg: TrainConfig) -> None:
    """Stop on bad settings, with one sentence, before anything is loaded or written."""
    if cfg.model not in PRESETS:
        raise UsageError(f"--model {cfg.model} is not a preset; choose from {', '.join(PRESETS)}")
    cfg.lora()  # LoRAConfig validates the --lora-* flags (rank 0: full fine-tuning, none to check)
    context = config_for(cfg.model).block_size
    checks = [
        (cfg.batch_size >= 1 and cfg.grad_accum >= 1, "--batch-size and --grad-accum must be >= 1"),
        (cfg.max_len >= 8, f"--max-len {cfg.max_len} is too short for a prompt and code"),
        (cfg.max_len <= context, f"--max-len {cfg.max_len} exceeds the {cfg.model} context ({context})"),
        (cfg.lr is None or cfg.lr > 0, f"--lr {cfg.lr} must be positive"),
        (cfg.max_steps is None or cfg.max_steps >= 1, "--max-steps must be >= 1"),
        (cfg.epochs > 0, "--epochs must be positive"),
        (not (cfg.resume and cfg.overwrite), "--resume and --overwrite contradict each other; pass one"),
        (cfg.early_stopping_patience >= 0, "--early-stopping-patience must be >= 0 (0 = off)"),
        (not cfg.early_stopping_patience or cfg.eval_every > 0,
         "--early-stopping-patience needs evaluations during the run: pass --eval-every N"),
        (cfg.init in ("random", "auto") or cfg.weights or cfg.model in HUB_IDS,
         f"--model {cfg.model} has no published weights; pass --init random or --weights PATH"),
    ]  # fmt: skip
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)


def default_lr(lora: LoRAConfig | None) -> float:
    """--lr's default: adapters start at zero and take a larger step than the pretrained weights do."""
    return 5e-5 if lora is None else 2e-4


def method_name(cfg) -> str:
    """full, lora, dora, qlora or qdora: the kind of run (for folder names and comparison tables)."""
    if cfg.lora_rank == 0:
        return "full"
    return ("q" if cfg.quantize == "nf4" else "") + ("dora" if cfg.lora_dora else "lora")


def default_out_dir(cfg: TrainConfig) -> str:
    lora = cfg.lora()
    return f"runs/{cfg.model}-{'full' if lora is None else f'{method_name(cfg)}{lora.rank}'}"


def train_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The autocast dtype of the run: --dtype, with "auto" as cli.resolve_dtype decides it for training."""
    dtype = resolve_dtype(cfg.dtype, device, training=True)
    if dtype == torch.float16 and device.type == "cpu":
        raise UsageError("--dtype fp16 needs a GPU (fp16 autocast on CPU is not supported); use bf16 or fp32")
    return dtype
