"""generate.py as a user drives it, with a tiny random-weight model: streaming, the sandbox, the REPL, errors.

A random model writes noise, so these tests pin what the tool does with whatever the model writes (the
same text streamed or not, a sandbox status that matches running that code directly); run_tests() gets
known code for the verdicts.
"""

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import generate
from cli import DeviceOptions, SamplingOptions, UsageError, parse_config
from data.prepare import format_prompt
from model.gpt2 import GPT, config_for
from model.hf import save_pretrained
from runs import RunModelOptions
from sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--init", "random", "--model", "tiny", "--max-new-tokens", "16"]
DOC = "Return the n-th Fibonacci number."
FIB = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(timeout=5.0)


def run_cli(capsys, *args: str) -> tuple[str, str]:
    assert generate.main([*args]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def run_json(capsys, *args: str) -> dict:
    out, _ = run_cli(capsys, *args, "--json")
    (line,) = out.splitlines()
    return json.loads(line)


@pytest.mark.parametrize("fmt", ["study", "docstring"])
def test_streamed_output_equals_the_non_streamed_output_and_the_json_code(capsys, fmt):
    streamed, _ = run_cli(capsys, *TINY, "--prompt-format", fmt, "--stream", DOC)
    printed, err = run_cli(capsys, *TINY, "--prompt-format", fmt, "--no-stream", DOC)
    record = run_json(capsys, *TINY, "--prompt-format", fmt, DOC)
    (sample,) = record["completions"]
    assert streamed == printed
    assert printed.rstrip("\n") == sample["code"].rstrip("\n") and printed.endswith("\n")
    assert record["model_prompt"] == format_prompt(DOC, None, fmt)
    assert sample["code"] == generate.code_head(record["model_prompt"], fmt) + sample["completion"]
    assert "!!! NOTE: the model is RANDOM" in err  # the loud note: a random model's output is noise


def test_streaming_writes_the_completion_piece_by_piece(capsys):
    cfg = generate.parse_args([*TINY, "--stream", DOC])
    cfg.prompt_format = generate.resolve_prompt_format(cfg)
    model, info = generate.load(cfg)

    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, s):
            writes.append(s)
            return super().write(s)

    record = generate.Assistant(model, info, cfg, Recorder(), io.StringIO()).answer(DOC)
    pieces = [w for w in writes if w]
    assert len(pieces) > 3 and "".join(pieces).rstrip("\n") == record["completions"][0]["code"].rstrip("\n")


def test_n_samples_are_listed_one_after_another(capsys):
    few = [*TINY, "--max-new-tokens", "6"]  # the last --max-new-tokens wins
    record = run_json(capsys, *few, "--n", "3", "--temperature", "1.0", DOC)
    assert len(record["completions"]) == 3
    assert record["settings"]["n"] == 3 and record["settings"]["temperature"] == 1.0
    out, _ = run_cli(capsys, *few, "--n", "3", "--temperature", "1.0", DOC)
    assert [line for line in out.splitlines() if line.startswith("# --- sample")] == [
        "# --- sample 1/3",
        "# --- sample 2/3",
        "# --- sample 3/3",
    ]


def test_settings_the_model_cannot_honour_get_a_one_line_note(capsys):
    long_doc = "Return the sum of the numbers. " * 15  # 112 of the tiny model's 128 positions
    out, err = run_cli(capsys, *TINY, "--max-new-tokens", "200", "--n", "2", long_doc)
    assert "note: the model's context leaves room for" in err and "new tokens, not 200" in err
    assert "note: temperature 0 is greedy: the 2 samples will be identical" in err
    assert "Warning" not in err


def test_run_code_reports_the_status_the_sandbox_gives_that_code(capsys, sandbox):
    record = run_json(capsys, *TINY, "--run-code", DOC)
    (sample,) = record["completions"]
    assert sample["run"]["status"] == sandbox.run_script(sample["code"])["status"]
    assert {"status", "duration", "stdout", "stderr"} <= set(sample["run"])
    out, _ = run_cli(capsys, *TINY, "--run-code", DOC)
    assert f"# run: {sample['run']['status']} in " in out


def test_run_tests_passes_correct_code_and_fails_a_wrong_assert(sandbox):
    passed = generate.run_tests(FIB, "assert fib(10) == 55", sandbox)
    failed = generate.run_tests(FIB, "assert fib(10) == 56", sandbox)
    assert (passed["verdict"], passed["status"]) == ("passed", "passed")
    assert failed["verdict"] == "failed" and failed["status"].startswith("failed")
    assert "AssertionError" in failed["status"] + failed["stderr"]


def test_run_tests_fails_code_that_exits_before_the_asserts(sandbox):
    sneaky = FIB + "import sys\nsys.exit(0)\n"  # exit code 0, but the asserts never ran
    assert generate.run_tests(sneaky, "assert fib(10) == 56", sandbox)["verdict"] == "failed"


def test_cli_test_verdict_is_the_sandbox_verdict_for_the_generated_code(capsys, sandbox):
    tests = "assert fib(10) == 55"
    record = run_json(capsys, *TINY, "--test", tests, DOC)
    (sample,) = record["completions"]
    direct = generate.run_tests(sample["code"], tests, sandbox)
    assert (sample["test"]["verdict"], sample["test"]["status"]) == (direct["verdict"], direct["status"])
    assert sample["test"]["verdict"] == ("passed" if sample["test"]["status"] == "passed" else "failed")
    out, _ = run_cli(capsys, *TINY, "--test", tests, DOC)
    assert f"# test: {direct['verdict']}" in out and direct["status"] in out


def test_interactive_reads_docstrings_and_commands_until_end_of_input(capsys, monkeypatch):
    lines = [
        ":temp 0.8",
        ":n 2",
        ":max 8",
        ":bogus",
        ":temp hot",
        ":top-p 2",
        "",
        DOC,
        ":show",
        "Add a and b.",
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))  # ends without :quit: EOF
    out, err = run_cli(capsys, *TINY, "--interactive", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in records] == [DOC, "Add a and b."]
    for r in records:
        assert len(r["completions"]) == 2
        assert (r["settings"]["temperature"], r["settings"]["max_new_tokens"], r["settings"]["top_p"]) == (
            0.8,
            8,
            0.95,  # ":top-p 2" was refused: the default stands
        )
    assert "error: unknown command :bogus" in err
    assert "error: :temp needs a number" in err
    assert "error: --top-p 2.0 is outside (0, 1]" in err
    # The REPL answers exactly as a one-shot run with the same settings would.
    once = run_json(capsys, *TINY, "--n", "2", "--temperature", "0.8", "--max-new-tokens", "8", DOC)
    assert once["completions"] == records[0]["completions"]


def test_interactive_quit_stops_reading_and_run_toggles_the_sandbox(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f":run\n{DOC}\n:run\n{DOC}\n:quit\n{DOC}\n"))
    out, err = run_cli(capsys, *TINY, "--interactive", "--json")
    first, second = (json.loads(line) for line in out.splitlines())
    assert "run" in first["completions"][0] and "run" not in second["completions"][0]
    assert "run_code=True" in err and "run_code=False" in err


def write_run(folder: Path, prompt_format: str) -> Path:
    """A finished full fine-tune run folder as train.py leaves it: config.json + final/ (HF checkpoint)."""
    folder.mkdir()
    config = dict(model="tiny", init="random", weights=None, lora_rank=0, prompt_format=prompt_format)
    (folder / "config.json").write_text(json.dumps(config))
    save_pretrained(GPT(config_for("tiny")), folder / "final")
    return folder


def test_a_run_folder_is_loaded_with_the_prompt_format_it_was_trained_with(capsys, tmp_path):
    run = write_run(tmp_path / "run", "docstring")
    record = run_json(capsys, "--run", str(run), "--max-new-tokens", "8", DOC)
    assert record["settings"]["prompt_format"] == "docstring"
    assert record["model_prompt"] == format_prompt(DOC, None, "docstring")
    assert record["model"]["source"] == str(run / "final") and record["model"]["random_init"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([*TINY, ""], "the docstring is empty"),
        ([*TINY, "   "], "the docstring is empty"),
        (["--run", "runs/no-such-run", DOC], "--run runs/no-such-run does not exist"),
        ([*TINY, "--n", "0", DOC], "--n 0"),
        ([*TINY, "--temperature", "-1", DOC], "--temperature -1.0 is negative"),
        ([*TINY, "--top-p", "0", DOC], "--top-p 0.0 is outside (0, 1]"),
        ([*TINY, "--max-new-tokens", "0", DOC], "--max-new-tokens 0: generate at least 1 token"),
        (["--init", "random", "--weights", "w", DOC], "--weights and --init random exclude each other"),
        (["--run", "runs/no-such-run", "--weights", "w", DOC], "pass --run or --weights, not both"),
        ([*TINY, "--stream", "--json", DOC], "--stream and --json exclude each other"),
        ([*TINY, "--checkpoint", "step-1", DOC], "--checkpoint needs --run"),
        ([*TINY, "--prompt", DOC, DOC], "pass the docstring once"),
        ([*TINY, "word " * 200], "fills the context of 128 tokens"),
        ([*TINY, "--signature", "def f(x):", DOC], "--signature and --func-name shape the docstring"),
        ([*TINY, "--compile", "--dtype", "bf16", DOC], "--compile decodes fp32 weights"),
    ],
)
def test_bad_input_is_one_clear_sentence(args, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generate.main(args)


def test_compile_needs_a_cpu_and_a_cpp_compiler(monkeypatch):
    monkeypatch.setattr(generate.torch.cuda, "is_available", lambda: True)
    with pytest.raises(UsageError, match="--compile is for decoding on a CPU"):
        generate.main([*TINY, "--compile", DOC])  # auto picks the GPU
    with pytest.raises(UsageError, match="--compile is for decoding on a CPU"):
        generate.main([*TINY, "--compile", "--device", "cuda", DOC])
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(UsageError, match=r"needs a C\+\+ compiler \(no-such-compiler-here\)"):
        generate.main([*TINY, "--compile", "--device", "cpu", DOC])


def test_compiled_decoding_prints_the_eager_completion(capsys):
    """--compile changes the speed, not the text; with --n 2 it says the samples decode eagerly."""
    eager, _ = run_cli(capsys, *TINY, "--no-stream", DOC)
    compiled, _ = run_cli(capsys, *TINY, "--no-stream", "--compile", DOC)
    assert compiled == eager
    _, err = run_cli(capsys, *TINY, "--compile", "--n", "2", "--temperature", "0.5", DOC)
    assert "note: --compile decodes one row; the 2 samples decode eagerly" in err


def test_a_run_trained_with_another_prompt_format_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(dict(prompt_format="docstring", lora_rank=0)))
    with pytest.raises(UsageError, match="trained with --prompt-format docstring, not study"):
        generate.main(["--run", str(run), "--prompt-format", "study", DOC])


def test_generate_and_evaluate_share_one_definition_of_the_model_sampling_and_device_flags():
    """The same flags parse to the same values, with the same defaults, in both entry points."""
    from evaluate import EvalConfig

    groups = (RunModelOptions, SamplingOptions, DeviceOptions)
    shared = [f.name for group in groups for f in dataclasses.fields(group)]
    flags = ["--run", "r", "--checkpoint", "step-2", "--adapter", "a", "--model", "tiny", "--weights", "w",
             "--init", "random", "--temperature", "0.8", "--top-p", "0.9", "--top-k", "5",
             "--max-new-tokens", "7", "--device", "cpu", "--dtype", "fp32"]  # fmt: skip
    for argv in ([], flags):
        ours = generate.parse_args([*argv, DOC])
        theirs = parse_config(EvalConfig, argv)
        assert {k: getattr(ours, k) for k in shared} == {k: getattr(theirs, k) for k in shared}
    assert (ours.top_k, ours.max_new_tokens, ours.dtype) == (5, 7, "fp32")  # the flags were read
    cfg = generate.parse_args([DOC])
    assert (cfg.top_p, cfg.temperature, cfg.device, cfg.dtype) == (0.95, 0.0, "auto", "auto")


def test_command_line_errors_exit_2_with_one_line():
    proc = subprocess.run(
        [sys.executable, "generate.py", "--run", "runs/no-such-run", DOC],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --run runs/no-such-run")
