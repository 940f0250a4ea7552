"""training/fsdp.py: FSDP2 on 2 CPU ranks (gloo) equals one process with the same global batch, its per-rank
bytes are profiler/fsdp.py's prediction, final/ loads in transformers and PEFT, and a killed sharded
train.py run resumes bit for bit. The sharded cases run in one torchrun launch
(tests/training/fsdp_worker.py): each launch pays for a torch import per rank."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import runs
from cli import UsageError
from profiler.fsdp import sharded_bytes
from tests.test_train import TINY, schedule, write_corpus
from training import fsdp
from training.build import meta_model
from training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (torchrun starts each rank in a session of its own: killing torchrun's
    process group leaves the ranks running)."""
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            kids += [int(c) for c in f.read().split()]
    return [k for c in kids for k in (c, *descendants(c))]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[dict, Path]:
    """The worker's results (losses, weights, bytes per rank) and its output folder."""
    out = tmp_path_factory.mktemp("fsdp")
    cp = subprocess.run(torchrun([str(ROOT / "tests" / "training" / "fsdp_worker.py"), str(out)]), cwd=out,
                        env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert cp.returncode == 0, cp.stderr[-3000:]
    return torch.load(out / "results.pt", weights_only=False), out


@pytest.mark.slow
@pytest.mark.parametrize("case", ["full", "full-ckpt", "lora", "lora-ckpt"])
def test_two_sharded_ranks_match_one_process_with_the_same_global_batch(sharded, case):
    """Losses, clipped global gradient norms and final weights (gathered) of full fine-tuning and LoRA, with
    and without activation checkpointing, equal the single process's to 1e-5."""
    r = sharded[0]["cases"][case]
    assert len(r["fsdp"]) == 3
    flat = [[x for loss_and_norm in curve for x in loss_and_norm] for curve in (r["fsdp"], r["single"])]
    assert flat[0] == pytest.approx(flat[1], abs=1e-5)
    assert max(n for _, n in r["single"]) > 0.5 or case.startswith("lora")  # full: the clip at 0.5 acts
    a, b = r["fsdp_weights"], r["single_weights"]
    assert a.keys() == b.keys()
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, model, overrides, dtype",
    [
        ("tiny-full", "tiny", dict(lora_rank=0), torch.float32),
        ("tiny-lora-bf16", "tiny", dict(lora_rank=4, lora_targets="all"), torch.bfloat16),
        ("gpt2-full", "gpt2", dict(lora_rank=0), torch.float32),
    ],
)
def test_measured_bytes_per_rank_equal_the_prediction(sharded, case, model, overrides, dtype):
    """Parameters (padded slices), gradients and AdamW state as each rank holds them after one step equal
    profiler.fsdp's prediction to the byte; wte's 50257 rows do not split evenly over 2 ranks, so the last
    rank's slice is padded and its AdamW state smaller."""
    cfg = TrainConfig(model=model, init="random", max_len=16, **overrides)
    predicted_model = meta_model(cfg, dtype)
    measured = sharded[0]["bytes"][case]
    assert len(measured) == 2
    for rank, got in enumerate(measured):
        want = sharded_bytes(predicted_model, 2, rank)
        assert set(got) == {"params_frozen", "params_trainable", "grads", "optimizer"}
        assert got == {k: want[k] for k in got}, rank
    if case.endswith("full"):  # rank 0 holds wte's extra row: more AdamW state; parameters are padded
        assert measured[0]["optimizer"] > measured[1]["optimizer"] and measured[0]["params_trainable"] == (
            measured[1]["params_trainable"])  # fmt: skip
    else:  # the frozen slices, some of them bf16 (LoRA's frozen Linear weights under bf16)
        assert measured[0]["params_frozen"] > 0 and measured[0]["params_trainable"] < 10_000


@pytest.mark.slow
def test_final_weights_written_from_the_shards_load_in_transformers_and_peft(sharded):
    """final/ of full fine-tuning loads in transformers; LoRA's final/ loads in PEFT on its base, and equals
    merged/ loaded in transformers; both give the logits of the single process's trained weights."""
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    from model.gpt2 import GPT, config_for

    results, out = sharded
    x = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    for case in ("full-ckpt", "lora-ckpt"):
        ours = GPT(config_for("tiny"))
        if case.startswith("lora"):
            from lora.config import LoRAConfig
            from lora.lora import inject_lora

            inject_lora(ours, LoRAConfig(rank=4, targets=("all",)), verbose=False)
        ours.load_state_dict(results["cases"][case]["single_weights"])
        with torch.no_grad():
            want = ours.eval()(x)
            if case == "full-ckpt":
                got = GPT2LMHeadModel.from_pretrained(out / case / "final").eval()(x).logits
            else:
                base = GPT2LMHeadModel.from_pretrained(out / case / "base")
                got = PeftModel.from_pretrained(base, out / case / "final").eval()(x).logits
                merged = GPT2LMHeadModel.from_pretrained(out / case / "merged").eval()(x).logits
                torch.testing.assert_close(merged, want, atol=1e-4, rtol=0)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_a_killed_sharded_run_resumes_with_the_same_losses_and_weights(tmp_path):
    """torchrun, 2 ranks, --shard fsdp, LoRA with dropout (each rank's RNG must come back) and
    --grad-checkpoint: SIGKILL after a checkpoint, then --resume auto gives the uninterrupted run's losses,
    learning rates and final trainable weights exactly."""
    corpus = write_corpus(tmp_path / "train.jsonl")
    common = [str(ROOT / "train.py"), *TINY, "--lora-rank", "4", "--lora-dropout", "0.1", "--grad-checkpoint",
              "--shard", "fsdp", "--max-steps", "6", "--save-every", "2", "--peak-tflops", "1",
              "--data", f"jsonl:{corpus}", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    cp = subprocess.run(torchrun([*common, "--out-dir", str(whole)]), cwd=tmp_path, env=ENV, text=True,
                        capture_output=True, timeout=600)  # fmt: skip
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert (whole / "final" / "adapter_model.safetensors").is_file() and (whole / "merged").is_dir()

    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen(torchrun([*common, "--out-dir", str(cut)]), cwd=tmp_path, env=ENV, **quiet)
    deadline = time.time() + 300
    while time.time() < deadline and not runs.latest_checkpoint(cut):
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.02)
    for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun and both ranks, as a crash would
        with contextlib.suppress(ProcessLookupError):  # one that ended meanwhile
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    stopped_at = runs.latest_checkpoint(cut)
    assert stopped_at is not None and int(stopped_at.name.split("-")[1]) < 6
    cp = subprocess.run(torchrun([str(ROOT / "train.py"), "--resume", "auto", "--out-dir", str(cut)]),
                        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert f"resumed from {stopped_at} at step" in cp.stdout

    assert schedule(cut) == schedule(whole) and len(schedule(whole)) == 6
    a = torch.load(whole / "checkpoints" / "step-6" / "state.pt", weights_only=False)
    b = torch.load(cut / "checkpoints" / "step-6" / "state.pt", weights_only=False)
    assert a["trainable"].keys() == b["trainable"].keys()
    assert all(torch.equal(a["trainable"][k], b["trainable"][k]) for k in a["trainable"])
    assert len(a["rng_ranks"]) == 2 and json.loads((cut / "config.json").read_text())["shard"] == "fsdp"


# ------------------------------------------------------------------------------------ in one process
def test_optimizer_state_round_trips_between_names_and_positions():
    """The gathered state (keyed by parameter name) is saved as a single process keys it (positions in
    param_groups order), and read back to names for the sharded optimizer."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW([{"params": [model[0].weight, model[1].weight]}, {"params": [model[0].bias]}])
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    plain = opt.state_dict()
    named = fsdp._by_name(plain, model, opt)
    assert named["param_groups"][0]["params"] == ["0.weight", "1.weight"] and set(named["state"]) == {
        "0.weight", "1.weight", "0.bias"}  # fmt: skip
    back = fsdp._by_index(named)
    assert back["param_groups"] == plain["param_groups"] and back["state"].keys() == plain["state"].keys()
    assert all(torch.equal(back["state"][i]["exp_avg"], plain["state"][i]["exp_avg"]) for i in plain["state"])


@pytest.mark.parametrize(
    "overrides, distributed, dtype, message",
    [
        (dict(shard="fsdp"), False, torch.float32, "--shard fsdp runs under torchrun"),
        (dict(shard="fsdp"), True, torch.float16, "--shard fsdp has no fp16"),
        (dict(shard="fsdp", compile=True), True, torch.float32, "not combined with --compile"),
        (dict(shard="fsdp", profile_memory=True), True, torch.float32, "python -m profiler.fsdp"),
        (dict(world=4), False, torch.float32, "--world 4 plans an FSDP run"),
        (dict(shard="fsdp", world=4), True, torch.float32, "--world 4 plans an FSDP run"),
    ],
)
def test_sharding_says_in_one_sentence_why_it_cannot_run(overrides, distributed, dtype, message):
    with pytest.raises(UsageError, match=message):
        fsdp.check(replace(TrainConfig(), **overrides), distributed, dtype)
    fsdp.check(replace(TrainConfig(), dry_run=True, shard="fsdp", world=4), False, torch.float32)  # fine
