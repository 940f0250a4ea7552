"""pip can build and install the project: the wheel holds every package (and the GPT-2 vocabulary file),
and the module command lines run from the installed copy in any folder, not only the repository root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "lora", "generation", "data", "training", "sandbox", "evaluation", "profiler")
MODULES = ("cli", "runs", "train", "evaluate", "generate")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project's wheel, built by pip from the working tree and unpacked as site-packages would be."""
    tmp = tmp_path_factory.mktemp("wheel")
    # pip builds in the source folder (build/, *.egg-info): build a copy, leave the checkout as it was
    skip = shutil.ignore_patterns(".git", "runs", ".cache", "build", "*.egg-info", "__pycache__", ".*_cache")
    src = shutil.copytree(ROOT, tmp / "src", ignore=skip)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp, src],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp.glob("*.whl")
    site = tmp / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def test_the_wheel_holds_every_package_module_and_the_vocabulary(installed):
    for package in PACKAGES:
        assert (installed / package / "__init__.py").is_file(), package
    for module in MODULES:
        assert (installed / f"{module}.py").is_file(), module
    assert (installed / "data" / "gpt2.tiktoken").stat().st_size > 400_000
    assert not (installed / "tests").exists() and not (installed / "bench").exists()


@pytest.mark.parametrize(
    "argv",
    [["lora.inspect", "--help"], ["model.inspect", "--help"], ["data.prepare", "--help"],
     ["sandbox", "--help"], ["profiler.memory", "--help"], ["train", "--help"]],
    ids=lambda a: a[0],
)  # fmt: skip
def test_module_command_lines_run_from_another_folder(installed, tmp_path, argv):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    done = subprocess.run(
        [sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower() or "python -m" in done.stdout
    imported = subprocess.run(
        [sys.executable, "-c", f"import {argv[0]}; print({argv[0]}.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert imported.stdout.strip().startswith(str(installed)), imported.stdout + imported.stderr
