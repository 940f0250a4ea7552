"""The run folder's checkpoints: atomic saves that hold everything a resume needs, and the resume itself.

A checkpoint is checkpoints/step-N/ with the weights in HF or PEFT format (for other tools), state.pt (the
exact trainable tensors, optimizer, scaler, data position, RNG states, config) and a COMPLETE mark, written
last. A resumed run reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

import runs
from cli import UsageError
from lora.config import LoRAConfig
from lora.peft_io import export_merged, save_adapter
from model.hf import HUB_IDS, load_pretrained, save_pretrained
from training.config import TrainConfig, default_out_dir

# A resumed run keeps the settings in its config.json. These come from the command line instead: where and
# how this process runs. Of the rest, only the schedule's flags may be changed on resume, by giving them.
RUNTIME_FLAGS = ("resume", "out_dir", "device", "cuda_graph", "dry_run", "print_config", "overwrite",
                 "config", "report_to", "world")  # fmt: skip
SCHEDULE_FLAGS = ("max_steps", "epochs", "save_every", "eval_every", "eval_batches", "log_every",
                  "keep_checkpoints", "early_stopping_patience")  # fmt: skip


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_out_dir(cfg: TrainConfig) -> tuple[Path, bool]:
    """The run folder (filling in --out-dir's default), and whether an old run there must be wiped
    (--overwrite) before writing."""
    cfg.out_dir = cfg.out_dir or default_out_dir(cfg)
    out = Path(cfg.out_dir)
    if cfg.resume:
        return out, False
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out-dir {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()):
        if not cfg.overwrite:
            raise UsageError(
                f"--out-dir {out} already holds a run; pass --resume auto to continue it, "
                "--overwrite to replace it, or another --out-dir"
            )
        return out, True
    return out, False


def find_resume(cfg: TrainConfig, out: Path) -> Path:
    """The checkpoint --resume names: the latest complete one (auto) or the given folder."""
    if cfg.resume == "auto":
        ckpt = runs.latest_checkpoint(out)
        if ckpt is None:
            raise UsageError(f"--resume auto: {out} has no complete checkpoint; start without --resume")
        return ckpt
    ckpt = Path(cfg.resume)
    if not (ckpt / runs.COMPLETE_MARK).is_file() or not (ckpt / "state.pt").is_file():
        raise UsageError(f"--resume {ckpt} is not a complete checkpoint folder (checkpoints/step-N)")
    return ckpt


def resumed_config(cfg: TrainConfig, out: Path, given: set[str], log=print) -> TrainConfig:
    """The run's own config.json, so that a resume continues the same schedule. Flags given on the command
    line that differ from it: a schedule flag (SCHEDULE_FLAGS, e.g. a longer --max-steps) is honoured, with
    one line saying so; any other is ignored, with one line saying so. RUNTIME_FLAGS come from the command
    line."""
    saved = runs.read_config(out)
    kept = {}
    for k, was in saved.items():
        if not hasattr(cfg, k) or k in RUNTIME_FLAGS:
            continue
        now, flag = getattr(cfg, k), "--" + k.replace("_", "-")
        if k not in given or now == was:
            kept[k] = was
        elif k in SCHEDULE_FLAGS:
            relaid = k in ("max_steps", "epochs")
            note = "; warmup and cosine are laid out again over the new length" if relaid else ""
            log(f"resume: {flag} {now} instead of the run's {was}{note}")
        else:
            kept[k] = was
            log(f"resume: {flag} {now} ignored; the run continues with its own {was} (start a new run to "
                "change it)")  # fmt: skip
    return dataclasses.replace(cfg, **kept)


def base_name(cfg: TrainConfig, out: Path) -> str:
    """The base model an adapter applies to: the run's saved random base, or the pretrained weights."""
    return str(out / "base") if cfg.init == "random" else (cfg.weights or HUB_IDS[cfg.model])


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(out: Path, step: int, model, optimizer, scaler, batches, cfg: TrainConfig,
                    lora: LoRAConfig | None, extra: dict | None = None) -> Path:  # fmt: skip
    """Write checkpoints/step-N atomically: everything into a temp folder, a COMPLETE mark last, then
    rename. A crash (or a full disk) mid-write leaves only the temp folder, which resume never reads.
    Keeps the newest --keep-checkpoints complete ones. `extra`: more entries for state.pt (FSDP: the RNG
    states of every rank)."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if lora is None:
            save_pretrained(model, tmp)
        else:
            save_adapter(model, tmp, base_model_name_or_path=base_name(cfg, out))
        state = {
            "step": step,
            # LoRA: the exact trainable tensors (the PEFT files beside them are for other tools).
            "trainable": None
            if lora is None
            else {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "batches": batches.state_dict(),
            "rng": rng_state(),
            "config": dataclasses.asdict(cfg),
            **(extra or {}),
        }
        torch.save(state, tmp / "state.pt")
        atomic_write_text(tmp / runs.COMPLETE_MARK, f"{step}\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as e:  # a full disk, say: drop the partial folder; the previous checkpoint stays intact
        shutil.rmtree(tmp, ignore_errors=True)
        raise UsageError(
            f"could not write checkpoint {final} ({e.strerror or e}); the previous checkpoint "
            "is intact: free space, then continue with --resume auto"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    keep = cfg.keep_checkpoints
    for old in runs.checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, model, optimizer, scaler, batches, lora: LoRAConfig | None,
                    device: torch.device) -> int:  # fmt: skip
    """Restore what save_checkpoint wrote into the built model, optimizer, scaler and loader, and the RNG
    states (so call it after everything else that draws random numbers); returns the step."""
    state = torch.load(ckpt / "state.pt", map_location=device, weights_only=False)
    if lora is None:
        model.load_state_dict(load_pretrained(str(ckpt), device=device).state_dict())
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, t in state["trainable"].items():
                params[name].copy_(t)
    optimizer.load_state_dict(state["optimizer"])
    for g in optimizer.param_groups:  # as an eager step wants them; a CudaGraphStep turns them into tensors
        g["lr"], g["capturable"] = float(g["lr"]), False
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    batches.load_state_dict(state["batches"])
    set_rng_state(state["rng"])
    return state["step"]


def save_final(out: Path, model, cfg: TrainConfig, lora: LoRAConfig | None, name: str = "final") -> None:
    """final/ (or best/): the full model (HF format) or the adapter (PEFT format), written whole to a
    temporary folder first, so a crash never leaves half of one; for final/ of LoRA also merged/, base +
    adapter as one HF model."""
    tmp, dest = out / f".{name}.tmp", out / name
    shutil.rmtree(tmp, ignore_errors=True)
    if lora is None:
        save_pretrained(model, tmp)
    else:
        save_adapter(model, tmp, base_model_name_or_path=base_name(cfg, out))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    if lora is not None and name == "final":
        export_merged(model, out / "merged")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log rows past the checkpoint so the curve has no duplicated steps."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(r + "\n" for r in rows))
