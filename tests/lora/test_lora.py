"""LoRA on the tiny GPT-2: the injected model starts as the base model, only A and B train, merging is exact
and idempotent, parameter counts follow r * (in + out), and bad settings stop with one sentence."""

import re

import pytest
import torch

from lora.config import LoRAConfig, parse_targets
from lora.lora import (
    LoRALinear,
    inject_lora,
    lora_layers,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    trainable_report,
    unmerge_lora,
)
from model.gpt2 import GPT, config_for


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(config_for("tiny")).eval()


def ids(B=2, T=12, seed=1):
    return torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(seed))


def randomize_B(model, seed=2):
    """Stand-in for training: B away from zero, so the adapter actually changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


@pytest.mark.parametrize("targets", ["q,v", "c_attn", "all", "mlp"])
def test_injected_model_gives_base_logits_at_step_zero(targets):
    model, x = tiny(), ids()
    base = model(x)
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets=targets), verbose=False)
    assert torch.equal(model(x), base)  # B = 0: bit-identical, not just close


def test_only_lora_params_train_and_base_is_bit_identical_after_a_step():
    model, x = tiny(), ids()
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets="q,v,mlp.c_fc"), verbose=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    before = model(x)
    for _ in range(2):
        loss = model(x, targets=x)
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert all(m.lora_B.abs().sum() > 0 for m in lora_layers(model).values())  # B left zero: it trained
    assert not torch.allclose(model(x), before)


def test_trainable_count_of_gpt2_124m_rank8_qv_is_294912(capsys):
    with torch.device("meta"):  # the 124M shapes without allocating 500 MB
        model = GPT(config_for("gpt2"))
    base_total = trainable_report(model)["total"]
    inject_lora(model, LoRAConfig(rank=8, alpha=16, targets="q,v"))
    # per layer: q and v each get A (8, 768) and B (768, 8) -> 2 * 8 * (768 + 768); 12 layers
    expected = 12 * 2 * 8 * (768 + 768)
    assert expected == 294_912
    report = trainable_report(model)
    assert report["trainable"] == expected and report["total"] == base_total + expected
    assert base_total == 124_439_808  # GPT-2 small, lm_head tied to wte
    assert (
        "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "targets, per_layer",
    [
        ("c_attn", 8 * (768 + 3 * 768)),  # one joint update over q|k|v, as PEFT does
        ("q,k,v", 3 * 8 * (768 + 768)),  # three separate ones
        ("attn.c_proj", 8 * (768 + 768)),
        ("mlp", 8 * (768 + 4 * 768) + 8 * (4 * 768 + 768)),
    ],
)
def test_trainable_count_is_rank_times_in_plus_out(targets, per_layer):
    with torch.device("meta"):
        model = GPT(config_for("gpt2"))
    inject_lora(model, LoRAConfig(rank=8, alpha=16, targets=targets), verbose=False)
    assert trainable_report(model)["trainable"] == 12 * per_layer


def test_slice_update_is_exactly_zero_on_slices_that_are_off():
    model = tiny()
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets="q,v"), verbose=False)
    randomize_B(model)
    C = model.config.n_embd
    dW = model.transformer.h[0].attn.c_attn.delta_weight()  # (3C, C)
    dq, dk, dv = dW.split(C)
    assert torch.count_nonzero(dk) == 0
    assert torch.count_nonzero(dq) > 0 and torch.count_nonzero(dv) > 0
    assert torch.linalg.matrix_rank(dq) == 4 and torch.linalg.matrix_rank(dW) == 8  # rank r per slice


def test_merged_forward_equals_unmerged_and_double_merge_equals_single():
    model, x = tiny(), ids()
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets="all"), verbose=False)
    randomize_B(model)
    unmerged = model(x)
    weights = {n: m.weight.detach().clone() for n, m in lora_layers(model).items()}
    merge_lora(model)
    once = {n: m.weight.detach().clone() for n, m in lora_layers(model).items()}
    merged = model(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert not torch.allclose(merged, tiny()(x), atol=1e-3)  # the adapter did change the model
    merge_lora(model)
    for n, m in lora_layers(model).items():
        assert m.merged and torch.equal(m.weight, once[n])
    unmerge_lora(model)
    unmerge_lora(model)
    for n, m in lora_layers(model).items():
        assert not m.merged
        torch.testing.assert_close(m.weight, weights[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)


def test_merging_is_never_tied_to_train_or_eval():
    model = tiny()
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets="q,v"), verbose=False)
    model.eval()
    model.train()
    assert not any(m.merged for m in lora_layers(model).values())


def test_rslora_scales_by_alpha_over_sqrt_rank():
    model = tiny()
    inject_lora(model, LoRAConfig(rank=16, alpha=8, rslora=True, targets="q,v"), verbose=False)
    assert model.transformer.h[0].attn.c_attn.scaling == 8 / 4


def test_bf16_base_with_fp32_adapter_trains_and_merges():
    """What the trainer does: frozen weights stored in bf16, A and B kept in fp32."""
    model, x = tiny(), ids()
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets="q,v,mlp.c_proj"), verbose=False)
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    layer = model.transformer.h[0].attn.c_attn
    assert layer.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    model(x, targets=x).backward()  # bf16 activations, the adapter computed in bf16
    assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_B.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, targets=x).backward()
    randomize_B(model)
    unmerged = model(x).float()
    merge_lora(model)
    assert layer.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model(x).float(), unmerged, atol=0.1, rtol=0.05)


def test_dropout_is_a_module_and_identity_at_zero():
    model = tiny()
    inject_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.0, targets="q,v"), verbose=False)
    assert isinstance(model.transformer.h[0].attn.c_attn.dropout, torch.nn.Identity)
    model = tiny()
    inject_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.1, targets="q,v"), verbose=False)
    assert isinstance(model.transformer.h[0].attn.c_attn.dropout, torch.nn.Dropout)


def test_base_state_dict_keys_are_unchanged_and_lora_state_dict_holds_only_A_and_B():
    model = tiny()
    keys = set(model.state_dict())
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets="q,v,mlp.c_fc"), verbose=False)
    lora = lora_state_dict(model)
    assert set(model.state_dict()) - set(lora) == keys
    assert sorted(lora)[:2] == ["transformer.h.0.attn.c_attn.lora_A", "transformer.h.0.attn.c_attn.lora_B"]
    assert lora["transformer.h.0.attn.c_attn.lora_A"].shape == (2 * 4, 32)  # A_q over A_v
    assert lora["transformer.h.0.attn.c_attn.lora_B"].shape == (2 * 32, 4)  # B_q over B_v
    assert len(lora) == 2 * 2 * 2  # 2 layers x 2 modules x (A, B)


def test_parse_targets_expands_shorthands_in_canonical_order():
    assert parse_targets("v, q") == ["q", "v"]
    assert parse_targets(["mlp", "q"]) == ["q", "mlp.c_fc", "mlp.c_proj"]
    assert parse_targets("attn") == ["q", "k", "v", "attn.c_proj"]
    assert parse_targets("all") == ["q", "k", "v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=0), "LoRA rank must be a positive integer, got 0"),
        (dict(rank=-2), "LoRA rank must be a positive integer"),
        (dict(alpha=0), "LoRA alpha must be positive, got 0"),
        (dict(dropout=1.0), "LoRA dropout must be in [0, 1)"),
        (dict(targets="q,wq"), "unknown LoRA target 'wq'; choose from q, k, v, c_attn, attn.c_proj"),
        (dict(targets=""), "no LoRA targets given"),
        (dict(targets="c_attn,q"), "cannot be combined with q, k or v"),
    ],
)
def test_bad_settings_stop_with_one_sentence(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        inject_lora(tiny(), LoRAConfig(**kwargs), verbose=False)


def test_injecting_twice_is_refused():
    model = tiny()
    inject_lora(model, LoRAConfig(), verbose=False)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        inject_lora(model, LoRAConfig(), verbose=False)


def test_lora_linear_keeps_the_wrapped_parameters():
    lin = torch.nn.Linear(8, 6)
    layer = LoRALinear(lin, LoRAConfig(rank=2, alpha=4))
    assert layer.weight is lin.weight and layer.bias is lin.bias
    assert layer.lora_A.shape == (2, 8) and layer.lora_B.shape == (6, 2) and layer.scaling == 2


def test_merge_and_unload_leaves_plain_linears_with_the_adapted_logits():
    """For inference: every adapter merged into its weight, and a plain nn.Linear (the same Parameters)
    back in place of each LoRALinear; the logits are the adapted model's, the state dict a base model's."""
    model, x = tiny(), ids()
    base_keys = list(model.state_dict())
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets="all"), verbose=False)
    randomize_B(model)
    with torch.no_grad():
        adapted = model(x)
    weight = model.transformer.h[0].attn.c_attn.weight
    assert merge_and_unload(model) is model
    assert not lora_layers(model) and type(model.transformer.h[0].attn.c_attn) is torch.nn.Linear
    assert model.transformer.h[0].attn.c_attn.weight is weight  # merged in place, not copied
    assert list(model.state_dict()) == base_keys
    with torch.no_grad():
        torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-5)
