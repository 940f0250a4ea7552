"""The benchmark scripts run end to end on small shapes and print the tables the README carries (their
speed is measured by running them, never asserted here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli import resolve_dtype

ROOT = Path(__file__).resolve().parents[2]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown table in `text`, cells stripped."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_train_bench_prints_speed_memory_and_mfu_for_both_sides(capsys):
    from bench.train import main

    argv = ["--quick", "--model", "tiny", "--seq-len", "32", "--steps", "2", "--warmup", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # --quick runs the dtype train.py's --dtype auto picks here: bf16 where the CPU has it natively, else fp32
    auto = resolve_dtype("auto", torch.device("cpu"), training=True)
    picked = {torch.bfloat16: "bf16", torch.float32: "fp32"}[auto]
    assert f"MFU against {picked} " in out and f"torch {torch.__version__}" in out
    rows = table_rows(out)
    assert [r[0].split(" ")[0] for r in rows] == ["LoRA", "full"]
    assert [r[1] for r in rows] == [picked, picked]
    for r in rows:
        ours, hf = (float(r[i].replace(",", "")) for i in (2, 3))
        assert ours > 0 and hf > 0
        assert float(r[4].strip("*x")) == pytest.approx(ours / hf, rel=0.05)  # tok/s are printed rounded
        mfu = [float(m) for m in re.findall(r"([\d.]+)%", r[8])]
        assert len(mfu) == 2 and all(0 < m <= 100 for m in mfu)


def test_generate_bench_checks_greedy_ids_and_prints_both_workloads(capsys):
    from bench.generate import main

    n = 2
    argv = ["--prompt-len", "4", "--new-tokens", "3", "--n", str(n), "--rounds", "1", "--warmup", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ours == HF: True" in out  # same weights, same greedy ids
    rows = table_rows(out)
    dtypes = list(dict.fromkeys(r[1] for r in rows))  # --dtypes auto: fp32, and bf16 where it is native
    assert dtypes[0] == "fp32" and set(dtypes) <= {"fp32", "bf16"}
    assert [r[0] for r in rows] == ["batch 1, greedy", f"{n} samples of 1 prompt (pass@k)"] * len(dtypes)
    assert all(float(r[2].replace(",", "")) > 0 and float(r[3].replace(",", "")) > 0 for r in rows)


def test_generate_bench_host_bound_shapes(capsys):
    """--host-bound: both sides at GPT-2's depth and heads but width 48 and a 1,024-token vocabulary, still
    the same weights (same greedy ids), and the table says which model it timed."""
    from bench.generate import HOST_BOUND, load_pair, main

    ours, hf = load_pair(torch.device("cpu"), **HOST_BOUND)
    assert (ours.config.n_embd, ours.config.vocab_size, ours.config.n_layer) == (48, 1024, 12)
    assert hf.config.n_embd == 48 and hf.lm_head.weight.shape == (1024, 48)
    argv = ["--host-bound", "--prompt-len", "4", "--new-tokens", "3", "--n", "2", "--rounds", "1"]
    argv += ["--dtypes", "fp32"]  # one row per workload on any CPU
    assert main(argv + ["--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "ours == HF: True" in out and "at width 48, vocabulary 1,024" in out
    assert len(table_rows(out)) == 2
    assert main(argv + ["--compile"]) == 0  # + ours at batch 1 through torch.compile
    out = capsys.readouterr().out
    assert "ours compiled == HF: True" in out and "| ours, compiled tok/s | compiled speed-up |" in out
    b1, pass_k = table_rows(out)
    assert float(b1[5].replace(",", "")) > 0 and pass_k[5:7] == ["-", "-"]  # n rows decode eagerly


def test_generate_bench_compiled_side_is_ours_at_batch_1_through_torch_compile(randomize, monkeypatch):
    import generation.fixed_shape as G
    from bench.generate import workloads
    from model.gpt2 import GPT, config_for

    built = []
    init = G.FixedShapeDecoder.__init__
    monkeypatch.setattr(
        G.FixedShapeDecoder, "__init__", lambda self, *a: built.append(a[-1]) or init(self, *a)
    )
    model = randomize(GPT(config_for("tiny", vocab_size=1024)), seed=5, std=0.3).eval()
    prompt = torch.randint(0, 1024, (1, 5), generator=torch.Generator().manual_seed(0))
    (_, b1), (_, pass_k) = workloads(model, None, prompt, new=6, n=3, seed=0, compiled=True).values()
    assert set(b1) == {"ours", "HF", "compiled"} and set(pass_k) == {"ours", "HF"}
    with torch.no_grad():
        assert b1["compiled"]() == b1["ours"]()
    assert built == [True]


def test_generate_bench_refuses_an_unknown_dtype_with_one_line(capsys):
    from bench.generate import main

    assert main(["--dtypes", "fp32,fp8", "--rounds", "1"]) == 2
    assert capsys.readouterr().out.strip() == "error: --dtypes fp32,fp8: pass fp32, bf16, fp32,bf16 or auto"


def test_gpu_script_runs_every_step_in_smoke_mode(tmp_path):
    """bench/gpu.sh runs every GPU measurement in one command, on a machine there is little time on: a
    renamed flag in any CLI it drives must fail here, not there. --smoke runs the same commands on tiny
    shapes on the CPU."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "CACHE_DIR": str(tmp_path / "cache")}
    env["TMPDIR"] = str(tmp_path)
    cmd = ["bash", "bench/gpu.sh", "--smoke"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = (out / "gpu.log").read_text()
    summary = log[log.index("==== summary") :].splitlines()[1:]
    assert [line.split()[0] for line in summary] == [
        "generate", "train-step", "corpus", "train-py-pack", "memory", "train-py", "shapes"
    ]  # fmt: skip
    assert all(" rc=0 " in line for line in summary), log[-3000:]
    assert done.returncode == 0
    assert "MFU against fp32" in log and "vs study" in log and "ours == HF: True" in log
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"gpu.log", "summary.json", "memory.json", "memory/memory_compare.md"} <= files
    assert len(files) <= 8  # a handful of files to copy back, not a whole run folder


@pytest.mark.parametrize("cudnn", [False, True])
def test_shapes_bench_times_first_and_second_pass_and_restores_the_attention_choice(capsys, tmp_path, cudnn):
    from bench.shapes import main

    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)  # as use_fast_kernels leaves it on a GPU
    try:
        argv = ["--model", "tiny", "--examples", "8", "--cache-dir", str(tmp_path)]
        argv += ["--cudnn-attention"] if cudnn else []
        assert main(argv) == 0
        assert torch.backends.cuda.cudnn_sdp_enabled() is False  # --cudnn-attention lasts for the run only
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
    out = capsys.readouterr().out
    assert ("torch's own backend order" in out) == cudnn
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["pad to 128", "length-bucketed", "packed (block-causal)"]
    for r in rows:
        assert int(r[1]) >= 1 and 1 <= int(r[2]) <= int(r[1]) and float(r[3]) > 0 and float(r[4]) > 0
    assert rows[0][2] == "1"  # padding to the context: one shape


@pytest.mark.parametrize(
    "module, argv",
    [
        ("bench.train", ["--model", "gpt3"]),
        ("bench.train", ["--batch-size", "0"]),
        ("bench.train", ["--model", "tiny", "--seq-len", "500"]),  # (--corpus ignores --seq-len: gpu.sh)
        ("bench.train", ["--configs", "full"]),  # the names carry the dtype: full-bf16, full-fp32
        ("bench.shapes", ["--examples", "0"]),
        ("bench.shapes", ["--model", "nope"]),
        ("bench.generate", ["--n", "0"]),
        ("bench.generate", ["--prompt-len", "1000", "--new-tokens", "100"]),
        ("bench.train", ["--cuda-graph"]),  # needs --device cuda
        ("bench.generate", ["--cuda-graph"]),
        ("bench.generate", ["--compile", "--warmup", "0"]),  # the warm-up holds the compile
    ],
)
def test_benchmarks_refuse_bad_input_with_one_line_and_exit_code_2(module, argv, capsys):
    import importlib

    main = importlib.import_module(module).main
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage error
        rc = e.code
    assert rc == 2
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in captured.err


def test_generate_bench_graph_side_is_ours_through_the_fixed_shape_decoder(randomize, monkeypatch):
    """bench.generate --cuda-graph adds a side per workload; off a GPU its fixed-shape steps run eagerly."""
    import torch

    import generation.fixed_shape as G
    from bench.generate import workloads
    from model.gpt2 import GPT, config_for

    built = []
    init = G.FixedShapeDecoder.__init__
    monkeypatch.setattr(G.FixedShapeDecoder, "__init__", lambda self, *a: built.append(1) or init(self, *a))

    model = randomize(GPT(config_for("tiny", vocab_size=1024)), seed=5, std=0.3).eval()
    prompt = torch.randint(0, 1024, (1, 5), generator=torch.Generator().manual_seed(0))
    loads = workloads(model, None, prompt, new=6, n=3, seed=0, graph=True)
    assert [rows for rows, _ in loads.values()] == [1, 3]
    for rows, calls in loads.values():
        assert set(calls) == {"ours", "HF", "graph"}
        with torch.no_grad():
            ours, graph = calls["ours"](), calls["graph"]()
        assert graph == ours and len(graph) == rows and all(len(r) == 6 for r in graph)
    assert len(built) == 2  # the graph side of each workload, not the ours side
