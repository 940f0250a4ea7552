"""Fine-tune GPT-2 to write Python from docstrings: full fine-tuning (--lora-rank 0) or LoRA.

    python train.py --lora-rank 8                                   # GPT-2 124M from the hub, LoRA r=8 on q,v
    python train.py --lora-rank 0 --max-train-examples 10000 --epochs 3   # the study's full fine-tune
    python train.py --model tiny --init random --max-steps 30       # offline smoke run, seconds
    torchrun --nproc_per_node 2 train.py ...                        # DDP (gloo on CPU, nccl on GPU)

One optimizer step = grad_accum micro-batches per rank. The loss of the step is the sum over every target
token of the step (all micro-batches, all ranks) divided by their count, so long and short examples weigh
the same per token whatever the batching (torchtune does the same; averaging micro-batch means does not).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import runs
from cli import UsageError, cpu_has_bf16, opt, parse_config, resolve_device, resolve_dtype, run_main  # noqa: F401
from model.hf import HUB_IDS


@dataclass
class TrainConfig:
    # model
    model: str = opt("gpt2", "architecture preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny")
    weights: str | None = opt(
        None, "HF GPT-2 folder, .safetensors file or hub id (default: the preset's hub id)"
    )
    init: str = opt(
        "pretrained",
        "pretrained weights, or random (same architecture; smoke runs, speed)",
        choices=["pretrained", "random"],
    )
    # LoRA (rank 0 = full fine-tune)
    lora_rank: int = opt(8, "LoRA rank r; 0 trains every weight (full fine-tune)")
    lora_alpha: float = opt(
        16.0, "LoRA alpha: the update is scaled by alpha/r (alpha/sqrt(r) with --lora-rslora)"
    )
    lora_targets: str = opt(
        "q,v",
        "comma-separated: q,k,v (slices of c_attn), c_attn, attn.c_proj, mlp.c_fc, "
        "mlp.c_proj, or attn, mlp, all",
    )
    lora_dropout: float = opt(0.0, "dropout on the LoRA input")
    lora_rslora: bool = opt(False, "rank-stabilized scaling alpha/sqrt(r)")
    # data (names shared with data.prepare.DataConfig)
    data: str = opt(
        "auto",
        "auto (CodeXGLUE if reachable or cached, else the embedded corpus), codexglue, pysrc, or jsonl:PATH",
    )
    data_files: str | None = opt(None, "comma-separated local CodeXGLUE-schema parquet/jsonl files")
    pysrc_roots: str | None = opt(None, "comma-separated extra Python source trees for the embedded corpus")
    max_train_examples: int | None = opt(None, "use the first N training examples (the study used 10000)")
    max_len: int | None = opt(
        None,
        "tokens per example, prompt + code + EOS; longer ones are dropped "
        "(default 512, or the model's context if shorter)",
    )
    prompt_format: str = opt(
        "study",
        "study ('Prompt: ... Code: ...') or docstring (HumanEval-style def)",
        choices=["study", "docstring"],
    )
    train_on_prompt: bool = opt(False, "also put loss on the prompt tokens (the study did)")
    pack: bool = opt(False, "pack several examples per row with a block-causal mask (no padding)")
    cache_dir: str = opt(".cache/data", "where tokenized datasets are cached")
    # optimization
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
    # runtime
    dtype: str = opt(
        "auto",
        "auto: bf16 where the CPU/GPU supports it, fp16+GradScaler on older GPUs, else fp32",
        choices=["auto", "fp32", "bf16", "fp16"],
    )
    device: str = opt("auto", "auto, cpu, cuda, cuda:N")
    compile: bool = opt(False, "torch.compile the model")
    cuda_graph: bool = opt(
        False,
        "capture each train step as one CUDA graph (GPU, --pack): pays where steps are small, host-bound",
    )
    grad_checkpoint: bool = opt(False, "recompute each block in backward (less activation memory)")
    seed: int = opt(0, "seed for init, data order, dropout")
    peak_tflops: float | None = opt(None, "hardware peak for MFU (default: GPU table, or measured on CPU)")
    # run folder
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
    profile_memory: bool = opt(False, "measure memory per component on the first steps -> memory.json")
    config: str | None = opt(None, "JSON or TOML file with any of these options (flags override it)")
    print_config: bool = opt(False, "print the resolved config as JSON and exit")
    dry_run: bool = opt(False, "build everything, print the plan and memory estimate, train nothing")


GPU_PEAK_TFLOPS = {  # name: (dense bf16/fp16 tensor-core peak, plain fp32 peak), from the vendors' sheets
    "H100": (989.0, 67.0),
    "H200": (989.0, 67.0),
    "A100": (312.0, 19.5),
    "L4": (121.0, 30.3),
    "A10": (125.0, 31.2),
    "V100": (125.0, 15.7),
    "T4": (65.0, 8.1),
    "4090": (165.0, 82.6),
    "3090": (71.0, 35.6),
}
DATA_FIELDS = (
    "data",
    "data_files",
    "pysrc_roots",
    "max_train_examples",
    "max_len",
    "prompt_format",
    "train_on_prompt",
    "cache_dir",
)


def validate(cfg: TrainConfig) -> None:
    """Stop on bad settings before anything is loaded or written."""
    from lora.config import parse_targets
    from model.gpt2 import PRESETS, config_for

    if cfg.model not in PRESETS:
        raise UsageError(f"--model {cfg.model} is not a preset; choose from {', '.join(PRESETS)}")
    context = config_for(cfg.model).block_size
    cfg.max_len = cfg.max_len or min(512, context)
    checks = [
        (cfg.lora_rank >= 0, f"--lora-rank {cfg.lora_rank} is negative; pass 0 (full fine-tune) or a rank"),
        (cfg.lora_alpha > 0, f"--lora-alpha {cfg.lora_alpha} must be positive"),
        (0 <= cfg.lora_dropout < 1, f"--lora-dropout {cfg.lora_dropout} must be in [0, 1)"),
        (cfg.batch_size >= 1 and cfg.grad_accum >= 1, "--batch-size and --grad-accum must be >= 1"),
        (cfg.max_len >= 8, f"--max-len {cfg.max_len} is too short for a prompt and code"),
        (cfg.max_len <= context, f"--max-len {cfg.max_len} exceeds the {cfg.model} context ({context})"),
        (cfg.lr is None or cfg.lr > 0, f"--lr {cfg.lr} must be positive"),
        (cfg.max_steps is None or cfg.max_steps >= 1, "--max-steps must be >= 1"),
        (cfg.epochs > 0, "--epochs must be positive"),
        (not (cfg.resume and cfg.overwrite), "--resume and --overwrite contradict each other; pass one"),
        (cfg.init == "random" or cfg.weights or cfg.model in HUB_IDS,
         f"--model {cfg.model} has no published weights; pass --init random or --weights PATH"),
    ]  # fmt: skip
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)
    if cfg.lora_rank > 0:
        try:
            parse_targets(cfg.lora_targets)
        except ValueError as e:
            raise UsageError(f"--lora-targets: {e}") from None


# ------------------------------------------------------------------------------------------- pure helpers
def get_lr(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to `peak`, then cosine decay to peak * min_ratio at `total` (step counts from 0)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return peak * min_ratio
    progress = (step - warmup) / max(1, total - warmup)  # 0 -> 1
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def measure_cpu_peak_tflops(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> float:
    """Best-of-`reps` dense matmul throughput on this CPU: the denominator of MFU on CPU."""
    g = torch.Generator().manual_seed(0)  # leaves the global RNG (dropout, data) untouched
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 x trainable + 4 x frozen parameters (frozen weights still pass
    gradients to their inputs, but need no weight gradient), plus attention scores 12 * L * T * C."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    c = model.config
    return 6 * trainable + 4 * frozen + 12 * c.n_layer * seq_len * c.n_embd


def memory_bytes(device: torch.device) -> int:
    """Peak memory so far: CUDA allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set size: Linux's VmHWM. Not getrusage's ru_maxrss, which a process
    inherits from its parent across fork + exec: a worker started by a 1.5 GB parent reads 1.5 GB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: the best there is


# ------------------------------------------------------------------------------------------- run folder
def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_out_dir(cfg: TrainConfig) -> tuple[Path, bool]:
    """The run folder, and whether an old run there must be wiped (--overwrite) before writing."""
    out = Path(cfg.out_dir or f"runs/{cfg.model}-{'full' if cfg.lora_rank == 0 else f'lora{cfg.lora_rank}'}")
    cfg.out_dir = str(out)
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


def save_checkpoint(out: Path, step: int, model, opt, scaler, batches, cfg: TrainConfig, keep: int) -> Path:
    """Write checkpoints/step-N atomically: everything into a temp folder, a COMPLETE mark last, then
    rename. A crash (or a full disk) mid-write leaves only the temp folder, which resume never reads."""
    from lora.peft_io import save_adapter
    from model.hf import save_pretrained

    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if cfg.lora_rank > 0:
            save_adapter(model, tmp, base_model_name_or_path=base_name(cfg, out))
        else:
            save_pretrained(model, tmp)
        state = {
            "step": step,
            # LoRA: the exact trainable tensors (the PEFT files beside them are for other tools).
            "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
            if cfg.lora_rank > 0
            else None,
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "batches": batches.state_dict(),
            "rng": rng_state(),
            "config": dataclasses.asdict(cfg),
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
    for old in runs.checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def base_name(cfg: TrainConfig, out: Path) -> str:
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


def find_resume(cfg: TrainConfig, out: Path) -> Path:
    if cfg.resume == "auto":
        ckpt = runs.latest_checkpoint(out)
        if ckpt is None:
            raise UsageError(
                f"--resume auto: {out} has no complete checkpoint; start the run without --resume"
            )
        return ckpt
    ckpt = Path(cfg.resume)
    if not (ckpt / runs.COMPLETE_MARK).is_file() or not (ckpt / "state.pt").is_file():
        raise UsageError(f"--resume {ckpt} is not a complete checkpoint folder (checkpoints/step-N)")
    return ckpt


# ------------------------------------------------------------------------------------------- the model
def build_model(
    cfg: TrainConfig, device: torch.device, dtype: torch.dtype, log, save_base_to: Path | None = None
):
    """The GPT to train: pretrained or random, LoRA injected (frozen Linear weights in bf16 under bf16)."""
    from lora.lora import LoRALinear
    from model.gpt2 import GPT, config_for
    from model.hf import load_pretrained, save_pretrained
    from model.kernels import use_fast_kernels

    if cfg.dry_run:  # the architecture alone, on the meta device: no weights, no download, no memory
        with torch.device("meta"):
            model = GPT(config_for(cfg.model))
            add_adapters(model, cfg)
        return model
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
    if save_base_to is not None and cfg.lora_rank > 0 and not (save_base_to / "base").exists():
        save_pretrained(model, save_base_to / "base")  # a random base is part of a LoRA run: keep it
    add_adapters(model, cfg)
    model.to(device)
    use_fast_kernels(model)
    if cfg.lora_rank > 0 and dtype == torch.bfloat16:
        # Frozen Linear weights live in bf16: half the memory, and autocast stops re-casting them every
        # step. Embeddings, LayerNorms and everything trainable stay fp32.
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Linear, LoRALinear)) and mod is not model.lm_head:
                for p in mod.parameters(recurse=False):
                    if not p.requires_grad:
                        p.data = p.data.to(torch.bfloat16)
    model.grad_checkpoint = cfg.grad_checkpoint
    return model


def add_adapters(model, cfg: TrainConfig) -> None:
    """LoRA per the config (rank 0: nothing, every weight trains)."""
    from lora.config import LoRAConfig
    from lora.lora import inject_lora

    if cfg.lora_rank > 0:
        lora = LoRAConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.lora_dropout, cfg.lora_rslora)
        inject_lora(model, lora, verbose=False)


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices (Linear weights, embeddings, LoRA A/B); never biases or LayerNorm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused where the parameters live on CPU or CUDA: one kernel per step instead of a loop of
    tensor ops (3x faster than foreach for a 124M CPU step: docs/benchmarks.md)."""
    on_real_device = next(model.parameters()).device.type in ("cpu", "cuda")  # not meta (--dry-run)
    kind = {"fused": True} if on_real_device else {"foreach": False}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, **kind
    )


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_loss(model, batches, n_batches: int, amp, device) -> float:
    model.eval()
    batches.set_epoch(0)  # the same first batches at every evaluation
    total, count = 0.0, 0
    for i, b in enumerate(batches):
        if i >= n_batches:
            break
        with amp:
            loss = model(*to_device(b, device), reduction="sum")
        total, count = total + float(loss), count + b["n_targets"]
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def sample_text(model, prompt: str, amp, max_new_tokens: int = 48) -> str:
    from data.tokenizer import get_tokenizer
    from generation import generate

    tok = get_tokenizer()
    model.eval()
    ids = tok.encode(prompt)[-(model.config.block_size - max_new_tokens) :]
    with amp:
        out = generate(model, [ids], max_new_tokens=max_new_tokens, eos=tok.eot)[0]
    model.train()
    return tok.decode([i for i in out if i != tok.eot])


def to_device(b: dict, device) -> tuple:
    """(idx, targets, None, pos, mask) on the device, in the order model.forward takes them."""

    def move(t):
        return None if t is None else t.to(device, non_blocking=True)

    return move(b["idx"]), move(b["targets"]), None, move(b.get("pos")), move(b.get("mask"))


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainConfig, argv, description=__doc__.split("\n\n")[0], prog="train.py")
    validate(cfg)
    if cfg.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = resolve_device(cfg.device)  # model.hf's: auto -> cuda if there is one
    if ddp:
        if device.type == "cuda":
            device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return train(cfg, device, rank, world, ddp)
    finally:
        if ddp and dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: TrainConfig, device: torch.device, rank: int, world: int, ddp: bool) -> int:
    from data.loader import Batches
    from data.prepare import DataConfig, format_prompt, prepare

    master = rank == 0
    log = print if master else (lambda *a, **k: None)
    dtype = resolve_dtype(cfg.dtype, device)
    if dtype == torch.float16 and device.type == "cpu":
        raise UsageError("--dtype fp16 needs a GPU (fp16 autocast on CPU is not supported); use bf16 or fp32")
    cfg.lr = cfg.lr or (2e-4 if cfg.lora_rank > 0 else 5e-5)
    out, wipe = check_out_dir(cfg)
    ckpt = find_resume(cfg, out) if cfg.resume else None
    if ckpt is not None:  # the run's own config wins over flags, except how long to run and how often to log
        saved = runs.read_config(out)
        keep = {"resume", "max_steps", "epochs", "log_every", "eval_every", "save_every", "device",
                "cuda_graph", "dry_run"}  # fmt: skip
        cfg = dataclasses.replace(
            cfg, **{k: v for k, v in saved.items() if k not in keep and hasattr(cfg, k)}
        )
    graph_on = use_cuda_graph(cfg, device, dtype, ddp)
    log(json.dumps(dataclasses.asdict(cfg), indent=None))
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    # --- data
    data_cfg = DataConfig(**{k: getattr(cfg, k) for k in DATA_FIELDS})
    datasets = prepare(data_cfg, splits=("train", "validation"), log=log)
    train_set, val_set = datasets["train"], datasets["validation"]
    batches = Batches(
        train_set,
        cfg.batch_size,
        cfg.max_len,
        pack=cfg.pack,
        shuffle=True,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        drop_last=ddp,
    )
    val_batches = Batches(
        val_set,
        cfg.batch_size,
        cfg.max_len,
        pack=cfg.pack,
        shuffle=False,
        seed=0,
        rank=rank,
        world_size=world,
    )
    if len(batches) == 0:
        raise UsageError(
            f"the training set has {len(train_set)} examples, fewer than one batch of "
            f"{cfg.batch_size} per process; lower --batch-size"
        )
    steps_per_epoch = max(1, len(batches) // cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, total // 20)

    # --- model, optimizer, precision
    if master and wipe and not cfg.dry_run:
        shutil.rmtree(out)
    save_base = out if (master and cfg.init == "random" and not cfg.dry_run) else None
    model = build_model(cfg, device, dtype, log, save_base_to=save_base)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log(f"trainable params: {n_train:,} || all params: {n_all:,} || trainable%: {100 * n_train / n_all:.4f}")
    opt = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    tokens_per_step = cfg.batch_size * cfg.grad_accum * world
    log(
        f"plan: {total} optimizer steps ({steps_per_epoch}/epoch), {tokens_per_step} examples/step "
        f"(batch {cfg.batch_size} x accum {cfg.grad_accum} x {world} proc), up to {cfg.max_len} tokens each; "
        f"lr {cfg.lr:g} warmup {warmup} cosine to {cfg.lr * cfg.min_lr_ratio:g}; {dtype} on {device}; "
        f"train {len(train_set):,} / val {len(val_set):,} examples -> {out}"
    )
    if cfg.dry_run:
        try:
            from profiler.memory import estimate, format_estimate

            log(format_estimate(estimate(cfg)))
        except ImportError:
            log("(memory estimate: profiler/memory.py is not available)")
        return 0

    peak = cfg.peak_tflops or peak_tflops(device, dtype)
    log(f"MFU peak: {peak:.2f} TFLOP/s ({'given' if cfg.peak_tflops else 'table/measured'})")
    fpt = flops_per_token(model, cfg.max_len)
    step = 0
    if ckpt is not None:  # after everything that draws random numbers, so the RNG state is the saved one
        step = load_checkpoint(ckpt, model, opt, scaler, batches, cfg, device)
        log(f"resumed from {ckpt} at step {step}")
    if master:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
        truncate_metrics(out / "metrics.jsonl", step)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if graph_on:
        torch.cuda.set_device(device)  # a graph captures and replays on the current device: this one
    graphed = CudaGraphStep(model, raw_model, opt, dtype, cfg.grad_clip, device) if graph_on else None
    if graphed:
        log(f"train step: one CUDA graph, captured after {graphed.warmup} eager steps, then replayed")

    val_prompt = (
        format_prompt(val_set.records(0)["docstring"], val_set.records(0).get("func_name"), cfg.prompt_format)
        if len(val_set)
        else None
    )
    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, dynamic_ncols=True, disable=not (master and sys.stderr.isatty()))
    stop = {"flag": False}
    prev = signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True)) if master else None
    data_iter = iter_forever(batches)
    t_start, tok_window, t_window = time.perf_counter(), 0, time.perf_counter()
    metrics_f = open(out / "metrics.jsonl", "a") if master else None
    start_step = step
    try:
        while step < total and not stop["flag"]:
            lr = get_lr(step, cfg.lr, warmup, total, cfg.min_lr_ratio)
            set_lr(opt, lr)
            micro = [next(data_iter) for _ in range(cfg.grad_accum)]
            if cfg.profile_memory and step == start_step:  # the first step, measured by component
                from profiler.memory import profile_training_memory

                loss_val, grad_norm, _ = profile_training_memory(
                    model,
                    raw_model,
                    micro,
                    opt,
                    scaler,
                    amp,
                    cfg,
                    device,
                    ddp,
                    out=out if master else None,
                    log=log,
                )
            elif graphed:
                loss_val, grad_norm = graphed(micro)
            else:
                loss_val, grad_norm = train_step(
                    model, raw_model, micro, opt, scaler, amp, cfg.grad_clip, device, ddp
                )
            step += 1
            n_tok = sum(b["n_tokens"] for b in micro) * world
            tok_window += n_tok
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss_val:.4f}", tok_s=f"{tok_window / (time.perf_counter() - t_window):.0f}"
            )
            if master and (step % cfg.log_every == 0 or step == total or step == 1):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t_window
                tps = tok_window / dt
                row = dict(
                    step=step,
                    epoch=round(step / steps_per_epoch, 4),
                    loss=round(loss_val, 6),
                    lr=lr,
                    grad_norm=round(grad_norm, 6),
                    tokens=n_tok,
                    tokens_per_sec=round(tps, 1),
                    mfu=round(tps * fpt / (peak * 1e12), 6),
                    mem_bytes=memory_bytes(device),
                    elapsed_s=round(time.perf_counter() - t_start, 3),
                )
                metrics_f.write(json.dumps(row) + "\n")
                metrics_f.flush()
                if bar.disable:
                    log(log_line(row, total))
                tok_window, t_window = 0, time.perf_counter()
            is_eval = cfg.eval_every and step % cfg.eval_every == 0 or step == total
            if is_eval and len(val_set):
                val = evaluate_loss(raw_model, val_batches, cfg.eval_batches, amp, device)
                if master:
                    metrics_f.write(json.dumps(dict(step=step, val_loss=round(val, 6))) + "\n")
                    metrics_f.flush()
                    sample = sample_text(raw_model, val_prompt, amp) if val_prompt else ""
                    log(f"step {step}: val loss {val:.4f}\n--- sample ---\n{val_prompt}{sample}\n---")
            if master and cfg.save_every and step % cfg.save_every == 0 and step < total:
                save_checkpoint(out, step, raw_model, opt, scaler, batches, cfg, cfg.keep_checkpoints)
    finally:
        bar.close()
        if prev is not None:
            signal.signal(signal.SIGINT, prev)
        if metrics_f:
            metrics_f.close()
    if master:
        save_checkpoint(out, step, raw_model, opt, scaler, batches, cfg, cfg.keep_checkpoints)
        if stop["flag"]:
            log(f"interrupted: checkpoint saved at step {step}; continue with --resume auto --out-dir {out}")
            return 130
        finish(out, raw_model, cfg, log, time.perf_counter() - t_start)
    return 0


def train_step(model, raw_model, micro, opt, scaler, amp, grad_clip, device, ddp) -> tuple[float, float]:
    """One optimizer step over the micro-batches; returns (mean loss per target token, grad norm).

    Each micro-batch's summed loss is divided by the target count of the whole step (every micro-batch,
    every rank), so the gradient is that of the step's mean token loss however the tokens are split.
    """
    world = dist.get_world_size() if ddp else 1
    n_targets = torch.tensor(float(sum(b["n_targets"] for b in micro)), device=device)
    if ddp:
        dist.all_reduce(n_targets)
    scale = world / n_targets.clamp(min=1)  # x world: DDP averages gradients over ranks
    inputs = (to_device(b, device) for b in micro)  # one micro-batch on the device at a time
    step_loss, grad_norm = step_on_device(
        model, raw_model, inputs, len(micro), scale, opt, scaler, amp, grad_clip, ddp
    )
    opt.zero_grad(set_to_none=True)
    if ddp:
        dist.all_reduce(step_loss)
    return float(step_loss) / float(n_targets), float(grad_norm)


def step_on_device(
    model, raw_model, inputs, n_micro, scale, opt, scaler, amp, grad_clip, ddp=False, static=False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The device work of a step, with no read back to the host: forward and backward over the micro-batches
    (inputs: model.forward's positional arguments), clipping, the optimizer. Returns the summed loss and the
    gradient norm as device tensors. Leaves the gradients in place (a CUDA graph reuses them)."""
    step_loss = torch.zeros((), device=scale.device)
    for i, args in enumerate(inputs):
        sync = model.no_sync() if ddp and i < n_micro - 1 else nullcontext()  # all-reduce once, at the end
        with sync:
            with amp:
                loss_sum = static_loss_sum(model, *args) if static else model(*args, reduction="sum")
            (scaler.scale(loss_sum * scale) if scaler else loss_sum * scale).backward()
        step_loss += loss_sum.detach()
    if scaler:
        scaler.unscale_(opt)  # clip true gradients, not scaled ones
    trainable = [p for p in raw_model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip or float("inf"))
    if scaler:
        scaler.step(opt)  # skips the step if gradients overflowed
        scaler.update()
    else:
        opt.step()
    return step_loss, grad_norm


def static_loss_sum(model, idx, targets, loss_mask=None, pos=None, mask=None) -> torch.Tensor:
    """GPT.forward(..., reduction="sum") with every shape independent of the data, as a CUDA graph needs:
    the vocabulary projection runs at every position and the positions without a target weigh 0, where
    GPT.forward projects only the targets (h[valid] has as many rows as the batch has targets)."""
    from model.gpt2 import IGNORE

    h = model.hidden(idx, pos=pos, mask=mask)  # (B, T, C)
    keep = targets != IGNORE
    if loss_mask is not None:
        keep &= loss_mask.bool()
    logits_t = model.lm_head.weight @ h.flatten(0, 1).t()  # (V, C) @ (C, B*T) -> (V, B*T)
    losses = model.loss_fn(logits_t, targets.flatten().clamp(min=0))  # (B*T,)
    return (losses * keep.flatten()).sum()  # 0 loss and 0 gradient where there is no target


class CudaGraphStep:
    """train_step as one CUDA graph: captured once, then replayed for every batch of the same shapes.

    Why: at GPT-2 124M shapes a GPU runs a step's kernels faster than Python and autograd can launch them.
    On an H100 a 4 x 256 bf16 LoRA step is ~6 ms of kernels inside ~30 ms of host work (~600 launches). A
    graph records the launches once; each replay is a single call, so the step takes the kernels' time.

    What capture needs, and how it gets it:
      fixed addresses  each batch is copied into the same input tensors; the target count and the learning
                       rate live in device tensors, updated before each replay (set_lr); AdamW is capturable.
                       The gradients the capture allocates are overwritten, not accumulated, by each replay.
      fixed shapes     GPT.forward(static=True): the loss covers every position, non-targets weighted 0.
                       Packed batches (--pack) all have one shape; a batch of another shape (an epoch's
                       short last batch) takes the eager train_step.
      no host reads    nothing in step_on_device reads a value back; the loss is read after the replay.
      warm-up          the first steps run eagerly on a side stream, so that lazy set-up (cuBLAS handles,
                       optimizer state, autograd's streams) is done before capture, as CUDA graphs require.
    Not with DDP, fp16's GradScaler, torch.compile or gradient checkpointing (use_cuda_graph decides)."""

    def __init__(self, model, raw_model, opt, dtype: torch.dtype, grad_clip: float, device, warmup: int = 2):
        self.model, self.raw_model, self.opt, self.dtype = model, raw_model, opt, dtype
        self.grad_clip, self.device, self.warmup = grad_clip, device, warmup
        for g in opt.param_groups:  # device tensors, read by the graph at each replay
            g["capturable"] = True
            g["lr"] = torch.tensor(float(g["lr"]), device=device)
        self.scale = torch.ones((), device=device)  # 1 / the step's target count
        self.graph, self.shapes, self.steps, self.eager_steps = None, None, 0, 0
        self.inputs, self.loss, self.grad_norm = None, None, None  # the graph's inputs and outputs (_capture)

    def amp(self):  # autocast's weight cache must be off inside a capture
        return (
            torch.autocast("cuda", self.dtype, cache_enabled=False)
            if self.dtype != torch.float32
            else nullcontext()
        )

    def __call__(self, micro: list[dict]) -> tuple[float, float]:
        n_targets = float(sum(b["n_targets"] for b in micro))
        self.scale.fill_(1.0 / max(n_targets, 1.0))
        self.steps += 1
        if self.graph is None and self.steps <= self.warmup:
            return self._warm_up(micro, n_targets)
        shapes = batch_shapes(micro)
        if self.graph is None:
            self._capture([to_device(b, self.device) for b in micro], shapes)  # this batch fills the inputs
        elif shapes == self.shapes:
            for static, b in zip(self.inputs, micro):
                for dst, src in zip(static, to_device(b, self.device)):
                    if dst is not None:
                        dst.copy_(src, non_blocking=True)
        else:  # another shape (an epoch's short last batch): an eager step
            self.eager_steps += 1
            amp, clip = self.amp(), self.grad_clip
            return train_step(
                self.model, self.raw_model, micro, self.opt, None, amp, clip, self.device, False
            )
        self.graph.replay()
        return float(self.loss) / n_targets, float(self.grad_norm)

    def _device_step(self, inputs: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
        """The work the graph holds, run eagerly (warm-up) or captured."""
        m, opt, amp, clip = self.model, self.opt, self.amp(), self.grad_clip
        return step_on_device(
            m, self.raw_model, inputs, len(inputs), self.scale, opt, None, amp, clip, static=True
        )

    def _warm_up(self, micro, n_targets):
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            loss, norm = self._device_step([to_device(b, self.device) for b in micro])
            self.opt.zero_grad(set_to_none=True)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return float(loss) / n_targets, float(norm)

    def _capture(self, inputs, shapes):
        self.inputs, self.shapes = inputs, shapes
        self.opt.zero_grad(set_to_none=True)  # so that backward allocates the gradients inside the graph
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss, self.grad_norm = self._device_step(inputs)
        self.opt.zero_grad(set_to_none=True)  # eager steps start from no gradients; the graph keeps its own


def batch_shapes(micro: list[dict]) -> tuple:
    """What must match for a captured graph to take these micro-batches."""
    return tuple(
        tuple(None if b.get(k) is None else tuple(b[k].shape) for k in ("idx", "targets", "pos", "mask"))
        for b in micro
    )


def set_lr(opt, lr: float) -> None:
    """Every group's learning rate; in place where it is a tensor, which a CUDA graph reads at each replay."""
    for g in opt.param_groups:
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def use_cuda_graph(cfg: TrainConfig, device: torch.device, dtype: torch.dtype, ddp: bool) -> bool:
    """--cuda-graph: capture the train step (CudaGraphStep), or say in one line why it cannot be.

    Off by default: it pays where a step's kernels take less time than launching them (H100, GPT-2 124M:
    5.6x our eager LoRA step at 4 x 256) and costs a little where they take longer (0.94x at 8 x 512,
    whose static loss projects every position): docs/benchmarks.md."""
    if not cfg.cuda_graph:
        return False
    blockers = [
        (device.type != "cuda", "needs a CUDA device"),
        (not cfg.pack, "needs --pack, where every batch has one shape"),
        (ddp, "is not supported under DDP"),
        (dtype == torch.float16, "is not supported with fp16's GradScaler (use bf16 or fp32)"),
        (cfg.compile, "is not combined with --compile"),
        (cfg.grad_checkpoint, "is not combined with --grad-checkpoint"),
    ]
    for hit, why in blockers:
        if hit:
            raise UsageError(f"--cuda-graph {why}")
    return True


def log_line(row: dict, total: int) -> str:
    """step | loss | lr | norm | tok/s | mfu | mem: the plain line printed when stderr is not a terminal."""
    return (
        f"step {row['step']:5d}/{total} | loss {row['loss']:.4f} | lr {row['lr']:.2e} | "
        f"norm {row['grad_norm']:.3f} | {row['tokens_per_sec']:,.0f} tok/s | mfu {100 * row['mfu']:.2f}% | "
        f"mem {row['mem_bytes'] / 2**20:,.0f} MiB"
    )


def iter_forever(batches):
    """Micro-batches across epoch boundaries; the loader's own state says where we are."""
    while True:
        yield from batches


def load_checkpoint(ckpt: Path, model, opt, scaler, batches, cfg: TrainConfig, device) -> int:
    from model.hf import load_pretrained

    state = torch.load(ckpt / "state.pt", map_location=device, weights_only=False)
    if cfg.lora_rank > 0:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, t in state["trainable"].items():
                params[name].copy_(t)
    else:
        src = load_pretrained(str(ckpt), device=device)
        model.load_state_dict(src.state_dict())
    opt.load_state_dict(state["optimizer"])
    for g in opt.param_groups:  # as an eager step wants them; a CudaGraphStep turns them back into tensors
        g["lr"], g["capturable"] = float(g["lr"]), False
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    batches.load_state_dict(state["batches"])
    set_rng_state(state["rng"])
    return state["step"]


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log rows past the checkpoint so the curve has no duplicated steps."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(r + "\n" for r in rows))


def cuda_tf32() -> bool:
    """Whether fp32 CUDA matmuls may use TF32, however it was switched on: set_float32_matmul_precision,
    the fp32_precision flags, or the older allow_tf32 (which raises if read after the newer API was used)."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)  # torch >= 2.9
    if precision is None:
        return bool(matmul.allow_tf32)
    if precision == "none":  # inherits the global setting
        precision = getattr(torch.backends, "fp32_precision", "ieee")
    return precision == "tf32"


def peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The TFLOP/s MFU is read against: a GPU's table peak for the dtype, or a timed matmul on a CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (half, fp32) in GPU_PEAK_TFLOPS.items():
            if key in name:
                if dtype != torch.float32:
                    return half
                # fp32 matmuls reach the tensor cores (TF32, half the bf16 rate) only where torch allows
                # TF32 (off by default) on Ampere or newer; otherwise they run on the plain fp32 units.
                ampere = torch.cuda.get_device_capability(device)[0] >= 8
                return half / 2 if cuda_tf32() and ampere else fp32
        return 100.0
    return measure_cpu_peak_tflops(dtype)


def finish(out: Path, model, cfg: TrainConfig, log, train_time: float) -> None:
    """final/ (adapter or full model), merged/ for LoRA, summary.json, plots."""
    from lora.peft_io import export_merged, save_adapter
    from model.hf import save_pretrained

    if cfg.lora_rank > 0:
        save_adapter(model, out / "final", base_model_name_or_path=base_name(cfg, out))
        export_merged(model, out / "merged")
    else:
        save_pretrained(model, out / "final")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    train_rows = [r for r in rows if "loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    summary = dict(
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()),
        peak_mem_bytes=max((r["mem_bytes"] for r in train_rows), default=0),
        train_time_s=round(train_rows[-1]["elapsed_s"] if train_rows else train_time, 2),
        tokens_per_sec=round(
            float(np.median([r["tokens_per_sec"] for r in train_rows[1:] or train_rows])), 1
        ),
        final_loss=train_rows[-1]["loss"] if train_rows else None,
        final_val_loss=vals[-1] if vals else None,
        steps=train_rows[-1]["step"] if train_rows else 0,
        lora_rank=cfg.lora_rank,
        init=cfg.init,
        model=cfg.model,
    )
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    plot_run(out, rows)
    log(f"done: {out}/final ({'adapter' if cfg.lora_rank else 'full model'}), summary {json.dumps(summary)}")


def plot_run(out: Path, rows: list[dict]) -> None:
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
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", title=out.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "plots" / "loss.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train_rows], [r["tokens_per_sec"] for r in train_rows])
    ax.set(xlabel="optimizer step", ylabel="tokens / s", title=f"{out.name}: throughput")
    fig.tight_layout()
    fig.savefig(out / "plots" / "throughput.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_main(main)
