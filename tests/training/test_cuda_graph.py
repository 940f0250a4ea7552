"""training/cuda_graph.py: the CUDA-graph train step (CudaGraphStep) and what it rests on: the static-shape
loss, tensor learning rates, and when train.py turns it on. The graph itself needs a GPU: that test runs
where there is one (bench/gpu.sh runs this file) and is skipped on a CPU-only machine."""

import copy
import dataclasses
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from cli import UsageError
from data.loader import Batches
from model.gpt2 import GPT, IGNORE, config_for
from profiler.memory import estimate
from training.build import build_model
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.cuda_graph import CudaGraphStep, static_loss, use_cuda_graph
from training.optim import make_optimizer, set_lr
from training.step import Batch, TrainStep


class Examples:
    """Variable-length token examples whose prompt prefix carries no loss (what data.prepare produces)."""

    def __init__(self, n: int, seed: int = 0):
        g = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            length = int(g.integers(8, 40))
            self.items.append(
                (g.integers(0, 50000, length), np.arange(length) >= int(g.integers(2, length - 3)))
            )
        self.lengths = np.array([len(ids) for ids, _ in self.items])

    def __len__(self):
        return len(self.items)

    def example(self, i):
        return self.items[i]


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_static_loss_equals_the_target_only_loss_with_the_same_gradients(pack, reduction):
    torch.manual_seed(0)
    model = GPT(config_for("tiny"))
    (b,) = Batches(Examples(6), batch_size=6, max_len=64, pack=pack, shuffle=False)
    loss_mask = torch.rand(b["targets"].shape) > 0.2  # some targets masked out as well
    results = []
    for static in (False, True):
        model.zero_grad()
        args = (b["idx"], b["targets"], loss_mask, b["pos"], b["mask"])
        loss = static_loss(model, *args, reduction=reduction) if static else model(*args, reduction=reduction)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (dyn, dyn_grads), (sta, sta_grads) = results
    assert (b["targets"] == IGNORE).any()  # the static path really had positions to zero
    torch.testing.assert_close(sta, dyn, rtol=1e-5, atol=1e-5)
    for name, g in dyn_grads.items():
        torch.testing.assert_close(sta_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="'none'"):
        static_loss(model, b["idx"], b["targets"], reduction="none")


def test_a_tensor_learning_rate_set_in_place_steps_like_a_float_one():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opts = [torch.optim.AdamW(ps, lr=1e-2, fused=True) for ps in (params, twins)]
    lr_tensor = opts[1].param_groups[0]["lr"] = torch.tensor(1e-2)
    for step in range(3):
        for opt, ps in zip(opts, (params, twins)):
            set_lr(opt, 1e-2 * (step + 1))
            for p in ps:
                p.grad = torch.full_like(p, 0.5 - step)
            opt.step()
    assert opts[1].param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(3e-2)
    assert opts[0].param_groups[0]["lr"] == pytest.approx(3e-2)
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q)


def test_cuda_graph_is_off_unless_asked_for_and_then_needs_a_gpu_and_pack():
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert use_cuda_graph(TrainConfig(pack=True), cuda, torch.bfloat16, ddp=False) is False
    assert use_cuda_graph(TrainConfig(pack=True, cuda_graph=True), cuda, torch.bfloat16, False)
    assert use_cuda_graph(TrainConfig(pack=True, cuda_graph=True), cuda, torch.float32, False)


@pytest.mark.parametrize(
    "device, dtype, ddp, overrides, message",
    [
        ("cpu", torch.float32, False, dict(), "needs a CUDA device"),
        ("cuda", torch.bfloat16, False, dict(pack=False), "needs --pack"),
        ("cuda", torch.float16, False, dict(), "fp16"),
        ("cuda", torch.bfloat16, True, dict(), "DDP"),
        ("cuda", torch.bfloat16, False, dict(compile=True), "--compile"),
        ("cuda", torch.bfloat16, False, dict(grad_checkpoint=True), "--grad-checkpoint"),
    ],
)
def test_cuda_graph_says_in_one_line_why_it_cannot_be(device, dtype, ddp, overrides, message):
    cfg = TrainConfig(**{"cuda_graph": True, "pack": True, **overrides})
    with pytest.raises(UsageError, match=message):
        use_cuda_graph(cfg, torch.device(device), dtype, ddp)


def shorter(b: Batch) -> Batch:
    """The batch's first row alone: another shape, which the graph cannot take."""
    rows = [None if t is None else t[:1] for t in b.tensors()]
    return Batch(*rows, n_targets=int((rows[1] != IGNORE).sum()), n_tokens=b.n_tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (bench/gpu.sh runs this)")
@pytest.mark.parametrize(
    "lora_rank, dtype, rows, accum",
    [(0, "fp32", 4, 1), (8, "fp32", 4, 1), (0, "bf16", 4, 1), (8, "bf16", 4, 1), (0, "bf16", 56, 1),
     (8, "fp32", 4, 2)],
)  # fmt: skip
def test_graph_steps_match_eager_steps_on_a_gpu(lora_rank, dtype, rows, accum):
    """Eight packed steps (one of another shape, which runs eagerly) with a changing learning rate: the
    graph's losses and final weights are the eager TrainStep's. 56 rows x 64 = 3,584 embedding lookups:
    past 3,072, CUDA's embedding backward takes its sorting path. accum 2: two micro-batches a step."""
    device, torch_dtype = torch.device("cuda"), {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    cfg = TrainConfig(model="tiny", init="random", lora_rank=lora_rank, dtype=dtype, lr=1e-3, max_len=64)
    torch.manual_seed(0)
    eager_model = build_model(cfg, device, torch_dtype, log=lambda *a: None)
    graph_model = copy.deepcopy(eager_model)
    before = {n: p.detach().clone() for n, p in eager_model.named_parameters()}
    data = Examples(30 * rows * accum)
    loader = Batches(data, batch_size=rows, max_len=64, pack=True, shuffle=False)
    batches = [Batch.from_dict(b) for b in loader]
    same = [b for b in batches if b.idx.shape == (rows, 64)][: 7 * accum]
    assert len(same) == 7 * accum, [b.idx.shape for b in batches]
    steps = [same[i : i + accum] for i in range(0, len(same), accum)]
    steps.insert(5, [shorter(b) for b in steps[5]])
    amp = torch.autocast("cuda", torch_dtype) if torch_dtype != torch.float32 else nullcontext()
    eager_opt = make_optimizer(eager_model, cfg.lr, cfg.weight_decay)
    graph_opt = make_optimizer(graph_model, cfg.lr, cfg.weight_decay)
    eager = TrainStep(eager_model, eager_opt, device, amp=amp, grad_clip=1.0)
    graphed = CudaGraphStep(graph_model, graph_opt, device, torch_dtype, grad_clip=1.0)
    losses = {"eager": [], "graph": []}
    for i, micro in enumerate(steps):
        lr = 1e-3 * (i + 1) / len(steps)
        set_lr(eager_opt, lr)
        set_lr(graph_opt, lr)
        losses["eager"].append(eager(micro)[0])
        losses["graph"].append(graphed(micro)[0])
    assert graphed.graph is not None and graphed.eager_steps == 1  # 2 warm-up, capture, 4 replays, 1 eager
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "fp32" else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(torch.tensor(losses["graph"]), torch.tensor(losses["eager"]), **tol)
    moved = 0
    for (name, p), q in zip(eager_model.named_parameters(), graph_model.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q, p, **tol, msg=name)
            moved += int(not torch.equal(p, before[name]))
    assert moved > 0  # real steps were taken


def test_the_memory_estimate_projects_every_position_under_a_graph():
    eager = TrainConfig(model="tiny", init="random", pack=True, batch_size=2, max_len=64, dtype="fp32")
    graph = dataclasses.replace(eager, cuda_graph=True)
    e, g = estimate(eager), estimate(graph)
    assert g["config"]["n_targets"] == 2 * 64 > e["config"]["n_targets"]
    assert g["components"]["logits"] > e["components"]["logits"]


def test_a_checkpoint_of_a_graph_run_resumes_with_plain_float_learning_rates(tmp_path):
    """CudaGraphStep keeps lr as a device tensor and AdamW capturable; a checkpoint carries both. Loading
    turns them back into what an eager step (on any device) wants; a new CudaGraphStep converts again."""
    cfg = TrainConfig(model="tiny", init="random", lora_rank=4, max_len=64, lr=2e-4)
    device = torch.device("cpu")

    class Loader:
        def state_dict(self):
            return {"epoch": 0, "position": 3}

        def load_state_dict(self, d):
            self.loaded = d

    def build():
        torch.manual_seed(0)
        model = build_model(cfg, device, torch.float32, log=lambda *a: None)
        return model, make_optimizer(model, cfg.lr, cfg.weight_decay)

    model, opt = build()
    for g in opt.param_groups:  # what CudaGraphStep.__init__ does
        g["capturable"], g["lr"] = True, torch.tensor(float(g["lr"]))
    set_lr(opt, 3e-4)
    (b,) = map(Batch.from_dict, Batches(Examples(4), batch_size=4, max_len=64, pack=True, shuffle=False))
    TrainStep(model, opt, device)([b])
    ckpt = save_checkpoint(tmp_path, 1, model, opt, None, Loader(), cfg, cfg.lora())
    fresh, fresh_opt = build()
    assert load_checkpoint(ckpt, fresh, fresh_opt, None, Loader(), cfg.lora(), device) == 1
    assert all(g["lr"] == pytest.approx(3e-4) and type(g["lr"]) is float for g in fresh_opt.param_groups)
    assert not any(g["capturable"] for g in fresh_opt.param_groups)
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        torch.testing.assert_close(q, p, msg=name)
    TrainStep(fresh, fresh_opt, device)([b])  # steps
