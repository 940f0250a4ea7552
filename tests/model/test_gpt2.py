"""Parity with transformers, the proof that model/gpt2.py + model/hf.py are GPT-2: a checkpoint written by
transformers and read by load_pretrained gives the same logits (max |diff| <= 1e-4 in fp32), the same loss
on the same targets and the same greedy ids as GPT2LMHeadModel, in both on-disk layouts; and so for every
config.json setting model/gpt2.py honours (random models saved by transformers), and for a CodeParrot-shaped
model (32,768 tokens, Mistral's attention settings) on text its own tokenizer encodes."""

from __future__ import annotations

import itertools

import pytest
import torch

from generation import generate
from model.gpt2 import GPT, IGNORE
from model.hf import load_pretrained, read_checkpoint, save_pretrained
from model.kernels import use_fast_kernels

LOGIT_TOL = 1e-4


def transformers_model(folder):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(folder).eval()


@torch.no_grad()
def assert_matches_transformers(ours: GPT, theirs, T: int = 24, new_tokens: int = 32) -> None:
    """Same logits, same loss (prompt masked), same greedy continuation."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, ours.config.vocab_size, (2, T), generator=g)  # (B, T)
    diff = (ours(idx) - theirs(idx).logits).abs().max().item()
    assert diff <= LOGIT_TOL, f"max |logit diff| {diff:.2e}"

    labels = idx.clone()
    labels[0, :5] = IGNORE  # a masked prompt on one row
    # transformers shifts labels inside (logits[:, :-1] predict labels[:, 1:]); ours takes targets aligned
    # with the positions, so shift the same labels once here.
    targets = torch.cat([labels[:, 1:], torch.full((2, 1), IGNORE)], dim=1)  # (B, T)
    ref_loss = theirs(idx, labels=labels).loss
    torch.testing.assert_close(ours(idx, targets=targets), ref_loss, rtol=1e-5, atol=1e-5)

    prompt = idx[:1, :8]  # (1, 8)
    ref = theirs.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False
    )[0, 8:].tolist()
    got = generate(ours, [prompt[0].tolist()], max_new_tokens=new_tokens)[0]
    assert len(ref) == new_tokens and got == ref


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "use_fast_kernels"])
def test_save_pretrained_folder_matches_transformers(hf_tiny_dir, fast):
    """The plain model, and the same model with model/kernels.py's layers swapped in."""
    ours = load_pretrained(hf_tiny_dir)
    assert_matches_transformers(use_fast_kernels(ours) if fast else ours, transformers_model(hf_tiny_dir))


@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "folder"])
def test_hub_layout_file_matches_transformers(hf_tiny_dir, hf_tiny_hub_file, as_folder):
    """No transformer. prefix, h.N.attn.bias / masked_bias buffers in the file: same model."""
    ck = read_checkpoint(hf_tiny_hub_file.parent if as_folder else hf_tiny_hub_file)
    assert ck.layout == "hub" and ck.config_from == "config.json"
    assert_matches_transformers(load_pretrained(hf_tiny_hub_file), transformers_model(hf_tiny_dir))


def test_hub_file_alone_infers_config_from_shapes(make_hf_gpt2, hub_layout, tmp_path):
    """Without config.json: n_layer from the h.N indices, sizes from wte/wpe, n_head from 64-dim heads."""
    folder = make_hf_gpt2(seed=3, n_layer=3, n_head=2, n_embd=128, n_positions=64)
    lone = hub_layout(folder, tmp_path / "lone" / "gpt2.safetensors")
    (lone.parent / "config.json").unlink()
    ck = read_checkpoint(lone)
    assert ck.config_from == "tensor shapes"
    c = ck.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (3, 2, 128, 64, 50257)
    assert_matches_transformers(load_pretrained(lone), transformers_model(folder))


def test_round_trip_ours_to_transformers_and_back(tmp_path, randomize):
    """Our random GPT -> save_pretrained -> GPT2LMHeadModel.from_pretrained: same logits; and load_pretrained
    of the same folder gives back bit-identical weights."""
    from model.gpt2 import config_for

    ours = randomize(GPT(config_for("tiny")), seed=7).eval()
    save_pretrained(ours, tmp_path)
    assert_matches_transformers(ours, transformers_model(tmp_path))
    back = load_pretrained(tmp_path)
    assert back.config == ours.config
    for (k, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_full_size_gpt2_124m_matches_transformers(make_hf_gpt2):
    """The real 124M shape (12 layers, 12 heads, 768 dims, 1024 positions), random weights."""
    folder = make_hf_gpt2(seed=0)  # GPT2Config() defaults are GPT-2 124M
    ours = load_pretrained(folder)
    assert ours.param_counts()["total"] == 124_439_808
    assert_matches_transformers(ours, transformers_model(folder), T=64)


@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_and_gradients_equal_plain_cross_entropy(randomize, amp, reduction):
    """The fused (V, N) loss of GPT.forward against F.cross_entropy on nn.Linear logits: same value and
    same gradient for every parameter, the tied wte/lm_head included, with a masked prompt."""
    from model.gpt2 import config_for

    model = randomize(GPT(config_for("tiny", vocab_size=300)), seed=2, std=0.3)
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, 300, (3, 20), generator=g)
    targets = torch.randint(0, 300, (3, 20), generator=g)
    targets[0, :7] = IGNORE
    targets[2, 15:] = IGNORE
    ctx = torch.autocast("cpu", dtype=amp) if amp else torch.autocast("cpu", enabled=False)

    def grads(loss_fn):
        model.zero_grad(set_to_none=True)
        with ctx:
            loss = loss_fn()
        loss.sum().backward()  # "none": the N losses, in the same order on both sides
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    def reference():
        valid = targets != IGNORE
        logits = model.lm_head(model.hidden(idx)[valid]).float()
        return torch.nn.functional.cross_entropy(logits, targets[valid], reduction=reduction)

    loss, got = grads(lambda: model(idx, targets=targets, reduction=reduction))
    ref_loss, want = grads(reference)
    rtol = 1e-5 if amp is None else 2e-2  # bf16 matmuls round differently in the two layouts
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=0)
    for name, w in want.items():  # summation order differs: compare against the tensor's own scale
        err = (got[name] - w).abs().max().item() / w.abs().max().item()
        assert err <= (1e-5 if amp is None else 3e-2), f"{name}: max error {err:.1e} of its largest entry"


def test_loss_with_no_target_is_zero_sum_and_trains_nothing(randomize):
    from model.gpt2 import config_for

    model = randomize(GPT(config_for("tiny", vocab_size=300)), seed=2)
    idx = torch.randint(0, 300, (2, 8))
    loss = model(idx, targets=torch.full((2, 8), IGNORE), reduction="sum")
    loss.backward()
    assert loss.item() == 0.0 and model.lm_head.weight.grad.abs().sum() == 0


def test_dropout_acts_in_training_only_in_attention_and_mlp_outputs():
    """cfg.dropout zeroes about that share of the attention's and the MLP's outputs in train mode, none in
    eval mode; dropout() hands its input back untouched where it would do nothing (eval, p = 0)."""
    from model.gpt2 import GPT, config_for, dropout

    x = torch.randn(3, 4)
    assert dropout(x, 0.5, False) is x and dropout(x, 0.0, True) is x
    model = GPT(config_for("tiny", vocab_size=64, dropout=0.5))
    block = model.transformer.h[0]
    h = torch.randn(4, 16, model.config.n_embd)
    for module in (block.attn, block.mlp):
        module.train()
        zeros = (module(h) == 0).float().mean().item()
        assert 0.4 < zeros < 0.6, zeros
        module.eval()
        assert (module(h) == 0).sum() == 0


# ------------------------------------------------------------------ any GPT-2-architecture config.json
STD = 0.1  # weights' spread: large enough that attention is far from uniform, so its scale shows in logits
TINY = dict(n_layer=3, n_head=4, n_embd=32, n_positions=64, vocab_size=1000)
ACTIVATIONS = ("gelu_new", "gelu_fast", "gelu", "relu", "gelu_pytorch_tanh")
# Every combination of the three attention settings, each with an activation and an MLP width in turn, so
# every value of every setting meets every other at least once; then the vocabulary and context sizes.
VARIANTS = [
    dict(scale_attn_weights=w, scale_attn_by_inverse_layer_idx=i, reorder_and_upcast_attn=r,
         activation_function=ACTIVATIONS[k % len(ACTIVATIONS)], n_inner=(None, 48, 160)[k % 3])
    for k, (w, i, r) in enumerate(itertools.product((True, False), repeat=3))
] + [dict(activation_function=a, n_inner=24) for a in ACTIVATIONS[2:]] + [
    dict(vocab_size=32768, n_positions=256, scale_attn_by_inverse_layer_idx=True,
         reorder_and_upcast_attn=True),
    dict(vocab_size=50304, n_positions=32, n_embd=48, n_head=3),
]  # fmt: skip


def hf_reference(folder):
    """transformers' own model from the folder, with eager attention: its reference implementation (the
    only one that takes the reorder_and_upcast_attn path)."""
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={v[k]}" for k in v))
def test_each_setting_gives_the_logits_of_transformers(make_hf_gpt2, variant):
    config = TINY | variant
    folder = make_hf_gpt2(seed=3, std=STD, **config)
    ours = load_pretrained(folder)
    for key in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "activation_function"):
        assert getattr(ours.config, key) == config.get(key, getattr(ours.config, key))
    x = torch.randint(
        0, config["vocab_size"], (2, config["n_positions"]), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        theirs, mine = hf_reference(folder)(x).logits, ours(x)
    torch.testing.assert_close(mine, theirs, atol=LOGIT_TOL, rtol=0)


def test_the_settings_change_the_logits(make_hf_gpt2):
    """The parity above means something: each setting, flipped alone, moves the logits well past LOGIT_TOL
    (the exact GELU and its tanh approximation differ by < 5e-4 at most: larger weights make that show)."""
    x = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    base = load_pretrained(make_hf_gpt2(seed=3, std=0.3, **TINY))(x)
    for flip in (dict(scale_attn_weights=False), dict(scale_attn_by_inverse_layer_idx=True),
                 dict(activation_function="relu"), dict(activation_function="gelu")):  # fmt: skip
        moved = load_pretrained(make_hf_gpt2(seed=3, std=0.3, **TINY | flip))(x) - base
        assert moved.abs().max() > 10 * LOGIT_TOL, flip


def test_bf16_attention_is_as_close_to_fp32_as_transformers_upcast_path(make_hf_gpt2):
    """reorder_and_upcast_attn asks for the scores and softmax in fp32 under mixed precision; SDPA computes
    them so anyway: in bf16 our logits are as close to the fp32 ones as transformers' upcast path is."""
    codeparrot = dict(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)
    folder = make_hf_gpt2(seed=5, std=STD, **TINY | codeparrot)
    x = torch.randint(0, 1000, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = hf_reference(folder)(x).logits
        theirs = hf_reference(folder).to(torch.bfloat16)(x).logits.float()
        mine = load_pretrained(folder, dtype="bf16")(x).float()
    assert (mine - exact).abs().mean() <= 1.1 * (theirs - exact).abs().mean()


# ------------------------------------------------------------------ CodeParrot: presets, its own tokenizer
def test_codeparrot_presets_are_its_hub_ids_and_architecture():
    from model.gpt2 import config_for
    from model.hf import HUB_IDS

    assert HUB_IDS["codeparrot-small"] == "codeparrot/codeparrot-small"
    assert HUB_IDS["codeparrot"] == "codeparrot/codeparrot"
    with torch.device("meta"):
        small, big = GPT(config_for("codeparrot-small")), GPT(config_for("codeparrot"))
    for model in (small, big):
        c = model.config
        assert c.vocab_size == 32768 and c.block_size == 1024
        assert c.scale_attn_by_inverse_layer_idx and c.reorder_and_upcast_attn
    assert 110e6 < small.param_counts()["total"] < 112e6  # "110M"
    assert 1.5e9 < big.param_counts()["total"] < 1.55e9  # "1.5B"


PROMPTS = ['def fib(n):\n    """Return the n-th Fibonacci number."""\n', "import os\n\nclass Path:\n    def "]


def test_codeparrot_shaped_logits_and_greedy_ids_equal_transformers(codeparrot_tiny):
    from data.tokenizer import tokenizer_of

    ours = load_pretrained(codeparrot_tiny)
    theirs = hf_reference(codeparrot_tiny)
    tok = tokenizer_of(ours)
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        x = torch.tensor([ids])
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x).logits, atol=LOGIT_TOL, rtol=0)
            hf_new = theirs.generate(x, max_new_tokens=24, do_sample=False, eos_token_id=tok.eot,
                                     pad_token_id=tok.eot, attention_mask=torch.ones_like(x))  # fmt: skip
        (mine,) = generate(ours, [ids], max_new_tokens=24, eos=tok.eot)
        assert mine == hf_new[0, len(ids) :].tolist()
