"""What a run reports: a progress bar on a terminal (one log line per interval otherwise), metrics.jsonl
(one row per logged step, one per validation), a sample at each validation, and at the end summary.json
and plots/."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.tokenizer import tokenizer_of
from generation import generate
from model.nf4 import nf4_numel
from training.checkpoint import atomic_write_text
from training.config import TrainConfig, method_name
from training.hardware import memory_bytes
from training.tensorboard import EventWriter


def format_duration(seconds: float) -> str:
    """12 s, 4.5 min, 2.3 h, 1.4 days: the unit a person reads at a glance."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size if unit == "days" else seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def log_line(row: dict, total: int) -> str:
    """step | loss | lr | norm | tok/s | mfu | mem: the plain line printed when stderr is not a terminal."""
    mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.2f}%"
    return (
        f"step {row['step']:5d}/{total} | loss {row['loss']:.4f} | lr {row['lr']:.2e} | "
        f"norm {row['grad_norm']:.3f} | {row['tokens_per_sec']:,.0f} tok/s | mfu {mfu} | "
        f"mem {row['mem_bytes'] / 2**20:,.0f} MiB"
    )


# The settings every run's start shows; any other is shown only when it is not at its default.
CORE_SETTINGS = ("model", "init", "weights", "lora_rank", "data", "max_len", "batch_size", "grad_accum", "lr",
                 "epochs", "max_steps", "device", "dtype", "out_dir")  # fmt: skip


def config_block(cfg: TrainConfig) -> str:
    """The resolved settings as a short aligned block of flags and values (config.json keeps them all)."""
    defaults = TrainConfig()
    shown = [f for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(defaults, f.name)
             or f.name in CORE_SETTINGS and getattr(cfg, f.name) is not None]  # fmt: skip
    if cfg.max_steps is not None:  # --max-steps overrides --epochs: show the one that counts
        shown = [f for f in shown if f.name != "epochs"]
    order = {name: i for i, name in enumerate(CORE_SETTINGS)}  # the core in reading order, then the rest
    shown.sort(key=lambda f: order.get(f.name, len(order)))
    flags = {f.name: "--" + f.name.replace("_", "-") for f in shown}
    width = max(map(len, flags.values()))
    return "config:\n" + "\n".join(f"  {flags[f.name]:<{width}}  {getattr(cfg, f.name)}" for f in shown)


class Progress:
    """The loop's reports. metrics: the metrics.jsonl to append to (rank 0), or None (other ranks: no rows,
    no bar). Tokens/s and MFU are measured over the steps since the last logged one."""

    def __init__(self, total: int, start: int, *, every: int, steps_per_epoch: int, flops_per_token: float,
                 peak_tflops: float, device: torch.device, metrics: Path | None,
                 tensorboard: Path | None = None, log: Callable = print):  # fmt: skip
        self.total, self.every, self.steps_per_epoch = total, every, steps_per_epoch
        self.flops_per_token, self.peak_flops = flops_per_token, peak_tflops * 1e12
        self.device, self.log = device, log
        self.file = open(metrics, "a") if metrics is not None else None
        self.events = EventWriter(tensorboard) if tensorboard is not None else None  # the same rows
        tty = self.file is not None and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=start, dynamic_ncols=True, disable=not tty)
        self.t_start = self.t_window = time.perf_counter()
        self.tokens = 0  # since the last logged step
        self.bad_peak = False  # an MFU above 100% was seen: the peak is wrong

    def step(self, step: int, loss: float, lr: float, grad_norm: float, n_tokens: int) -> None:
        self.tokens += n_tokens
        self.bar.update(1)
        tps = self.tokens / (time.perf_counter() - self.t_window)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:.0f}")
        if self.file is None or not (step % self.every == 0 or step == self.total or step == 1):
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the clock must see the queued kernels
        tps = self.tokens / (time.perf_counter() - self.t_window)
        row = dict(
            step=step,
            epoch=round(step / self.steps_per_epoch, 4),
            loss=round(loss, 6),
            lr=lr,
            grad_norm=round(grad_norm, 6),
            tokens=n_tokens,
            tokens_per_sec=round(tps, 1),
            mfu=self._mfu(tps),
            mem_bytes=memory_bytes(self.device),
            elapsed_s=round(self.elapsed, 3),
        )
        self._write(row)
        if self.bar.disable:
            self.log(log_line(row, self.total))
        self.tokens, self.t_window = 0, time.perf_counter()

    def _mfu(self, tokens_per_sec: float) -> float | None:
        """Model FLOPs utilization, or None where it reads above 100%: then the peak it is read against is
        wrong (too low), and the number would not be a measurement. Said once, with the fix."""
        mfu = tokens_per_sec * self.flops_per_token / self.peak_flops
        if mfu <= 1.0:
            return round(mfu, 6)
        if not self.bad_peak:
            self.bad_peak = True
            peak = self.peak_flops / 1e12
            self.log(f"MFU would read {100 * mfu:.0f}%: the peak of {peak:.3g} TFLOP/s is too low for this "
                     "machine; MFU is left out (pass --peak-tflops with the right peak)")  # fmt: skip
        return None

    def validation(self, step: int, val_loss: float) -> None:
        if self.file is not None:
            self._write(dict(step=step, val_loss=round(val_loss, 6)))

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def _write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.events is not None:
            self.events.add_row(row)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.events is not None:
            self.events.close()


@torch.no_grad()
def sample_text(model, prompt: str, amp: AbstractContextManager, max_new_tokens: int = 48) -> str:
    """A greedy completion of `prompt`: what the model writes now, printed at each validation."""
    tok = tokenizer_of(model)
    model.eval()
    ids = tok.encode(prompt)[-(model.config.block_size - max_new_tokens) :]
    with amp:
        out = generate(model, [ids], max_new_tokens=max_new_tokens, eos=tok.eot)[0]
    model.train()
    return tok.decode([i for i in out if i != tok.eot])


def write_summary(out: Path, model, cfg: TrainConfig, train_time: float, **extra) -> dict:
    """summary.json (the numbers a comparison of runs needs, and `extra`) and plots/, from metrics.jsonl."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    train_rows = [r for r in rows if "loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    speeds = [r["tokens_per_sec"] for r in train_rows[1:] or train_rows]  # the first step warms up
    summary = dict(
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()) + nf4_numel(model),  # NF4 weights too
        peak_mem_bytes=max((r["mem_bytes"] for r in train_rows), default=0),
        train_time_s=round(train_rows[-1]["elapsed_s"] if train_rows else train_time, 2),
        tokens_per_sec=round(float(np.median(speeds)), 1),
        final_loss=train_rows[-1]["loss"] if train_rows else None,
        final_val_loss=vals[-1] if vals else None,
        steps=train_rows[-1]["step"] if train_rows else 0,
        lora_rank=cfg.lora_rank,
        method=method_name(cfg),  # full, lora, dora, qlora or qdora
        init=cfg.init,
        model=cfg.model if cfg.weights is None else cfg.weights,  # the preset, or the weights it came from
        architecture=model.config.to_dict(),  # what was trained, whatever the preset says
        **extra,
    )
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    plot_run(out, rows, random=cfg.init == "random")
    return summary


def plot_run(out: Path, rows: list[dict], random: bool = False) -> None:
    """plots/loss.png (train and validation loss) and plots/throughput.png (tokens/s per logged step); the
    titles of a run from random weights say so."""
    # matplotlib takes a while to import and is needed only here, at the end of a run; Agg draws to files
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(exist_ok=True)
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train")
    if val_rows:
        ax.plot([r["step"] for r in val_rows], [r["val_loss"] for r in val_rows], "o-", label="validation")
    name = f"{out.name} (RANDOM init)" if random else out.name
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", title=name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "plots" / "loss.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train_rows], [r["tokens_per_sec"] for r in train_rows])
    ax.set(xlabel="optimizer step", ylabel="tokens / s", title=f"{name}: throughput")
    fig.tight_layout()
    fig.savefig(out / "plots" / "throughput.png", dpi=120)
    plt.close(fig)
