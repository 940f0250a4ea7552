"""Every command in the README's code blocks runs as written, on a tiny model, offline.

Each `python ...` line of a ```bash block (and each `torchrun ...` line, on two CPU processes) is run in
order in one folder, so the study's evaluations find the runs its training lines made. Flags are appended
that make each small: the tiny preset, two steps, a few prompts, a local corpus. Appended flags override what
the line sets; nothing else changes. Lines of the block that needs the hub (the study's) also get --init
random: offline, that is the only GPT-2 there is.
"""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_train import write_corpus

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[tuple[str, bool]]:
    """(command, needs the hub) for every command line of the README's bash blocks, in order; a block needs
    the hub when its section's heading says so (its ### subsections included)."""
    out, section, block = [], "", None
    for line in (ROOT / "README.md").read_text().splitlines():
        if block is None and line.startswith("## "):
            section = line
        elif line.startswith("```"):
            block = [] if block is None and line == "```bash" else None
        elif block is not None:
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                hub = "needs the GPT-2 weights" in section
                out += [(cmd.strip(), hub) for cmd in line.split("&&")]
    return out


def shrink(argv: list[str], hub: bool, corpus: Path) -> list[str] | None:
    """The flags that make a README command tiny, appended; None for the lines that are not examples to run
    (installing, and the test suite itself)."""
    if argv[0] == "pip" or argv[1:3] == ["-m", "pytest"]:
        return None
    launcher = [sys.executable]
    if argv[0] == "torchrun":  # two CPU processes (gloo) whatever the line asks: this machine's cores
        assert argv[1] == "--nproc_per_node", argv
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        argv = ["python", *argv[3:]]
    assert argv[0] == "python", f"a README command this test does not know how to run: {argv}"
    script, args = argv[1], argv[2:]
    random = ["--init", "random"] if hub else []
    if script == "train.py" and "--dry-run" in args:  # no weights, no training: only the data made local
        extra = ["--data", f"jsonl:{corpus}"]
    elif script == "train.py":
        extra = ["--model", "tiny", "--data", f"jsonl:{corpus}", "--max-len", "96", "--batch-size", "4"]
        extra += ["--max-steps", "2", "--eval-batches", "1", "--log-every", "1", *random]
        extra += ["--overwrite"]  # two lines may share a default run folder (runs/tiny-lora8 here)
    elif script == "evaluate.py" and ("--compare" in args or "--self-check" in args):
        extra = []
    elif script == "evaluate.py":
        extra = ["--limit", "2", "--humaneval-limit", "2", "--max-new-tokens", "8", "--batch-size", "2"]
        extra += ["--n-samples", "2"] if "--n-samples" in args else []
        extra += [] if "--run" in args else ["--model", "tiny", "--data", f"jsonl:{corpus}", *random]
    elif script == "generate.py":
        extra = ["--max-new-tokens", "8"] + ([] if "--run" in args else ["--model", "tiny", *random])
    else:
        raise AssertionError(f"a README command this test does not know how to run: {argv}")
    return [*launcher, str(ROOT / script), *args, *extra]


@pytest.mark.slow
def test_every_readme_command_runs_on_a_tiny_model_offline(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", n=200)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    ran = []
    for command, hub in readme_commands():
        argv = shrink(shlex.split(command), hub, corpus)
        if argv is None:
            continue
        start = time.perf_counter()
        cp = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        print(f"{time.perf_counter() - start:6.1f} s  {command}")  # pytest -s: where the test's time goes
        assert cp.returncode == 0, f"{command}\n{cp.stdout[-2000:]}\n{cp.stderr[-3000:]}"
        ran.append((command, cp.stdout))
    commands = [c for c, _ in ran]
    assert len(commands) >= 12 and sum("train.py" in c for c in commands) >= 4
    main = next(out for c, out in ran if c == "python train.py --lora-rank 8")  # the set-up's main job
    assert "RANDOM" in main and "on this device" in main
    assert (tmp_path / "runs" / "full" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "lora8" / "final" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "runs" / "compare" / "compare.md").is_file()
