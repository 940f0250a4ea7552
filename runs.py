"""The run folder that train.py writes and evaluate.py / generate.py read.

runs/NAME/config.json           the resolved TrainConfig
          metrics.jsonl         one JSON object per log step (and val_loss at evals)
          checkpoints/step-N/   everything a resume needs (written to a temp folder, then renamed)
          final/                PEFT adapter (LoRA) or HF GPT-2 checkpoint (full fine-tune)
          merged/               LoRA only: base + merged adapter as an HF GPT-2 checkpoint
          base/                 --init random only: the random base weights (HF checkpoint)
          plots/                loss.png, throughput.png, memory.png
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from cli import UsageError

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


def load_model_for_inference(
    run: str | None = None,
    weights: str | None = None,
    adapter: str | None = None,
    init: str = "pretrained",
    model: str = "gpt2",
    checkpoint: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
):
    """A GPT ready to generate (adapters merged, fast kernels swapped in), and a dict describing where it
    came from.

    run: a train.py run folder (its final/ weights, or `checkpoint`: a step-N folder, by path or name);
    weights: an HF GPT-2 folder/file/hub id; adapter: a PEFT adapter folder applied on top (merged);
    init="random": the `model` preset with random weights (smoke tests; info["random_init"] is True).
    """
    from lora.lora import merge_and_unload
    from lora.peft_io import load_adapter
    from model.gpt2 import GPT, config_for
    from model.hf import load_pretrained
    from model.kernels import use_fast_kernels

    info = {"random_init": False, "prompt_format": None, "source": None, "lora_rank": 0}
    if run is not None:
        cfg = read_config(run)
        info["prompt_format"] = cfg.get("prompt_format")
        info["lora_rank"] = cfg.get("lora_rank", 0)
        src = resolve_checkpoint(run, checkpoint) if checkpoint else Path(run) / "final"
        if not src.is_dir():
            raise UsageError(f"{src} does not exist; the run has not finished (pass --checkpoint step-N)")
        if info["lora_rank"] > 0:  # the base the run started from, then its adapter
            # A random-init run saved its random base as base/, so its adapter has something to apply to.
            base_src = str(Path(run) / "base") if cfg.get("init") == "random" else cfg["weights"]
            base = load_pretrained(base_src, device=device, dtype=dtype)
            info["random_init"] = cfg.get("init") == "random"
            load_adapter(base, src)
            net = merge_and_unload(base)
        else:
            net = load_pretrained(str(src), device=device, dtype=dtype)
            info["random_init"] = cfg.get("init") == "random"
        info["source"] = str(src)
    elif weights is not None or init == "pretrained":
        net = load_pretrained(weights or model, device=device, dtype=dtype)
        info["source"] = weights or model
    else:
        torch.manual_seed(0)
        net = GPT(config_for(model)).to(device=device, dtype=dtype)
        info.update(random_init=True, source=f"random {model}")
    if adapter is not None:
        load_adapter(net, adapter)
        merge_and_unload(net)
        info["source"] += f" + adapter {adapter}"
    return use_fast_kernels(net).eval(), info
