"""lora/dora.py: the factored row norm equals the naive one, step 0 is the base model, slices keep the
identity on the rows they do not adapt, merging folds g (W + s B A) in, and adapters cross to PEFT's
use_dora and back with the same logits (1e-5), for q/v slices and the joint c_attn."""

import json

import pytest
import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel

from lora.config import LoRAConfig
from lora.lora import (
    DoRALinear,
    QDoRALinear,
    inject_lora,
    lora_layers,
    merge_lora,
    trainable_report,
    unmerge_lora,
)
from lora.peft_io import export_merged, load_adapter, save_adapter
from model.gpt2 import GPT, config_for
from model.hf import load_pretrained
from model.nf4 import quantize_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def base(tmp_path_factory, randomize):
    """A random tiny GPT-2 (LayerNorms and biases random too) in the transformers layout."""
    folder = tmp_path_factory.mktemp("dora-base")
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    randomize(GPT2LMHeadModel(cfg)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def x():
    return torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1))


def train(model, x, steps=3, lr=1e-2, peft=False):
    """A few AdamW steps, so that B, A and the magnitudes all move."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        (model(input_ids=x, labels=x).loss if peft else model(x, targets=x)).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def logits(model, x, peft=False):
    with torch.no_grad():
        return model(x).logits if peft else model(x)


def test_factored_row_norm_equals_the_naive_one_on_gpt2_c_attn():
    """||W + s B A|| per row, through ||W||^2 + 2s <W, BA> + s^2 ||BA||^2, on 124M's c_attn (2304 x 768)."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(768, 2304)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2304, 768, generator=g) * 0.02)
    for slices in (None, (True, False, True)):
        layer = DoRALinear(lin, LoRAConfig(rank=8, alpha=16, dora=True), slices)
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.05)
        naive = (layer.weight + layer.scaling * layer.full_B() @ layer.lora_A).norm(dim=1)
        torch.testing.assert_close(layer.weight_norm(), naive.detach(), atol=1e-6, rtol=0)


def test_step_zero_is_the_base_model_and_only_the_magnitude_and_adapters_train(base, x):
    ours = load_pretrained(base)
    before = logits(ours, x)
    inject_lora(ours, LoRAConfig(rank=4, alpha=8, targets="q,v,mlp.c_fc", dora=True), verbose=False)
    assert torch.equal(logits(ours, x), before)  # m = ||W||: g = 1 exactly
    c_attn = ours.transformer.h[0].attn.c_attn
    assert c_attn.lora_magnitude_vector.shape == (2 * 32,)  # q and v rows only: k keeps the identity
    per_layer = (2 * 4 * 32 + 2 * 32 * 4 + 2 * 32) + (4 * 32 + 128 * 4 + 128)  # c_attn q,v + mlp.c_fc
    assert trainable_report(ours)["trainable"] == 2 * per_layer
    train(ours, x)
    g = c_attn.scale().detach()
    assert torch.equal(g[32:64], torch.ones(32)) and not torch.allclose(g[:32], torch.ones(32))


def test_merge_folds_the_magnitude_in_and_unmerge_restores_w(base, x):
    ours = load_pretrained(base)
    inject_lora(ours, LoRAConfig(rank=4, alpha=8, targets="q,v,attn.c_proj", dora=True), verbose=False)
    train(ours, x)
    w = {n: m.weight.detach().clone() for n, m in lora_layers(ours).items()}
    unmerged = logits(ours, x)
    merge_lora(ours)
    torch.testing.assert_close(logits(ours, x), unmerged, atol=ATOL, rtol=0)
    unmerge_lora(ours)
    for n, m in lora_layers(ours).items():
        torch.testing.assert_close(m.weight, w[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(ours, x), unmerged, atol=ATOL, rtol=0)


@pytest.mark.parametrize("targets", ["q,v,mlp.c_fc", "c_attn"])
def test_our_dora_adapter_loads_in_peft_and_back_with_the_same_logits(base, x, tmp_path, targets):
    ours = load_pretrained(base)
    inject_lora(ours, LoRAConfig(rank=4, alpha=8, targets=targets, dora=True), verbose=False)
    train(ours, x)
    save_adapter(ours, tmp_path, base_model_name_or_path=str(base))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        m = f.get_tensor("base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector")
    assert m.shape == (96,)  # c_attn-wide, whatever the slices
    peft = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), tmp_path).eval()
    mine = logits(ours, x)
    torch.testing.assert_close(logits(peft, x, peft=True), mine, atol=ATOL, rtol=0)
    assert (mine - logits(load_pretrained(base), x)).abs().max() > 1e-2  # the adapter really is there
    again = load_pretrained(base)
    load_adapter(again, tmp_path)
    assert trainable_report(again)["trainable"] == trainable_report(ours)["trainable"]
    assert torch.equal(logits(again, x), mine)


def test_a_peft_dora_adapter_loads_in_ours_with_the_same_logits(base, x, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_fc"], fan_in_fan_out=True,
                        use_dora=True, task_type="CAUSAL_LM")  # fmt: skip
    peft = train(get_peft_model(GPT2LMHeadModel.from_pretrained(base), config), x, peft=True)
    peft.save_pretrained(tmp_path)
    ours = load_pretrained(base)
    load_adapter(ours, tmp_path)
    assert all(isinstance(m, DoRALinear) for m in lora_layers(ours).values())
    torch.testing.assert_close(logits(ours, x), logits(peft, x, peft=True), atol=ATOL, rtol=0)
    assert trainable_report(ours)["trainable"] == sum(p.numel() for p in peft.parameters() if p.requires_grad)


def test_merged_export_of_a_dora_model_loads_in_transformers(base, x, tmp_path):
    ours = load_pretrained(base)
    inject_lora(ours, LoRAConfig(rank=4, alpha=8, targets="q,v,mlp.c_proj", dora=True), verbose=False)
    train(ours, x)
    export_merged(ours, tmp_path)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(hf, x, peft=True), logits(ours, x), atol=1e-4, rtol=0)


def test_dora_on_an_nf4_base_starts_at_the_quantized_model_and_trains():
    model = GPT(config_for("tiny"))
    quantize_model(model)
    x = torch.randint(0, 50257, (2, 12))
    before = logits(model, x)
    inject_lora(model, LoRAConfig(rank=2, targets="c_attn,mlp.c_fc", dora=True), verbose=False)
    assert isinstance(model.transformer.h[1].mlp.c_fc, QDoRALinear)
    assert torch.equal(logits(model, x), before)
    loss = model(x, targets=x)
    loss.backward()
    assert model.transformer.h[0].attn.c_attn.lora_magnitude_vector.grad.abs().sum() > 0


def test_the_factored_norm_allocates_less_than_peft_s():
    """PEFT builds B A (via an identity matrix) and W + s B A, (out, in) each; ours builds (R, out) and
    (R, R) products only. Peak live bytes of one norm, 124M's c_attn at r = 8."""
    from peft.tuners.lora.dora import DoraLinearLayer

    from profiler.memory import LiveBytes

    lin = nn.Linear(768, 2304)
    layer = DoRALinear(lin, LoRAConfig(rank=8, alpha=16, targets="c_attn", dora=True))
    A, B = nn.Linear(768, 8, bias=False), nn.Linear(8, 2304, bias=False)
    with torch.no_grad():
        A.weight.copy_(layer.lora_A)
        B.weight.copy_(layer.lora_B)
    peft = DoraLinearLayer(fan_in_fan_out=False)
    with torch.no_grad():
        layer.weight_norm(), peft.get_weight_norm(lin.weight, peft.get_lora_weight(A, B), layer.scaling)
        with LiveBytes() as ours:
            layer.weight_norm()
        with LiveBytes() as theirs:
            peft.get_weight_norm(lin.weight, peft.get_lora_weight(A, B), layer.scaling)
    assert ours.peak < theirs.peak / 10, (ours.peak, theirs.peak)
