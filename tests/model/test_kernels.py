"""model/kernels.py: the layers use_fast_kernels swaps in give F.linear's numbers, take the oneDNN path only
where it pays, become one-row reductions under torch.compile, keep tied weights tied and the state dict
unchanged; on a GPU attention runs without cuDNN."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

import model.kernels as K
from model.gpt2 import GPT, config_for


def test_linear_without_autograd_runs_onednn_and_equals_f_linear():
    """kernels.linear: oneDNN's product while decoding (autograd off, CPU, fp32), F.linear otherwise; the
    same numbers either way, for 1 row, 10 rows and (B, T, C) inputs."""
    if platform.machine() in ("x86_64", "AMD64"):
        assert K.ONEDNN_LINEAR is not None  # torch's x86 builds ship oneDNN: the fast path must be on
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(2304, 768, generator=g) * 0.02, torch.randn(2304, generator=g) * 0.02
    for shape in [(1, 768), (10, 768), (2, 5, 768)]:
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            fast = K.linear(x, w, b)
            bare = K.linear(x, w)
        torch.testing.assert_close(fast, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bare, x @ w.T, rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 768, generator=g, requires_grad=True)
    y = K.linear(x, w, b)  # autograd on: F.linear, which has a backward
    assert y.grad_fn is not None
    y.sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(3, -1), rtol=1e-5, atol=1e-5)


def test_linear_sends_only_large_weights_to_onednn(monkeypatch):
    """oneDNN has a fixed cost per call: linear() gives it weights of ONEDNN_MIN_WEIGHT entries or more (all
    of GPT-2 124M's) and gives F.linear the small ones, and every product with autograd on."""
    seen = []

    def recording(x, w, b, *rest):
        seen.append(tuple(w.shape))
        return F.linear(x, w, b)

    monkeypatch.setattr(K, "ONEDNN_LINEAR", recording)
    x = torch.randn(1, 768)
    small, large = torch.randn(128, 768), torch.randn(768, 768)  # 98,304 and 589,824 entries
    assert small.numel() < K.ONEDNN_MIN_WEIGHT <= large.numel()
    with torch.no_grad():
        K.linear(x, small)
        K.linear(x, large)
        K.linear(x.double(), large.double())  # oneDNN's path is fp32 only
    K.linear(x, large)  # autograd on
    assert seen == [(768, 768)]


def test_linear_under_torch_compile_is_a_reduction_for_one_fp32_row(monkeypatch):
    """Inside torch.compile (generate(compile=True)) oneDNN's op cannot run: linear() writes one fp32 row as
    multiply-and-sum (one reduction kernel for inductor) and everything else as F.linear. Traced here at
    the aten level, with is_compiling() patched on: the ops each case emits, and the same numbers."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    cases = [  # input, autograd, expect the reduction
        (torch.randn(1, 1, 64, generator=g), False, True),
        (torch.randn(1, 64, generator=g), False, True),
        (torch.randn(3, 64, generator=g), False, False),
        (torch.randn(1, 64, generator=g).double(), False, False),
        (torch.randn(1, 64, generator=g), True, False),
    ]
    for x, grad, reduction in cases:
        wx, bx = w.to(x.dtype), b.to(x.dtype)
        with torch.set_grad_enabled(grad), Ops() as ops:
            ops.seen = set()
            y = K.linear(x, wx, bx)
        assert ("sum" in ops.seen and not ops.seen & {"addmm", "mm", "linear"}) == reduction, ops.seen
        torch.testing.assert_close(y, F.linear(x, wx, bx), rtol=1e-5, atol=1e-5)


def test_use_fast_kernels_swaps_every_linear_and_keeps_parameters_and_logits():
    """Every nn.Linear becomes a CPULinear holding the very same Parameters: the state dict keys and
    tensors, the wte/lm_head tie and the logits all stay as they were."""
    torch.manual_seed(0)
    model = GPT(config_for("tiny", vocab_size=300)).eval()
    before = {k: v for k, v in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters()}
    idx = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        ref = model(idx)
    assert K.use_fast_kernels(model) is model
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 * 2 + 1 and all(type(m) is K.CPULinear for m in linears)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert all(p is params[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == list(before)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref, rtol=1e-5, atol=1e-5)
    assert K.use_fast_kernels(model) is model  # a second call changes nothing
    assert all(type(m) is K.CPULinear for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gpu_attention_runs_without_cudnn_recompute_included(monkeypatch, checkpointing):
    """On a GPU every attention call runs with cuDNN's attention off: cuDNN builds a plan per shape, which
    bucketed and packed batches change at every step (docs/benchmarks.md, "Attention kernels on a GPU").
    torch's switch is process-wide, so it holds for the recompute of a checkpointed block in backward too.
    Checked by reading the flag inside every SDPA call of a CPU model after the switch."""
    seen, sdpa = [], F.scaled_dot_product_attention

    def spy(*a, **k):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return sdpa(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    model = GPT(config_for("tiny")).train()
    model.grad_checkpoint = checkpointing
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    assert torch.backends.cuda.cudnn_sdp_enabled()
    K.use_fast_kernels(model)  # a CPU model: the process-wide GPU setting is left alone
    assert torch.backends.cuda.cudnn_sdp_enabled()
    try:
        K.gpu_attention_without_cudnn()  # what use_fast_kernels does for a model on a GPU
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
        model(idx, targets=idx).backward()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
    n = model.config.n_layer
    assert seen == [False] * (2 * n if checkpointing else n)  # forward, + the recompute when checkpointing
