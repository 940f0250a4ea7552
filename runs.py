"""The run folder that train.py writes and evaluate.py / generate.py read.

runs/NAME/config.json           the resolved TrainConfig
          metrics.jsonl         one JSON object per log step (and val_loss at evals)
          checkpoints/step-N/   everything a resume needs (written to a temp folder, then renamed)
          final/                PEFT adapter (LoRA) or HF GPT-2 checkpoint (full fine-tune)
          merged/               LoRA only: base + merged adapter as an HF GPT-2 checkpoint
          base/                 --init random only: the random base weights (HF checkpoint)
          plots/                loss.png, throughput.png, memory.png

evaluate.py and generate.py name the model to load with RunModelOptions (--run, --checkpoint, --adapter
and ModelOptions' --model, --weights, --tokenizer, --init) and load it with load_model_for_inference.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from cli import ModelOptions, UsageError, opt
from data.tokenizer import TOKENIZER_JSON, load_tokenizer, tokenizer_of
from lora.lora import merge_and_unload
from lora.peft_io import load_adapter
from model.gpt2 import GPT, config_for
from model.hf import find_tokenizer, load_pretrained, preset_tokenizer
from model.kernels import use_fast_kernels
from model.nf4 import round_trip_model

CKPT_RE = re.compile(r"^step-(\d+)$")
COMPLETE_MARK = "COMPLETE"  # written last inside a checkpoint folder; its absence means the write was cut


def read_config(run: str | Path) -> dict:
    path = Path(run) / "config.json"
    if not path.is_file():
        raise UsageError(f"{run} is not a run folder (no config.json); pass a folder written by train.py")
    return json.loads(path.read_text())


def checkpoints(run: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a folder without COMPLETE was interrupted mid-write)."""
    root = Path(run) / "checkpoints"
    found = [p for p in root.glob("step-*") if CKPT_RE.match(p.name) and (p / COMPLETE_MARK).is_file()]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def latest_checkpoint(run: str | Path) -> Path | None:
    found = checkpoints(run)
    return found[-1] if found else None


def resolve_checkpoint(run: str | Path, checkpoint: str) -> Path:
    """A checkpoint folder given as a path, or by name inside the run (`--checkpoint step-500`)."""
    path = Path(checkpoint)
    return path if path.is_dir() or not (Path(run) / "checkpoints" / checkpoint).is_dir() else (
        Path(run) / "checkpoints" / checkpoint)  # fmt: skip


@dataclass
class RunModelOptions(ModelOptions):
    """A train.py run to load instead of --weights, or a LoRA adapter to merge."""

    run: str | None = opt(None, "a run folder written by train.py: its final/ weights and its prompt format")
    checkpoint: str | None = opt(None, "with --run: a step-N checkpoint (name or path) instead of final/")
    adapter: str | None = opt(None, "a PEFT LoRA adapter folder, merged into the weights")

    def check_model(self) -> None:
        """One source of weights, named consistently, or a UsageError naming the flags."""
        if self.run and self.weights:
            raise UsageError("--run brings its own weights; pass --run or --weights, not both")
        if self.run and self.init == "random":
            raise UsageError("--run brings its own weights; drop --init random")
        if self.run and self.tokenizer:
            raise UsageError("--run brings its own tokenizer (saved with its weights); drop --tokenizer")
        if self.weights and self.init == "random":
            raise UsageError("--weights and --init random exclude each other; pass one")
        if self.checkpoint and not self.run:
            raise UsageError("--checkpoint needs --run: it names a checkpoint of that run (e.g. step-500)")
        if self.run and not Path(self.run).is_dir():
            raise UsageError(f"--run {self.run} does not exist; pass a run folder written by train.py")


def load_model_for_inference(opts: RunModelOptions, device: torch.device, dtype: torch.dtype):
    """A GPT ready to generate (adapters merged, fast kernels swapped in), on `device` in `dtype`, and a dict
    describing where it came from.

    opts.run: a train.py run folder (its final/ weights, or opts.checkpoint: a step-N folder, by path or
    name); opts.weights: an HF GPT-2 folder/file/hub id; opts.adapter: a PEFT adapter folder applied on top
    (merged); opts.init "random": the opts.model preset with random weights (info["random_init"] is True).
    The model's tokenizer (model.tokenizer, data/tokenizer.py) comes with its weights: the tokenizer.json
    saved beside them, the preset's for random weights, or opts.tokenizer; info["tokenizer"] names it.
    """
    info = {"random_init": False, "prompt_format": None, "source": None, "lora_rank": 0}
    run, checkpoint, adapter = opts.run, opts.checkpoint, opts.adapter
    if run is not None:
        cfg = read_config(run)
        info["prompt_format"] = cfg.get("prompt_format")
        info["lora_rank"] = cfg.get("lora_rank", 0)
        src = resolve_checkpoint(run, checkpoint) if checkpoint else Path(run) / "final"
        if not src.is_dir():
            raise UsageError(f"{src} does not exist; the run has not finished (pass --checkpoint step-N)")
        if info["lora_rank"] > 0:  # the base the run started from, then its adapter
            # A random-init run saved its random base as base/, so its adapter has something to apply to.
            base_src = (
                str(Path(run) / "base") if cfg.get("init") == "random" else cfg["weights"] or cfg["model"]
            )
            qlora = cfg.get("quantize", "none") == "nf4"
            base = load_pretrained(base_src, device=device, dtype=torch.float32 if qlora else dtype)
            if qlora:  # the base the adapter trained on: the weights through NF4 and back (from fp32)
                round_trip_model(base)
            info["random_init"] = cfg.get("init") == "random"
            load_adapter(base, src)
            net = merge_and_unload(base).to(dtype)
            if (src / TOKENIZER_JSON).is_file():  # the run's own (saved with the adapter) over the base's
                net.tokenizer = load_tokenizer(src)
        else:
            net = load_pretrained(str(src), device=device, dtype=dtype)
            info["random_init"] = cfg.get("init") == "random"
        info["source"] = str(src)
    elif opts.weights is not None or opts.init == "pretrained":
        net = load_pretrained(opts.weights or opts.model, device=device, dtype=dtype)
        info["source"] = opts.weights or opts.model
    else:
        torch.manual_seed(0)
        net = GPT(config_for(opts.model)).to(device=device, dtype=dtype)
        net.tokenizer = None if opts.tokenizer else preset_tokenizer(opts.model)  # None: GPT-2's
        info.update(random_init=True, source=f"random {opts.model}")
    if opts.tokenizer is not None:  # --tokenizer: over the one that came with the weights
        net.tokenizer = find_tokenizer(opts.tokenizer)
    info["tokenizer"] = tokenizer_of(net).name  # a tokenizer too big for the vocabulary stops here
    if adapter is not None:
        load_adapter(net, adapter)
        merge_and_unload(net)
        info["source"] += f" + adapter {adapter}"
    return use_fast_kernels(net).eval(), info
