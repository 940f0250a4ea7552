"""CodeParrot through the whole toolkit, offline: a random tiny CodeParrot-shaped model with the locally
trained tokenizer (conftest.codeparrot_tiny) trains a LoRA adapter (train.py), is evaluated (evaluate.py) and
writes code (generate.py), its run carrying the tokenizer from the data cache to the merged export; --dry-run
and the profiler work on the presets; a random preset without its tokenizer stops with one sentence."""

import json

import pytest

import evaluate
import generate
import train


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty hub cache, whatever this machine has cached."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A few dozen {docstring, code} lines, deterministic."""
    path = tmp_path_factory.mktemp("corpus") / "functions.jsonl"
    ops = [("add", "+"), ("subtract", "-"), ("multiply", "*")]
    with path.open("w") as f:
        for i in range(60):
            verb, op = ops[i % 3]
            code = f"def f_{i}(x):\n    y = x {op} {i % 7 + 1}\n    return y {op} {i % 5 + 1}\n"
            f.write(json.dumps({"docstring": f"Return x after we {verb} twice (variant {i}).", "code": code}))
            f.write("\n")
    return path


def test_a_random_codeparrot_needs_its_tokenizer_and_says_so_offline(offline, corpus, tmp_path, capsys):
    args = ["--model", "codeparrot-small", "--init", "random", "--data", f"jsonl:{corpus}", "--dry-run",
            "--cache-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        from cli import run_main

        run_main(train.main, args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "codeparrot/codeparrot-small is not cached and cannot be fetched" in err and "--tokenizer" in err


def test_dry_run_and_profiler_on_the_presets(offline, local_bpe, corpus, tmp_path, capsys):
    from profiler.memory import estimate
    from training.config import TrainConfig

    args = ["--model", "codeparrot-small", "--tokenizer", str(local_bpe), "--data", f"jsonl:{corpus}",
            "--cache-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path / "run"), "--dry-run"]  # fmt: skip
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "memory estimate: codeparrot-small LoRA r=8" in out and "<|endoftext|> = 0" in out
    assert not (tmp_path / "run").exists()
    lora = estimate(TrainConfig(model="codeparrot", lora_rank=8, batch_size=4, max_len=512, dtype="bf16"))
    full = estimate(TrainConfig(model="codeparrot", lora_rank=0, batch_size=4, max_len=512, dtype="bf16"))
    assert 1.5e9 < lora["counts"]["params_frozen"] < 1.55e9 and full["total"] > 4 * lora["total"]


@pytest.mark.slow
def test_lora_train_evaluate_generate_with_the_models_own_tokenizer(
    offline, codeparrot_tiny, local_bpe, corpus, tmp_path, capsys
):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from data.prepare import TokenDataset
    from data.tokenizer import load_tokenizer

    tok = load_tokenizer(local_bpe)
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = ["--weights", str(codeparrot_tiny), "--lora-rank", "4", "--lora-targets", "q,v,mlp.c_fc",
            "--data", f"jsonl:{corpus}", "--cache-dir", str(cache), "--out-dir", str(run), "--max-len", "96",
            "--batch-size", "4", "--max-steps", "3", "--eval-every", "0", "--eval-batches", "1",
            "--log-every", "1", "--dtype", "fp32"]  # fmt: skip
    assert train.main(args) == 0
    log = capsys.readouterr()
    assert f"data: tokenizer {codeparrot_tiny}: 32,768 ids, <|endoftext|> = 0" in log.out
    assert "eos_token_id=50256" in log.err  # CodeParrot's config.json disagrees with its tokenizer: said

    # the token cache: the local tokenizer's ids, every example ending with its <|endoftext|> (0)
    (folder,) = [p for p in cache.iterdir() if p.name.startswith("jsonl-")]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["tokenizer"]["digest"] == tok.digest and meta["tokenizer"]["eot"] == 0
    train_set = TokenDataset(folder / "train", eot=0)
    ids, _ = train_set.example(0)
    assert ids[-1] == 0 and tok.decode(ids[:-1]).startswith("Prompt: Return x after we")

    # the run carries the tokenizer: the adapter, and the merged model that plain transformers loads
    for sub in ("final", "merged"):
        assert load_tokenizer(run / sub).digest == tok.digest
    merged = GPT2LMHeadModel.from_pretrained(run / "merged")
    assert merged.config.eos_token_id == 0 and merged.config.scale_attn_by_inverse_layer_idx
    assert AutoTokenizer.from_pretrained(run / "merged")("def f(x):")["input_ids"] == tok.encode("def f(x):")

    argv = ["--run", str(run), "--limit", "2", "--humaneval-limit", "2", "--max-new-tokens", "8",
            "--tag", "e2e", "--dtype", "fp32"]  # fmt: skip
    assert evaluate.main(argv) == 0
    rows = [json.loads(x) for x in (run / "eval" / "e2e" / "samples.jsonl").read_text().splitlines()]
    assert {r["set"] for r in rows} == {"split", "humaneval"} and len(rows) == 4
    capsys.readouterr()

    argv = ["--run", str(run), "--max-new-tokens", "12", "--json", "--dtype", "fp32", "Add two numbers."]
    assert generate.main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model"]["tokenizer"] == str(run / "final")  # the run's own, saved beside its adapter
    assert record["model_prompt"] == "Prompt: Add two numbers.\nCode:\n"
    assert len(record["completions"]) == 1
