"""Fine-tune GPT-2 to write Python from docstrings: full fine-tuning (--lora-rank 0) or LoRA.

    python train.py --lora-rank 8                                   # GPT-2 124M from the hub, LoRA r=8 on q,v
    python train.py --lora-rank 0 --max-train-examples 10000 --epochs 3   # the study's full fine-tune
    python train.py --model tiny --init random --max-steps 30       # offline smoke run, seconds
    torchrun --nproc_per_node 2 train.py ...                        # DDP (gloo on CPU, nccl on GPU)

One optimizer step = grad_accum micro-batches per rank. The loss of the step is the sum over every target
token of the step (all micro-batches, all ranks) divided by their count, so long and short examples weigh
the same per token whatever the batching (training/step.py).

The file reads in run order: main parses and starts the processes; Recipe sets up the run folder, the data,
the model and the optimizer, then trains and finishes. The parts it calls live in training/.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.distributed as dist

from cli import UsageError, given_flags, parse_config, resolve_device, run_main
from data.loader import Batches
from data.prepare import DataConfig, format_prompt, prepare
from model.nf4 import nf4_numel
from profiler.memory import estimate, format_estimate, profile_training_memory
from training.build import build_model, meta_model, resolve_init
from training.checkpoint import (
    atomic_write_text,
    check_out_dir,
    find_resume,
    load_checkpoint,
    resumed_config,
    save_checkpoint,
    save_final,
    truncate_metrics,
)
from training.config import TrainConfig, default_lr, train_dtype, validate
from training.cuda_graph import CudaGraphStep, use_cuda_graph
from training.hardware import flops_per_token, peak_tflops
from training.optim import get_lr, make_optimizer, set_lr
from training.report import Progress, sample_text, write_summary
from training.step import Batch, TrainStep, validation_loss


class Recipe:
    """One run: setup (run folder, data, model, optimizer, step), train (the loop), finish (the last
    checkpoint, final weights, summary). The run's state lives on self."""

    def __init__(self, cfg: TrainConfig, device: torch.device, rank: int, world: int, ddp: bool,
                 given: set[str] = frozenset()):  # fmt: skip
        self.cfg, self.device, self.rank, self.world, self.ddp = cfg, device, rank, world, ddp
        self.given = given  # the flags typed on the command line (a resume keeps the run's own otherwise)
        self.master = rank == 0  # rank 0 writes the run folder and logs
        self.log = print if self.master else (lambda *a, **k: None)
        self.step, self.stop = 0, False

    # ------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        self._setup_run_folder()
        cfg = self.cfg
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self._setup_data()
        self._setup_model()
        self.log(
            f"plan: {self.total} optimizer steps ({self.steps_per_epoch}/epoch), "
            f"{cfg.batch_size * cfg.grad_accum * self.world} examples/step (batch {cfg.batch_size} x accum "
            f"{cfg.grad_accum} x {self.world} proc), up to {cfg.max_len} tokens each; lr {cfg.lr:g} warmup "
            f"{self.warmup} cosine to {cfg.lr * cfg.min_lr_ratio:g}; {self.dtype} on {self.device}; "
            f"train {len(self.train_set):,} / val {len(self.val_set):,} examples -> {self.out}"
        )
        if not cfg.dry_run:
            self._setup_step()

    def _setup_run_folder(self) -> None:
        cfg = self.cfg
        self.out, self.wipe = check_out_dir(cfg)
        self.resume_from = find_resume(cfg, self.out) if cfg.resume else None
        if self.resume_from is not None:  # the run's own settings, but for the schedule flags given
            self.cfg = cfg = resumed_config(cfg, self.out, self.given, self.log)
        if not cfg.dry_run:  # before any data work: offline, the user hears it at once (a dry run loads none)
            cfg.init = resolve_init(cfg, self.log)
        self.lora = cfg.lora()  # LoRAConfig, or None: full fine-tuning (what build_model injects, too)
        cfg.lr = cfg.lr or default_lr(self.lora)
        self.dtype = train_dtype(cfg, self.device)
        self.graph = use_cuda_graph(cfg, self.device, self.dtype, self.ddp)
        self.log(json.dumps(dataclasses.asdict(cfg)))

    def _setup_data(self) -> None:
        cfg = self.cfg
        data_cfg = DataConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataConfig)})
        datasets = prepare(data_cfg, splits=("train", "validation"), log=self.log)
        self.train_set, self.val_set = datasets["train"], datasets["validation"]
        if len(self.val_set) == 0:  # the run goes on, but nothing would say why no val_loss appears
            self.log("data: warning: the validation split is empty (a small source, or its examples dropped "
                     "as too long for --max-len): no validation loss will be reported")  # fmt: skip
        per_rank = dict(rank=self.rank, world_size=self.world)
        self.batches = Batches(self.train_set, cfg.batch_size, cfg.max_len, pack=cfg.pack, shuffle=True,
                               seed=cfg.seed, drop_last=self.ddp, **per_rank)  # fmt: skip
        self.val_batches = Batches(self.val_set, cfg.batch_size, cfg.max_len, pack=cfg.pack, shuffle=False,
                                   seed=0, **per_rank)  # fmt: skip
        if len(self.batches) == 0:
            raise UsageError(
                f"the training set has {len(self.train_set)} examples, fewer than one batch of "
                f"{cfg.batch_size} per process; lower --batch-size"
            )
        self.steps_per_epoch = max(1, len(self.batches) // cfg.grad_accum)
        self.total = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, self.total // 20)

    def _setup_model(self) -> None:
        cfg = self.cfg
        if cfg.dry_run:  # the architecture alone, on the meta device: no weights, no download, no writes
            self.raw_model = meta_model(cfg, self.dtype)
        else:
            if self.master and self.wipe:
                shutil.rmtree(self.out)
            base_to = self.out if self.master and cfg.init == "random" else None
            self.raw_model = build_model(cfg, self.device, self.dtype, self.log, base_to)
        n_train = sum(p.numel() for p in self.raw_model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.raw_model.parameters()) + nf4_numel(self.raw_model)  # 4-bit ones
        pct = 100 * n_train / n_all
        self.log(f"trainable params: {n_train:,} || all params: {n_all:,} || trainable%: {pct:.4f}")

    def _setup_step(self) -> None:
        """The optimizer, precision, the resumed state, and the step object that runs one optimizer step."""
        cfg, device, dtype, raw = self.cfg, self.device, self.dtype, self.raw_model
        self.optimizer = make_optimizer(raw, cfg.lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        self.amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        self.peak = cfg.peak_tflops or peak_tflops(device, dtype)
        self.log(f"MFU peak: {self.peak:.2f} TFLOP/s ({'given' if cfg.peak_tflops else 'table/measured'})")
        if self.resume_from is not None:  # after all that draws random numbers: the RNG is the saved one
            state = (raw, self.optimizer, self.scaler, self.batches)
            self.step = load_checkpoint(self.resume_from, *state, self.lora, device)
            self.log(f"resumed from {self.resume_from} at step {self.step}")
        if self.master:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
            truncate_metrics(self.out / "metrics.jsonl", self.step)
        model = torch.compile(raw) if cfg.compile else raw  # checkpoints save raw (no _orig_mod. keys)
        if self.ddp:
            ids = [device.index] if device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.eager_step = TrainStep(model, self.optimizer, device, raw_model=raw, scaler=self.scaler,
                                    amp=self.amp, grad_clip=cfg.grad_clip, ddp=self.ddp)  # fmt: skip
        self.train_step = self.eager_step
        if self.graph:
            torch.cuda.set_device(device)  # a graph captures and replays on the current device: this one
            self.train_step = CudaGraphStep(model, self.optimizer, device, dtype, raw_model=raw,
                                            grad_clip=cfg.grad_clip)  # fmt: skip
            self.log(f"train step: one CUDA graph, captured after {self.train_step.warmup} eager steps")

    # ------------------------------------------------------------------------------------------- the loop
    def train(self) -> bool:
        """One optimizer step per iteration until the plan's last step; False when Ctrl-C stopped it early."""
        cfg, start, total, data = self.cfg, self.step, self.total, iter_forever(self.batches)
        fpt, metrics = flops_per_token(self.raw_model, cfg.max_len), self.out / "metrics.jsonl"
        progress = Progress(total, start, every=cfg.log_every, steps_per_epoch=self.steps_per_epoch,
                            flops_per_token=fpt, peak_tflops=self.peak, device=self.device,
                            metrics=metrics if self.master else None, log=self.log)  # fmt: skip
        with progress, self._ctrl_c_stops():
            while self.step < total and not self.stop:
                lr = get_lr(self.step, cfg.lr, self.warmup, total, cfg.min_lr_ratio)
                set_lr(self.optimizer, lr)
                micro = [Batch.from_dict(next(data)) for _ in range(cfg.grad_accum)]
                if cfg.profile_memory and self.step == start:  # the first step, measured by component
                    out = self.out if self.master else None
                    loss, grad_norm, _ = profile_training_memory(self.eager_step, micro, cfg, out, self.log)
                else:
                    loss, grad_norm = self.train_step(micro)
                self.step += 1
                progress.step(self.step, loss, lr, grad_norm, sum(b.n_tokens for b in micro) * self.world)
                if cfg.eval_every and self.step % cfg.eval_every == 0 or self.step == total:
                    self.evaluate(progress)
                if self.master and cfg.save_every and self.step % cfg.save_every == 0 and self.step < total:
                    self.save()
        self.train_time = progress.elapsed
        return not self.stop

    @contextmanager
    def _ctrl_c_stops(self):
        """On rank 0, Ctrl-C ends the loop after the current step (then a checkpoint, and exit code 130)."""

        def stop(*_):
            self.stop = True

        previous = signal.signal(signal.SIGINT, stop) if self.master else None
        try:
            yield
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def evaluate(self, progress: Progress) -> None:
        """Validation loss (on every rank, over its shard) and, on rank 0, one sample."""
        if not len(self.val_set):
            return
        val = validation_loss(self.raw_model, self.val_batches, self.cfg.eval_batches, self.amp, self.device)
        progress.validation(self.step, val)
        if self.master:  # the first validation example's prompt, completed by the model as it is now
            first = self.val_set.records(0)
            prompt = format_prompt(first["docstring"], first.get("func_name"), self.cfg.prompt_format)
            sample = sample_text(self.raw_model, prompt, self.amp)
            self.log(f"step {self.step}: val loss {val:.4f}\n--- sample ---\n{prompt}{sample}\n---")

    def save(self) -> None:
        state = (self.raw_model, self.optimizer, self.scaler, self.batches)
        save_checkpoint(self.out, self.step, *state, self.cfg, self.lora)

    # ------------------------------------------------------------------------------------------- finish
    def finish(self, completed: bool) -> int:
        """The last checkpoint; then final/ (+ merged/ for LoRA), summary.json and plots. The exit code."""
        if not self.master:
            return 0
        self.save()
        if not completed:
            self.log(f"interrupted: checkpoint saved at step {self.step}; continue with --resume auto "
                     f"--out-dir {self.out}")  # fmt: skip
            return 130
        save_final(self.out, self.raw_model, self.cfg, self.lora)
        summary = write_summary(self.out, self.raw_model, self.cfg, self.train_time)
        what = "full model" if self.lora is None else "adapter"
        self.log(f"done: {self.out}/final ({what}), summary {json.dumps(summary)}")
        return 0

    def dry_run(self) -> int:
        self.log(format_estimate(estimate(self.cfg)))
        return 0


def iter_forever(batches: Batches):
    """Micro-batches across epoch boundaries; the loader's own state says where we are."""
    while True:
        yield from batches


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainConfig, argv, description=__doc__.split("\n\n")[0], prog="train.py")
    validate(cfg)
    if cfg.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # started by torchrun
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = resolve_device(cfg.device)
    if ddp:
        if device.type == "cuda":
            device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        recipe = Recipe(cfg, device, rank, world, ddp, given_flags(TrainConfig, argv))
        recipe.setup()
        if recipe.cfg.dry_run:
            return recipe.dry_run()
        return recipe.finish(recipe.train())
    finally:
        if ddp and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)
