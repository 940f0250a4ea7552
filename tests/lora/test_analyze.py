"""lora/spectra.py on matrices of known structure, and lora/analyze.py on every kind of update it reads: our
slice adapters (against the explicitly formed dW), PEFT's own LoRA and DoRA adapters (against PEFT's merged
weights), and full runs (W_final - W_base, a random base rebuilt from the run's seed)."""

import json
import shutil

import pytest
import torch

from cli import UsageError
from lora.analyze import load_run, main
from lora.config import LoRAConfig
from lora.lora import inject_lora, lora_layers
from lora.peft_io import save_adapter
from lora.spectra import (
    amplification,
    effective_rank,
    energy_top,
    numerical_rank,
    random_orthonormal,
    rank_for_energy,
    subspace_similarity,
    summarize,
    svd,
    svd_of_product,
)
from model.gpt2 import GPT, config_for
from model.hf import save_pretrained

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def low_rank(m, n, k, seed=0):
    g = gen(seed)
    return torch.randn(m, k, generator=g, dtype=F64) @ torch.randn(k, n, generator=g, dtype=F64)


# ------------------------------------------------------------------ the math on known structure
@pytest.mark.parametrize("k", [1, 5])
def test_rank_k_update_has_exactly_k_nonzero_singular_values_and_the_energy_table_says_so(k):
    dW = low_rank(48, 32, k)
    d = svd(dW)
    assert numerical_rank(d.S, dW.shape) == k
    assert d.S[k - 1] / d.S[0] > 1e-3 and (len(d.S) == k or d.S[k] / d.S[0] < 1e-13)
    info = summarize(d, dW.shape, ks=(1, 4, 8))
    assert len(info["singular_values"]) == k and info["rank_99"] <= k
    assert info["energy_top"]["8"] == pytest.approx(1.0, abs=1e-12)
    assert (info["energy_top"]["4"] < 1 - 1e-6) == (k > 4)
    assert energy_top(d.S, k) == pytest.approx(1.0, abs=1e-12) and (k == 1 or energy_top(d.S, k - 1) < 0.999)
    # the same update as factors B (48, 8) @ A (8, 32) whose product has rank k: R values, k of them nonzero
    B = dW @ torch.randn(32, 8, generator=gen(1), dtype=F64)  # spans dW's column space
    A = torch.linalg.pinv(B) @ dW  # B @ A = dW, A (8, 32)
    f = svd_of_product(B, A)
    assert numerical_rank(f.S, dW.shape) == k
    torch.testing.assert_close(f.S[:k], d.S[:k], rtol=1e-10, atol=0)


def test_effective_rank_counts_equal_directions_and_energy_ranks_count_the_fewest_needed():
    assert effective_rank(torch.tensor([3.0, 0, 0])) == pytest.approx(1.0)
    assert effective_rank(torch.ones(7)) == pytest.approx(7.0)
    assert 1 < effective_rank(torch.tensor([10.0, 1, 1])) < 3
    S = torch.tensor([3.0, 1.0, 1.0, 0.5], dtype=F64)  # energies 9, 1, 1, 0.25: cumulative .8, .89, .98, 1
    assert (
        rank_for_energy(S, 0.80) == 1
        and rank_for_energy(S, 0.88) == 2
        and rank_for_energy(S, 0.90) == 3
        and rank_for_energy(S, 0.99) == 4
    )


def test_phi_is_one_for_identical_subspaces_and_for_a_rotated_basis_of_the_same_one():
    V = random_orthonormal(64, 8, gen(0))
    assert torch.allclose(subspace_similarity(V, V), torch.ones(8, 8, dtype=F64), atol=1e-12)
    rotated = V @ random_orthonormal(8, 8, gen(1))  # same span, other basis: equal at the full dimension
    assert subspace_similarity(V, rotated)[7, 7] == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(V, rotated)[0, 0] < 0.9


def test_phi_of_unrelated_random_subspaces_is_about_max_i_j_over_n():
    """E|U_i^T U_j|_F^2 = i j / n for random subspaces, so phi(i, j) ~ max(i, j) / n. Tolerance: the mean of
    200 independent pairs within 4 standard errors of that, at every (i, j) checked."""
    n, draws = 256, 200
    g = gen(0)  # columns of Q from Gaussian matrices: uniformly random subspaces (signs do not matter here)
    V1 = torch.linalg.qr(torch.randn(draws, n, 8, generator=g, dtype=F64)).Q  # one batched QR per side
    V2 = torch.linalg.qr(torch.randn(draws, n, 16, generator=g, dtype=F64)).Q
    phis = torch.stack([subspace_similarity(a, b) for a, b in zip(V1, V2)])  # (draws, 8, 16)
    for i, j in [(1, 1), (1, 16), (4, 4), (8, 16)]:
        x = phis[:, i - 1, j - 1]
        stderr = x.std() / draws**0.5
        assert abs(x.mean() - max(i, j) / n) < 4 * stderr, (i, j, float(x.mean()), max(i, j) / n)
    assert phis[:, 7, 15].max() < 3 * 16 / n  # a single pair is far from "shared" too


def test_amplification_is_small_inside_W_top_directions_and_large_orthogonal_to_them():
    n = 64
    U, V = random_orthonormal(n, n, gen(0)), random_orthonormal(n, n, gen(1))
    sigma = torch.logspace(1, -2, n, dtype=F64)  # W's spectrum: 10 down to 0.01
    W = U @ torch.diag(sigma) @ V.T
    inside = 0.1 * U[:, :4] @ V[:, :4].T  # dW along W's 4 strongest directions
    outside = 0.1 * U[:, -4:] @ V[:, -4:].T  # dW along its 4 weakest
    a_in = amplification(W, svd(inside), 4, draws=8, generator=gen(2))
    a_out = amplification(W, svd(outside), 4, draws=8, generator=gen(2))
    assert a_in["factor"] < a_in["factor_random"] < a_out["factor"]
    assert a_in["factor_random"] == pytest.approx(a_out["factor_random"])  # the control sees only |dW| and W
    assert a_in["proj_W_on_dW"] == pytest.approx(float(sigma[:4].norm()))  # W's own top-4 part
    assert a_out["proj_W_on_dW"] == pytest.approx(float(sigma[-4:].norm()))


# ------------------------------------------------------------------ updates read from disk
def tiny_with_lora(targets, seed=0):
    torch.manual_seed(seed)
    model = GPT(config_for("tiny"))
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets=targets), verbose=False)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.1)  # a trained-looking B: the update is nonzero
    return model


def test_slices_analysed_separately_equal_the_analysis_of_the_explicitly_formed_delta(tmp_path):
    model = tiny_with_lora("q,v,mlp.c_fc")
    save_adapter(model, tmp_path / "adapter")
    layers = lora_layers(model)
    plain = GPT(config_for("tiny"))  # the base: the same weights without the adapter
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k})
    save_pretrained(plain, tmp_path / "base")

    run = load_run(tmp_path / "adapter", base=str(tmp_path / "base"))
    assert run.kind == "lora" and [u.key for u in run.updates] == [
        "h.0.q",
        "h.0.v",
        "h.0.mlp.c_fc",
        "h.1.q",
        "h.1.v",
        "h.1.mlp.c_fc",
    ]  # k is off
    for u in run.updates:
        name = f"transformer.h.{u.layer}.{'attn.c_attn' if u.matrix in 'qkv' else u.matrix}"
        layer = layers[name]  # dW = s * B_full @ A, formed explicitly (in float64, as the analysis computes)
        explicit = layer.scaling * layer.full_B().detach().to(F64) @ layer.lora_A.detach().to(F64)
        if u.matrix in "qkv":
            explicit = explicit.chunk(3)["qkv".index(u.matrix)]
        assert u.B.shape[1] == 4 and u.rank == 4  # the slice's own rank-4 factors, not the 2r block
        torch.testing.assert_close(u.delta(), explicit, rtol=1e-6, atol=1e-9)
        ours, dense = summarize(u.svd(), u.shape, (1, 4, 8)), summarize(svd(explicit), u.shape, (1, 4, 8))
        assert ours["numerical_rank"] == dense["numerical_rank"] == 4
        for key in ("norm_dW", "effective_rank", "rank_90", "rank_99"):
            assert ours[key] == pytest.approx(dense[key], rel=1e-6)
        assert ours["singular_values"] == pytest.approx(dense["singular_values"], rel=1e-6)
        assert subspace_similarity(u.svd().V, svd(explicit).V[:, :4])[3, 3] == pytest.approx(1, abs=1e-9)
        a = amplification(u.W, u.svd(), 4, 4, gen(0))
        b = amplification(u.W, svd(explicit), 4, 4, gen(0))
        assert a["factor"] == pytest.approx(b["factor"], rel=1e-6)


def peft_adapter(folder, base_dir, use_dora):
    """A PEFT adapter trained a few steps by PEFT itself, and PEFT's merged (out, in) weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel.from_pretrained(base_dir)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "mlp.c_proj"],
        fan_in_fan_out=True,
        use_dora=use_dora,
        task_type="CAUSAL_LM",
    )
    peft = get_peft_model(hf, cfg)
    x = torch.randint(0, 50257, (2, 16), generator=gen(1))
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        peft(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    peft.eval().save_pretrained(folder)
    merged = peft.merge_and_unload().state_dict()
    return {
        k.removesuffix(".weight"): v.T.to(F64)
        for k, v in merged.items()
        if k.endswith("c_attn.weight") or k.endswith("mlp.c_proj.weight")
    }  # Conv1D (in, out) -> (out, in)


@pytest.fixture(scope="module")
def peft_adapters(hf_tiny_dir, tmp_path_factory):
    """{False: (LoRA adapter folder, PEFT's merged weights), True: the same for DoRA}, made once."""
    folder = tmp_path_factory.mktemp("peft")
    return {
        dora: (folder / str(dora), peft_adapter(folder / str(dora), hf_tiny_dir, dora))
        for dora in (False, True)
    }


@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_lora_and_dora_adapters_give_the_update_peft_merges(hf_tiny_dir, peft_adapters, use_dora):
    folder, merged = peft_adapters[use_dora]
    run = load_run(folder, base=str(hf_tiny_dir))
    assert run.kind == ("dora" if use_dora else "lora") and len(run.updates) == 2 * 4  # q, k, v, mlp.c_proj
    for layer in (0, 1):
        ups = {u.matrix: u for u in run.updates if u.layer == layer}
        W = torch.cat([ups[m].W for m in "qkv"])
        ours = torch.cat([ups[m].delta() for m in "qkv"])  # the slices, put back together
        theirs = merged[f"transformer.h.{layer}.attn.c_attn"] - W
        assert theirs.abs().max() > 1e-4  # the adapter really moved the weights
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)
        up = ups["mlp.c_proj"]
        torch.testing.assert_close(
            up.delta(), merged[f"transformer.h.{layer}.mlp.c_proj"] - up.W, rtol=0, atol=2e-6
        )
    if use_dora:  # the magnitude rescales whole rows of W: the update is no longer rank 4
        assert max(numerical_rank(u.svd().S, u.shape) for u in run.updates) > 4


def test_a_dora_adapter_without_its_base_or_a_bare_full_checkpoint_stops_with_one_sentence(
    hf_tiny_dir, peft_adapters, tmp_path
):
    shutil.copytree(peft_adapters[True][0], tmp_path / "dora")
    config = tmp_path / "dora" / "adapter_config.json"
    moved = json.loads(config.read_text()) | {"base_model_name_or_path": str(tmp_path / "moved")}
    config.write_text(json.dumps(moved))  # the base it names is gone
    with pytest.raises(UsageError, match="DoRA.*--base"):
        load_run(tmp_path / "dora")
    with pytest.raises(UsageError, match="no train.py run.*--base"):
        load_run(hf_tiny_dir)
    same = load_run(hf_tiny_dir, base=str(hf_tiny_dir))  # a checkpoint against itself: every update is 0
    assert same.kind == "full" and len(same.updates) == 2 * 6
    assert all(float(u.delta().abs().max()) == 0 for u in same.updates)
    with pytest.raises(UsageError, match="neither a run folder"):
        load_run(tmp_path)


def write_run(folder, lora_rank, seed, final_model=None, adapter_model=None):
    """A run folder as train.py leaves it (config.json, final/, base/ for a random-init LoRA run)."""
    folder.mkdir(parents=True)
    cfg = dict(lora_rank=lora_rank, init="random", model="tiny", seed=seed, weights=None)
    (folder / "config.json").write_text(json.dumps(cfg))
    if adapter_model is not None:
        save_adapter(adapter_model, folder / "final", base_model_name_or_path=str(folder / "base"))
    else:
        save_pretrained(final_model, folder / "final")


def test_cli_on_a_full_run_with_a_rebuilt_random_base_and_a_lora_run(tmp_path, capsys):
    seed = 3
    torch.manual_seed(seed)  # what train.py --init random --seed 3 --model tiny starts from
    full = GPT(config_for("tiny"))
    with torch.no_grad():
        full.transformer.h[0].attn.c_attn.weight[:32] += low_rank(32, 32, 2, seed=5).float()  # q of layer 0
        full.transformer.h[1].mlp.c_fc.weight += low_rank(128, 32, 3, seed=6).float()
    write_run(tmp_path / "full", 0, seed, final_model=full)
    lora = tiny_with_lora("q,mlp.c_fc", seed=seed)
    write_run(tmp_path / "lora", 4, seed, adapter_model=lora)
    torch.manual_seed(seed)
    base = GPT(config_for("tiny"))
    save_pretrained(base, tmp_path / "lora" / "base")

    main([str(tmp_path / "full"), str(tmp_path / "lora"), "--out", str(tmp_path / "out"), "--layers", "0,1"])
    out = capsys.readouterr().out
    assert "full  (full fine-tune, RANDOM base random tiny rebuilt from --seed 3)" in out
    assert "lora  (LoRA r=4, RANDOM base" in out and "phi, full vs lora" in out
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert result["schema"] == "lora.analyze/1" and [r["kind"] for r in result["runs"]] == ["full", "lora"]
    mods = result["runs"][0]["modules"]
    assert mods["h.0.q"]["numerical_rank"] == 2 and mods["h.1.mlp.c_fc"]["numerical_rank"] == 3
    assert mods["h.0.q"]["energy_top"]["1"] < 1 - 1e-6 and mods["h.0.q"]["energy_top"]["4"] == pytest.approx(
        1
    )
    assert mods["h.0.k"]["norm_dW"] == 0 and mods["h.1.q"]["amplification"] is None  # untouched: no update
    W_q = base.transformer.h[0].attn.c_attn.weight.detach()[:32].double()
    assert mods["h.0.q"]["relative_change"] == pytest.approx(
        float(low_rank(32, 32, 2, 5).norm() / W_q.norm()), 1e-6
    )
    lora_mods = result["runs"][1]["modules"]
    assert set(lora_mods) == {"h.0.q", "h.1.q", "h.0.mlp.c_fc", "h.1.mlp.c_fc"}
    assert all(m["amplification"]["r"] == 4 for m in lora_mods.values())  # the base/ was found
    grid = result["similarity"][0]["modules"]["h.0.q"]
    assert (grid["i"], grid["j"], grid["n"]) == (2, 4, 32) and len(grid["phi"]) == 2
    for name in (
        "where.png",
        "amplification.png",
        "similarity_full_vs_lora.png",
        "spectra_full.png",
        "energy_lora.png",
    ):
        assert (tmp_path / "out" / name).stat().st_size > 10_000
