"""`python -m model.inspect SOURCE`: a report on a good checkpoint; on a bad one, exit code 2 and one line
on stderr, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import run_main
from model.inspect import main

ROOT = Path(__file__).resolve().parents[2]


def test_report_shows_config_parameters_dtype_and_size(hf_tiny_dir, capsys):
    assert main([str(hf_tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "n_layer=2 n_head=4 n_embd=32 block_size=128 vocab_size=50257" in out
    assert "(from config.json)" in out and "transformers layout" in out and "float32 (28 tensors)" in out
    assert "total" in out and "lm_head tied to wte" in out


def test_json_counts_match_transformers(hf_tiny_dir, hf_tiny_hub_file, capsys):
    from transformers import GPT2LMHeadModel

    n_hf = sum(p.numel() for p in GPT2LMHeadModel.from_pretrained(hf_tiny_dir).parameters())  # tied: once
    main(["--source", str(hf_tiny_hub_file), "--json"])  # the flag form works like the positional one
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["total"] == n_hf
    assert info["layout"] == "hub" and info["files"] == [str(hf_tiny_hub_file)]
    assert info["file_bytes"] == hf_tiny_hub_file.stat().st_size
    # the hub file also stores 2 mask buffers per layer: 28 weights + 2 layers x 2 buffers
    assert info["stored_dtypes"] == {"float32": 32}


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model.inspect", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _truncated(tmp_path: Path, hf_tiny_dir: Path) -> str:
    data = (hf_tiny_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:1000])
    return str(tmp_path / "model.safetensors")


def _no_weights(tmp_path: Path, hf_tiny_dir: Path) -> str:
    (tmp_path / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    return str(tmp_path)


def _bert(tmp_path: Path, hf_tiny_dir: Path) -> str:
    import torch
    from safetensors.torch import save_file

    save_file({"bert.embeddings.word_embeddings.weight": torch.zeros(8, 4)}, tmp_path / "bert.safetensors")
    return str(tmp_path / "bert.safetensors")


@pytest.mark.parametrize(
    "make_source, says",
    [
        (lambda tmp, hf: str(tmp / "missing"), "does not exist"),
        (_no_weights, "has no model.safetensors"),
        (_truncated, "truncated or corrupt"),
        (_bert, "is not a GPT-2 checkpoint"),
    ],
    ids=["missing-path", "folder-without-weights", "truncated-file", "bert-checkpoint"],
)
def test_bad_input_exits_2_with_one_line(make_source, says, hf_tiny_dir, tmp_path, capsys):
    """In-process through run_main, as `python -m model.inspect` runs it (any other exception escapes)."""
    with pytest.raises(SystemExit) as exit_:
        run_main(main, [make_source(tmp_path, hf_tiny_dir)])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err


def test_hub_id_without_network_exits_2_with_one_line_and_no_traceback(tmp_path):
    """A real process, an empty HF cache, and HF_HUB_OFFLINE so that "no network" holds on any machine (this
    workplace cannot reach the hub anyway; without the variable the message is the same)."""
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    r = run_cli("gpt2", env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: gpt2 is not a local path and cannot be fetched")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "openai-community/gpt2" in r.stderr  # the short name resolved to the hub repository


def test_no_source_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main(main, [])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: no checkpoint given; pass a folder, a .safetensors file or a hub id such as gpt2"
    )
