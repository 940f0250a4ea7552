"""Adapters cross to Hugging Face PEFT and back with the same logits, and the merged export loads in plain
transformers. Both sides share the base weights: a random GPT2LMHeadModel saved by transformers, read by
model.hf.load_pretrained. Every round trip also checks that the adapter changed the logits, because a wrong
key prefix makes PEFT load nothing without a word."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel

from cli import UsageError, run_main
from lora.config import LoRAConfig
from lora.inspect import describe
from lora.inspect import main as inspect_main
from lora.lora import inject_lora, lora_layers, merge_lora, trainable_report
from lora.peft_io import AdapterError, export_merged, load_adapter, save_adapter
from model.gpt2 import GPT, config_for
from model.hf import load_pretrained

ATOL = 1e-4
PROMPT = 'def fib(n):\n    """Return the n-th Fibonacci number."""\n'


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random tiny GPT-2 in the transformers layout (model.safetensors + config.json)."""
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def x():
    return torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1))


def train_ours(model, x, steps=3):
    """A few AdamW steps, so that B moves away from its zero init."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(x, targets=x).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def trained_adapter(base, x, folder, targets, rslora=False, steps=3):
    ours = load_pretrained(base)
    inject_lora(ours, LoRAConfig(rank=4, alpha=8, targets=targets, rslora=rslora), verbose=False)
    train_ours(ours, x, steps)
    save_adapter(ours, folder, base_model_name_or_path=str(base))
    return ours


def hf_logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


@pytest.mark.parametrize(
    "targets, rslora",
    [("q,v", False), ("c_attn", False), ("mlp", False), ("q,v,attn.c_proj,mlp.c_fc", True)],
)
def test_our_adapter_loads_in_peft_with_the_same_logits(base, x, tmp_path, targets, rslora):
    ours = trained_adapter(base, x, tmp_path, targets, rslora)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["fan_in_fan_out"]
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        assert f.metadata()["format"] == "pt"
        assert "base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight" in f.keys() or "mlp" not in targets

    hf = GPT2LMHeadModel.from_pretrained(base).eval()
    base_logits = hf_logits(hf, x)
    peft = PeftModel.from_pretrained(hf, tmp_path).eval()
    with torch.no_grad():
        ours_logits = ours(x)
    torch.testing.assert_close(hf_logits(peft, x), ours_logits, atol=ATOL, rtol=0)
    assert (ours_logits - base_logits).abs().max() > 1e-2  # the adapter is really there, on both sides


def test_q_v_slices_are_written_as_block_structured_c_attn_with_rescaled_alpha(base, x, tmp_path):
    ours = trained_adapter(base, x, tmp_path, "q,v")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["c_attn"] and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["rank_pattern"] == {"c_attn": 8} and config["alpha_pattern"] == {"c_attn": 16}  # 16/8 = 8/4
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        A = f.get_tensor("base_model.model.transformer.h.1.attn.c_attn.lora_A.weight")
        B = f.get_tensor("base_model.model.transformer.h.1.attn.c_attn.lora_B.weight")
    assert A.shape == (8, 32) and B.shape == (96, 8)  # (R, in), (out, R) with R = 2 slices x r 4
    Bq, Bk, Bv = B.split(32)  # rows of q, k, v
    assert Bk.abs().sum() == 0 and Bq[:, 4:].abs().sum() == 0 and Bv[:, :4].abs().sum() == 0
    layer = ours.transformer.h[1].attn.c_attn
    assert torch.equal(Bq[:, :4], layer.lora_B[:32]) and torch.equal(Bv[:, 4:], layer.lora_B[32:])


@pytest.mark.parametrize(
    "peft_kwargs",
    [
        dict(target_modules=["c_attn"]),
        dict(target_modules=["c_fc", "c_proj"]),  # c_proj: both attn.c_proj and mlp.c_proj
        dict(target_modules=["c_attn", "mlp.c_fc"], rank_pattern={"c_attn": 6}, alpha_pattern={"c_attn": 3}),
        dict(target_modules=["c_attn", "c_proj"], use_rslora=True),
    ],
)
def test_peft_adapter_loads_in_ours_with_the_same_logits(base, x, tmp_path, peft_kwargs):
    hf = GPT2LMHeadModel.from_pretrained(base)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, fan_in_fan_out=True, task_type="CAUSAL_LM", **peft_kwargs
    )
    peft = get_peft_model(hf, config)
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        peft(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    peft.eval().save_pretrained(tmp_path)
    peft_logits = hf_logits(peft, x)

    ours = load_pretrained(base)
    with torch.no_grad():
        base_logits = ours(x)
    matched = load_adapter(ours, tmp_path)
    assert len(matched) == len(lora_layers(ours)) > 0
    with torch.no_grad():
        ours_logits = ours(x)
    torch.testing.assert_close(ours_logits, peft_logits, atol=ATOL, rtol=0)
    assert (ours_logits - base_logits).abs().max() > 1e-2
    assert trainable_report(ours)["trainable"] == sum(p.numel() for p in peft.parameters() if p.requires_grad)


def test_our_own_round_trip_rebuilds_the_q_v_slices(base, x, tmp_path):
    ours = trained_adapter(base, x, tmp_path, "q,v,mlp.c_proj")
    again = load_pretrained(base)
    load_adapter(again, tmp_path)
    layer, orig = again.transformer.h[0].attn.c_attn, ours.transformer.h[0].attn.c_attn
    assert layer.slices == (True, False, True) and layer.rank == 4 and layer.scaling == orig.scaling
    assert torch.equal(layer.lora_A, orig.lora_A) and torch.equal(layer.lora_B, orig.lora_B)
    assert trainable_report(again)["trainable"] == trainable_report(ours)["trainable"]
    with torch.no_grad():
        assert torch.equal(again(x), ours(x))


def test_merged_export_loads_in_transformers_and_leaves_the_model_unmerged(base, x, tmp_path):
    ours = trained_adapter(base, x, tmp_path / "adapter", "q,v,mlp.c_fc")
    weights = {k: v.clone() for k, v in ours.state_dict().items()}
    export_merged(ours, tmp_path / "merged")
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == ["config.json", "model.safetensors"]
    assert not any(m.merged for m in lora_layers(ours).values())
    assert all(torch.equal(v, weights[k]) for k, v in ours.state_dict().items())
    with torch.no_grad():
        ours_logits = ours(x)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(hf_logits(hf, x), ours_logits, atol=ATOL, rtol=0)
    merge_lora(ours)  # exporting an already merged model adds dW once, not twice
    export_merged(ours, tmp_path / "merged2")
    assert all(m.merged for m in lora_layers(ours).values())
    hf2 = GPT2LMHeadModel.from_pretrained(tmp_path / "merged2").eval()
    torch.testing.assert_close(hf_logits(hf2, x), ours_logits, atol=ATOL, rtol=0)


def test_inspect_prints_rank_targets_count_and_update_norms(base, x, tmp_path):
    trained_adapter(base, x, tmp_path, "q,v")
    text = describe(str(tmp_path))
    assert "rank 4, alpha 8, scaling 2 (alpha / r)" in text
    assert "targets     q, v" in text
    assert "parameters  1,024 " in text  # 2 layers x 2 slices x 4 x (32 + 32)
    row = next(line for line in text.splitlines() if line.startswith("transformer.h.0.attn.c_attn"))
    q, k, v = (float(t) for t in row.split()[-5::2])  # "... q / k / v"
    assert q > 0 and k == 0 and v > 0


# ------------------------------------------------------------------ bad input: one sentence each
def test_missing_folder_or_file_is_one_sentence(base, x, tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(load_pretrained(base), tmp_path / "nope")
    trained_adapter(base, x, tmp_path, "q,v", steps=0)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="has no adapter_model.safetensors"):
        load_adapter(load_pretrained(base), tmp_path)
    assert issubclass(AdapterError, UsageError)


def test_adapter_for_another_base_shape_is_refused_before_touching_the_model(base, x, tmp_path):
    trained_adapter(base, x, tmp_path, "q,v", steps=0)
    wider = GPT(config_for("tiny", n_embd=64))
    with pytest.raises(AdapterError, match=r"another base shape: transformer.h.0.attn.c_attn is 32 -> 96"):
        load_adapter(wider, tmp_path)
    assert not lora_layers(wider) and all(p.requires_grad for p in wider.parameters())
    shallower = GPT(config_for("tiny", n_layer=1))
    with pytest.raises(AdapterError, match="adapts transformer.h.1.attn.c_attn, which this 1-layer GPT-2"):
        load_adapter(shallower, tmp_path)


def test_non_lora_or_broken_config_is_refused(base, x, tmp_path):
    trained_adapter(base, x, tmp_path, "c_attn", steps=0)
    path = tmp_path / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(config | {"peft_type": "IA3"}))
    with pytest.raises(AdapterError, match="holds a 'IA3' adapter; only PEFT LORA adapters load"):
        load_adapter(load_pretrained(base), tmp_path)
    path.write_text(json.dumps(config | {"r": 16}))
    with pytest.raises(AdapterError, match="has rank 4 but adapter_config.json says 16"):
        load_adapter(load_pretrained(base), tmp_path)
    path.write_text("{not json")
    with pytest.raises(AdapterError, match="is not valid JSON"):
        load_adapter(load_pretrained(base), tmp_path)


def test_inspect_cli_exits_2_with_one_line_for_a_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main(inspect_main, [str(tmp_path / "nope")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: adapter folder") and err.count("\n") == 1


# ---------------------------------------------------------- a CodeParrot-shaped base, its own tokenizer
def eager(folder):
    """transformers' model with its reference (eager) attention, the one that honours every setting."""
    return GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()


def test_codeparrot_shaped_adapter_round_trips_through_peft_and_merges_with_its_tokenizer(
    codeparrot_tiny, tmp_path
):
    from transformers import AutoTokenizer

    from data.tokenizer import tokenizer_of

    ours = load_pretrained(codeparrot_tiny)
    tok = tokenizer_of(ours)
    # targets by GPT-2's module names: the fused c_attn's q and v slices, and both MLP projections
    inject_lora(ours, LoRAConfig(rank=4, alpha=8, targets="q,v,mlp.c_fc,mlp.c_proj"), verbose=False)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    x = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        mine = ours.eval()(x)
    save_adapter(ours, tmp_path / "adapter", base_model_name_or_path=str(codeparrot_tiny))
    assert (tmp_path / "adapter" / "tokenizer.json").is_file()
    peft = PeftModel.from_pretrained(eager(codeparrot_tiny), tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs, base = peft(x).logits, eager(codeparrot_tiny)(x).logits
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    assert (theirs - base).abs().max() > 100 * ATOL  # the adapter really loaded into PEFT

    peft.save_pretrained(tmp_path / "peft")  # and PEFT's own files load back into ours
    again = load_pretrained(codeparrot_tiny)
    load_adapter(again, tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), theirs, atol=ATOL, rtol=0)

    export_merged(ours, tmp_path / "merged")  # plain transformers, tokenizer files beside the weights
    merged = GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, mine, atol=ATOL, rtol=0)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert hf_tok(PROMPT)["input_ids"] == tok.encode(PROMPT) and hf_tok.eos_token_id == 0
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == 0  # the tokenizer's, not GPT-2's 50256
    assert config["scale_attn_by_inverse_layer_idx"] and config["reorder_and_upcast_attn"]
