"""What evaluate.py writes: metrics.json / metrics.csv / report.md / bleu_vs_exec.png per evaluation,
curves.png across checkpoints, and the comparison table of runs, full / LoRA / DoRA / QLoRA side by side
(compare.md / .csv / .png)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from evaluation.metrics import spearman, summarize

RANDOM_BANNER = "RANDOMLY INITIALIZED MODEL: these scores measure the pipeline, not a trained GPT-2"


def header(info: dict) -> str:
    lines = [f"model: {info.get('source')}"]
    if info.get("random_init"):
        lines = ["!" * 100, f"!!! {RANDOM_BANNER}", "!" * 100, *lines]
    return "\n".join(lines)


def flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def write_csv(path: Path, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def fmt_rho(rho: float) -> str:
    """A rank correlation for people: NaN (one side has a single value, nothing to rank) said in words."""
    return "undefined (all values equal)" if math.isnan(rho) else f"{rho:.3f}"


def plot_bleu_vs_exec(rows: list[dict], path: Path) -> None:
    """Per-sample BLEU against execution success (jittered 0/1), one panel per set, rho in the title."""
    plt = _plt()
    sets = [
        (k, ok)
        for k, ok in (("split", "exec_clean"), ("humaneval", "passed"))
        if any(r["set"] == k for r in rows)
    ]
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(5.5 * max(1, len(sets)), 4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, (kind, ok) in zip(axes[0], sets):
        rs = [r for r in rows if r["set"] == kind]
        x, y = np.array([r["bleu"] for r in rs]), np.array([float(r[ok]) for r in rs])
        ax.scatter(x, y + rng.uniform(-0.08, 0.08, len(y)), s=12, alpha=0.6)
        ax.set(
            xlabel="sentence BLEU (code tokens)", ylabel=ok, yticks=[0, 1], ylim=(-0.3, 1.3), xlim=(-2, 102)
        )
        ax.set_title(f"{kind}: Spearman rho = {fmt_rho(spearman(x, y))} (n={len(rs)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, rows: list[dict], info: dict, settings: dict) -> dict:
    """metrics.json, metrics.csv, report.md and bleu_vs_exec.png in `out`; prints the summary."""
    metrics = summarize(rows)
    timing_file = out / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    info = {k: v for k, v in info.items() if isinstance(v, str | int | float | bool | type(None))}
    report = dict(header=header(info), random_init=bool(info.get("random_init")), model=info, metrics=metrics)
    report.update(settings=settings, timing=timing)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    flat = {
        "random_init": report["random_init"],
        **{k: v for k, v in flatten(metrics).items() if ".statuses." not in k},
    }
    write_csv(out / "metrics.csv", [flat])
    plot_bleu_vs_exec(rows, out / "bleu_vs_exec.png")
    lines = [report["header"], ""]
    for kind, m in metrics.items():
        shown = {k: v for k, v in m.items() if not isinstance(v, dict)}
        lines.append(
            f"{kind}: "
            + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
        )
        lines.append(f"{kind} sandbox statuses: {m['statuses']}")
        ok = "exec_clean" if kind == "split" else "passed"
        rho = fmt_rho(m[f"spearman_bleu_{ok}"])
        lines.append(
            f"{kind}: do BLEU and execution agree? Spearman rho(BLEU, {ok}) = {rho} over {m['samples']}"
        )
    if timing.get("samples"):
        lines.append(
            f"this invocation: {timing['samples']} samples, generate {timing['generate_s']:.1f} s "
            f"({timing['new_tokens'] / max(timing['generate_s'], 1e-9):.1f} new tokens/s), "
            f"execute {timing['execute_s']:.1f} s"
        )
    text = "\n".join(lines)
    (out / "report.md").write_text("```\n" + text + "\n```\n")
    print("\n".join(lines[2:]))  # the header (and its random-model banner) was printed when the model loaded
    return report


# ------------------------------------------------------------------------------------------------ compare
COMPARE_COLS = {  # column -> (markdown header, format)
    "run": ("run", "{}"),
    "method": ("method", "{}"),
    "trainable_params": ("trainable params", "{:,}"),
    "peak_mem_gib": ("peak memory (GiB)", "{:.2f}"),
    "train_time_min": ("train time (min)", "{:.1f}"),
    "tokens_per_sec": ("tokens/s", "{:,.0f}"),
    "val_loss": ("val loss", "{:.4f}"),
    "bleu": ("BLEU", "{:.2f}"),
    "rouge_l": ("ROUGE-L", "{:.3f}"),
    "exec_clean": ("exec-clean", "{:.1%}"),
    "pass@1": ("HumanEval pass@1", "{:.1%}"),
    "pass@10": ("HumanEval pass@10", "{:.1%}"),
}


def _eval_metrics(run: Path, tag: str) -> tuple[str | None, dict]:
    """The run's evaluation: eval/<tag>/ (or its final/ after --all-checkpoints); without a tag the newest."""
    pattern = f"eval/{tag}" if tag else "eval/*"
    found = [p for g in (f"{pattern}/metrics.json", f"{pattern}/final/metrics.json") for p in run.glob(g)]
    found = [p for p in found if "metrics" in json.loads(p.read_text())]
    if not found:
        return None, {}
    best = max(found, key=lambda p: p.stat().st_mtime)
    return str(best.parent.relative_to(run)), json.loads(best.read_text())


def run_row(run: Path, tag: str = "") -> dict:
    """One comparison row: training cost from summary.json (else metrics.jsonl / memory.json), quality from
    the run's evaluation. Missing figures stay None and print as a dash."""
    from runs import read_config

    cfg = read_config(run)
    rank = cfg.get("lora_rank", 0)
    kind = ("Q" if cfg.get("quantize", "none") == "nf4" else "") + (
        "DoRA" if cfg.get("lora_dora") else "LoRA"
    )
    row = dict(run=run.name, method=f"{kind} r={rank}" if rank else "full fine-tune")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    logs = []
    if (run / "metrics.jsonl").is_file():
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    peak = summary.get("peak_mem_bytes") or max((r.get("mem_bytes") or 0 for r in logs), default=0) or None
    speeds = [r["tokens_per_sec"] for r in logs if r.get("tokens_per_sec")]
    vals = [r["val_loss"] for r in logs if r.get("val_loss") is not None]
    elapsed = max((r.get("elapsed_s") or 0 for r in logs), default=0)
    row.update(
        trainable_params=summary.get("trainable_params"),
        peak_mem_gib=peak / 2**30 if peak else None,
        train_time_min=(summary.get("train_time_s") or elapsed or 0) / 60 or None,
        tokens_per_sec=summary.get("tokens_per_sec") or (float(np.median(speeds)) if speeds else None),
        val_loss=summary.get("final_val_loss") or (vals[-1] if vals else None),
    )
    where, ev = _eval_metrics(run, tag)
    m = ev.get("metrics", {})
    split, he = m.get("split", {}), m.get("humaneval", {})
    row.update(bleu=split.get("bleu"), rouge_l=split.get("rouge_l"), exec_clean=split.get("exec_clean"))
    row.update({"pass@1": he.get("pass@1"), "pass@10": he.get("pass@10")})
    row.update(eval=where, random_init=ev.get("random_init", cfg.get("init") == "random"))
    return row


def compare(runs: list[str], out: Path, tag: str = "", overwrite: bool = False) -> list[dict]:
    """compare.md, .csv, .json and .png in `out`: one row per run (full, LoRA, DoRA, QLoRA ...). A folder
    that holds a comparison of other runs is refused unless overwrite; the same runs compared again are
    updated, and said so."""
    from cli import UsageError

    names = [str(Path(r).resolve()) for r in runs]
    earlier = out / "compare.json"
    if earlier.is_file():
        before = json.loads(earlier.read_text()).get("runs", [])
        if before != names and not overwrite:
            raise UsageError(
                f"{out} holds a comparison of other runs ({', '.join(Path(r).name for r in before)}); pass "
                "--out-dir for this one, or --overwrite to replace it"
            )
        print(f"{out}: replacing the earlier comparison of {'these' if before == names else 'other'} runs")
    rows = [run_row(Path(r), tag) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", rows)
    (out / "compare.json").write_text(json.dumps(dict(runs=names, tag=tag, rows=rows), indent=2))

    def cell(k, v):
        return "—" if v is None else COMPARE_COLS[k][1].format(v)

    md = ["| " + " | ".join(h for h, _ in COMPARE_COLS.values()) + " |", "|" + "---|" * len(COMPARE_COLS)]
    md += ["| " + " | ".join(cell(k, r[k]) for k in COMPARE_COLS) + " |" for r in rows]
    notes = [f"- {r['run']}: evaluation {r['eval'] or 'missing (run evaluate.py --run first)'}" for r in rows]
    notes += [f"- {r['run']}: **{RANDOM_BANNER}**" for r in rows if r["random_init"]]
    text = "\n".join(md + [""] + notes) + "\n"
    (out / "compare.md").write_text(text)
    print(text)
    plot_compare(rows, out / "compare.png")
    return rows


def plot_compare(rows: list[dict], path: Path, cols: int = 3) -> None:
    """One panel per figure of the table, three to a row; each bar labelled with its value, so a zero reads
    as 0 and a missing figure as "n/a", never as an empty axis."""
    plt = _plt()
    keys = [k for k in list(COMPARE_COLS)[2:] if any(r[k] is not None for r in rows)]
    n_rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3.3 * n_rows), squeeze=False)
    x = range(len(rows))
    for ax, k in zip(axes.flat, keys):
        values = [r[k] for r in rows]
        bars = ax.bar(x, [v or 0 for v in values], color=[f"C{i}" for i in x])
        labels = ["n/a" if v is None else COMPARE_COLS[k][1].format(v) for v in values]
        ax.bar_label(bars, labels, padding=2, fontsize=9)
        top = max((v for v in values if v is not None), default=0)
        ax.set_ylim(0, top * 1.25 if top > 0 else 1)  # all zero: an axis from 0, the bars at its floor
        ax.set_xticks(list(x), [r["run"] for r in rows], fontsize=9)
        ax.set_title(COMPARE_COLS[k][0], fontsize=11)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    if any(r["random_init"] for r in rows):
        fig.suptitle(RANDOM_BANNER, color="red", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(root: Path, points: list[dict]) -> None:
    """The study's per-epoch figures: each metric against training step (epoch in the label)."""
    plt = _plt()
    keys = ("split.bleu", "split.rouge_l", "split.exec_clean", "split.syntax_valid", "humaneval.pass@1")
    keys = [k for k in keys if any(k in p for p in points)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4 * max(1, len(keys)), 3.4), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [p for p in points if k in p]
        ax.plot([p["step"] for p in pts], [p[k] for p in pts], marker="o")
        ax.set(title=k, xlabel="step (epoch)")
        ax.set_xticks([p["step"] for p in pts], [f"{p['step']}\n({p['epoch']})" for p in pts], fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "curves.png", dpi=110)
    plt.close(fig)
