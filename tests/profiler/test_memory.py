"""profiler/memory.py: the predicted bytes per component equal what a real step holds (tiny model, CPU)."""

import json
import math
from dataclasses import replace

import pytest
import torch

from cli import UsageError, parse_config
from profiler.memory import (
    COMPONENTS,
    MemoryConfig,
    SavedTensorLedger,
    compare,
    estimate,
    format_estimate,
    main,
    measure,
    profile_training_memory,
    synthetic_batch,
)
from training.build import build_model
from training.config import TrainConfig
from training.optim import make_optimizer
from training.step import Batch, TrainStep

TINY = TrainConfig(model="tiny", init="random", lora_rank=0, batch_size=2, max_len=64, dtype="fp32",
                         device="cpu", lr=1e-3)  # fmt: skip
GPT2_124M = 124_439_808


def measured_and_predicted(cfg):
    m = measure(cfg)
    b = m["batch"]
    return m, estimate(cfg, B=b["B"], T=b["T"], n_targets=b["n_targets"])


def test_full_finetune_124m_fp32_static_bytes_are_the_exact_sums():
    est = estimate(replace(TINY, model="gpt2", max_len=512))  # on the meta device: no weights
    c = est["components"]
    assert est["counts"]["params_trainable"] == GPT2_124M
    assert c["params_frozen"] == 0
    assert c["params_trainable"] == GPT2_124M * 4
    assert c["grads"] == GPT2_124M * 4
    # AdamW: exp_avg + exp_avg_sq in fp32, plus one fp32 step counter per parameter tensor (148 of them)
    assert c["optimizer"] == GPT2_124M * 8 + 148 * 4


def test_lora_124m_trains_only_the_adapters():
    est = estimate(replace(TINY, model="gpt2", lora_rank=8, lora_targets="q,v", dtype="bf16", max_len=512))
    per_block = 2 * 8 * 768 + 2 * 768 * 8  # A (2r, C): A_q over A_v; B (2C, r): B_q over B_v
    assert est["counts"]["params_trainable"] == 12 * per_block
    assert est["components"]["grads"] == 12 * per_block * 4
    assert est["counts"]["params_frozen"] == GPT2_124M


@pytest.mark.parametrize("batch_size", [2, 6])
@pytest.mark.parametrize(
    "mode",
    [
        dict(lora_rank=0, dtype="fp32"),
        dict(lora_rank=0, dtype="bf16"),
        dict(lora_rank=4, dtype="fp32"),
        dict(lora_rank=4, dtype="bf16"),
        dict(lora_rank=4, dtype="bf16", lora_targets="all", pack=True),
        dict(lora_rank=4, dtype="bf16", lora_targets="mlp", lora_dropout=0.1),
    ],
    ids=["full-fp32", "full-bf16", "lora-fp32", "lora-bf16", "lora-all-bf16-packed", "lora-mlp-dropout"],
)
def test_each_predicted_component_is_within_10_percent_of_a_measured_step(mode, batch_size):
    m, p = measured_and_predicted(replace(TINY, batch_size=batch_size, **mode))
    for k in ("params_frozen", "params_trainable", "grads", "optimizer"):
        assert m["components"][k] == p["components"][k], k  # exact sums, both sides
    for k in ("activations", "logits"):
        assert m["components"][k] > 0
        assert p["components"][k] == pytest.approx(m["components"][k], rel=0.10), k
    for scope, got in m["activations_by_component"].items():  # block by block, not only in total
        assert p["activations_by_component"][scope] == pytest.approx(got, rel=0.10), scope


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_grad_checkpoint_lowers_measured_activations_by_the_predicted_amount(lora_rank):
    base = replace(TINY, lora_rank=lora_rank, batch_size=4, dtype="bf16")
    m0, p0 = measured_and_predicted(base)
    m1, p1 = measured_and_predicted(replace(base, grad_checkpoint=True))
    saved = m0["components"]["activations"] - m1["components"]["activations"]
    predicted = p0["components"]["activations"] - p1["components"]["activations"]
    assert saved > 0  # it does lower them ...
    assert predicted == pytest.approx(saved, rel=0.15)  # ... by the predicted amount


def test_cpu_measurement_has_no_zero_by_accident_numbers():
    m = measure(replace(TINY, lora_rank=4, dtype="bf16"))
    assert all(m["components"][k] > 0 for k in COMPONENTS)
    assert len(m["activations_by_component"]) == 2 + 2  # ln_f and head, two blocks (embeddings frozen)
    assert all(v > 0 for v in m["activations_by_component"].values())
    assert set(m["phases"]) == {"forward", "backward", "optimizer"}
    for row in m["phases"].values():
        assert (
            row["heap_at_end"] > 0 and row["rss_at_end"] > 0 and row["peak_rss_so_far"] >= row["rss_at_end"]
        )
        assert row["how"]
    assert set(m["how"]) == set(COMPONENTS)


def test_ledger_counts_a_storage_once_and_never_a_parameter():
    model = build_model(TINY, torch.device("cpu"), torch.float32, log=lambda *a: None)
    ledger = SavedTensorLedger(model)
    w = next(model.parameters())
    x = torch.randn(1000, requires_grad=True)
    with ledger.hooks():
        ledger.on = True
        y = x * x  # saves x twice (self and other): one storage
        (y.view(10, 100) @ torch.randn(100, 3, requires_grad=True)).sum()  # a view of y, and the matrix
        (w * 2.0).sum()  # saves nothing new: w is a parameter (and a scalar multiply saves no tensor)
        (w.sum() * x).sum()
    ledger.close()
    assert ledger.bytes["embeddings"] == 2 * 1000 * 4 + 3 * 100 * 4 + 4  # x, y, the (100, 3) matrix, w.sum()


def test_synthetic_batch_masks_the_prompt_and_packs_two_examples_per_row():
    b = synthetic_batch(3, 20, 50257, target_fraction=0.5, pack=True)
    assert b["mask"].shape == (3, 1, 20, 20) and not b["mask"][0, 0, 15, 5]  # no attention across examples
    assert b["pos"][0, 10] == 0 and b["n_targets"] == 3 * 10
    assert (b["targets"][:, :5] == -100).all() and (b["targets"][:, 10:15] == -100).all()


def test_cli_json_prints_components_in_bytes_for_a_model_this_machine_need_not_run(capsys):
    argv = [
        "--model",
        "gpt2-xl",
        "--lora-rank",
        "8",
        "--batch-size",
        "4",
        "--max-len",
        "512",
        "--dtype",
        "bf16",
    ]
    assert main([*argv, "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert set(est["components"]) == set(COMPONENTS)
    assert est["total"] == sum(est["components"].values())
    assert est["config"]["n_targets"] == round(0.6 * 4 * 512)  # prompt masked: 60% of positions by default
    assert est["components"]["logits"] == 4 * est["config"]["n_targets"] * 50257 + 8 * 1229
    main(argv)
    text = capsys.readouterr().out
    assert all(k in text for k in COMPONENTS) and "GiB" in text


def test_cli_needs_no_weights_and_defaults_max_len_to_the_model_context(capsys):
    # tiny has no published weights and a 128-token context: the estimate needs neither weights nor a flag
    assert main(["--model", "tiny", "--lora-rank", "8", "--batch-size", "2", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["config"]["T"] == 128 and est["config"]["B"] == 2


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--model", "gpt5"], "--model gpt5 is not a preset"),
        (["--target-fraction", "1.5"], "--target-fraction 1.5 must be in (0, 1]"),
        (["--model", "tiny", "--max-len", "4096"], "--max-len 4096 exceeds"),
        (["--dtype", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
    ],
)
def test_bad_settings_stop_with_one_sentence(argv, says):
    with pytest.raises(UsageError, match=says.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        main(argv)


def test_profile_training_memory_writes_memory_json_and_a_measured_beside_predicted_plot(tmp_path):
    cfg = replace(TINY, lora_rank=4, dtype="bf16", profile_memory=True)
    device = torch.device("cpu")
    model = build_model(cfg, device, torch.bfloat16, log=lambda *a: None)
    amp = torch.autocast("cpu", dtype=torch.bfloat16)
    step = TrainStep(model, make_optimizer(model, cfg.lr, cfg.weight_decay), device, amp=amp)
    micro = [Batch.from_dict(synthetic_batch(2, 64, model.config.vocab_size))]
    loss, norm, report = profile_training_memory(step, micro, cfg, out=tmp_path, log=lambda *a: None)
    assert math.isfinite(loss) and norm > 0
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert saved["measured"]["components"] == report["measured"]["components"]
    assert all(abs(saved["error"][k]) < 0.10 for k in ("activations", "logits", "total"))
    assert (tmp_path / "plots" / "memory.png").stat().st_size > 10_000


def test_dry_run_text_names_every_component():
    text = format_estimate(estimate(replace(TINY, lora_rank=8, dtype="bf16", grad_checkpoint=True)))
    assert all(k in text for k in COMPONENTS)
    assert "LoRA r=8 (q,v)" in text and "grad checkpoint" in text and "1 block recompute" in text


def test_compare_writes_a_markdown_table_and_a_chart(tmp_path):
    argv = ["--model", "tiny", "--ranks", "2", "--batch-size", "2", "--max-len", "32", "--dtype", "fp32",
            "--device", "cpu", "--out-dir", str(tmp_path)]  # fmt: skip
    compare(parse_config(MemoryConfig, argv), log=lambda *a: None, isolate=False)  # the CLI: one process each
    table = (tmp_path / "memory_compare.md").read_text()
    assert "| full |" in table and "| LoRA r=2 |" in table and "peak RSS" in table
    assert "| DoRA r=2 |" in table and "| QLoRA r=2 |" in table  # --variants dora,qlora at the rank given
    assert (tmp_path / "memory_compare.png").stat().st_size > 10_000
    runs = json.loads((tmp_path / "memory_compare.json").read_text())
    full, lora = runs["full"]["measured"]["components"], runs["lora2"]["measured"]["components"]
    assert lora["optimizer"] < full["optimizer"] / 100 and lora["params_frozen"] == full["params_trainable"]
    qlora, dora = runs["qlora2"]["measured"]["components"], runs["dora2"]["measured"]["components"]
    assert (
        qlora["params_frozen"] < lora["params_frozen"] and dora["params_trainable"] > lora["params_trainable"]
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_loss_holds_one_fp32_buffer_beside_its_input_as_the_estimate_says(dtype):
    """At the loss the step's memory grows by the fp32 softmax it keeps (the logits component) and nothing
    else of that size: bf16 logits under autocast are copied to fp32 once, and that copy becomes the softmax
    in place. Peak RSS of a fresh process, before and during the loss on (V, N) = (50257, 2048) logits."""
    import subprocess
    import sys
    from pathlib import Path

    V, N = 50257, 2048
    code = f"""
import torch
from model.loss import TargetCrossEntropy
from training.hardware import peak_rss_bytes
g = torch.Generator().manual_seed(0)
logits = torch.randn({V}, {N}, generator=g, dtype=torch.{dtype}).requires_grad_()
targets = torch.randint(0, {V}, ({N},), generator=g)
peak0 = peak_rss_bytes()
loss = TargetCrossEntropy()(logits, targets).mean()
peak1 = peak_rss_bytes()
loss.backward()
assert logits.grad.dtype == logits.dtype
print(peak1 - peak0)
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown = int(done.stdout.split()[-1])
    softmax = V * N * 4  # the logits component, fp32
    mib = f"grew {grown / 2**20:.0f} MiB, the softmax is {softmax / 2**20:.0f} MiB"
    assert 0.9 * softmax < grown < 1.25 * softmax, mib


# ------------------------------------------------------------------------------------ QLoRA and DoRA
@pytest.mark.parametrize(
    "mode",
    [
        dict(quantize="nf4", dtype="fp32"),
        dict(quantize="nf4", dtype="bf16", lora_targets="all"),
        dict(lora_dora=True, dtype="bf16"),
        dict(lora_dora=True, quantize="nf4", dtype="fp32", lora_targets="all", lora_dropout=0.1),
    ],
    ids=["qlora-fp32", "qlora-all-bf16", "dora-bf16", "qdora-all-dropout"],
)
def test_qlora_and_dora_steps_are_predicted_byte_for_byte(mode):
    """NF4 codes and scales are frozen bytes (predicted from the meta model = the real buffers); the saved
    tensors, op by op, match a measured step exactly, block by block."""
    m, p = measured_and_predicted(replace(TINY, lora_rank=4, batch_size=2, **mode))
    for k in ("params_frozen", "params_trainable", "grads", "optimizer", "activations", "logits"):
        assert m["components"][k] == p["components"][k], k
    for scope, got in m["activations_by_component"].items():  # block by block
        assert p["activations_by_component"][scope] == got, scope


def test_nf4_bytes_of_every_gpt2_size_are_the_formula_and_124m_is_measured():
    """The profiler's NF4 bytes (from the meta model) are 1/2 + 1/64 + 4/(64 * 256) bytes per block weight
    + 4 per matrix for every GPT-2 size; for 124M, a real quantized model holds exactly those bytes."""
    from model.nf4 import nf4_nbytes

    for model, C, L in (("gpt2", 768, 12), ("gpt2-medium", 1024, 24), ("gpt2-large", 1280, 36),
                        ("gpt2-xl", 1600, 48)):  # fmt: skip
        est = estimate(replace(TINY, model=model, lora_rank=8, quantize="nf4", max_len=128))
        per_layer = sum(nf4_nbytes(n) for n in (3 * C * C, C * C, 4 * C * C, 4 * C * C))
        assert est["details"]["nf4_bytes"] == L * per_layer
        assert est["counts"]["params_nf4"] == 12 * C * C * L
        assert est["details"]["nf4_bytes"] / est["counts"]["params_nf4"] == pytest.approx(0.516, abs=1e-3)
    cfg = replace(TINY, model="gpt2", lora_rank=8, quantize="nf4", max_len=128)
    real = build_model(cfg, torch.device("cpu"), torch.float32, log=lambda *a: None)
    from profiler.memory import param_bytes

    assert param_bytes(real) == (estimate(cfg)["components"]["params_frozen"], 294_912 * 4)
    assert sum(b.numel() * b.element_size() for b in real.buffers()) == estimate(cfg)["details"]["nf4_bytes"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_dequantization_transient_is_predicted_exactly(dtype):
    """One dequantize of 124M's largest matrix (c_fc, 3072 x 768): its peak of live new bytes, measured op by
    op, equals nf4_dequant_peak_bytes; the estimate adds that of the largest weight to the peak bound."""
    from model.nf4 import NF4Weight
    from profiler.memory import measure_dequant_peak, nf4_dequant_peak_bytes

    w = NF4Weight(torch.randn(3072, 768) * 0.02)
    assert measure_dequant_peak(w, dtype) == nf4_dequant_peak_bytes(3072 * 768) == 6 * 3072 * 768 + 4 * 36864
    est = estimate(replace(TINY, model="gpt2", lora_rank=8, quantize="nf4", max_len=128))
    assert est["details"]["nf4_dequant_transient"] == nf4_dequant_peak_bytes(3072 * 768)


def test_dry_run_text_sets_qlora_beside_lora_for_gpt2_xl():
    cfg = replace(TINY, model="gpt2-xl", lora_rank=8, quantize="nf4", dtype="bf16", max_len=512, batch_size=4)
    est = estimate(cfg)
    lora = estimate(replace(cfg, quantize="none"))
    text = format_estimate(est)
    assert "QLoRA r=8 (q,v)" in text and "QLoRA vs LoRA at these settings" in text and "QLoRA saves" in text
    # the saving is LoRA's bf16 block weights (2 bytes each) less their NF4 bytes, less one dequantization
    saved = lora["peak_upper_bound"] - est["peak_upper_bound"]
    blocks = 12 * 1600 * 1600 * 48
    assert saved == 2 * blocks - est["details"]["nf4_bytes"] - est["details"]["nf4_dequant_transient"]
    assert est["vs_lora"]["saved"] == saved
