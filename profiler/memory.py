"""Memory per component of one training step: measured on a real step, and predicted from the config alone.

    python -m profiler.memory --model gpt2-xl --lora-rank 8 --batch-size 4 --max-len 512 --dtype bf16
    python -m profiler.memory --model gpt2 --lora-rank 8 --batch-size 4 --max-len 256 --measure
    python -m profiler.memory --model gpt2 --compare --ranks 1,8,64      # full, LoRA, DoRA, QLoRA: table
    python -m profiler.memory --model gpt2-xl --lora-rank 8 --quantize nf4 --dtype bf16   # QLoRA vs LoRA

Components (bytes):  params_frozen, params_trainable   numel * element_size of each parameter (tied once);
                                                        buffers count as frozen: a QLoRA base's NF4 codes
                                                        and scales (0.516 bytes per weight), DoRA's ||W||^2
                     grads                              one per trainable parameter, in its dtype
                     optimizer                          AdamW: exp_avg + exp_avg_sq per trainable parameter,
                                                        plus a 4-byte step counter per parameter tensor
                     activations                        tensors autograd saves for backward, by component:
                                                        embeddings, block0.., ln_f, head (lm_head input side)
                     logits                             what the loss saves: (V, N) fp32 softmax + targets
Measured: parameters, grads and optimizer state are exact sums over the tensors; activations are counted by
saved-tensor hooks (each storage once, parameters excluded), attributed to the module running at the time;
CUDA adds the allocator's peaks per phase, CPU the heap in use (glibc mallinfo2) and the process peak RSS.
Predicted: the same model built on the meta device (no weights) for the exact parameter dtypes, then the
bytes each op saves, op by op (see _block_saves). A QLoRA step also holds, for the length of one matmul, the
weight it dequantizes (section "QLoRA and DoRA" below), which the peak bound adds. Shapes: B batch, T time,
C n_embd, nh heads, V vocab, N target tokens (lm_head runs on those only), L n_layer, r LoRA rank. The
walkthrough is docs/memory.md.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import json
import math
import platform
import resource
import subprocess
import sys
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from cli import UsageError, opt, parse_config, resolve_dtype, run_main
from lora.lora import LoRALinear
from model.gpt2 import IGNORE
from model.nf4 import BLOCK, GROUP, NF4Weight, nf4_numel, nf4_weights
from training.build import build_model, meta_model
from training.config import TrainConfig, validate
from training.hardware import peak_rss_bytes
from training.optim import make_optimizer
from training.step import Batch, TrainStep

COMPONENTS = ("params_frozen", "params_trainable", "grads", "optimizer", "activations", "logits")
HOW = {
    "params_frozen": "sum of numel * element_size over parameters without requires_grad (a tied weight once)",
    "params_trainable": "sum of numel * element_size over parameters with requires_grad",
    "grads": "sum of numel * element_size over p.grad, read just before the optimizer step",
    "optimizer": "sum of numel * element_size over every tensor in optimizer.state after the first step",
    "activations": "saved-tensor hooks over the forward pass: each saved storage counted once, parameters "
    "excluded, attributed to the module running (with --grad-checkpoint: the block inputs the checkpoint "
    "keeps, counted at each block's forward pre-hook)",
    "logits": "saved-tensor hooks: what the loss saves once it starts ((V, N) softmax, targets)",
}
HEAD_SCOPES = ("embeddings", "ln_f", "head")


# ------------------------------------------------------------------------------------ exact sums
def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def param_bytes(model) -> tuple[int, int]:
    """(frozen, trainable) bytes; parameters() yields the tied wte/lm_head weight once. Buffers are frozen
    bytes too: NF4 codes and scales (QLoRA), DoRA's cached row norms; GPT-2 itself has none."""
    params = list(model.parameters())
    frozen = nbytes(p for p in params if not p.requires_grad) + nbytes(model.buffers())
    return frozen, nbytes(p for p in params if p.requires_grad)


def adamw_state_bytes(model) -> int:
    """AdamW's state as torch allocates it: exp_avg and exp_avg_sq like the parameter, a float32 step."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return 2 * nbytes(trainable) + 4 * len(trainable)


# ------------------------------------------------------------------------------------ the analytic model
@dataclass
class Saves:
    """Bytes saved for backward: `batch` grows with B and T; `weights` are autocast's low-precision weight
    copies (a matmul keeps the copy it multiplied by to pass the gradient to its input)."""

    batch: int = 0
    weights: int = 0
    amp: torch.dtype | None = None  # the autocast dtype, None in an fp32 run

    @property
    def act(self) -> int:  # bytes per element of a matmul input or output
        return 4 if self.amp is None else torch.finfo(self.amp).bits // 8

    def copy(self, p: torch.Tensor) -> None:
        """A parameter used by a matmul: saved as itself (no new bytes) unless autocast made a copy."""
        if self.amp is not None and p.dtype != self.amp:
            self.weights += p.numel() * self.act


def _linear_saves(lin, rows: int, x_rg: bool, x_kept: bool, s: Saves, x_bytes: int = 4) -> bool:
    """What y = x W^T + b (and a LoRA update) saves for `rows` input rows; returns whether y needs grad.
    x_kept: the input is already saved by an earlier op (attn.c_proj's input is SDPA's output);
    x_bytes: its element size (a LayerNorm output is fp32 even under autocast)."""
    out_f, in_f = lin.weight.shape
    lora = isinstance(lin, LoRALinear)
    nf4 = isinstance(lin.weight, NF4Weight)  # model/nf4.py: keeps no W for backward, it dequantizes again
    w_rg = not nf4 and lin.weight.requires_grad
    drop = lora and getattr(lin.dropout, "p", 0) > 0  # LoRA's A then multiplies a new tensor, dropout(x)
    if (w_rg or lora and not drop) and not x_kept:  # x, for dW or dA (autocast: a copy)
        s.batch += rows * in_f * s.act
    if drop:  # dropout(x), for dA, and (if x needs grad) dropout's scaled mask, in x's dtype
        s.batch += rows * in_f * (s.act + x_bytes * x_rg)
    if x_rg and not nf4:  # W, for dx
        s.copy(lin.weight)
    if lora:
        nr = lin.lora_A.shape[0]  # n*r
        if x_rg:
            s.copy(lin.lora_A)  # A, for dx
        if lin.slices is not None:  # B_full (out, n*r) is built each step: a new tensor, always saved
            s.weights += out_f * nr * s.act
        else:
            s.copy(lin.lora_B)
        s.batch += rows * nr * s.act  # s * (x A^T), for dB
        if hasattr(lin, "lora_magnitude_vector"):
            _dora_saves(lin, rows, drop, x_rg, s)
    return x_rg or w_rg or lora


def _block_saves(block, B: int, T: int, x_rg: bool, pack: bool, s: Saves) -> bool:
    """One transformer block, op by op, as eager PyTorch saves them (CPU flash SDPA; CUDA flash/efficient
    keep the same q, k, v, output and logsumexp). Returns whether the block's output needs grad."""
    C, nh, BT = block.ln_1.weight.numel(), block.attn.n_head, B * T
    ln = 4 * BT * C + 8 * BT  # LayerNorm: its fp32 input (the residual stream), mean and rstd per row
    if x_rg:
        s.batch += ln
    qkv_rg = _linear_saves(block.attn.c_attn, BT, x_rg, False, s)
    if qkv_rg:  # q|k|v (one (B, T, 3C) buffer), output (B, T, C), logsumexp (B, nh, T) in fp32
        s.batch += 4 * BT * C * s.act + 4 * B * nh * T
        if pack:  # the bool mask becomes an additive float mask (B, 1, T, T), one per block
            s.batch += B * T * T * s.act
    x_rg = _linear_saves(block.attn.c_proj, BT, qkv_rg, qkv_rg, s, s.act) or x_rg
    if x_rg:
        s.batch += ln
    h_rg = _linear_saves(block.mlp.c_fc, BT, x_rg, False, s)
    if h_rg:
        s.batch += BT * block.mlp.c_fc.weight.shape[0] * s.act  # gelu's input (B, T, H), H = 4C in GPT-2
    return _linear_saves(block.mlp.c_proj, BT, h_rg, False, s, s.act) or x_rg  # its input: gelu's output


def activation_bytes(model, B: int, T: int, N: int, amp: torch.dtype | None, pack: bool, ckpt: bool) -> dict:
    """Predicted saved bytes by component (embeddings, block0.., ln_f, head, logits), weight copies apart."""
    tr, C, V = model.transformer, model.config.n_embd, model.config.vocab_size
    out, weights, per_block = {}, 0, []
    x_rg = tr.wte.weight.requires_grad or tr.wpe.weight.requires_grad
    out["embeddings"] = 8 * B * T * tr.wte.weight.requires_grad + 8 * (B if pack else 1) * T * (
        tr.wpe.weight.requires_grad
    )  # the int64 ids (B, T) and positions ((1, T), or (B, T) when packed)
    for i, block in enumerate(tr.h):
        s = Saves(amp=amp)
        x_rg = _block_saves(block, B, T, x_rg, pack, s)
        per_block.append(s.batch + s.weights)
        if ckpt:  # only the block input survives the forward (+ the shared bool mask, once)
            out[f"block{i}"] = 4 * B * T * C + (B * T * T if pack and i == 0 else 0)
        else:
            out[f"block{i}"], weights = s.batch + s.weights, weights + s.weights
    out["ln_f"] = (4 * B * T * C + 8 * B * T) if x_rg else 0
    s = Saves(amp=amp)
    _linear_saves(model.lm_head, N, x_rg, False, s)
    out["head"] = (B * T if x_rg else 0) + s.batch + s.weights  # the bool target mask, h[valid], W copy
    out["logits"] = 4 * N * V + 8 * N  # the loss's softmax (V, N) fp32 and targets (N,) int64
    return dict(scopes=out, weight_copies=weights + s.weights, recompute=max(per_block) if ckpt else 0)


def resolve(cfg) -> tuple[torch.device, torch.dtype]:
    """The device and training dtype the config names; a GPU need not be here to predict for one."""
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    return device, resolve_dtype(cfg.dtype, device, training=True)


def default_target_fraction(cfg) -> float:
    """Share of the B*T positions the loss projects to the vocabulary: all of them with --train-on-prompt
    or --cuda-graph (whose static loss weights non-targets 0), else ~60% (docstring prompts masked out, the
    code and EOS scored)."""
    return 1.0 if getattr(cfg, "train_on_prompt", False) or getattr(cfg, "cuda_graph", False) else 0.6


def estimate(cfg: TrainConfig, B: int | None = None, T: int | None = None, n_targets: int | None = None,
             target_fraction: float | None = None) -> dict:  # fmt: skip
    """Predicted bytes per component for a TrainConfig, from the config alone. B, T default to batch_size,
    max_len (full rows: the step that sets the peak); N to target_fraction * B * T."""
    device, dtype = resolve(cfg)
    model, lora = meta_model(cfg, dtype), cfg.lora()
    B, T = B or cfg.batch_size, T or cfg.max_len
    frac = default_target_fraction(cfg) if target_fraction is None else target_fraction
    N = n_targets if n_targets is not None else max(1, round(frac * B * T))
    amp = None if dtype == torch.float32 else dtype
    act = activation_bytes(model, B, T, N, amp, cfg.pack, cfg.grad_checkpoint)
    scopes = act["scopes"]
    frozen, trainable = param_bytes(model)
    dequant = nf4_dequant_transient(model, amp)
    comp = dict(
        params_frozen=frozen,
        params_trainable=trainable,
        grads=trainable,  # a gradient has its parameter's dtype (trainable weights are fp32)
        optimizer=adamw_state_bytes(model),
        activations=sum(v for k, v in scopes.items() if k != "logits"),
        logits=scopes["logits"],
    )
    V = model.config.vocab_size
    # At the loss, beside the fp32 softmax it keeps (the logits component): the logits it was given, fp32
    # or (autocast) bf16/fp16, whose fp32 copy becomes that softmax in place.
    transient = N * V * (4 if amp is None else 2)
    est = dict(
        components=comp,
        total=sum(comp.values()),
        peak_upper_bound=sum(comp.values()) + transient + act["recompute"] + dequant,
        activations_by_component={k: v for k, v in scopes.items() if k != "logits"},
        details=dict(
            weight_copies=act["weight_copies"],
            checkpoint_recompute=act["recompute"],
            loss_transient=transient,
            nf4_dequant_transient=dequant,
            nf4_bytes=nbytes(t for w in nf4_weights(model).values() for t in w.buffers()),
        ),
        counts=dict(
            params_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
            params_frozen=sum(p.numel() for p in model.parameters() if not p.requires_grad)
            + nf4_numel(model),
            params_nf4=nf4_numel(model),
        ),
        config=dict(
            model=cfg.model,
            lora_rank=0 if lora is None else lora.rank,
            lora_targets=None if lora is None else cfg.lora_targets,
            lora_dora=bool(lora and lora.dora),
            quantize=cfg.quantize if lora is not None else "none",
            B=B,
            T=T,
            n_targets=N,
            pack=cfg.pack,
            dtype=str(dtype).removeprefix("torch."),
            grad_checkpoint=cfg.grad_checkpoint,
            optimizer="AdamW",
            device=device.type,
        ),  # fmt: skip
        how="predicted: the model on the meta device for parameter dtypes; activations op by op",
    )
    if est["counts"]["params_nf4"]:  # QLoRA: LoRA at the same settings, beside it
        est["vs_lora"] = qlora_vs_lora(cfg, est, B, T, N)
    return est


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} B"


def format_estimate(est: dict) -> str:
    """The estimate as a few readable lines (what train.py --dry-run prints)."""
    c = est["config"]
    kind = ("Q" if c.get("quantize") == "nf4" else "") + ("DoRA" if c.get("lora_dora") else "LoRA")
    mode = "full fine-tune" if not c["lora_rank"] else f"{kind} r={c['lora_rank']} ({c['lora_targets']})"
    lines = [
        f"memory estimate: {c['model']} {mode}, B={c['B']} T={c['T']} N={c['n_targets']} targets, "
        f"{c['dtype']}{', packed' if c['pack'] else ''}{', grad checkpoint' if c['grad_checkpoint'] else ''}"
    ]
    for k in COMPONENTS:
        lines.append(f"  {k:17s} {fmt_bytes(est['components'][k]):>12s}")
    lines.append(f"  {'total':17s} {fmt_bytes(est['total']):>12s}")
    d = est["details"]
    if d["weight_copies"]:
        lines.append(f"  (activations include {fmt_bytes(d['weight_copies'])} of autocast weight copies)")
    extra = " + 1 block recompute" if d["checkpoint_recompute"] else ""
    extra += " + one NF4 dequantization" if d.get("nf4_dequant_transient") else ""
    lines.append(f"  peak (upper bound, + loss working set{extra}): {fmt_bytes(est['peak_upper_bound'])}")
    if "vs_lora" in est:
        lines += format_qlora(est)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ QLoRA and DoRA
def nf4_dequant_peak_bytes(numel: int) -> int:
    """Working memory of dequantizing one NF4 weight of `numel` entries (model.nf4.nf4_dequantize), at its
    peak: the fp32 values (4 n), the int32 byte index they are looked up by (2 n: one int per two weights)
    and the block absmaxes (4 bytes per block of 64, padded to whole groups of 256). The same in fp32 and
    bf16: the bf16 copy (2 n) is made after the index is freed. Exact: tests/profiler/test_memory.py
    measures it with LiveBytes."""
    return 6 * numel + 4 * GROUP * math.ceil(numel // BLOCK / GROUP)


def nf4_dequant_transient(model, amp: torch.dtype | None = None) -> int:
    """What a QLoRA step adds on top of the saved tensors: the largest weight's dequantization working
    memory, since nf4_linear dequantizes one weight at a time (forward, and again in backward) and frees it
    after its matmul. 0 without NF4 weights. (amp: kept for the signature; the peak does not depend on it.)"""
    return max((nf4_dequant_peak_bytes(w.numel()) for w in nf4_weights(model).values()), default=0)


def _dora_saves(lin, rows: int, dropout: bool, x_rg: bool, s: Saves) -> None:
    """What DoRA's forward (lora/dora.py) saves beyond LoRA's: y = g * (x W^T + s x A^T B^T) keeps the
    sum (rows, out) and g (out,) for the product, and ||W + s B A|| (out,) for g = m / ||.||. With dropout
    (PEFT's form, y = x W^T + (g - 1) * xd W^T + g * u) two products keep xd W^T and u, g - 1 and g, and
    the extra base matmul on xd keeps its weight (both where x needs a gradient)."""
    out_f = lin.weight.shape[0]
    if not dropout:
        s.batch += rows * out_f * s.act
        s.weights += 2 * out_f * 4
    else:
        s.batch += 2 * rows * out_f * s.act
        s.weights += (2 + x_rg) * out_f * 4  # norm, g; g - 1 only where xd W^T needs a gradient
        if x_rg and not isinstance(lin.weight, NF4Weight):
            s.copy(lin.weight)


def qlora_vs_lora(cfg: TrainConfig, est: dict, B: int, T: int, N: int) -> dict:
    """The same settings without --quantize: LoRA's (DoRA's) frozen bytes and peak bound beside QLoRA's."""
    lora = estimate(replace(cfg, quantize="none"), B=B, T=T, n_targets=N)
    saved = lora["peak_upper_bound"] - est["peak_upper_bound"]
    return dict(lora_params_frozen=lora["components"]["params_frozen"],
                lora_peak_upper_bound=lora["peak_upper_bound"], saved=saved,
                saved_share=saved / lora["peak_upper_bound"])  # fmt: skip


def format_qlora(est: dict) -> list[str]:
    """The dry run's QLoRA lines: what 4 bits save against LoRA at these settings, and what they cost."""
    q, d = est["vs_lora"], est["details"]
    ours, theirs = ("QDoRA", "DoRA") if est["config"]["lora_dora"] else ("QLoRA", "LoRA")
    if q["saved"] > 0:
        verdict = f"{ours} saves {fmt_bytes(q['saved'])} ({100 * q['saved_share']:.0f}% of {theirs}'s peak)"
    else:
        verdict = f"{ours} does NOT pay here: {fmt_bytes(-q['saved'])} more than {theirs}"
    return [
        f"  {ours} vs {theirs} at these settings ({theirs}'s frozen base in the run's dtype):",
        f"    frozen weights  {fmt_bytes(q['lora_params_frozen']):>10s} -> "
        f"{fmt_bytes(est['components']['params_frozen'])} (the {est['counts']['params_nf4']:,} block weights "
        f"in NF4: {fmt_bytes(d['nf4_bytes'])})",
        f"    dequantization  {'':>10s}  + {fmt_bytes(d['nf4_dequant_transient'])} (the largest weight, "
        "while it is dequantized: one at a time)",
        f"    peak bound      {fmt_bytes(q['lora_peak_upper_bound']):>10s} -> "
        f"{fmt_bytes(est['peak_upper_bound'])}: {verdict}",
    ]


class LiveBytes(TorchDispatchMode):
    """Bytes of tensors created under it and still alive: `peak` is the most at any one time (op by op).
    Exact on any device: each new storage is counted once (a view or an in-place result is not new), until
    a weak reference says it was freed."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.refs = 0, 0, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for key, (ref, n) in list(self.refs.items()):  # storages freed since the last op
            if ref.expired():
                self.live -= n
                del self.refs[key]
        out = func(*args, **(kwargs or {}))
        inputs = {StorageWeakRef(t.untyped_storage()).cdata for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}  # fmt: skip
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                ref = StorageWeakRef(t.untyped_storage())
                if ref.cdata not in self.refs and ref.cdata not in inputs:  # new, not a view or in place
                    self.refs[ref.cdata] = (ref, t.untyped_storage().nbytes())
                    self.live += t.untyped_storage().nbytes()
        self.peak = max(self.peak, self.live)
        return out


def measure_dequant_peak(weight: NF4Weight, dtype: torch.dtype = torch.float32) -> int:
    """The measured counterpart of nf4_dequant_peak_bytes: the peak of live new bytes in one dequantize()."""
    weight.dequantize(dtype)  # the lookup tables are made once per device: not this call's bytes
    with LiveBytes() as live:
        weight.dequantize(dtype)
    return live.peak


# ------------------------------------------------------------------------------------ measurement
class SavedTensorLedger:
    """Bytes autograd saves for backward, by component: each storage counted once, parameters never
    (they are counted as parameters). Module hooks set the component that is running."""

    def __init__(self, model):
        self.model, self.scope, self.on = model, "embeddings", False
        self.bytes: dict[str, int] = defaultdict(int)
        self.seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
        tr, self.handles = model.transformer, []

        def enter(name):
            return lambda *a: setattr(self, "scope", name)

        self.handles.append(tr.wte.register_forward_pre_hook(enter("embeddings")))
        for i, block in enumerate(tr.h):
            self.handles.append(block.register_forward_pre_hook(self._block_entry(f"block{i}")))
        self.handles.append(tr.ln_f.register_forward_pre_hook(enter("ln_f")))
        self.handles.append(tr.ln_f.register_forward_hook(enter("head")))
        self.handles.append(model.loss_fn.register_forward_pre_hook(enter("logits")))

    def _block_entry(self, name):
        def hook(module, args):
            self.scope = name
            if self.on and self.model.grad_checkpoint and torch.is_grad_enabled():
                for t in args:  # the checkpoint keeps the block's inputs to run it again in backward
                    if isinstance(t, torch.Tensor):
                        self.count(t)

        return hook

    def count(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st.data_ptr() not in self.seen:
            self.seen.add(st.data_ptr())
            self.bytes[self.scope] += st.nbytes()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if self.on:
            self.count(t)
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                "fordblks keepcost".split()]  # fmt: skip


def heap_in_use() -> int | None:
    """Bytes malloc has handed out and not taken back (glibc mallinfo2: heap + mmap'd blocks, all arenas);
    None where glibc is not the allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        return None
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


def rss_bytes() -> tuple[int, int]:
    """(current, process peak) resident set size."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * resource.getpagesize()
    return current, peak_rss_bytes()


class PhaseMeter:
    """Memory figures per phase (forward, backward, optimizer). CUDA: the allocator's peaks, reset at each
    phase start. CPU: heap in use at each phase end (mallinfo2), RSS now and the process peak RSS."""

    def __init__(self, device: torch.device):
        self.device, self.phases, self.current = device, {}, None

    def start(self, phase: str) -> None:
        self.current = phase
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            row = dict(
                max_allocated=torch.cuda.max_memory_allocated(self.device),
                max_reserved=torch.cuda.max_memory_reserved(self.device),
                allocated_at_end=torch.cuda.memory_allocated(self.device),
                how="torch.cuda max_memory_allocated / max_memory_reserved since the phase began",
            )
        else:
            rss, peak = rss_bytes()
            row = dict(
                heap_at_end=heap_in_use(), rss_at_end=rss, peak_rss_so_far=peak,
                how="glibc mallinfo2 heap in use at the phase end; /proc/self/statm RSS; VmHWM peak RSS "
                "(whole process, since it started)",
            )  # fmt: skip
        self.phases[self.current] = row


def profile_step(step: TrainStep, micro: list[Batch]) -> tuple[float, float, dict]:
    """One TrainStep with memory accounting: (loss, grad norm, measured dict). The accounting covers the
    first micro-batch's forward; phases are marked by a forward hook and the optimizer's step hooks."""
    raw_model, opt, device = step.raw_model, step.optimizer, step.device
    ledger, meter, seen = SavedTensorLedger(raw_model), PhaseMeter(device), {}

    def forward_end(*a):
        if ledger.on:
            ledger.on = False
            meter.stop()
            meter.start("backward")

    def before_step(*a):
        seen["grads"] = nbytes(p.grad for p in raw_model.parameters() if p.grad is not None)
        meter.stop()
        meter.start("optimizer")

    def after_step(*a):
        seen["optimizer"] = nbytes(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
        meter.stop()

    handles = [
        raw_model.register_forward_hook(forward_end),
        opt.register_step_pre_hook(before_step),
        opt.register_step_post_hook(after_step),
    ]
    heap0 = heap_in_use() if device.type == "cpu" else None
    try:
        with ledger.hooks():
            ledger.on = True
            meter.start("forward")
            loss, grad_norm = step(micro)
    finally:
        ledger.close()
        for h in handles:
            h.remove()
    frozen, trainable = param_bytes(raw_model)
    scopes = dict(ledger.bytes)
    notes = [] if "optimizer" in seen else ["no optimizer step ran (fp16 GradScaler skipped it: overflow)"]
    comp = dict(
        params_frozen=frozen,
        params_trainable=trainable,
        grads=seen.get("grads"),  # None, not 0, when the step was skipped
        optimizer=seen.get("optimizer"),
        activations=sum(v for k, v in scopes.items() if k != "logits"),
        logits=scopes.get("logits", 0),
    )
    b = micro[0]
    measured = dict(
        components=comp,
        total=sum(v for v in comp.values() if v is not None),
        notes=notes,
        activations_by_component={k: v for k, v in scopes.items() if k != "logits"},
        phases=meter.phases,
        heap_before_step=heap0,
        batch=dict(B=b.idx.shape[0], T=b.idx.shape[1], n_targets=b.n_targets, pack=b.mask is not None),
        device=device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
        how=HOW,
    )
    return loss, grad_norm, measured


def synthetic_batch(B: int, T: int, vocab: int, target_fraction: float = 0.6, pack: bool = False,
                    seed: int = 0) -> dict:  # fmt: skip
    """A batch like data.loader's: random ids, the first (1 - target_fraction) of each example a prompt
    (IGNORE). Packed: two examples per row, each with its own positions and a block-causal mask."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (B, T), generator=g)
    targets = torch.randint(0, vocab, (B, T), generator=g)
    seg = torch.zeros(B, T, dtype=torch.long)
    if pack:
        seg[:, T // 2 :] = 1
    pos = torch.arange(T) - (seg * (T // 2))  # (B, T): 0.. from each example's start
    lengths = torch.where(seg == 1, T - T // 2, T // 2 if pack else T)
    targets[pos < ((1 - target_fraction) * lengths).long()] = IGNORE
    out = dict(idx=idx, targets=targets, pos=None, mask=None, n_tokens=B * T,
               n_targets=int((targets != IGNORE).sum()))  # fmt: skip
    if pack:
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        out["pos"], out["mask"] = pos, ((seg[:, :, None] == seg[:, None, :]) & causal)[:, None]  # (B,1,T,T)
    return out


def measure(cfg, target_fraction: float | None = None, seed: int = 0) -> dict:
    """Build the configured model with random weights (memory does not depend on their values), run one
    real training step on a synthetic batch of full rows, and return the measured breakdown."""
    device, dtype = resolve(cfg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for a GPU, but none is visible; pass --device cpu")
    cfg = replace(cfg, init="random")
    torch.manual_seed(seed)
    model = build_model(cfg, device, dtype, log=lambda *a, **k: None)
    model.train()
    step = TrainStep(
        model,
        make_optimizer(model, cfg.lr or 1e-4, cfg.weight_decay),
        device,
        scaler=torch.amp.GradScaler(device.type) if dtype == torch.float16 else None,
        amp=torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext(),
        grad_clip=cfg.grad_clip,
    )
    frac = default_target_fraction(cfg) if target_fraction is None else target_fraction
    batch = synthetic_batch(cfg.batch_size, cfg.max_len, model.config.vocab_size, frac, cfg.pack, seed)
    _, _, measured = profile_step(step, [Batch.from_dict(batch)])
    return measured


def compare_rows(measured: dict, predicted: dict) -> list[tuple[str, int, int, float]]:
    """(component, measured, predicted, predicted / measured - 1) for the six components and the total."""
    rows = [(k, measured["components"][k], predicted["components"][k]) for k in COMPONENTS]
    rows = [(k, m, p) for k, m, p in rows if m is not None]
    rows.append(("total", measured["total"], predicted["total"]))
    return [(k, m, p, (p / m - 1) if m else float("nan")) for k, m, p in rows]


def format_comparison(measured: dict, predicted: dict) -> str:
    lines = [f"  {'component':17s} {'measured':>12s} {'predicted':>12s} {'error':>8s}"]
    for k, m, p, err in compare_rows(measured, predicted):
        lines.append(f"  {k:17s} {fmt_bytes(m):>12s} {fmt_bytes(p):>12s} {100 * err:+7.1f}%")
    for phase, row in measured["phases"].items():
        nums = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in row.items() if isinstance(v, int))
        lines.append(f"  {phase:9s} {nums}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ reports
def plot_bars(path: Path, labels: list[str], pairs: list[tuple[dict, dict]], title: str) -> None:
    """Stacked bars per component: for each label, measured beside predicted."""
    # matplotlib takes a while to import and only the reports need it; Agg draws to files
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(labels)), 4.5))
    colors = plt.get_cmap("tab10").colors
    width, unit = 0.38, 2**20
    for i, (m, p) in enumerate(pairs):
        for j, (est, name) in enumerate(((m, "measured"), (p, "predicted"))):
            bottom = 0.0
            for k, comp in enumerate(COMPONENTS):
                v = (est["components"][comp] or 0) / unit
                ax.bar(i + (j - 0.5) * width, v, width, bottom=bottom, color=colors[k],
                       hatch="//" if j else None, edgecolor="white",
                       label=comp if (i == 0 and j == 0) else None)  # fmt: skip
                bottom += v
            ax.text(i + (j - 0.5) * width, bottom, name[0], ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(ylabel="MiB", title=f"{title}\n(m = measured, p = predicted, hatched)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_profile(out: Path, measured: dict, cfg, log=print) -> dict:
    """memory.json (measured, predicted for the same batch, their comparison) and plots/memory.png."""
    b = measured["batch"]
    predicted = estimate(replace(cfg, pack=b["pack"]), B=b["B"], T=b["T"], n_targets=b["n_targets"])
    report = dict(measured=measured, predicted=predicted,
                  error={k: err for k, _, _, err in compare_rows(measured, predicted)})  # fmt: skip
    out = Path(out)
    (out / "memory.json").write_text(json.dumps(report, indent=2))
    plot_bars(out / "plots" / "memory.png", [f"B={b['B']} T={b['T']}"], [(measured, predicted)], out.name)
    log(
        f"memory profile of the first step -> {out / 'memory.json'}\n"
        + format_comparison(measured, predicted)
    )
    return report


def profile_training_memory(step: TrainStep, micro: list[Batch], cfg: TrainConfig, out: Path | None = None,
                            log=print) -> tuple[float, float, dict]:  # fmt: skip
    """train.py --profile-memory: run the first optimizer step through profile_step, and (on rank 0, `out`
    given) write memory.json and plots/memory.png. Returns (loss, grad norm, report)."""
    loss, grad_norm, measured = profile_step(step, micro)
    report = write_profile(Path(out), measured, cfg, log) if out is not None else dict(measured=measured)
    return loss, grad_norm, report


# ------------------------------------------------------------------------------------ CLI
@dataclass
class MemoryConfig:
    model: str = opt("gpt2", "architecture preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, codeparrot-small, "
                              "codeparrot, tiny")  # fmt: skip
    lora_rank: int = opt(8, "LoRA rank r; 0 = full fine-tune")
    lora_alpha: float = opt(16.0, "LoRA alpha")
    lora_targets: str = opt("q,v", "LoRA targets, as train.py takes them")
    lora_dora: bool = opt(False, "DoRA: a learned magnitude per output row, as train.py --lora-dora")
    quantize: str = opt(
        "none", "nf4: the frozen block weights in 4 bits (QLoRA), as train.py", choices=["none", "nf4"]
    )
    batch_size: int = opt(8, "examples per micro-batch")
    max_len: int | None = opt(None, "tokens per row (T); default min(512, the model's context)")
    pack: bool = opt(False, "packed rows with a block-causal mask")
    train_on_prompt: bool = opt(False, "every position a target (else --target-fraction of them)")
    target_fraction: float | None = opt(None, "share of positions with a target (default 0.6, 1.0 with "
                                              "--train-on-prompt)")  # fmt: skip
    dtype: str = opt("auto", "auto, fp32, bf16, fp16 (as train.py)", choices=["auto", "fp32", "bf16", "fp16"])
    device: str = opt("auto", "auto, cpu, cuda: picks the dtype for auto, and where --measure runs")
    grad_checkpoint: bool = opt(False, "recompute each block in backward")
    json: bool = opt(False, "print JSON (bytes) instead of a table")
    measure: bool = opt(False, "also run one real step here and print measured beside predicted")
    compare: bool = opt(
        False, "profile full fine-tuning, LoRA --ranks and --variants: chart + markdown table"
    )
    ranks: str = opt("1,8,64", "LoRA ranks for --compare (full fine-tuning is always included)")
    variants: str = opt("dora,qlora", "--compare: also these at rank 8 (else --ranks' first): dora, qlora, "
                                      "qdora; empty for none")  # fmt: skip
    out_dir: str = opt("runs/memory", "where --compare writes memory_compare.{md,png,json}")


def train_config(c: MemoryConfig) -> TrainConfig:
    keep = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in dataclasses.asdict(c).items() if k in keep}
    cfg = TrainConfig(**kw, init="random")  # memory never depends on the weights' values
    validate(cfg)  # one sentence for bad settings, as train.py says them
    return cfg


def check(c: MemoryConfig) -> None:
    if c.target_fraction is not None and not 0 < c.target_fraction <= 1:
        raise UsageError(f"--target-fraction {c.target_fraction} must be in (0, 1]")
    train_config(c)  # validates
    if c.dtype == "fp16" and resolve(c)[0].type == "cpu":
        raise UsageError("--dtype fp16 needs a GPU (fp16 autocast on CPU is not supported); use bf16 or fp32")


def measure_and_predict(c: MemoryConfig) -> dict:
    """One real step here, and the estimate for the very batch it ran."""
    cfg = train_config(c)
    measured = measure(cfg, c.target_fraction)
    b = measured["batch"]
    return dict(measured=measured, predicted=estimate(cfg, B=b["B"], T=b["T"], n_targets=b["n_targets"]))


def in_subprocess(c: MemoryConfig) -> dict:
    """measure_and_predict in a fresh process: its peak RSS is this configuration's alone."""
    argv = [sys.executable, "-m", "profiler.memory", "--measure", "--json"]
    for f in dataclasses.fields(MemoryConfig):
        v = getattr(c, f.name)
        if f.name in ("json", "measure", "compare", "ranks", "variants", "out_dir") or v is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        argv += ([flag] if v else ["--no-" + flag[2:]]) if isinstance(v, bool) else [flag, str(v)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"profiling {' '.join(argv[3:])} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


VARIANTS = {  # --variants name -> (row label, the flags it sets)
    "dora": ("DoRA", dict(lora_dora=True, quantize="none")),
    "qlora": ("QLoRA", dict(lora_dora=False, quantize="nf4")),
    "qdora": ("QDoRA", dict(lora_dora=True, quantize="nf4")),
}


def compare(c: MemoryConfig, log=print, isolate: bool = True) -> str:
    """Full fine-tuning, each LoRA rank and each variant (DoRA, QLoRA at rank 8), measured and predicted;
    each in its own process by default."""
    try:
        ranks = [int(r) for r in c.ranks.split(",") if r.strip()]
    except ValueError:
        raise UsageError(f"--ranks {c.ranks!r} must be comma-separated integers, e.g. 1,8,64") from None
    variants = [v.strip() for v in c.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        raise UsageError(f"--variants {','.join(unknown)}: choose from {', '.join(VARIANTS)}")
    plain = dict(lora_dora=False, quantize="none")
    rows = [("full", "full", replace(c, lora_rank=0, **plain))]
    rows += [(f"LoRA r={r}", f"lora{r}", replace(c, lora_rank=r, **plain)) for r in ranks]
    at = 8 if 8 in ranks or not ranks else ranks[0]
    rows += [
        (f"{VARIANTS[v][0]} r={at}", f"{v}{at}", replace(c, lora_rank=at, **VARIANTS[v][1])) for v in variants
    ]
    results = []
    for label, key, one in rows:
        log(f"profiling {label} ...")
        results.append((label, key, in_subprocess(one) if isolate else measure_and_predict(one)))
    return write_comparison(Path(c.out_dir), c, results, log)


def write_comparison(out: Path, c: MemoryConfig, results: list[tuple[str, str, dict]], log=print) -> str:
    cols = ["params (frozen + trainable)", "grads", "optimizer", "activations", "logits", "total", "peak"]
    head = f"| {c.model} | trainable params | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for name, _, res in results:
        m, p = res["measured"], res["predicted"]
        mc, pc = m["components"], p["components"]

        def cell(measured_bytes, predicted_bytes):
            return f"{fmt_bytes(measured_bytes)} ({fmt_bytes(predicted_bytes)})"

        peaks = [ph.get("max_allocated", ph.get("peak_rss_so_far")) for ph in m["phases"].values()]
        row = [
            name,
            f"{p['counts']['params_trainable']:,}",
            cell(mc["params_frozen"] + mc["params_trainable"], pc["params_frozen"] + pc["params_trainable"]),
            cell(mc["grads"], pc["grads"]),
            cell(mc["optimizer"], pc["optimizer"]),
            cell(mc["activations"], pc["activations"]),
            cell(mc["logits"], pc["logits"]),
            cell(m["total"], p["total"]),
            fmt_bytes(max(peaks)),
        ]
        lines.append("| " + " | ".join(row) + " |")
    first = results[0][2]["measured"]
    device = first["device"]
    b = first["batch"]
    dtype = results[0][2]["predicted"]["config"]["dtype"]
    pk = "CUDA max_memory_allocated over the step" if device != "cpu" else "process peak RSS (VmHWM)"
    note = (
        f"\n{c.model}, B={b['B']} T={b['T']} ({b['n_targets']} targets), {dtype}"
        f"{', packed' if c.pack else ''}{', grad checkpoint' if c.grad_checkpoint else ''}, AdamW; measured "
        f"(predicted). {device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}. Peak: {pk}.\n"
    )
    table = "\n".join(lines) + "\n" + note
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory_compare.md").write_text(table)
    (out / "memory_compare.json").write_text(json.dumps({key: res for _, key, res in results}))
    labels = [name.replace("LoRA r=", "r=") if name.startswith("LoRA") else name for name, _, _ in results]
    pairs = [(res["measured"], res["predicted"]) for *_, res in results]
    plot_bars(out / "memory_compare.png", labels, pairs,
              f"{c.model}: full fine-tuning, LoRA and its variants, B={b['B']} T={b['T']}")  # fmt: skip
    log(table)
    log(f"wrote {out / 'memory_compare.md'}, {out / 'memory_compare.png'}")
    return table


def main(argv: list[str] | None = None) -> int:
    c = parse_config(
        MemoryConfig, argv, description=__doc__.split("\n\n")[0], prog="python -m profiler.memory"
    )
    check(c)
    if c.compare:
        compare(c)
        return 0
    if not c.measure:
        predicted = estimate(train_config(c), target_fraction=c.target_fraction)
        print(json.dumps(predicted, indent=2) if c.json else format_estimate(predicted))
        return 0
    res = measure_and_predict(c)
    if c.json:
        print(json.dumps(res))
    else:
        print(format_estimate(res["predicted"]))
        print(f"measured on {res['measured']['device']} (one step, random weights):")
        print(format_comparison(res["measured"], res["predicted"]))
    return 0


if __name__ == "__main__":
    run_main(main)
