"""generation/fixed_shape.py: decode steps at fixed shapes (a CUDA graph on a GPU, torch.compile on a CPU)
give the eager decoder's logits and ids."""

from __future__ import annotations

import copy

import pytest
import torch

from generation import generate
from model.gpt2 import GPT, config_for

PROMPTS = [[464, 329, 318], [154, 995, 11, 314, 101, 257, 133, 13, 137], [7], [429, 751, 7, 64, 11, 275]]


@pytest.fixture(scope="module")
def model(randomize) -> GPT:
    """As in test_decode.py: tiny, a 1024-token vocabulary, weights large enough that greedy ids vary."""
    return randomize(GPT(config_for("tiny", vocab_size=1024)), seed=5, std=0.3).eval()


def test_fixed_shape_decoding_gives_the_eager_decoders_logits_and_ids(model, monkeypatch):
    """generate(cuda_graph=True) decodes through FixedShapeDecoder: every step attends over the whole
    cache under a mask (one CUDA graph per step on a GPU; here the same steps run eagerly). Left-padded
    prompts, n rows per prompt, greedy and sampled: the same logits and ids as the eager decoder."""
    logits = {False: [], True: []}
    head = model.lm_head.forward
    for fixed in (False, True):
        monkeypatch.setattr(
            model.lm_head, "forward", lambda h, f=fixed: logits[f].append(head(h)) or logits[f][-1]
        )
        greedy = generate(model, PROMPTS, max_new_tokens=20, n=2, cuda_graph=fixed)
        if not fixed:
            reference = greedy
    monkeypatch.undo()
    assert greedy == reference
    assert len(logits[True]) == len(logits[False]) == 20  # the prefill, then 19 decode steps
    for a, b in zip(logits[True], logits[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # another summation order
    kw = dict(max_new_tokens=20, n=3, temperature=0.9, top_p=0.95)
    sampled = [
        generate(model, PROMPTS[:2], generator=torch.Generator().manual_seed(4), cuda_graph=fixed, **kw)
        for fixed in (False, True)
    ]
    assert sampled[0] == sampled[1] and len({tuple(r) for r in sampled[0]}) > 1


def test_compiled_decoding_of_one_fp32_row_gives_the_eager_decoders_ids(model, monkeypatch):
    """generate(compile=True) on a CPU: one row decodes through FixedShapeDecoder under torch.compile, whose
    one-row products are reductions (model/kernels.py, swapped in by use_fast_kernels). Prompts of three
    lengths, one graph (T_max dynamic), greedy and sampled: the eager decoder's ids. More rows decode
    eagerly, as does bf16."""
    from torch._dynamo.utils import counters

    import generation.fixed_shape as G
    from model.kernels import use_fast_kernels

    model = use_fast_kernels(copy.deepcopy(model))

    graphs = counters["stats"]["unique_graphs"]
    built = []
    init = G.FixedShapeDecoder.__init__
    monkeypatch.setattr(
        G.FixedShapeDecoder, "__init__", lambda self, *a: built.append(a[-1]) or init(self, *a)
    )
    for prompt in PROMPTS[:3]:
        eager = generate(model, [prompt], max_new_tokens=20)
        assert generate(model, [prompt], max_new_tokens=20, compile=True) == eager
    assert counters["stats"]["unique_graphs"] - graphs <= 1  # none more for a new cache length
    kw = dict(max_new_tokens=20, temperature=0.9, top_p=0.95)
    sampled = [
        generate(model, [PROMPTS[1]], generator=torch.Generator().manual_seed(4), compile=c, **kw)
        for c in (False, True)
    ]
    assert sampled[0] == sampled[1]
    assert built == [True] * 4
    generate(model, PROMPTS[:2], max_new_tokens=4, compile=True)  # two rows: eager
    generate(model, [PROMPTS[0]], max_new_tokens=4, n=2, temperature=0.9, compile=True)
    generate(copy.deepcopy(model).to(torch.bfloat16), [PROMPTS[0]], max_new_tokens=4, compile=True)
    assert built == [True] * 4
    with pytest.raises(ValueError, match="on a GPU use cuda_graph"):
        generate(model, [PROMPTS[0]], max_new_tokens=4, compile=True, cuda_graph=True)


def test_a_compiled_step_gives_the_eager_steps_logits(model):
    """The same decoder state, one step eagerly and one through torch.compile: the same logits."""
    from generation.fixed_shape import FixedShapeDecoder
    from generation.kv_cache import KVCache
    from model.kernels import use_fast_kernels

    model = use_fast_kernels(copy.deepcopy(model))

    cfg = model.config
    caches = [
        KVCache(1, cfg.n_head, 16, cfg.n_embd // cfg.n_head, "cpu", torch.float32) for _ in range(cfg.n_layer)
    ]
    for c in caches:
        c.k.normal_(), c.v.normal_()
    keep = torch.zeros(1, 16, dtype=torch.bool)
    keep[:, :9] = True
    eager, compiled = (
        FixedShapeDecoder(model, caches, keep.clone()),
        FixedShapeDecoder(model, caches, keep, True),
    )
    with torch.no_grad():
        args = (torch.tensor([[17]]), torch.tensor([[9]]), 9)
        torch.testing.assert_close(compiled(*args), eager(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (bench/gpu.sh runs this)")
def test_graph_decoding_gives_the_eager_decoders_ids_on_a_gpu(monkeypatch):
    """generate(cuda_graph=True), fp32: left-padded prompts, two rows per prompt, one graph per call. (In
    bf16 a near-tie may flip one greedy id and the row then diverges: the CPU test compares logits.)"""
    captured = []

    class CountingGraph(torch.cuda.CUDAGraph):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            captured.append(self)

    monkeypatch.setattr(torch.cuda, "CUDAGraph", CountingGraph)
    torch.manual_seed(5)
    model = GPT(config_for("tiny", vocab_size=1024))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)  # peaked distributions: greedy continuations vary
    model = model.to("cuda").eval()
    prompts = [[464, 329, 318], [154, 995, 11, 314, 101, 257, 133, 13, 137], [7]]
    eager = generate(model, prompts, max_new_tokens=24, n=2)
    graph = generate(model, prompts, max_new_tokens=24, n=2, cuda_graph=True)
    assert len(captured) == 1
    assert graph == eager
    assert len({tuple(r) for r in graph}) > 1
