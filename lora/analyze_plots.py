"""The figures of `python -m lora.analyze`, drawn from the analysis.json dict alone (so they can be drawn
again from a saved file): spectra, top-k energy heat maps, the phi grids, amplification against random
directions, and where the update went. Every title names the run and says when its base is RANDOM."""

from __future__ import annotations

import math
import re
from pathlib import Path

from cli import UsageError

ORDER = ("q", "k", "v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # columns, as analysis.json names them


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _label(run: dict) -> str:
    return run["name"] + (" (RANDOM base)" if run["random_base"] else "")


def _matrices(modules: dict) -> list[str]:
    return [m for m in ORDER if any(v["matrix"] == m for v in modules.values())]


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def plot_spectra(run: dict, path: Path) -> None:
    """Singular values of dW / sigma_1 per matrix type, one line per layer, coloured by depth."""
    plt = _plt()
    mats = _matrices(run["modules"])
    layers = sorted({m["layer"] for m in run["modules"].values()})
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(
        1, len(mats), figsize=(3.4 * len(mats) + 1, 3.6), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, matrix in zip(axes[0], mats):
        for m in (m for m in run["modules"].values() if m["matrix"] == matrix):
            s = m["singular_values"]
            if s:
                t = layers.index(m["layer"]) / max(1, len(layers) - 1)
                ax.plot(range(1, len(s) + 1), [x / s[0] for x in s], color=cmap(t), lw=1.2)
        ax.set(
            yscale="log", xscale="log" if run["kind"] != "lora" else "linear", title=matrix, xlabel="index i"
        )
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("σ_i / σ_1")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(layers[0], layers[-1]))
    bar = fig.colorbar(sm, ax=axes[0].tolist(), label="layer")
    bar.set_ticks(layers if len(layers) <= 13 else bar.get_ticks())
    fig.suptitle(f"{_label(run)}: singular values of ΔW, normalized by the largest")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_energy(run: dict, ks: list[int], path: Path) -> None:
    """Heat maps layer x matrix of the share of |dW|_F^2 in the top-k directions, one panel per k."""
    plt = _plt()
    mats = _matrices(run["modules"])
    layers = sorted({m["layer"] for m in run["modules"].values()})
    fig, axes = plt.subplots(
        1,
        len(ks),
        figsize=(1.0 + (0.55 * len(mats) + 0.6) * len(ks), max(3.2, 1.7 + 0.3 * len(layers))),
        squeeze=False,
        layout="constrained",
    )
    for ax, k in zip(axes[0], ks):
        grid = [[float("nan")] * len(mats) for _ in layers]
        for m in run["modules"].values():
            grid[layers.index(m["layer"])][mats.index(m["matrix"])] = m["energy_top"][str(k)]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="magma", aspect="auto", origin="lower")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="white" if v < 0.6 else "black",
                    )
        ax.set_xticks(
            range(len(mats)),
            [m.replace("attn.", "").replace("mlp.", "mlp ") for m in mats],
            rotation=45,
            ha="right",
        )
        ax.set_yticks(range(len(layers)), layers)
        ax.set_title(f"top {k}")
    axes[0][0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), label="fraction of |ΔW|_F²")
    fig.suptitle(f"{_label(run)}: share of |ΔW|_F² in the top-k singular directions")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _pick_layers(keys, layers: str | None) -> list[int]:
    have = sorted({int(k.split(".")[1]) for k in keys})  # "h.3.q" -> 3
    if layers:
        want = [int(x) for x in layers.split(",") if x.strip()]
        missing = [x for x in want if x not in have]
        if missing:
            raise UsageError(f"--layers {layers}: layer {missing[0]} is not in both runs (have {have})")
        return want
    return sorted({have[0], have[len(have) // 2], have[-1]})


def plot_similarity(pair: dict, path: Path, layers: str | None) -> None:
    """The paper's Figure 3 grid: phi(i, j) for the top-i and top-j right singular vectors of the two
    updates, a panel per (layer, matrix)."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    mods = pair["modules"]
    mats = [m for m in ORDER if any(k.split(".", 2)[2] == m for k in mods)]
    rows = _pick_layers(mods, layers)
    fig, axes = plt.subplots(
        len(rows),
        len(mats),
        figsize=(2.9 * len(mats) + 1.2, 2.3 * len(rows) + 1.2),
        squeeze=False,
        layout="constrained",
    )
    for r, layer in enumerate(rows):
        for c, matrix in enumerate(mats):
            ax, g = axes[r][c], mods.get(f"h.{layer}.{matrix}")
            if g is None:
                ax.axis("off")
                continue
            im = ax.imshow(
                g["phi"],
                vmin=0,
                vmax=1,
                cmap="viridis",
                aspect="auto",
                origin="upper",
                extent=(0.5, g["j"] + 0.5, g["i"] + 0.5, 0.5),
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"layer {layer}, {matrix}", fontsize=9)
            ax.set_xlabel(f"j ({pair['b']})", fontsize=8)
            ax.set_ylabel(f"i ({pair['a']})", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="φ(i, j)")
    fig.suptitle(
        f"subspace similarity φ(i, j) = |U_iᵀ U_j|_F² / min(i, j) of the top right singular "
        f"vectors of ΔW\n{pair['a']} (rows i) vs {pair['b']} (columns j); 1 = contained, "
        "≈ max(i, j)/n = unrelated"
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _axes_for_layers(ax, values: list[float]) -> None:
    """Integer layer ticks; a log y axis only where the values span more than 20x, else linear from 0
    (a log axis over a narrow range has no readable ticks)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    pos = [v for v in values if v and v > 0 and math.isfinite(v)]
    if pos and max(pos) / min(pos) > 20:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1.1 * max(pos, default=1))
    ax.grid(alpha=0.3)


def _by_layer(run: dict, matrix: str, value) -> tuple[list[int], list[float]]:
    pts = sorted((m["layer"], value(m)) for m in run["modules"].values() if m["matrix"] == matrix)
    pts = [(x, y) for x, y in pts if y is not None]
    return [x for x, _ in pts], [y for _, y in pts]


def plot_where(result: dict, path: Path) -> None:
    """|dW|_F and |dW|_F / |W|_F by layer, a column per matrix type, a line per run."""
    plt = _plt()
    mats = [m for m in ORDER if any(m in _matrices(r["modules"]) for r in result["runs"])]
    fig, axes = plt.subplots(
        2, len(mats), figsize=(3.1 * len(mats) + 0.5, 6), squeeze=False, sharex=True, layout="constrained"
    )
    rows = [("|ΔW|_F", lambda m: m["norm_dW"]), ("|ΔW|_F / |W|_F", lambda m: m["relative_change"])]
    for c, matrix in enumerate(mats):
        for r, (ylabel, value) in enumerate(rows):
            ax, values = axes[r][c], []
            for i, run in enumerate(result["runs"]):
                x, y = _by_layer(run, matrix, value)
                if x:
                    ax.plot(x, y, marker="o", ms=3, color=f"C{i}", label=_label(run))
                    values += y
            ax.set(ylabel=ylabel if c == 0 else None, xlabel="layer" if r == 1 else None)
            _axes_for_layers(ax, values)
        axes[0][c].set_title(matrix)
    handles, labels = [], []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), bbox_to_anchor=(0.5, -0.04))
    fig.suptitle("where the update went: |ΔW|_F and |ΔW|_F / |W|_F by layer and matrix")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_amplification(result: dict, path: Path) -> bool:
    """Amplification factor by layer against the random-direction control, a row per run with a base."""
    plt = _plt()
    runs_ = [r for r in result["runs"] if any(m["amplification"] for m in r["modules"].values())]
    if not runs_:
        return False
    mats = [m for m in ORDER if any(m in _matrices(r["modules"]) for r in runs_)]
    fig, axes = plt.subplots(
        len(runs_),
        len(mats),
        figsize=(3.1 * len(mats) + 0.5, 2.6 * len(runs_) + 0.9),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    for r, run in enumerate(runs_):
        for c, matrix in enumerate(mats):
            ax, values = axes[r][c], []
            if matrix not in _matrices(run["modules"]):
                ax.axis("off")
                continue
            for key, label, style in (
                ("factor", "top-r directions of ΔW", "-o"),
                ("factor_random", "r random directions", "--s"),
            ):
                x, y = _by_layer(run, matrix, lambda m: m["amplification"] and m["amplification"][key])
                if x:
                    ax.plot(x, y, style, ms=3, label=label, color="C3" if key == "factor" else "0.5")
                    values += y
            ax.set_title(f"{run['name']}: {matrix}", fontsize=8.5)
            _axes_for_layers(ax, values)
            ax.set(ylabel="|ΔW|_F / |Uᵀ W V|_F" if c == 0 else None, xlabel="layer")
            if r == c == 0:
                ax.legend(fontsize=7)
    fig.suptitle("amplification |ΔW|_F / |U_rᵀ W V_r|_F: ΔW's own top-r directions against random ones")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def write_plots(result: dict, out: Path, layers: str | None = None) -> list[Path]:
    """Every figure for an analysis.json dict, into `out`; returns the files written."""
    written = []
    for run in result["runs"]:
        written.append(out / f"spectra_{_safe(run['name'])}.png")
        plot_spectra(run, written[-1])
        written.append(out / f"energy_{_safe(run['name'])}.png")
        plot_energy(run, result["settings"]["energy_top_k"], written[-1])
    for pair in result["similarity"]:
        if pair["modules"]:
            written.append(out / f"similarity_{_safe(pair['a'])}_vs_{_safe(pair['b'])}.png")
            plot_similarity(pair, written[-1], layers)
    written.append(out / "where.png")
    plot_where(result, written[-1])
    if plot_amplification(result, out / "amplification.png"):
        written.append(out / "amplification.png")
    return written
