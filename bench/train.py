"""Train-step speed and peak memory: ours against HF transformers + PEFT, side by side in one run.

    python -m bench.train                # GPT-2 124M, 4 x 256: full, LoRA, DoRA, QLoRA r=8, bf16 + fp32
    python -m bench.train --quick        # the two acceptance rows only (bf16 LoRA c_attn+c_proj, bf16 full)
    python -m bench.train --configs dora-attn-fp32,qlora-attn-fp32   # DoRA vs PEFT use_dora, QLoRA vs bnb
    python -m bench.train --corpus       # useful tokens/s on the embedded corpus: study pipeline vs ours
    python -m bench.train --device cuda  # the same on a GPU

Each contender lives in its own worker process holding one model and its optimizer; the parent tells the
workers to take one step each in turn (ours, HF, ours, HF ...), so a noisy neighbour slows both alike, and
each worker's peak memory is its own: on CPU the peak resident set size minus the resident size after
imports (weights + gradients + optimizer state + activations + allocator slack), on a GPU
torch.cuda.max_memory_allocated. Random weights: speed does not depend on their values.

What the two sides run (same shapes, dtype policy, optimizer and clipping):
  ours   model/gpt2.py (+ lora/lora.py), train.py's own build_model / make_optimizer / TrainStep (training/):
         loss over target positions only, frozen LoRA base weights stored in bf16 under bf16.
  HF     GPT2LMHeadModel (SDPA attention) + peft.get_peft_model, a step as HF Trainer takes it: autocast
         forward with labels, backward, clip_grad_norm_(1.0), AdamW (fused, Trainer's default), zero_grad.
The variants: DoRA is ours (lora/dora.py, the factored row norm) against PEFT's use_dora (which builds B A
and W + s B A every step); QLoRA is ours (model/nf4.py, dequantized in plain PyTorch, forward and backward)
against PEFT on a bitsandbytes 4-bit NF4 base (double quantization, the same codes as ours: bitsandbytes
0.50 quantizes and multiplies on a CPU too, through its own kernels or a dequantize-then-matmul fallback).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

from bench import common as C
from cli import resolve_dtype
from data.loader import Batches
from data.prepare import DataConfig, prepare
from data.tokenizer import EOT
from model.gpt2 import GPT, IGNORE, config_for
from training.build import build_model
from training.config import TrainConfig
from training.cuda_graph import CudaGraphStep
from training.hardware import flops_per_token, memory_bytes, peak_tflops
from training.optim import make_optimizer
from training.step import Batch, TrainStep

VOCAB = 50257
# Our LoRA targets -> the nearest PEFT target_modules. PEFT cannot adapt q and v alone inside GPT-2's
# fused c_attn (a Conv1D), so for q,v it adapts the whole c_attn: what a PEFT user of GPT-2 does.
PEFT_TARGETS = {"c_attn,attn.c_proj": ["c_attn", "attn.c_proj"], "q,v": ["c_attn"], "c_attn": ["c_attn"]}
CONFIGS = {  # name -> (LoRA targets or None for full fine-tuning, dtype[, variant: dora | qlora])
    "lora-attn-bf16": ("c_attn,attn.c_proj", "bf16"),
    "full-bf16": (None, "bf16"),
    "lora-qv-bf16": ("q,v", "bf16"),
    "dora-attn-bf16": ("c_attn,attn.c_proj", "bf16", "dora"),
    "qlora-attn-bf16": ("c_attn,attn.c_proj", "bf16", "qlora"),
    "lora-attn-fp32": ("c_attn,attn.c_proj", "fp32"),
    "full-fp32": (None, "fp32"),
    "lora-qv-fp32": ("q,v", "fp32"),
    "dora-attn-fp32": ("c_attn,attn.c_proj", "fp32", "dora"),
    "qlora-attn-fp32": ("c_attn,attn.c_proj", "fp32", "qlora"),
}
QUICK = ("lora-attn", "full")  # + the dtype --dtype auto picks


def auto_dtype(device: torch.device) -> str:
    """bf16 where it is native (GPU, AVX512-BF16/AMX CPU); else fp32, as train.py --dtype auto decides.
    Without native support a CPU emulates bf16 matmuls far slower than fp32: those rows would take hours."""
    return "bf16" if resolve_dtype("auto", device, training=True) == torch.bfloat16 else "fp32"


@dataclass
class Spec:
    """What one worker builds: picklable, so it crosses into a spawned process."""

    impl: str  # ours | hf
    targets: str | None  # LoRA targets (ours' names); None = full fine-tuning
    dtype: str  # bf16 | fp32
    device: str
    rank: int = 8
    alpha: float = 16.0
    model: str = "gpt2"
    compile: bool = False
    cuda_graph: bool = False  # ours: training.cuda_graph.CudaGraphStep (a GPU and one batch shape)
    threads: int = 0  # 0 = torch's default
    seq_len: int = 256  # for the model FLOPs per token (MFU)
    variant: str = ""  # "", "dora" (PEFT: use_dora) or "qlora" (PEFT: on a bitsandbytes 4-bit base)


# ------------------------------------------------------------------------------------------- the workers
def build_ours(spec: Spec, device: torch.device):
    """Our model, optimizer and one-step function, through train.py's own code (training/)."""
    cfg = TrainConfig(
        model=spec.model, init="random", lora_rank=spec.rank if spec.targets else 0,
        lora_alpha=spec.alpha, lora_targets=spec.targets or "q,v", dtype=spec.dtype, lr=1e-4,
        max_len=config_for(spec.model).block_size, lora_dora=spec.variant == "dora",
        quantize="nf4" if spec.variant == "qlora" else "none",
    )  # fmt: skip
    dtype = torch.bfloat16 if spec.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = build_model(cfg, device, dtype, log=lambda *a: None)
    assert isinstance(model, GPT) and model.config == config_for(spec.model)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    fwd = torch.compile(model) if spec.compile else model
    if spec.cuda_graph:
        step = CudaGraphStep(fwd, opt, device, dtype, raw_model=model, grad_clip=1.0)
    else:
        step = TrainStep(fwd, opt, device, raw_model=model, amp=amp, grad_clip=1.0)
    return model, lambda batch: step([Batch.from_dict(batch)])[0]


def build_hf(spec: Spec, device: torch.device):
    """GPT2LMHeadModel (+ PEFT LoRA), stepped the way HF Trainer steps it."""
    # transformers and peft take seconds to import: only the HF workers pay for them
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    c = config_for(spec.model)
    torch.manual_seed(0)
    hcfg = GPT2Config(
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        n_positions=c.block_size,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )  # fmt: skip  (ours: dropout 0)
    model = GPT2LMHeadModel(hcfg).to(device)
    dtype = torch.bfloat16 if spec.dtype == "bf16" else torch.float32
    if spec.variant == "qlora":  # the same random model, loaded the way a QLoRA user loads one
        model = bnb_4bit(model, device, dtype)
    if spec.targets:
        lcfg = LoraConfig(
            r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0, target_modules=PEFT_TARGETS[spec.targets],
            fan_in_fan_out=True, task_type="CAUSAL_LM", use_dora=spec.variant == "dora",
        )  # fmt: skip
        model = get_peft_model(model, lcfg)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # Trainer's grouping: decay on everything but biases and LayerNorm weights.
    decay = [p for n, p in named if not (n.endswith(".bias") or ".ln_" in n)]
    rest = [p for n, p in named if n.endswith(".bias") or ".ln_" in n]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    fwd = torch.compile(model) if spec.compile else model
    params = [p for _, p in named]

    def step(batch: dict) -> float:
        with amp:
            loss = fwd(
                input_ids=batch["hf_ids"], attention_mask=batch["hf_attn"], labels=batch["hf_labels"]
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return model, step


def bnb_4bit(model, device: torch.device, dtype: torch.dtype):
    """`model` reloaded by transformers with a bitsandbytes NF4 base (blocks of 64, double quantization):
    BitsAndBytesConfig(load_in_4bit=True), as PEFT's QLoRA recipe does (without its gradient checkpointing,
    which ours does not do either)."""
    import tempfile

    from transformers import BitsAndBytesConfig, GPT2LMHeadModel

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=dtype)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return GPT2LMHeadModel.from_pretrained(folder, quantization_config=q, device_map={"": device})


def worker(conn, spec: Spec) -> None:
    """Build one contender, then take a step whenever the parent says so; report peak memory at the end."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    base = C.rss_bytes()
    try:
        t = time.perf_counter()
        model, step = (build_ours if spec.impl == "ours" else build_hf)(spec, device)
        fpt = flops_per_token(model, spec.seq_len) if spec.impl == "ours" else None
        conn.send(dict(build_s=time.perf_counter() - t, flops_per_token=fpt))
        while (msg := conn.recv()) is not None:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in msg.items()}
            C.sync(device)
            t = time.perf_counter()
            loss = step(batch)
            C.sync(device)
            conn.send(dict(seconds=time.perf_counter() - t, loss=loss))
    except Exception as e:  # the parent is waiting on the pipe: tell it, rather than leave it hanging
        conn.send(dict(error=f"{spec.impl} worker: {type(e).__name__}: {e}"))
        raise
    peak = memory_bytes(device) - (base if device.type == "cpu" else 0)
    conn.send(dict(peak_bytes=peak, trainable=sum(p.numel() for p in model.parameters() if p.requires_grad)))


class Contender:
    """A worker process seen from the parent: step(batch) -> seconds; close() -> peak memory.
    Contender.start(specs) starts them all before waiting for any, so their imports and builds overlap."""

    def __init__(self, spec: Spec):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(child, spec), daemon=True)
        self.proc.start()
        child.close()  # only the worker holds that end now: if it dies, recv() raises instead of hanging
        self.losses: list[float] = []

    def wait_built(self) -> Contender:
        built = self._recv()
        self.build_s, self.flops_per_token = built["build_s"], built["flops_per_token"]
        return self

    @staticmethod
    def start(specs: dict[str, Spec]) -> dict[str, Contender]:
        started = {k: Contender(s) for k, s in specs.items()}
        return {k: c.wait_built() for k, c in started.items()}

    def _recv(self) -> dict:
        r = self.conn.recv()
        if "error" in r:
            raise RuntimeError(r["error"])
        return r

    def step(self, batch: dict) -> float:
        self.conn.send(batch)
        r = self._recv()
        self.losses.append(r["loss"])
        return r["seconds"]

    def close(self) -> dict:
        self.conn.send(None)
        r = self.conn.recv()
        self.proc.join()
        return r


# ------------------------------------------------------------------------------------------- batches
def random_batch(B: int, T: int, seed: int = 0) -> dict:
    """The same tokens for both sides; every position but the last has a target (HF shifts labels itself)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    targets = ids[:, 1:].clone()
    return dict(
        idx=ids[:, :T], targets=targets, pos=None, mask=None, n_tokens=B * T, n_targets=B * T,
        hf_ids=ids[:, :T], hf_attn=torch.ones(B, T, dtype=torch.long), hf_labels=ids[:, :T],
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- benchmarks
def fmt_mfu(mfu: float) -> str:
    """A share of the peak; above 100% the peak was measured too low, and the reading is no result."""
    return f"{100 * mfu:.0f}%" if mfu <= 1 else ">100% (peak read too low)"


def bench_models(args, device: torch.device) -> str:
    dtypes = [auto_dtype(device)] if args.dtypes == "auto" else args.dtypes.split(",")
    names = [n for n in (args.configs or ",".join(CONFIGS)).split(",") if n[-4:] in dtypes]
    if args.quick:
        names = [f"{q}-{dtypes[0]}" for q in QUICK]
    batch = random_batch(args.batch_size, args.seq_len)
    tokens = args.batch_size * args.seq_len
    # MFU's denominator, as train.py logs it: the GPU's table peak, or the best timed 1024^3 matmul on a CPU
    peaks = {d: peak_tflops(device, torch.bfloat16 if d == "bf16" else torch.float32) * 1e12
             for d in {CONFIGS[n][1] for n in names if n in CONFIGS}}  # fmt: skip
    rows = []
    for name in names:
        if name not in CONFIGS:
            raise SystemExit(f"error: unknown config {name!r}; choose from {', '.join(CONFIGS)}")
        targets, dtype, *variant = CONFIGS[name]
        spec = Spec(
            "ours",
            targets,
            dtype,
            str(device),
            model=args.model,
            compile=args.compile,
            threads=args.threads,
            seq_len=args.seq_len,
            variant=variant[0] if variant else "",
        )
        specs = {"ours": spec, "HF": replace(spec, impl="hf")}
        if args.cuda_graph:
            specs["graph"] = replace(spec, cuda_graph=True)
        contenders = Contender.start(specs)
        fpt = contenders["ours"].flops_per_token  # model FLOPs: the same for both sides
        times = C.interleave(
            {k: (lambda c=c: c.step(batch)) for k, c in contenders.items()}, args.steps, args.warmup
        )
        mem = {k: c.close()["peak_bytes"] for k, c in contenders.items()}
        tps = {k: tokens / C.median(v) for k, v in times.items()}
        hf_targets = "" if not targets else f" / PEFT {'+'.join(PEFT_TARGETS[targets])}"
        kind = {"dora": "DoRA", "qlora": "QLoRA"}.get(spec.variant, "LoRA")
        peft_kind = {"dora": " (use_dora)", "qlora": " (bitsandbytes NF4 base)"}.get(spec.variant, "")
        what = f"{kind} r=8 {targets}{hf_targets}{peft_kind}" if targets else "full fine-tuning"
        mfu = " / ".join(fmt_mfu(tps[k] * fpt / peaks[dtype]) for k in contenders)
        row = [what, dtype, f"{tps['ours']:,.0f}", f"{tps['HF']:,.0f}", f"**{tps['ours'] / tps['HF']:.2f}x**",
               C.mib(mem["ours"]), C.mib(mem["HF"]), f"{mem['ours'] / mem['HF']:.2f}", mfu]  # fmt: skip
        if args.cuda_graph:
            row[5:5] = [f"{tps['graph']:,.0f}", f"**{tps['graph'] / tps['HF']:.2f}x**"]
            row[-1:-1] = [C.mib(mem["graph"])]
        rows.append(row)
        steps = {k: [round(t, 2) for t in v] for k, v in times.items()}
        speeds = ", ".join(f"{k} {v:.0f} tok/s" for k, v in tps.items())
        builds = ", ".join(f"{k} {c.build_s:.1f}" for k, c in contenders.items())
        print(f"  {name}: {speeds} (steps s: {steps}; build s: {builds})", flush=True)
    header = ["training", "dtype", "ours tok/s", "HF+PEFT tok/s", "speed-up", "ours peak MiB", "HF peak MiB",
              "memory ours/HF", "MFU ours / HF" + (" / graph" if args.cuda_graph else "")]  # fmt: skip
    if args.cuda_graph:
        header[5:5] = ["ours, CUDA graph tok/s", "graph speed-up"]
        header[-1:-1] = ["graph peak MiB"]
    return (
        f"Train step, GPT-2 {args.model} shapes, batch {args.batch_size} x {args.seq_len}, AdamW, "
        f"median of {args.steps} steps after {args.warmup} warm-up, interleaved; MFU against "
        + ", ".join(f"{d} {p / 1e12:.3g} TFLOP/s" for d, p in sorted(peaks.items()))
        + f" ({'GPU table' if device.type == 'cuda' else 'best timed 1024^3 matmul'}):\n\n"
        + C.markdown_table(header, rows)
    )


class Subset:
    """The examples `index` of a TokenDataset, seen as a dataset of their own (what Batches reads)."""

    def __init__(self, ds, index):
        self.ds, self.index = ds, [int(i) for i in index]
        self.lengths = ds.lengths[self.index]

    def __len__(self) -> int:
        return len(self.index)

    def example(self, i: int):
        return self.ds.example(self.index[i])


def study_batch(sub: Subset, rows: list[int], max_len: int) -> dict:
    """The study's collation: every example right-padded to max_len, the loss on every real token (prompt
    included; pads are -100 as DataCollatorForLanguageModeling makes them). Keys for both sides."""
    B = len(rows)
    ids = torch.full((B, max_len), EOT, dtype=torch.long)
    attn = torch.zeros(B, max_len, dtype=torch.long)
    useful = 0
    for b, i in enumerate(rows):
        e, is_target = sub.example(i)
        ids[b, : len(e)], attn[b, : len(e)] = torch.from_numpy(e), 1
        useful += int(is_target[1:].sum())  # the code (+ EOT) tokens: what the fine-tune is for
    labels = ids.masked_fill(attn == 0, IGNORE)
    targets = torch.cat([labels[:, 1:], torch.full((B, 1), IGNORE)], 1)  # ours predicts t+1 at t
    return dict(
        idx=ids, targets=targets, pos=None, mask=None, n_tokens=B * max_len,
        n_targets=int((targets != IGNORE).sum()), hf_ids=ids, hf_attn=attn, hf_labels=labels, useful=useful,
    )  # fmt: skip


def bench_corpus(args, device: torch.device) -> str:
    """Useful (code) tokens per second over the same examples of the embedded corpus, LoRA r=8 on c_attn."""
    L = min(512, config_for(args.model).block_size)  # the study's pad length (less only for tiny shapes)
    ds = prepare(DataConfig(data="pysrc", max_len=L, cache_dir=args.cache_dir), splits=("train",))["train"]
    n = 16 if args.quick else args.examples
    sub = Subset(ds, np.random.default_rng(0).choice(len(ds), size=min(n, len(ds)), replace=False))
    B = args.batch_size
    study = [study_batch(sub, list(range(s, min(s + B, len(sub)))), L) for s in range(0, len(sub), B)]

    def ours_batches(pack: bool) -> list[dict]:
        out = list(Batches(sub, B, L, pack=pack, shuffle=True, seed=0))
        for b in out:
            b["useful"] = b["n_targets"]
        return out

    spec = Spec(
        "hf",
        "c_attn",
        auto_dtype(device) if args.dtypes == "auto" else args.dtypes,
        str(device),
        model=args.model,
        compile=args.compile,
        threads=args.threads,
        seq_len=L,
    )
    pipelines = {  # name -> (spec, batches)
        f"study: HF+PEFT, pad to {L}, loss on every token": (spec, study),
        f"ours, pad to {L}, loss on every token": (replace(spec, impl="ours"), study),
        "ours, length-bucketed, loss on the code": (replace(spec, impl="ours"), ours_batches(False)),
        "ours, packed (block-causal), loss on the code": (replace(spec, impl="ours"), ours_batches(True)),
    }
    if args.cuda_graph:  # packed rows all have one shape (but the last batch's): what a graph needs
        packed = replace(spec, impl="ours", cuda_graph=True)
        pipelines["ours, packed, one CUDA graph per step"] = (packed, ours_batches(True))
    if args.quick:
        del pipelines[f"ours, pad to {L}, loss on every token"]
    workers = Contender.start({k: s for k, (s, _) in pipelines.items()})
    for k, (_, batches) in pipelines.items():  # warm-up, untimed: one step, or a whole pass (--warm-epoch)
        for b in batches if args.warm_epoch else batches[:1]:
            workers[k].step(b)
    seconds = {k: 0.0 for k in pipelines}
    for r in range(max(len(b) for _, b in pipelines.values())):  # interleaved, batch by batch
        for k, (_, batches) in pipelines.items():
            if r < len(batches):
                seconds[k] += workers[k].step(batches[r])
    mem = {k: w.close() for k, w in workers.items()}
    rows, base = [], None
    for k, (_, batches) in pipelines.items():
        useful = sum(b["useful"] for b in batches)
        positions = sum(b["idx"].numel() for b in batches)
        ups = useful / seconds[k]
        base = base or ups
        rows.append([k, len(batches), f"{positions:,}", f"{useful:,}", f"{seconds[k]:.1f}", f"{ups:,.0f}",
                     f"**{ups / base:.2f}x**", C.mib(mem[k]["peak_bytes"])])  # fmt: skip
    header = ["pipeline", "batches", "positions run", "useful tokens", "seconds", "useful tok/s", "vs study",
              "peak MiB"]  # fmt: skip
    warm = "an untimed pass over them" if args.warm_epoch else "one untimed step"
    return (
        f"Useful tokens/s on the embedded corpus ({len(sub)} random training examples of "
        f"{ds.path.parent.name}), LoRA r=8 on c_attn, {spec.dtype}, batch {B}, AdamW; every pipeline runs "
        f"the same examples, interleaved batch by batch, after {warm}. Useful = code tokens (+ EOT), the "
        f"ones a docstring-to-code fine-tune is for:\n\n" + C.markdown_table(header, rows)
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="only the two acceptance rows (bf16)")
    p.add_argument("--configs", default=None, help=f"comma-separated: {', '.join(CONFIGS)} (default: all)")
    p.add_argument(
        "--dtypes", default="auto", help="fp32,bf16 or auto (bf16 where native: GPU, AVX512-BF16/AMX CPU)"
    )
    p.add_argument("--corpus", action="store_true", help="useful tokens/s on the embedded corpus instead")
    C.model_option(p)
    p.add_argument("--batch-size", type=C.positive_int, default=4)
    p.add_argument("--seq-len", type=C.positive_int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per contender (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (compile time excluded)")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also ours with the step as one CUDA graph (train.py --cuda-graph; needs --device cuda)",
    )
    p.add_argument(
        "--examples", type=C.positive_int, default=32, help="--corpus: examples to run (--quick: 16)"
    )
    p.add_argument("--cache-dir", default=".cache/data", help="--corpus: token cache folder (train.py's)")
    p.add_argument(
        "--warm-epoch",
        action="store_true",
        help="--corpus: time a second pass over the examples (steady state: every batch shape seen, CUDA "
        "graphs captured) rather than the first",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = torch's default)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.open_device(args.device, args.threads)
    if device is None:
        return 2
    if args.steps < 1 or args.warmup < 0:
        print("error: --steps must be >= 1 and --warmup >= 0")
        return 2
    if args.cuda_graph and device.type != "cuda":
        print("error: --cuda-graph needs --device cuda")
        return 2
    if not args.corpus and args.seq_len > (context := config_for(args.model).block_size):  # --corpus: L = 512
        print(f"error: --seq-len {args.seq_len} exceeds the {args.model} context of {context} tokens")
        return 2
    unknown = [n for n in (args.configs or "").split(",") if n and n not in CONFIGS]
    if unknown:
        print(
            f"error: --configs {','.join(unknown)} is not a configuration; choose from {', '.join(CONFIGS)}"
        )
        return 2
    table = bench_models(args, device) if not args.corpus else bench_corpus(args, device)
    print()
    print(table)
    print(f"\n{C.machine_line(device)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    sys.exit(main())
