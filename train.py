"""Fine-tune GPT-2 to write Python from docstrings: full fine-tuning (--lora-rank 0) or LoRA.

    python train.py --lora-rank 8                                   # GPT-2 124M from the hub, LoRA r=8 on q,v
    python train.py --lora-rank 0 --max-train-examples 10000 --epochs 3   # the study's full fine-tune
    python train.py --model tiny --init random --max-steps 30       # offline smoke run, seconds
    torchrun --nproc_per_node 2 train.py ...                        # DDP (gloo on CPU, nccl on GPU)
    torchrun --nproc_per_node 4 train.py --shard fsdp ...           # FSDP2: each rank holds a quarter

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
from data.prepare import DataConfig, format_prompt, prepare, why_small
from model.nf4 import nf4_numel
from profiler.fsdp import format_sharded
from profiler.memory import estimate, format_estimate, profile_training_memory
from training import fsdp
from training.build import build_model, meta_model, resolve_init, resolve_tokenizer
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
from training.early_stopping import EarlyStopping
from training.hardware import flops_per_token, peak_tflops
from training.optim import get_lr, make_optimizer, set_lr
from training.report import Progress, config_block, format_duration, sample_text, write_summary
from training.step import Batch, TrainStep, time_micro_batch, validation_loss


class Recipe:
    """One run: setup (run folder, data, model, optimizer, step), train (the loop), finish (the last
    checkpoint, final weights, summary). The run's state lives on self."""

    def __init__(self, cfg: TrainConfig, device: torch.device, rank: int, world: int, ddp: bool,
                 given: set[str] = frozenset()):  # fmt: skip
        self.cfg, self.device, self.rank, self.world, self.ddp = cfg, device, rank, world, ddp
        self.given = given  # the flags typed on the command line (a resume keeps the run's own otherwise)
        self.master = rank == 0  # rank 0 writes the run folder and logs
        self.log = print if self.master else (lambda *a, **k: None)
        self.step, self.stop = 0, False  # stop: Ctrl-C
        self.stopper: EarlyStopping | None = None  # --early-stopping-patience
        self.stopped_early = False

    # ------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        self._setup_run_folder()
        cfg = self.cfg
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self._setup_data()
        self._setup_model()
        if not cfg.dry_run:
            self._setup_step()
        self.log(
            f"plan: {self.total} optimizer steps ({self.steps_per_epoch}/epoch), "
            f"{cfg.batch_size * cfg.grad_accum * self.world} examples/step (batch {cfg.batch_size} x accum "
            f"{cfg.grad_accum} x {self.world} proc), up to {cfg.max_len} tokens each; lr {cfg.lr:g} warmup "
            f"{self.warmup} cosine to {cfg.lr * cfg.min_lr_ratio:g}; {self.dtype} on {self.device}; "
            f"train {len(self.train_set):,} / val {len(self.val_set):,} examples -> {self.out}"
            + ("" if cfg.dry_run else f"; {self._estimate_time()}")
        )

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
        fsdp.check(cfg, self.ddp, self.dtype)
        self.sharded = cfg.shard == "fsdp"  # FSDP2: each rank holds a slice of the weights and optimizer
        self.log(config_block(cfg))  # the full config is config.json

    def _setup_data(self) -> None:
        cfg = self.cfg
        data_cfg = DataConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataConfig)})
        self.tokenizer = resolve_tokenizer(cfg)  # the model's: its ids are the data's
        datasets = prepare(data_cfg, splits=("train", "validation"), log=self.log, tokenizer=self.tokenizer)
        self.train_set, self.val_set = datasets["train"], datasets["validation"]
        one_batch = cfg.batch_size * self.world
        if len(self.val_set) < one_batch:  # the run goes on, but says why val_loss is missing or noisy
            cause = why_small(self.val_set, data_cfg) or "the source has no more validation examples"
            effect = "no validation loss will be reported" if not len(self.val_set) else "its loss is noisy"
            self.log(f"data: warning: the validation split has {len(self.val_set)} examples, fewer than one "
                     f"batch of {one_batch} ({cause}): {effect}")  # fmt: skip
        per_rank = dict(rank=self.rank, world_size=self.world)
        self.batches = Batches(self.train_set, cfg.batch_size, cfg.max_len, pack=cfg.pack, shuffle=True,
                               seed=cfg.seed, drop_last=self.ddp, **per_rank)  # fmt: skip
        self.val_batches = Batches(self.val_set, cfg.batch_size, cfg.max_len, pack=cfg.pack, shuffle=False,
                                   seed=0, **per_rank)  # fmt: skip
        if len(self.train_set) < one_batch or len(self.batches) == 0:
            cause = f" ({why_small(self.train_set, data_cfg)})" if why_small(self.train_set, data_cfg) else ""
            raise UsageError(
                f"the training split has {len(self.train_set)} examples, fewer than one batch of "
                f"{cfg.batch_size} per process{cause}; lower --batch-size or add data"
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
            self.raw_model = build_model(cfg, self.device, self.dtype, self.log, base_to, self.tokenizer)
        n_train = sum(p.numel() for p in self.raw_model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.raw_model.parameters()) + nf4_numel(self.raw_model)  # 4-bit ones
        pct = 100 * n_train / n_all
        self.log(f"trainable params: {n_train:,} || all params: {n_all:,} || trainable%: {pct:.4f}")

    def _setup_step(self) -> None:
        """The optimizer, precision, the resumed state, and the step object that runs one optimizer step."""
        cfg, device, dtype, raw = self.cfg, self.device, self.dtype, self.raw_model
        if self.sharded:  # before the optimizer, which must hold the slices
            fsdp.shard(raw, device, dtype)
        self.optimizer = make_optimizer(raw, cfg.lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        self.amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        self.peak = cfg.peak_tflops or peak_tflops(device, dtype)
        source = "given" if cfg.peak_tflops else "GPU table" if device.type == "cuda" else "timed on this CPU"
        self.log(f"MFU peak: {self.peak:.2f} TFLOP/s ({source})")
        if self.resume_from is not None:  # after all that draws random numbers: the RNG is the saved one
            state = (raw, self.optimizer, self.scaler, self.batches)
            load = fsdp.load_checkpoint if self.sharded else load_checkpoint
            self.step = load(self.resume_from, *state, self.lora, device)
            self.log(f"resumed from {self.resume_from} at step {self.step}")
        if self.master:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
            truncate_metrics(self.out / "metrics.jsonl", self.step)
        if cfg.early_stopping_patience:  # a resumed run counts its evaluations so far again
            self.stopper = EarlyStopping.replay(cfg.early_stopping_patience, self.out / "metrics.jsonl")
        model = torch.compile(raw) if cfg.compile else raw  # checkpoints save raw (no _orig_mod. keys)
        if self.ddp and not self.sharded:
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

    def _estimate_time(self) -> str:
        """The run's duration on this device, from one timed forward and backward of its first micro-batch
        (eager: a compiled or graph-captured step is faster)."""
        cfg = self.cfg
        first = Batches(self.train_set, cfg.batch_size, cfg.max_len, pack=cfg.pack, shuffle=True,
                        seed=cfg.seed, rank=self.rank, world_size=self.world)  # fmt: skip
        seconds = time_micro_batch(self.raw_model, Batch.from_dict(next(iter(first))), self.amp, self.device)
        steps = self.total - self.step
        evals = (steps // cfg.eval_every if cfg.eval_every else 0) + 1 if len(self.val_set) else 0
        batches = min(cfg.eval_batches, len(self.val_batches))
        total = steps * cfg.grad_accum * seconds + evals * batches * seconds / 3  # a forward is ~1/3 of both
        return f"about {format_duration(total)} on this device ({seconds:.2g} s per micro-batch, measured)"

    # ------------------------------------------------------------------------------------------- the loop
    def train(self) -> bool:
        """One optimizer step per iteration until the plan's last step; False when Ctrl-C stopped it early."""
        cfg, start, total, data = self.cfg, self.step, self.total, iter_forever(self.batches)
        fpt, metrics = flops_per_token(self.raw_model, cfg.max_len), self.out / "metrics.jsonl"
        tb = cfg.report_to == "tensorboard"
        progress = Progress(total, start, every=cfg.log_every, steps_per_epoch=self.steps_per_epoch,
                            flops_per_token=fpt, peak_tflops=self.peak, device=self.device,
                            metrics=metrics if self.master else None, log=self.log,
                            tensorboard=self.out / "tensorboard" if self.master and tb else None)  # fmt: skip
        with progress, self._ctrl_c_stops():
            while self.step < total and not self.stop and not self.stopped_early:
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
                due = cfg.save_every and self.step % cfg.save_every == 0 and self.step < total
                if due and (self.master or self.sharded):  # FSDP: every rank takes part, rank 0 writes
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
        model, amp = self.raw_model, self.amp
        if self.sharded:  # the whole model, gathered on rank 0's CPU (every rank takes part)
            model, amp = fsdp.gathered_for_sampling(self.raw_model, self.cfg, self.dtype)
        if self.master:  # the first validation example's prompt, completed by the model as it is now
            first = self.val_set.records(0)
            prompt = format_prompt(first["docstring"], first.get("func_name"), self.cfg.prompt_format)
            sample = sample_text(model, prompt, amp)
            self.log(f"step {self.step}: val loss {val:.4f}\n--- sample ---\n{prompt}{sample}\n---")
        if self.stopper is not None:
            self._early_stopping(val, model)

    def _early_stopping(self, val: float, model) -> None:
        """Count this evaluation; a new best of `model` (FSDP: the copy gathered on rank 0) is written to
        best/. Rank 0's losses decide for every rank."""
        if self.stopper.update(self.step, val) and self.master:
            save_final(self.out, model, self.cfg, self.lora, name="best")
            self.log(f"step {self.step}: best validation loss so far -> {self.out}/best")
        stop = torch.tensor(float(self.stopper.should_stop), device=self.device)
        if self.ddp:
            dist.broadcast(stop, src=0)
        if stop.item() and self.step < self.total:
            self.stopped_early = True
            s = self.stopper
            self.log(f"early stop at step {self.step}: no new best validation loss in {s.patience} "
                     f"evaluations (best {s.best:.4f} at step {s.best_step}, in best/)")  # fmt: skip

    def save(self) -> None:
        state = (self.raw_model, self.optimizer, self.scaler, self.batches)
        save = fsdp.save_checkpoint if self.sharded else save_checkpoint  # FSDP: every rank, rank 0 writes
        save(self.out, self.step, *state, self.cfg, self.lora)

    # ------------------------------------------------------------------------------------------- finish
    def finish(self, completed: bool) -> int:
        """The last checkpoint; then final/ (+ merged/ for LoRA), summary.json and plots. The exit code."""
        if self.sharded:  # every rank takes part in the gathers; rank 0 goes on with the whole model
            self.save()
            self.raw_model = fsdp.gather_model(self.raw_model, self.cfg)
        if not self.master:
            return 0
        if not self.sharded:
            self.save()
        if not completed:
            self.log(f"interrupted: checkpoint saved at step {self.step}; continue with --resume auto "
                     f"--out-dir {self.out}")  # fmt: skip
            return 130
        save_final(self.out, self.raw_model, self.cfg, self.lora)
        best = {}  # with --early-stopping-patience: where best/ comes from, and whether the run stopped early
        if self.stopper is not None:
            best = dict(best_val_loss=self.stopper.best, best_step=self.stopper.best_step,
                        stopped_early=self.stopped_early)  # fmt: skip
        summary = write_summary(self.out, self.raw_model, self.cfg, self.train_time, **best)
        what = "full model" if self.lora is None else "adapter"
        self.log(f"done: {self.out}/final ({what}), summary {json.dumps(summary)}")
        return 0

    def dry_run(self) -> int:
        self.log(format_estimate(estimate(self.cfg)))
        if self.sharded:
            self.log(format_sharded(self.cfg, self.cfg.world or self.world))
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
