"""model/nf4.py: NF4 codes, scales and values bit-identical to bitsandbytes on GPT-2's real shapes; the
NF4 matmul's gradients (fp64 gradcheck) and what it keeps for backward (nothing of the weight's size)."""

import pytest
import torch
import torch.nn as nn

from lora.config import LoRAConfig
from lora.lora import LoRALinear, QLoRALinear, inject_lora, lora_class
from model.gpt2 import GPT, config_for
from model.nf4 import (
    DYNAMIC,
    NF4_LEVELS,
    NF4Linear,
    NF4Weight,
    block_linears,
    nf4_dequantize,
    nf4_nbytes,
    nf4_numel,
    nf4_quantize,
    quantize_model,
    round_trip_model,
)

# GPT-2 124M's four block matrices as nn.Linear stores them (out, in): c_attn, attn.c_proj, c_fc, mlp.c_proj
GPT2_SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]


@pytest.mark.parametrize("shape", GPT2_SHAPES, ids=["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])
def test_codes_scales_and_values_are_bit_identical_to_bitsandbytes(shape):
    """bitsandbytes' CPU path on the same random normal weights (scaled as GPT-2's, 0.02): the packed codes,
    the 8-bit absmax codes, the second-level scales, the offset and the dequantized weight, bit for bit.
    (bitsandbytes' CPU dequantize indexes blocks within rows, so it needs rows that are multiples of 64;
    every GPT-2 size has them.)"""
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    w = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))) * 0.02
    q, state = quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = nf4_quantize(w)
    assert torch.equal(ours["codes"], q.view(-1))
    assert torch.equal(ours["absmax_codes"], state.absmax)
    assert torch.equal(ours["absmax_scales"], state.state2.absmax)
    assert torch.equal(ours["absmax_offset"], state.offset)
    assert torch.equal(nf4_dequantize(**ours, shape=shape), dequantize_4bit(q, state))
    # Double-quantized storage: 1/2 + 1/64 + 4 / (64 * 256) bytes per weight, + the 4-byte offset
    nbytes = sum(t.numel() * t.element_size() for t in ours.values())
    assert nbytes == nf4_nbytes(w.numel()) and nbytes / w.numel() == pytest.approx(0.516, abs=5e-4)


def test_the_tables_are_bitsandbytes_and_the_levels_are_normal_quantiles():
    from bitsandbytes.functional import create_dynamic_map, get_4bit_type

    assert torch.equal(DYNAMIC, create_dynamic_map())
    assert torch.equal(NF4_LEVELS, get_4bit_type("nf4", device="cpu"))
    # create_normal_map(0.9677083): 8 positive quantiles of N(0, 1), 7 negative, each half scaled to +-1
    pos = torch.special.ndtri(torch.linspace(0.9677083, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(0.9677083, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    torch.testing.assert_close(NF4_LEVELS.double(), levels / levels.max(), atol=1e-6, rtol=0)


def test_quantize_model_swaps_the_block_linears_only_and_round_trip_gives_the_dequantized_weights():
    model = GPT(config_for("tiny"))
    dense = {n: model.get_submodule(n).weight.detach().clone() for n in block_linears(model)}
    twin = GPT(config_for("tiny"))
    twin.load_state_dict(model.state_dict())
    names = quantize_model(model)
    assert len(names) == 2 * 4 and all(isinstance(model.get_submodule(n), NF4Linear) for n in names)
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.transformer.wte.weight
    round_trip_model(twin)
    for n in names:
        got = model.get_submodule(n).weight.dequantize()
        assert torch.equal(got, twin.get_submodule(n).weight) and not torch.equal(got, dense[n])
    x = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), atol=1e-5, rtol=0)


def _qlora_pair(out_f=48, in_f=64, slices=None, seed=0):
    """A QLoRALinear and a LoRALinear on an nn.Linear holding its dequantized weight, with the same A, B
    (B nonzero), bias and scaling."""
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(in_f, out_f)
    with torch.no_grad():
        base.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.1)
        base.bias.copy_(torch.randn(out_f, generator=g) * 0.1)
    cfg = LoRAConfig(rank=4, alpha=8)
    nf4 = NF4Linear(base)
    assert lora_class(nf4, cfg) is QLoRALinear
    q = QLoRALinear(nf4, cfg, slices)
    dense = nn.Linear(in_f, out_f)
    with torch.no_grad():
        dense.weight.copy_(nf4.weight.dequantize())
        dense.bias.copy_(base.bias)
    ref = LoRALinear(dense, cfg, slices)
    with torch.no_grad():
        q.lora_B.copy_(torch.randn(q.lora_B.shape, generator=g))
        ref.lora_A.copy_(q.lora_A)
        ref.lora_B.copy_(q.lora_B)
    return q, ref


def test_gradcheck_fp64_of_the_nf4_lora_linear_against_an_nn_linear_holding_the_dequantized_weight():
    q, ref = _qlora_pair(out_f=24, slices=(True, False, True))
    A, B = q.lora_A.detach().double(), q.lora_B.detach().double()
    bias = q.bias.detach().double()
    x = torch.randn(1, 3, 64, dtype=torch.float64)

    def ours(x, A, B):
        return torch.func.functional_call(q, {"lora_A": A, "lora_B": B, "bias": bias}, (x,))

    def theirs(x, A, B):
        params = {"lora_A": A, "lora_B": B, "bias": bias, "weight": ref.weight.detach().double()}
        return torch.func.functional_call(ref, params, (x,))

    inputs = tuple(t.clone().requires_grad_() for t in (x, A, B))
    assert torch.autograd.gradcheck(ours, inputs, fast_mode=True)
    y, y_ref = ours(*inputs), theirs(*inputs)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, g)
    grads_ref = torch.autograd.grad(y_ref, inputs, g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_no_tensor_of_the_weights_size_is_saved_for_backward():
    """The QLoRA layer keeps x (for dA), x A^T (for dB) and B: nothing (out, in), no dequantized W. A plain
    LoRA layer on a bf16 base under autocast keeps W itself; the NF4 one keeps none of its 4-bit buffers."""
    q, _ = _qlora_pair(out_f=192, in_f=256)
    saved = []
    x = torch.randn(2, 7, 256, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        q(x).sum().backward()
    assert saved and max(t.numel() for t in saved) < 192 * 256 / 4
    buffers = {b.untyped_storage().data_ptr() for b in q.weight.buffers()}
    assert not buffers & {t.untyped_storage().data_ptr() for t in saved}


def test_qlora_injected_model_merges_only_by_export_and_counts_its_4bit_weights():
    model = GPT(config_for("tiny"))
    quantize_model(model)
    inject_lora(model, LoRAConfig(rank=2, targets="q,v"), verbose=False)
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, QLoRALinear) and isinstance(layer.weight, NF4Weight)
    with pytest.raises(ValueError, match="cannot hold W \\+ dW in 4 bits"):
        layer.merge()
    from lora.lora import trainable_report

    assert trainable_report(model)["total"] == sum(
        p.numel() for p in GPT(config_for("tiny")).parameters()
    ) + (
        2 * 2 * 2 * 32 * 2  # + A (2r, C) and B (2C, r) per layer, r = 2
    )
    assert nf4_numel(model) == 2 * 12 * 32 * 32  # 12 C^2 block weights per layer, all in NF4
