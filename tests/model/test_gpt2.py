"""Parity with transformers, the proof that model/gpt2.py + model/hf.py are GPT-2: a checkpoint written by
transformers and read by load_pretrained gives the same logits (max |diff| <= 1e-4 in fp32), the same loss
on the same targets and the same greedy ids as GPT2LMHeadModel, in both on-disk layouts."""

from __future__ import annotations

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
