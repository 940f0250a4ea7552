"""model/hf.py beyond parity: what save_pretrained writes, tying, dtypes, shards, hub-id resolution, the
settings of GPT-2-architecture checkpoints and the tokenizer beside them, and every bad checkpoint ending in
one CheckpointError sentence that names the file and says what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cli import UsageError
from model.gpt2 import GPT, config_for
from model.hf import (
    CheckpointError,
    load_pretrained,
    read_checkpoint,
    resolve,
    save_pretrained,
    state_dict_from_hf,
    state_dict_to_hf,
)


def test_save_pretrained_writes_the_transformers_layout(tmp_path, randomize):
    ours = randomize(GPT(config_for("tiny")))
    save_pretrained(ours, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
        assert all(k.startswith("transformer.") for k in keys)
        assert "lm_head.weight" not in keys and not any(
            k.endswith("attn.bias") and ".c_" not in k for k in keys
        )
        c_fc = f.get_tensor("transformer.h.0.mlp.c_fc.weight")
    assert c_fc.shape == (32, 128)  # Conv1D (in, out), while our Linear holds (128, 32)
    torch.testing.assert_close(c_fc, ours.transformer.h[0].mlp.c_fc.weight.t(), rtol=0, atol=0)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_positions"]) == (2, 4, 32, 128)
    assert cfg["tie_word_embeddings"] is True


def test_hf_conversion_functions_are_inverse(hf_tiny_dir):
    raw = load_file(hf_tiny_dir / "model.safetensors")
    ours = state_dict_from_hf(raw)
    assert ours["lm_head.weight"] is ours["transformer.wte.weight"]
    back = state_dict_to_hf(ours)
    assert back.keys() == raw.keys()
    assert all(torch.equal(back[k], raw[k]) for k in raw)


def test_state_dict_to_hf_refuses_adapter_keys():
    sd = GPT(config_for("tiny")).state_dict()
    sd["transformer.h.0.attn.c_attn.lora_A.weight"] = torch.zeros(8, 32)
    with pytest.raises(ValueError, match="lora_A"):
        state_dict_to_hf(sd)


def test_loaded_lm_head_is_tied_to_wte(hf_tiny_dir):
    model = load_pretrained(hf_tiny_dir)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not model.training
    n_unique = len({p.data_ptr() for p in model.parameters()})
    assert n_unique == len(list(model.parameters()))  # the tied weight is one Parameter, listed once


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (None, torch.float32),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_dtype_option_converts_every_weight_and_keeps_the_tie(hf_tiny_dir, dtype, expected):
    model = load_pretrained(hf_tiny_dir, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}
    assert model.lm_head.weight is model.transformer.wte.weight


def test_dtype_auto_keeps_the_stored_dtype(tmp_path, randomize):
    save_pretrained(randomize(GPT(config_for("tiny"))).to(torch.bfloat16), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_pretrained(tmp_path, dtype="auto").transformer.wte.weight.dtype == torch.bfloat16
    assert load_pretrained(tmp_path).transformer.wte.weight.dtype == torch.float32  # default: fp32


def test_unknown_dtype_is_a_usage_error(hf_tiny_dir):
    with pytest.raises(UsageError, match="unknown dtype 'fp8'"):
        load_pretrained(hf_tiny_dir, dtype="fp8")


def test_device_auto_is_cpu_without_cuda(hf_tiny_dir):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert load_pretrained(hf_tiny_dir, device="auto").transformer.wte.weight.device.type == expected


def test_sharded_save_pretrained_folder_loads(hf_tiny_dir, tmp_path):
    from transformers import GPT2LMHeadModel

    GPT2LMHeadModel.from_pretrained(hf_tiny_dir).save_pretrained(tmp_path, max_shard_size="1MB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ck = read_checkpoint(tmp_path)
    assert len(ck.files) > 1
    ref = load_pretrained(hf_tiny_dir).state_dict()
    got = load_pretrained(tmp_path).state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_lm_head_present_in_file_and_equal_to_wte_is_accepted(hf_tiny_dir, tmp_path):
    raw = load_file(hf_tiny_dir / "model.safetensors")
    raw["lm_head.weight"] = raw["transformer.wte.weight"].clone()
    save_file(raw, tmp_path / "with_head.safetensors")
    shutil.copy(hf_tiny_dir / "config.json", tmp_path)  # n_head: 32 dims are not 64-dim heads
    model = load_pretrained(tmp_path / "with_head.safetensors")
    assert torch.equal(model.lm_head.weight, raw["lm_head.weight"])


def test_a_local_folder_wins_over_a_hub_id_of_the_same_name(hf_tiny_dir, tmp_path, monkeypatch):
    shutil.copytree(hf_tiny_dir, tmp_path / "gpt2")
    monkeypatch.chdir(tmp_path)
    files, config = resolve("gpt2")
    assert files == [Path("gpt2") / "model.safetensors"] and config == Path("gpt2") / "config.json"


# ------------------------------------------------------------------ bad checkpoints
def _tiny_raw(hf_tiny_dir) -> dict[str, torch.Tensor]:
    return load_file(hf_tiny_dir / "model.safetensors")


def _tiny_config(hf_tiny_dir) -> dict:
    return json.loads((hf_tiny_dir / "config.json").read_text())


def _write(folder: Path, tensors: dict, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def empty_folder(d, hf):
    d.mkdir()
    return d, d, "has no model.safetensors or pytorch_model.bin"


def other_formats_only(d, hf):
    d.mkdir()
    (d / "model.pt").write_bytes(b"\0" * 64)
    return d, d, "has no model.safetensors or pytorch_model.bin (it has model.pt)"


def corrupt_pytorch_bin(d, hf):
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"\0" * 64)
    return d, d / "pytorch_model.bin", "cannot be read by torch.load(weights_only=True)"


def truncated_file(d, hf):
    d.mkdir()
    data = (hf / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return d, d / "model.safetensors", "truncated or corrupt"


def garbage_file(d, hf):
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"this is not a safetensors file at all" * 20)
    return d / "model.safetensors", d / "model.safetensors", "truncated or corrupt"


def not_safetensors_suffix(d, hf):
    d.mkdir()
    (d / "model.bin").write_bytes(b"\0" * 64)
    return d / "model.bin", d / "model.bin", "is not a .safetensors file"


def missing_path(d, hf):
    return d / "nope", d / "nope", "does not exist"


def llama_like_keys(d, hf):
    keys = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"]
    _write(d, {k: torch.zeros(4, 4) for k in keys})
    return d, d / "model.safetensors", "is not a GPT-2 checkpoint"


def bert_keys(d, hf):
    keys = ["bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight"]
    _write(d, {k: torch.zeros(4, 4) for k in keys})
    return d, d / "model.safetensors", "is not a GPT-2 checkpoint"


def config_of_another_model(d, hf):
    _write(d, {"model.embed_tokens.weight": torch.zeros(4, 4)}, {"model_type": "llama"})
    return d, d / "config.json", "describes a 'llama' model, not GPT-2"


def unsupported_gpt2_variant(d, hf):
    cfg = _tiny_config(hf) | {"activation_function": "silu"}
    _write(d, _tiny_raw(hf), cfg)
    return d, d / "config.json", "activation_function='silu'"


def untied_output_layer(d, hf):
    cfg = _tiny_config(hf) | {"tie_word_embeddings": False}
    _write(d, _tiny_raw(hf), cfg)
    return d, d / "config.json", "tie_word_embeddings=False"


def cross_attention(d, hf):
    cfg = _tiny_config(hf) | {"add_cross_attention": True}
    _write(d, _tiny_raw(hf), cfg)
    return d, d / "config.json", "add_cross_attention=True"


def mlp_width_that_does_not_match(d, hf):
    cfg = _tiny_config(hf) | {"n_inner": 48}
    _write(d, _tiny_raw(hf), cfg)
    return d, d / "model.safetensors", "has n_inner=128 but its config.json says 48"


def missing_tensor(d, hf):
    raw = _tiny_raw(hf)
    del raw["transformer.h.1.mlp.c_fc.weight"]
    _write(d, raw, _tiny_config(hf))
    return d, d / "model.safetensors", "1 tensors missing (h.1.mlp.c_fc.weight)"


def unexpected_tensor(d, hf):
    raw = _tiny_raw(hf) | {"transformer.h.0.attn.rotary.inv_freq": torch.zeros(4)}
    _write(d, raw, _tiny_config(hf))
    return d, d / "model.safetensors", "1 unexpected (h.0.attn.rotary.inv_freq)"


def wrong_shape(d, hf):
    raw = _tiny_raw(hf)
    raw["transformer.h.0.attn.c_attn.weight"] = raw["transformer.h.0.attn.c_attn.weight"][:, :64]
    _write(d, raw, _tiny_config(hf))
    return d, d / "model.safetensors", "h.0.attn.c_attn.weight has shape (32, 64)"


def config_that_does_not_match(d, hf):
    cfg = _tiny_config(hf) | {"n_layer": 3}
    _write(d, _tiny_raw(hf), cfg)
    return d, d / "model.safetensors", "has n_layer=2 but its config.json says 3"


def untied_lm_head(d, hf):
    raw = _tiny_raw(hf)
    _write(d, raw | {"lm_head.weight": raw["transformer.wte.weight"] + 1})
    return d, d / "model.safetensors", "lm_head.weight that differs from wte.weight"


def nan_weights(d, hf):
    raw = _tiny_raw(hf)
    raw["transformer.h.0.ln_1.weight"][3] = float("nan")
    _write(d, raw, _tiny_config(hf))
    return d, d / "model.safetensors", "non-finite values in h.0.ln_1.weight"


def shard_missing(d, hf):
    d.mkdir()
    index = {"metadata": {}, "weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d, d / "model.safetensors.index.json", "lists shards that are not there"


BAD = [
    empty_folder,
    other_formats_only,
    corrupt_pytorch_bin,
    truncated_file,
    garbage_file,
    not_safetensors_suffix,
    missing_path,
    llama_like_keys,
    bert_keys,
    config_of_another_model,
    unsupported_gpt2_variant,
    untied_output_layer,
    cross_attention,
    mlp_width_that_does_not_match,
    missing_tensor,
    unexpected_tensor,
    wrong_shape,
    config_that_does_not_match,
    untied_lm_head,
    nan_weights,
    shard_missing,
]


@pytest.mark.parametrize("make_bad", BAD, ids=[f.__name__ for f in BAD])
def test_bad_checkpoint_is_one_sentence_naming_the_file(make_bad, hf_tiny_dir, tmp_path):
    source, named, says = make_bad(tmp_path / "ckpt", hf_tiny_dir)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(source)
    msg = str(err.value)
    assert says in msg
    assert str(named) in msg
    assert "\n" not in msg and ";" in msg  # one line: what is wrong; what to do
    assert isinstance(err.value, UsageError)  # run_main turns it into exit code 2


# -------------------------------------------------------- GPT-2-architecture settings, own tokenizer
TINY = dict(n_layer=3, n_head=4, n_embd=32, n_positions=64, vocab_size=1000)
SETTINGS = dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
                activation_function="gelu", n_inner=48)  # fmt: skip


def test_settings_survive_save_pretrained(make_hf_gpt2, tmp_path):
    from model.hf import save_pretrained

    ours = load_pretrained(make_hf_gpt2(seed=1, **TINY | SETTINGS))
    save_pretrained(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert {k: config[k] for k in SETTINGS} == SETTINGS
    assert load_pretrained(tmp_path).config == ours.config


def test_codeparrot_shaped_model_loads_with_its_tokenizer_and_warns_about_eos(codeparrot_tiny, capsys):
    from data.tokenizer import tokenizer_of

    ours = load_pretrained(codeparrot_tiny)
    tok = tokenizer_of(ours)
    assert ours.config.vocab_size == tok.vocab_size == 32768 and tok.eot == 0
    assert ours.config.scale_attn_by_inverse_layer_idx and ours.config.reorder_and_upcast_attn
    err = capsys.readouterr().err  # config.json says GPT-2's 50256, as CodeParrot's does: said once
    assert "eos_token_id=50256" in err and "<|endoftext|> is 0" in err


def test_a_pytorch_model_bin_loads_as_its_safetensors_do(hf_tiny_dir, tmp_path):
    """Repositories older than safetensors (CodeParrot's era) hold pytorch_model.bin: read with
    torch.load(weights_only=True), it gives the same model."""
    torch.save(load_file(hf_tiny_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")
    shutil.copy(hf_tiny_dir / "config.json", tmp_path / "config.json")
    x = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path)(x), load_pretrained(hf_tiny_dir)(x))
