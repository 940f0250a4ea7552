"""NF4: a frozen weight in 4 bits, as QLoRA stores its base model (Dettmers et al. 2023), in plain PyTorch.

    W (out, in) fp32 --nf4_quantize-->  codes          (n/2,)  uint8  two 4-bit codes a byte, high first
                                        absmax_codes   (nb,)   uint8  each 64-block's absmax, in 8 bits
                                        absmax_scales  (ng,)   fp32   one scale per 256 of those absmaxes
                                        absmax_offset  ()      fp32   their mean, taken off before 8 bits
    n = out * in, nb = n / 64 blocks, ng = ceil(nb / 256) groups:
    bytes per weight = 1/2 + 1/64 + 4 / (64 * 256) = 0.5159 (fp32: 4, bf16: 2)

Quantize a block of 64 consecutive weights (row-major): divide by its absmax, so it lies in [-1, 1], and keep
the index of the nearest of the 16 NF4 levels. The levels are quantiles of a standard normal, scaled to
[-1, 1], with an exact zero: each holds about the same share of normally distributed weights, so 4 bits
lose less than 16 evenly spaced levels would. "Double quantization" then stores the block absmaxes (fp32,
half a bit per weight) in 8 bits: less their mean, in groups of 256, divided by the group's absmax and
rounded to the nearest value of bitsandbytes' 256-entry "dynamic" code.

Dequantize by table lookup: absmax = DYNAMIC[code] * group scale + offset, w = NF4[code] * absmax. A byte
holds two codes, so one lookup in a 256 x 2 table of value pairs turns each byte into its two levels.

Codes, scales and dequantized values are bit-identical to bitsandbytes' quantize_4bit(w, blocksize=64,
quant_type="nf4", compress_statistics=True) and dequantize_4bit on CPU (tests/model/test_nf4.py).

QLoRA trains LoRA on top of these weights (lora/qlora.py): nf4_linear dequantizes W in the forward pass and
again in the backward pass, so no dequantized (out, in) matrix is kept between them: one layer's W exists at
a time, for the length of one matmul (profiler/memory.py counts those bytes). quantize_model swaps a
GPT's block Linears for NF4Linear; embeddings and LayerNorms stay as they are, as in the paper. The
walkthrough is docs/lora.md, "QLoRA: a 4-bit base".
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK = 64  # weights per absmax
GROUP = 256  # absmaxes per second-level scale

# The 16 NF4 levels, as bitsandbytes hard-codes them (functional.get_4bit_type("nf4")): 8 quantiles of N(0, 1)
# for the positive half and 7 for the negative half, each half scaled to end at +-1, and 0 between them
# (bitsandbytes' create_normal_map(0.9677083): ndtri(linspace(0.9677, 0.5, 9)[:-1]), mirrored with 8 points;
# tests/model/test_nf4.py recomputes them). Sorted, so a code's order is its value's order.
NF4_LEVELS = torch.tensor(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
     0.7229568362236023, 1.0],
    dtype=torch.float32,
)  # fmt: skip


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code (create_dynamic_map(), Dettmers 2016), 256 sorted values in
    [-0.993, 1]: for each decade 10^-6 .. 10^0, 2^i evenly spaced fractions of it (more for the larger
    decades), both signs, plus 0 and 1. Fine steps near zero, coarse ones near one."""
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0  # 2^i fractions in (0.1, 1)
        values += ((10 ** (i - 6)) * means).tolist() + (-(10 ** (i - 6)) * means).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


DYNAMIC = dynamic_map()


GRID = 65536  # steps of [-1, 1] on which bitsandbytes rounds to the dynamic code


def _dynamic_grid() -> torch.Tensor:
    """(65536,) uint8: for each step v_i = -1 + 2i / 65535 of [-1, 1], the index of the dynamic code value
    nearest to it (the number of midpoints between code values below v_i). bitsandbytes' CPU quantizer
    (0.50, csrc/cpu_ops.cpp build_quantize_lut) rounds through this table instead of to the exact nearest
    value: the two differ for values within one step (3e-5) of a midpoint, and the bytes must match."""
    midpoints = 0.5 * (DYNAMIC[:-1] + DYNAMIC[1:])
    steps = -1.0 + (2.0 * torch.arange(GRID, dtype=torch.float32)) / (GRID - 1)
    return torch.searchsorted(midpoints, steps, side="left").to(torch.uint8)


@functools.cache
def _tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NF4 midpoints (15,), the dynamic grid (65536,), DYNAMIC (256,), byte -> value pair (256, 2)) on
    `device`, made once per device."""
    midpoints = (NF4_LEVELS[:-1] + NF4_LEVELS[1:]) / 2
    byte = torch.arange(256)
    pairs = torch.stack([NF4_LEVELS[byte >> 4], NF4_LEVELS[byte & 15]], dim=1)  # high nibble first
    return midpoints.to(device), _dynamic_grid().to(device), DYNAMIC.to(device), pairs.to(device)


# ----------------------------------------------------------------------------------------------- the format
def nf4_quantize(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """W (any shape, numel a multiple of 64) -> {codes, absmax_codes, absmax_scales, absmax_offset}."""
    x = w.detach().reshape(-1).float()
    if x.numel() % BLOCK:
        raise ValueError(f"NF4 quantizes blocks of {BLOCK} weights; a tensor of {x.numel()} does not divide")
    midpoints, grid, _, _ = _tables(x.device)
    # 1. Blocks of 64 in [-1, 1], each to the nearest NF4 level: bucketize against the 15 midpoints between
    #    levels (a value on a midpoint goes to the lower level, as bitsandbytes' CPU path rounds it).
    blocks = x.view(-1, BLOCK)  # (nb, 64)
    absmax = blocks.abs().amax(dim=1)  # (nb,)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1)
    q = torch.bucketize(scaled.view(-1), midpoints, out_int32=True).to(torch.uint8)  # (n,) in 0..15
    codes = (q[0::2] << 4) | q[1::2]  # (n/2,): two codes per byte
    # 2. Double quantization of the absmaxes: less their mean, in groups of 256 scaled to [-1, 1], each to
    #    a value of the dynamic code, looked up on bitsandbytes' grid of 65,536 steps (_dynamic_grid).
    offset = absmax.mean()
    centred = absmax - offset
    groups = F.pad(centred, (0, -len(centred) % GROUP)).view(-1, GROUP)  # (ng, 256): the last one padded
    scales = groups.abs().amax(dim=1)  # (ng,)
    scaled = torch.clamp(groups * (1.0 / scales.view(-1, 1)), -1, 1).view(-1)[: len(centred)]
    step = (((scaled + 1) * 0.5) * (GRID - 1) + 0.5).int()  # the grid step nearest to the value
    absmax_codes = grid[step.clamp(0, GRID - 1)]
    absmax_codes[(scales == 0).repeat_interleave(GROUP)[: len(centred)]] = 0  # an all-zero group: code 0
    return dict(codes=codes, absmax_codes=absmax_codes, absmax_scales=scales, absmax_offset=offset)


def nf4_dequantize(codes: torch.Tensor, absmax_codes: torch.Tensor, absmax_scales: torch.Tensor,
                   absmax_offset: torch.Tensor, shape: tuple[int, ...],
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
    """The weight back, by table lookup, in `dtype` (the values are computed in fp32, then cast).

    Working memory: the fp32 values (4n bytes) and the int32 index they are looked up by (2n), plus the
    absmaxes (4 nb, padded to whole groups): 6n + 4nb bytes at the peak, for the length of this call
    (profiler/memory.py, nf4_dequant_peak_bytes, and a test that measures it)."""
    _, _, dynamic, pairs = _tables(codes.device)
    # 1. The absmax of each block: the 8-bit code's value, times its group's scale, plus the mean.
    nb = len(absmax_codes)
    absmax = F.pad(dynamic[absmax_codes.int()], (0, -nb % GROUP))  # (ng * 256,) fp32: whole groups
    absmax.view(-1, GROUP).mul_(absmax_scales.view(-1, 1)).add_(absmax_offset)
    # 2. Each byte -> its two NF4 levels (one lookup), times its block's absmax, in place.
    w = pairs[codes.int()]  # (n/2, 2) fp32
    w.view(-1, BLOCK).mul_(absmax[:nb].view(-1, 1))
    return w.view(shape).to(dtype)


def nf4_nbytes(numel: int) -> int:
    """Bytes an NF4 weight of `numel` entries holds: codes + 8-bit absmaxes + fp32 group scales + offset."""
    blocks = numel // BLOCK
    return numel // 2 + blocks + 4 * math.ceil(blocks / GROUP) + 4


# ----------------------------------------------------------------------------------------------- modules
class NF4Weight(nn.Module):
    """A frozen (out, in) weight in NF4: the four tensors of nf4_quantize as buffers, so .to(device) moves
    them and the state dict holds them (`...c_fc.weight.codes`, ...). `shape` and `dtype` are those of the
    weight it was made from; dequantize() gives it back. Never a Parameter: it does not train."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.shape, self.dtype = tuple(w.shape), w.dtype
        if w.is_meta:  # the profiler's model without weights: the right shapes, nothing computed
            n = w.numel()
            parts = dict(codes=torch.empty(n // 2, dtype=torch.uint8, device="meta"),
                         absmax_codes=torch.empty(n // BLOCK, dtype=torch.uint8, device="meta"),
                         absmax_scales=torch.empty(math.ceil(n / BLOCK / GROUP), device="meta"),
                         absmax_offset=torch.empty((), device="meta"))  # fmt: skip
        else:
            parts = nf4_quantize(w)
        for name, t in parts.items():
            self.register_buffer(name, t)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def numel(self) -> int:
        return math.prod(self.shape)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W (out, in) in `dtype` (default: the dtype it was quantized from)."""
        dtype = dtype or self.dtype
        if self.codes.is_meta:
            return torch.empty(self.shape, dtype=dtype, device="meta")
        return nf4_dequantize(self.codes, self.absmax_codes, self.absmax_scales, self.absmax_offset,
                              self.shape, dtype)  # fmt: skip

    def extra_repr(self) -> str:
        return f"shape={self.shape}, {nf4_nbytes(self.numel()) / self.numel():.4f} bytes/weight"


class _NF4Matmul(torch.autograd.Function):
    """y = x W^T with W dequantized in forward and again in backward: nothing of size (out, in) is saved,
    and W takes no gradient (it is frozen). The 4-bit buffers ride on ctx as they are, never copied."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: NF4Weight) -> torch.Tensor:
        ctx.weight = weight
        return F.linear(x, weight.dequantize(x.dtype))  # (.., in) -> (.., out); W lives for this matmul only

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        return grad_y @ ctx.weight.dequantize(grad_y.dtype), None  # dL/dx = dL/dy W: W made again


def nf4_linear(x: torch.Tensor, weight: NF4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, W, bias) for an NF4 W, in autocast's dtype when autocast is on (as F.linear would be)."""
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    with torch.autocast(x.device.type, enabled=False):  # the dtype is chosen: no casts inside
        y = _NF4Matmul.apply(x, weight)
    return y if bias is None else y + bias.to(y.dtype)


class NF4Linear(nn.Module):
    """A frozen nn.Linear whose weight is stored in NF4 (`weight` an NF4Weight, `bias` kept as it was)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = NF4Weight(linear.weight.detach())
        self.bias = linear.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nf4_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, NF4"


def block_linears(model: nn.Module) -> list[str]:
    """The Linear layers inside the transformer blocks (what QLoRA quantizes): not the embeddings, the
    LayerNorms, nor lm_head (tied to the token embedding)."""
    return [f"transformer.h.{i}.{name}" for i, block in enumerate(model.transformer.h)
            for name, m in block.named_modules() if isinstance(m, nn.Linear)]  # fmt: skip


@torch.no_grad()
def quantize_model(model: nn.Module) -> list[str]:
    """Swap every block Linear of a GPT for an NF4Linear (frozen), one at a time, so each full-precision
    weight is freed as soon as its codes exist. Returns the quantized module names."""
    names = block_linears(model)
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, NF4Linear(model.get_submodule(name)))
    return names


@torch.no_grad()
def round_trip_model(model: nn.Module) -> list[str]:
    """Replace every block Linear's weight by its NF4 round trip, dequantized to its own dtype: the dense
    weights a QLoRA run trained on (what evaluate.py loads before it merges that run's adapter)."""
    names = block_linears(model)
    for name in names:
        w = model.get_submodule(name).weight
        w.copy_(NF4Weight(w).dequantize(w.dtype))
    return names


def nf4_weights(model: nn.Module) -> dict[str, NF4Weight]:
    return {name: m for name, m in model.named_modules() if isinstance(m, NF4Weight)}


def nf4_numel(model: nn.Module) -> int:
    """Weights stored in NF4 (they are buffers, so model.parameters() does not count them)."""
    return sum(w.numel() for w in nf4_weights(model).values())
