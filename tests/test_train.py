"""train.py: the main job, end to end on tiny configs (CPU, offline, seconds each). The parts it runs are
tested beside their files in tests/training/."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import runs

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--model",
    "tiny",
    "--init",
    "random",
    "--max-len",
    "96",
    "--batch-size",
    "4",
    "--log-every",
    "1",
    "--eval-every",
    "0",
    "--eval-batches",
    "2",
    "--dtype",
    "fp32",
]


def write_corpus(path: Path, n: int = 160) -> Path:
    """A small {docstring, code} jsonl corpus: varied, deterministic Python functions."""
    ops = [("add", "+"), ("subtract", "-"), ("multiply", "*"), ("raise", "**")]
    with open(path, "w") as f:
        for i in range(n):
            verb, op = ops[i % len(ops)]
            k = i % 7 + 1
            body = "".join(f"    y = y {op} {j}\n" for j in range(i % 5 + 1))
            code = f"def f_{i}(x):\n    y = x\n{body}    return y {op} {k}\n"
            f.write(
                json.dumps({"docstring": f"Return x after we {verb} {k} to it (variant {i}).", "code": code})
                + "\n"
            )
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "train.jsonl")


@pytest.fixture(scope="session")
def pysrc_cache(tmp_path_factory) -> Path:
    """One --cache-dir for every run on the embedded corpus: the standard library is mined once."""
    return tmp_path_factory.mktemp("pysrc-cache")


def run_train(args: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    cp = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        timeout=900,
        **kw,
    )
    if check:
        assert cp.returncode == 0, cp.stderr[-3000:]
    return cp


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("rank", ["8", "0"])
def test_smoke_run_leaves_the_whole_run_folder(tmp_path, corpus, rank):
    out = tmp_path / "run"
    cp = run_train(
        [
            *TINY,
            "--lora-rank",
            rank,
            "--max-steps",
            "30",
            "--save-every",
            "10",
            "--eval-every",
            "15",
            "--data",
            f"jsonl:{corpus}",
            "--out-dir",
            str(out),
        ],
        cwd=tmp_path,
    )
    assert "RANDOM weights" in cp.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lora_rank"] == int(rank)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 31))
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_sec", "mfu", "mem_bytes"):
        assert key in train_rows[-1]
    assert all(r["tokens_per_sec"] > 0 and r["mem_bytes"] > 0 and r["mfu"] > 0 for r in train_rows)
    assert [r["step"] for r in rows if "val_loss" in r] == [15, 30]
    assert [p.name for p in runs.checkpoints(out)] == ["step-20", "step-30"]  # keep 2
    if rank == "8":
        assert (out / "final" / "adapter_model.safetensors").is_file()
        assert (out / "merged" / "model.safetensors").is_file() and (
            out / "base" / "model.safetensors"
        ).is_file()
    else:
        assert (out / "final" / "model.safetensors").is_file() and not (out / "merged").exists()
    assert (out / "plots" / "loss.png").stat().st_size > 0 and (out / "plots" / "throughput.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["trainable_params"] > 0


def schedule(run: Path) -> list[tuple[int, float, float]]:
    """(step, loss, lr) of every logged step."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"]) for r in rows if "loss" in r]


@pytest.mark.parametrize(
    "stop, plan",
    [
        (signal.SIGKILL, ["--max-steps", "20", "--save-every", "4"]),
        (signal.SIGINT, ["--epochs", "2", "--save-every", "3", "--max-len", "80"]),
    ],
    ids=["sigkill-max-steps", "ctrl-c-epochs"],
)
def test_the_printed_resume_command_reproduces_the_uninterrupted_run(tmp_path, corpus, stop, plan):
    """Stopped by SIGKILL (after a checkpoint) or Ctrl-C (which saves one and prints the command to go on),
    then resumed with only `--resume auto --out-dir DIR`: the schedule flags not repeated come from the
    run, so the losses, the learning rates and the final weights equal those of the uninterrupted run."""
    common = [*TINY, "--lora-rank", "4", "--data", f"jsonl:{corpus}", "--lora-dropout", "0.1", *plan]
    # (dropout: the RNG state must be restored too)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_train([*common, "--out-dir", str(whole)], cwd=tmp_path)
    total = schedule(whole)[-1][0]
    assert total > 8

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *common, "--out-dir", str(cut)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not runs.latest_checkpoint(cut):
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.02)
    proc.send_signal(stop)
    out, _ = proc.communicate(timeout=240)
    stopped_at = runs.latest_checkpoint(cut)
    assert stopped_at is not None and int(stopped_at.name.split("-")[1]) < total
    if stop == signal.SIGINT:  # exit 130 and the exact command to continue
        assert proc.returncode == 130
        (line,) = [ln for ln in out.splitlines() if "continue with" in ln]
        resume = line.split("continue with ", 1)[1].split()
        assert resume == ["--resume", "auto", "--out-dir", str(cut)]
    else:
        resume = ["--resume", "auto", "--out-dir", str(cut)]
    run_train(resume, cwd=tmp_path)

    assert schedule(cut) == schedule(whole)
    a = torch.load(whole / "checkpoints" / f"step-{total}" / "state.pt", weights_only=False)["trainable"]
    b = torch.load(cut / "checkpoints" / f"step-{total}" / "state.pt", weights_only=False)["trainable"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_schedule_flag_given_on_resume_extends_the_run_and_says_so(tmp_path, corpus):
    """--max-steps given again, larger, on resume is honoured with one line; a setting that is not the
    schedule's (--lr) is ignored with one line, and the run keeps its own."""
    run = tmp_path / "run"
    common = [*TINY, "--lora-rank", "4", "--data", f"jsonl:{corpus}", "--out-dir", str(run)]
    run_train([*common, "--max-steps", "4", "--save-every", "2"], cwd=tmp_path)
    cp = run_train(
        ["--resume", "auto", "--out-dir", str(run), "--max-steps", "6", "--lr", "0.5"], cwd=tmp_path
    )
    assert "resume: --max-steps 6 instead of the run's 4; warmup and cosine are laid out again" in cp.stdout
    assert "resume: --lr 0.5 ignored; the run continues with its own 0.0002" in cp.stdout
    assert [s for s, _, _ in schedule(run)] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "config.json").read_text())["lr"] == 2e-4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--no-such-flag"], "unrecognized arguments"),
        (["--lora-rank", "-1"], "--lora-rank -1 is negative"),
        (["--lora-targets", "q,nope"], "--lora-targets"),
        (["--resume", "auto", "--out-dir", "runs/none"], "has no complete checkpoint"),
        (
            ["--device", "cpu", "--pack", "--cuda-graph", "--out-dir", "runs/none"],
            "--cuda-graph needs a CUDA",
        ),
    ],
)
def test_bad_input_is_one_sentence_and_exit_code_2(tmp_path, corpus, args, message):
    cp = run_train([*TINY, "--data", f"jsonl:{corpus}", *args], cwd=tmp_path, check=False)
    assert cp.returncode == 2, cp.stderr
    assert message in cp.stderr and "Traceback" not in cp.stderr
    assert not (tmp_path / "runs").exists()  # nothing written


def test_out_dir_with_another_run_is_refused_unless_resume_or_overwrite(tmp_path, corpus):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    cp = run_train(
        [*TINY, "--data", f"jsonl:{corpus}", "--out-dir", str(out), "--max-steps", "2"],
        cwd=tmp_path,
        check=False,
    )
    assert cp.returncode == 2 and "already holds a run" in cp.stderr
    assert (out / "config.json").read_text() == "{}"  # nothing touched
    run_train(
        [
            *TINY,
            "--data",
            f"jsonl:{corpus}",
            "--out-dir",
            str(out),
            "--max-steps",
            "2",
            "--overwrite",
            "--lora-rank",
            "0",
        ],
        cwd=tmp_path,
    )
    assert json.loads((out / "config.json").read_text())["max_steps"] == 2


def test_help_and_dry_run_need_no_network(tmp_path, corpus):
    cp = run_train(["--help"], cwd=tmp_path)
    assert "--lora-rank" in cp.stdout and "--grad-accum" in cp.stdout
    cp = run_train(
        [
            "--model",
            "gpt2",
            "--lora-rank",
            "8",
            "--dry-run",
            "--data",
            f"jsonl:{corpus}",
            "--out-dir",
            str(tmp_path / "dry"),
        ],
        cwd=tmp_path,
    )
    assert "plan:" in cp.stdout and "trainable params: 294,912" in cp.stdout
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing
    xl = ["--model", "gpt2-xl", "--lora-rank", "8", "--quantize", "nf4", "--dry-run", "--dtype", "bf16"]
    cp = run_train([*xl, "--data", f"jsonl:{corpus}", "--out-dir", str(tmp_path / "dry")], cwd=tmp_path)
    # the README's QLoRA dry run: 1.47B block weights in NF4, beside LoRA at the same settings
    assert "all params: 1,560,068,800" in cp.stdout and "QLoRA r=8 (q,v)" in cp.stdout
    assert "QLoRA vs LoRA at these settings" in cp.stdout and "QLoRA saves 2.0 GiB" in cp.stdout


@pytest.mark.slow
def test_lora_from_transformers_weights_learns_the_embedded_corpus_and_final_loads_in_peft(
    tmp_path, pysrc_cache
):
    from peft import PeftModel
    from transformers import GPT2Config, GPT2LMHeadModel

    from lora.peft_io import load_adapter
    from model.hf import load_pretrained

    torch.manual_seed(0)
    hf_dir = tmp_path / "hf"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=256)).save_pretrained(hf_dir)
    out = tmp_path / "run"
    args = ["--weights", str(hf_dir), "--cache-dir", str(pysrc_cache), "--out-dir", str(out)]
    args += "--model tiny --lora-rank 8 --lora-targets all --data pysrc --max-len 128 --batch-size 4".split()
    args += "--lr 1e-2 --max-steps 100 --log-every 1 --eval-every 0 --dtype fp32".split()
    run_train(args, cwd=tmp_path)
    curve = [loss for _, loss in losses(out)]
    first, last = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    # A random base with frozen embeddings and LayerNorms caps how far LoRA can move the logits
    # (|h| ~ sqrt(C), |wte row| ~ 0.02 sqrt(C)): a drop of a few tenths of a nat, above the batch noise.
    assert last < first - 0.1, (first, last)

    ours = load_pretrained(str(hf_dir))
    load_adapter(ours, out / "final")
    peft = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(hf_dir), out / "final").eval()
    x = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        theirs, mine = peft(x).logits, ours.eval()(x)
        base = GPT2LMHeadModel.from_pretrained(hf_dir)(x).logits
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
    assert (theirs - base).abs().max() > 1e-2  # the adapter really loaded into PEFT


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, steps, args",
    [
        ("tiny", 24, ["--lr", "1e-2", "--batch-size", "4"]),
        ("gpt2", 4, ["--lr", "2e-3", "--batch-size", "2"]),
    ],
    ids=["tiny", "124m"],
)
def test_qlora_learns_the_embedded_corpus_resumes_bit_exactly_and_merged_equals_it(
    tmp_path, pysrc_cache, model, steps, args
):
    """train.py --quantize nf4 on a random base and the embedded corpus: the loss falls; a copy of the run
    cut back to its middle checkpoint and continued with --resume auto ends with the same losses and
    bit-identical adapters; merged/ (W dequantized, dW added in fp32) loads in transformers with the logits
    of the trained model, rebuilt from base/ + the 4-bit quantization + final/ (tiny: and so does the model
    evaluate.py --run loads)."""
    from transformers import GPT2LMHeadModel

    from lora.peft_io import load_adapter
    from model.hf import load_pretrained
    from model.nf4 import quantize_model

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    common = ["--model", model, "--init", "random", "--lora-rank", "8", "--lora-targets", "all", "--data",
              "pysrc", "--cache-dir", str(pysrc_cache), "--max-len", "64", "--max-steps", str(steps),
              "--save-every", str(steps // 2), "--log-every", "1", "--eval-every", "0", "--eval-batches", "1",
              "--dtype", "fp32", "--quantize", "nf4", *args]  # fmt: skip
    run_train([*common, "--out-dir", str(whole)], cwd=tmp_path)
    curve = [loss for _, loss in losses(whole)]
    k = max(1, steps // 4)  # a random base with frozen embeddings moves slowly: a few hundredths per step
    assert sum(curve[-k:]) / k < sum(curve[:k]) / k - 0.05, curve

    shutil.copytree(whole, cut)  # the same run, as if it had stopped at its middle checkpoint
    for gone in (f"checkpoints/step-{steps}", "final", "merged", "summary.json"):
        shutil.rmtree(cut / gone, ignore_errors=True) if (cut / gone).is_dir() else (cut / gone).unlink()
    run_train(["--resume", "auto", "--out-dir", str(cut)], cwd=tmp_path)
    assert schedule(cut) == schedule(whole)
    a = torch.load(whole / "checkpoints" / f"step-{steps}" / "state.pt", weights_only=False)["trainable"]
    b = torch.load(cut / "checkpoints" / f"step-{steps}" / "state.pt", weights_only=False)["trainable"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    trained = load_pretrained(str(whole / "base"))
    quantize_model(trained)  # the same codes as in training: quantization is deterministic
    load_adapter(trained, whole / "final")
    x = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = trained.eval()(x)
        theirs = GPT2LMHeadModel.from_pretrained(whole / "merged").eval()(x).logits
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
        if model == "tiny":  # evaluate.py --run: the base through NF4 and back, the adapter merged
            opts = runs.RunModelOptions(run=str(whole))
            evaluated, _ = runs.load_model_for_inference(opts, torch.device("cpu"), torch.float32)
            torch.testing.assert_close(evaluated(x), ours, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path, corpus):
    from safetensors.torch import load_file

    common = [
        *TINY,
        "--lora-rank",
        "0",
        "--max-steps",
        "3",
        "--data",
        f"jsonl:{corpus}",
        "--batch-size",
        "4",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    run_train([*common, "--grad-accum", "2", "--out-dir", str(tmp_path / "one")], cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(ROOT / "train.py"),
            *common,
            "--out-dir",
            str(tmp_path / "two"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), abs=1e-5)
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_the_main_command_runs_offline_on_a_random_gpt2_and_says_so(tmp_path, corpus):
    """`python train.py --lora-rank 8` with no network and no cached weights (--init auto, the default):
    one loud notice before any data work, then the pipeline runs on a RANDOM GPT-2 and the run records it."""
    run = tmp_path / "run"
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "empty-hf-home"),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
    }
    args = ["--lora-rank", "8", "--data", f"jsonl:{corpus}", "--max-len", "64", "--batch-size", "2",
            "--max-steps", "1", "--eval-every", "0", "--dtype", "fp32", "--out-dir", str(run)]  # fmt: skip
    cp = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, capture_output=True,
                        text=True, timeout=900,
                        env=env)  # fmt: skip
    assert cp.returncode == 0, cp.stderr[-3000:]
    notice = cp.stdout.index("this run trains a RANDOM gpt2")
    assert notice < cp.stdout.index("plan:")  # said before the data and the model are built
    assert json.loads((run / "config.json").read_text())["init"] == "random"
    assert (run / "base" / "model.safetensors").is_file()  # the adapter's random base, kept


def test_an_empty_validation_split_is_a_warning_not_silence(tmp_path):
    """A source whose examples all sit in the train split: the run goes on and says why it has no val_loss."""
    path = tmp_path / "train-only.jsonl"
    code = "def f_{i}(x):\n    return x + {i}\n"
    path.write_text("".join(json.dumps({"docstring": f"Add {i}.", "code": code.format(i=i), "split": "train"})
                            + "\n" for i in range(8)))  # fmt: skip
    cp = run_train([*TINY, "--data", f"jsonl:{path}", "--max-steps", "1", "--out-dir", str(tmp_path / "run")],
                   cwd=tmp_path)  # fmt: skip
    assert "data: warning: the validation split has 0 examples, fewer than one batch of 4" in cp.stdout
    assert "no validation loss will be reported" in cp.stdout
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["final_val_loss"] is None


def test_early_stopping_stops_keeps_best_and_both_load_like_final(tmp_path, corpus):
    """Full fine-tuning at a learning rate that makes the validation loss climb: the run stops after
    `patience` evaluations without a new best, best/ holds the weights of the best evaluation and loads in
    transformers like final/; summary.json says where best/ came from. TensorBoard's own reader finds the
    same losses in the event file as metrics.jsonl holds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import GPT2LMHeadModel

    out = tmp_path / "run"
    args = [*TINY, "--lora-rank", "0", "--data", f"jsonl:{corpus}", "--lr", "0.3", "--warmup-steps", "0"]
    args += ["--max-steps", "40", "--eval-every", "2", "--early-stopping-patience", "2"]
    cp = run_train([*args, "--report-to", "tensorboard", "--out-dir", str(out)], cwd=tmp_path)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    best_step, best = min(vals, key=lambda sv: sv[1])
    last = vals[-1][0]
    assert last < 40 and "early stop at step" in cp.stdout  # stopped before its plan ended
    assert [s for s, _ in vals[-2:]] == [last - 2, last] and all(v >= best for _, v in vals[-2:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["best_step"] == best_step and summary["steps"] == last
    x = torch.randint(0, 50257, (1, 16))
    for name in ("best", "final"):
        model = GPT2LMHeadModel.from_pretrained(out / name).eval()
        assert torch.isfinite(model(x).logits).all()
    assert not torch.equal(*(load_file_tensor(out / n / "model.safetensors") for n in ("best", "final")))

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for tag, want in (("loss", [(r["step"], r["loss"]) for r in rows if "loss" in r]), ("val_loss", vals)):
        got = [(e.step, e.value) for e in events.Scalars(tag)]  # float32 in the file
        assert [s for s, _ in got] == [s for s, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def load_file_tensor(path: Path) -> torch.Tensor:
    """One matrix of a safetensors checkpoint (the first block's attention weight)."""
    from safetensors.torch import load_file

    sd = load_file(path)
    return next(v for k, v in sd.items() if k.endswith("h.0.attn.c_attn.weight"))


def test_lora_best_adapter_loads_in_peft(tmp_path, corpus):
    """With LoRA, best/ is a PEFT adapter like final/, on the run's saved random base."""
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    out = tmp_path / "run"
    args = [*TINY, "--lora-rank", "4", "--data", f"jsonl:{corpus}", "--max-steps", "4", "--eval-every", "2"]
    run_train([*args, "--early-stopping-patience", "3", "--out-dir", str(out)], cwd=tmp_path)
    assert (out / "best" / "adapter_model.safetensors").is_file()
    peft = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(out / "base"), out / "best").eval()
    assert torch.isfinite(peft(torch.randint(0, 50257, (1, 8))).logits).all()


def test_a_train_split_below_one_batch_names_its_cause_and_the_flag(tmp_path):
    """Most functions longer than --max-len: exit 2 with the count dropped as too long and the flag to raise,
    nothing written."""
    path = tmp_path / "long.jsonl"
    body = "".join(f"    x = x + {j}\n" for j in range(40))
    rows = [{"docstring": f"Add things {i}.", "code": f"def f_{i}(x):\n{body * (i > 0)}    return x\n",
             "split": "train"} for i in range(6)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cp = run_train([*TINY, "--max-len", "64", "--data", f"jsonl:{path}", "--out-dir", str(tmp_path / "run")],
                   cwd=tmp_path, check=False)  # fmt: skip
    assert cp.returncode == 2, cp.stderr
    assert "5 were dropped as longer than --max-len 64 tokens (raise --max-len" in cp.stderr
    assert "Traceback" not in cp.stderr and not (tmp_path / "run").exists()


def test_the_start_shows_a_short_config_block_and_the_plan_estimates_the_time(tmp_path, corpus):
    cp = run_train([*TINY, "--data", f"jsonl:{corpus}", "--max-steps", "2", "--out-dir", str(tmp_path / "r")],
                   cwd=tmp_path)  # fmt: skip
    lines = cp.stdout.splitlines()
    block = lines[lines.index("config:") + 1 :]
    block = block[: next(i for i, ln in enumerate(block) if not ln.startswith("  "))]
    assert "  --model" in block[0] or any(ln.split()[:2] == ["--model", "tiny"] for ln in block)
    assert any(ln.split() == ["--max-steps", "2"] for ln in block) and len(block) < 25
    assert len({ln.index(ln.split()[1]) for ln in block}) == 1  # values aligned in one column
    (plan,) = [ln for ln in lines if ln.startswith("plan:")]
    assert "on this device" in plan and "s per micro-batch, measured" in plan


def test_a_yaml_config_runs_and_an_unknown_key_is_one_sentence(tmp_path, corpus):
    """configs/smoke.yaml runs as the README gives it (its data and length overridden by flags here); a file
    with a misspelled option fails before anything is written, naming the key."""
    out = tmp_path / "smoke"
    flags = ["--data", f"jsonl:{corpus}", "--max-steps", "2", "--out-dir", str(out)]
    run_train(["--config", str(ROOT / "configs" / "smoke.yaml"), *flags], cwd=tmp_path)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "tiny" and saved["lora_rank"] == 8 and saved["max_steps"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nlora_rnk: 4\n")
    cp = run_train(["--config", str(bad), "--out-dir", str(tmp_path / "x")], cwd=tmp_path, check=False)
    assert cp.returncode == 2 and cp.stderr.strip().splitlines() == [
        f"error: --config {bad} has unknown key: lora_rnk (did you mean lora_rank?)"
    ]
    assert not (tmp_path / "x").exists()
