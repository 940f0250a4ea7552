"""What a fine-tune learned: `python -m lora.analyze RUN [RUN ...]`.

    python -m lora.analyze runs/lora8 runs/lora64 runs/full      # run folders (final/), adapters, checkpoints
    python -m lora.analyze adapter/ --base gpt2                   # W from --base: amplification, |dW|/|W|

For every adapted matrix (c_attn read as its q, k, v slices, as the LoRA paper's W_q, W_k, W_v) it takes the
update dW: s * B @ A for LoRA, m * (W + sBA) / |W + sBA|_row - W for DoRA, W_final - W_base for a full
fine-tune. Then, in float64 on the CPU (lora/spectra.py): dW's singular values and effective ranks, the
share of |dW|_F^2 in its top 1/4/8/16/64 directions, the amplification factor against random directions,
|dW|_F and |dW|_F / |W|_F by layer and matrix, and for each pair of runs the subspace similarity phi(i, j) of
their top singular directions. Writes analysis.json (schema in docs/lora.md) and PNG plots, prints a table.

Where W comes from: an adapter's base is --base, else the run's base/ (a random-init run saved it), else the
adapter's base_model_name_or_path; without one, amplification and |dW|/|W| are left out (said). A full run
needs its starting weights: --base, else the run's config.json (its --weights or hub model; a random-init
run's weights are rebuilt from its --seed the way training/build.py made them).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

import runs
from cli import UsageError, build_parser, opt, run_main
from lora.analyze_plots import ORDER, write_plots
from lora.peft_io import CONFIG, PREFIX, AdapterError, _pattern_value, _read_weights, read_adapter
from lora.spectra import F64, SVD, amplification, subspace_similarity, summarize, svd, svd_of_product
from model.gpt2 import GPT, config_for
from model.hf import HUB_IDS, CheckpointError, read_checkpoint

SCHEMA = "lora.analyze/1"
MATRICES = ORDER  # the matrices of a block; c_attn is read as q | k | v
_MODULE = re.compile(r"transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)")
_DORA_KEY = re.compile(
    r"base_model\.model\.(?P<module>.+)\.(lora_(?P<AB>[AB])\.weight|lora_magnitude_vector(\.weight)?)"
)


@dataclass
class AnalyzeConfig:
    base: str | None = opt(None, "the starting weights of every RUN (HF folder, .safetensors or hub id)")
    out: str | None = opt(None, "output folder (default: analysis/ beside the first RUN)")
    max_dirs: int = opt(64, "top singular directions kept per matrix for the phi grids and amplification")
    amp_rank: int | None = opt(
        None, "directions r of the amplification factor (default: the adapter's rank; 8 for a full run)"
    )
    draws: int = opt(8, "random r-dim subspaces averaged for the amplification control")
    seed: int = opt(0, "seed of the random control directions")
    layers: str | None = opt(None, "layers in the phi grid plots, e.g. 0,5,11 (default: first, middle, last)")
    plots: bool = opt(True, "write the PNG plots")


# ------------------------------------------------------------------ one run: its updates dW and base W
@dataclass
class Update:
    """One matrix's update in float64: factors (B (m, R) with the scaling folded in, A (R, n)) or dense."""

    layer: int
    matrix: str  # one of MATRICES
    B: torch.Tensor | None = None
    A: torch.Tensor | None = None
    dense: torch.Tensor | None = None  # (m, n): W_final - W_base, or a DoRA update
    W: torch.Tensor | None = None  # (m, n): the base weight, when known
    rank: int | None = None  # the adapter's rank on this matrix (None: a full run)
    floor: float = 0.0  # singular values below this are rounding of the stored weights (full runs)

    @property
    def key(self) -> str:
        return f"h.{self.layer}.{self.matrix}"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.dense.shape) if self.dense is not None else (self.B.shape[0], self.A.shape[1])

    def delta(self) -> torch.Tensor:
        """dW (m, n), formed."""
        return self.dense if self.dense is not None else self.B @ self.A

    def svd(self) -> SVD:
        return svd(self.dense) if self.dense is not None else svd_of_product(self.B, self.A)


@dataclass
class Run:
    name: str
    path: str
    kind: str  # "lora", "dora" or "full"
    updates: list[Update]
    base: str | None = None  # where W came from, or None
    random_base: bool = False
    rank: int | None = None
    alpha: float | None = None
    notes: list[str] = field(default_factory=list)


def load_run(path: str | Path, base: str | None = None) -> Run:
    """A run folder (its final/), an adapter folder (ours or PEFT's, LoRA or DoRA) or a full checkpoint
    folder (model.safetensors), with its updates and, where found, its base weights."""
    p = Path(path)
    if (p / CONFIG).is_file():
        return _adapter_run(p, base)
    if _run_config(p) is not None:
        final = p / "final"
        if not final.is_dir():
            raise UsageError(
                f"{p}/final does not exist: the run has not finished; pass one of its "
                "checkpoints/step-N folders instead"
            )
        return _adapter_run(final, base) if (final / CONFIG).is_file() else _full_run(final, base)
    if (p / "model.safetensors").is_file() or (p.suffix == ".safetensors" and p.is_file()):
        return _full_run(p, base)
    raise UsageError(
        f"{p} is neither a run folder, an adapter folder (adapter_config.json) nor a checkpoint "
        "(model.safetensors); pass a folder written by train.py or PEFT"
    )


def _run_config(folder: Path) -> dict | None:
    """The train.py config of a run folder (config.json with lora_rank), else None."""
    try:
        cfg = runs.read_config(folder)
    except (UsageError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and "lora_rank" in cfg else None


def _owning_run(folder: Path) -> tuple[Path, dict] | tuple[None, None]:
    """The run folder around final/ or checkpoints/step-N (or the folder itself), with its config."""
    for p in (folder, folder.parent, folder.parent.parent):
        cfg = _run_config(p)
        if cfg is not None:
            return p, cfg
    return None, None


def _name(folder: Path) -> str:
    run, _ = _owning_run(folder)
    if run is None:
        return folder.stem if folder.suffix == ".safetensors" else folder.name
    return run.name if folder in (run, run / "final") else f"{run.name}@{folder.name}"


def _read_base(source) -> dict[str, torch.Tensor]:
    return read_checkpoint(source).state_dict  # our names, Linear weights as (out, in)


def _read_given_base(base: str) -> dict[str, torch.Tensor]:
    try:
        return _read_base(base)
    except CheckpointError as e:
        raise UsageError(f"--base {base} cannot be read: {e}") from None


def _adapter_run(folder: Path, base: str | None) -> Run:
    cfg, modules = read_lora(folder)
    run, run_cfg = _owning_run(folder)
    sd, source, notes = None, None, []
    if base:
        sd, source = _read_given_base(base), base
    else:  # a random-init run's own base/ (its recorded path may be relative to where it trained), then that
        found = [str(run / "base")] if run is not None and (run / "base").is_dir() else []
        for c in found + [c for c in [cfg.get("base_model_name_or_path")] if c]:
            try:
                sd, source = _read_base(c), str(c)
                break
            except CheckpointError as e:
                notes.append(f"base {c} not readable ({e})")
    dora = any("magnitude" in m for m in modules)
    if sd is None:
        if dora:
            raise UsageError(
                f"{folder} is a DoRA adapter, whose update depends on the base weights, and its "
                "base cannot be found; pass it with --base"
            )
        notes.append("no base weights: amplification and |dW|/|W| left out (pass --base)")
    updates = []
    for m in modules:
        match = _MODULE.fullmatch(m["name"])
        if match is None:
            raise AdapterError(
                f"{folder} adapts {m['name']}, not one of GPT-2's attention or MLP "
                "projections; lora.analyze reads GPT-2 adapters"
            )
        layer, linear = int(match[1]), match[2]
        B, A = m["scaling"] * m["B"].to(F64), m["A"].to(F64)  # (m, R), (R, n)
        W = None if sd is None else sd.get(m["name"] + ".weight")
        if sd is not None and (W is None or tuple(W.shape) != (B.shape[0], A.shape[1])):
            raise UsageError(
                f"{folder} adapts {m['name']} as {A.shape[1]} -> {B.shape[0]}, which base "
                f"{source} does not have; pass its base with --base"
            )
        W = None if W is None else W.to(F64)
        dense = dora_delta(W, B, A, m["magnitude"].to(F64)) if "magnitude" in m else None
        rank = m["rank"] // sum(m["slices"]) if m["slices"] else m["rank"]
        for matrix, rows in _parts(linear, B.shape[0]):
            Bi = B[rows]
            used = Bi.abs().sum(0) > 0  # a slice adapter's B_q is zero on A_v's columns: drop them
            if dense is None and not used.any():
                continue  # a slice that is off: no update at all
            updates.append(
                Update(
                    layer,
                    matrix,
                    B=Bi[:, used],
                    A=A[used],
                    rank=rank,
                    dense=None if dense is None else dense[rows],
                    W=None if W is None else W[rows],
                )
            )
    return Run(
        name=_name(folder),
        path=str(folder),
        kind="dora" if dora else "lora",
        updates=updates,
        base=source,
        random_base=bool(run_cfg and run_cfg.get("init") == "random" and not base),
        rank=cfg["r"],
        alpha=cfg["lora_alpha"],
        notes=notes,
    )


def _parts(linear: str, out: int) -> list[tuple[str, slice]]:
    """The matrices one Linear holds: c_attn's rows are q | k | v, each n_embd long."""
    if linear != "attn.c_attn":
        return [(linear, slice(0, out))]
    C = out // 3
    return [(name, slice(i * C, (i + 1) * C)) for i, name in enumerate("qkv")]


def dora_delta(W: torch.Tensor, B: torch.Tensor, A: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA's merged update (Liu et al. 2024, as PEFT merges it): V = W + s B A (B holds s), each output
    row rescaled to the learned magnitude, W' = m * V / |V|_row (PEFT's get_weight_norm: the norm over the
    input dimension of the (out, in) weight), dW = W' - W."""
    V = W + B @ A  # (m, n)
    return magnitude[:, None] / V.norm(dim=1, keepdim=True) * V - W


def read_lora(folder: str | Path) -> tuple[dict, list[dict]]:
    """peft_io.read_adapter's (config, modules); a DoRA adapter in PEFT's format (use_dora, one
    lora_magnitude_vector (out,) per module), which the toolkit does not load, is read here, each module
    with its "magnitude"."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError):
        cfg = None
    if not (isinstance(cfg, dict) and cfg.get("use_dora") and cfg.get("peft_type") == "LORA"):
        return read_adapter(folder)  # plain LoRA, or a broken folder: read_adapter says what is wrong
    tensors, _ = _read_weights(folder, "pass a folder written by PEFT's save_pretrained")
    found: dict[str, dict] = {}
    for key, t in tensors.items():
        m = _DORA_KEY.fullmatch(key)
        if m is None:
            raise AdapterError(f"{folder}: {key} is not a LoRA A, B or DoRA magnitude under {PREFIX}")
        name = m["module"] if m["module"].startswith("transformer.") else "transformer." + m["module"]
        found.setdefault(name, {"name": name})[m["AB"] or "magnitude"] = t.float()
    modules = []
    for name, mod in sorted(found.items()):
        A, B, mag = mod.get("A"), mod.get("B"), mod.get("magnitude")
        if A is None or B is None or mag is None or A.shape[0] != B.shape[1] or mag.shape != (B.shape[0],):
            raise AdapterError(
                f"{folder}: {name} needs lora_A (R, in), lora_B (out, R) and a lora_magnitude_vector (out,)"
            )
        R = A.shape[0]
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, name, cfg["lora_alpha"])
        scaling = alpha / math.sqrt(R) if cfg.get("use_rslora") else alpha / R
        modules.append(mod | dict(rank=R, alpha=alpha, scaling=scaling, slices=None))
    return cfg, modules


def _full_run(folder: Path, base: str | None) -> Run:
    final = _read_base(folder)
    run, run_cfg = _owning_run(folder if folder.is_dir() else folder.parent)
    random_base = False
    if base:
        sd, source = _read_given_base(base), base
    elif run_cfg is None:
        raise UsageError(
            f"{folder} is a full checkpoint with no train.py run around it to name its starting "
            "weights; pass them with --base"
        )
    elif run_cfg.get("init") == "random":
        sd, source, random_base = _rebuilt_random_base(run_cfg), f"random {run_cfg['model']} rebuilt", True
        source += f" from --seed {run_cfg.get('seed', 0)}"
    else:
        source = run_cfg.get("weights") or HUB_IDS.get(run_cfg["model"], run_cfg["model"])
        try:
            sd = _read_base(source)
        except CheckpointError as e:
            raise UsageError(
                f"the starting weights of {run} cannot be read ({e}); pass them with --base"
            ) from None
    updates = []
    for name, Wf in final.items():
        match = _MODULE.fullmatch(name.removesuffix(".weight"))
        if match is None or not name.endswith(".weight"):
            continue
        W0 = sd.get(name)
        if W0 is None or W0.shape != Wf.shape:
            raise UsageError(
                f"{folder} and its base {source} are different shapes of GPT-2 ({name}); pass "
                "the weights it was fine-tuned from with --base"
            )
        W0 = W0.to(F64)
        dW = Wf.to(F64) - W0  # exact: the difference of two fp32 (or bf16) numbers fits in a float64
        eps = torch.finfo(Wf.dtype).eps  # storing W_final rounded each entry by up to eps/2 of itself
        for matrix, rows in _parts(match[2], dW.shape[0]):
            floor = eps * float(Wf[rows].to(F64).norm())
            updates.append(Update(int(match[1]), matrix, dense=dW[rows], W=W0[rows], floor=floor))
    updates.sort(key=lambda u: (u.layer, MATRICES.index(u.matrix)))
    r = Run(
        name=_name(folder),
        path=str(folder),
        kind="full",
        updates=updates,
        base=source,
        random_base=random_base,
    )
    rel = [float(u.dense.norm() / u.W.norm()) for u in updates if u.W.norm() > 0]
    if random_base and rel and statistics.median(rel) > 0.5:
        r.notes.append(
            f"the rebuilt random base differs from {folder} by {statistics.median(rel):.0%} of |W| "
            "(median): it is probably not this run's start; pass the real one with --base"
        )
    return r


def _rebuilt_random_base(cfg: dict) -> dict[str, torch.Tensor]:
    """A --init random run's starting weights: training/build.py seeds with --seed and builds the preset.
    A full run does not save them (they are the size of the model); they are made again here."""
    with torch.random.fork_rng(devices=[]):  # leaves the caller's random state alone
        torch.manual_seed(cfg.get("seed", 0))
        return GPT(config_for(cfg["model"])).state_dict()


# ------------------------------------------------------------------ the analysis
def analyze(runs_: list[Run], cfg: AnalyzeConfig, ks=(1, 4, 8, 16, 64)) -> dict:
    """Everything analysis.json holds (schema in docs/lora.md)."""
    out = {
        "schema": SCHEMA,
        "settings": {
            "energy_top_k": list(ks),
            "max_dirs": cfg.max_dirs,
            "amp_rank": cfg.amp_rank,
            "draws": cfg.draws,
            "seed": cfg.seed,
        },
        "runs": [],
        "similarity": [],
    }
    kept: list[dict[str, SVD]] = []
    for run in runs_:
        modules, svds = {}, {}
        for u in run.updates:
            d = u.svd()
            info = {"layer": u.layer, "matrix": u.matrix, "shape": list(u.shape), "adapter_rank": u.rank}
            info |= summarize(d, u.shape, ks, u.floor)
            info |= {"norm_W": None, "relative_change": None, "amplification": None}
            if u.W is not None:
                norm_W = float(u.W.norm())
                info |= {"norm_W": norm_W, "relative_change": info["norm_dW"] / norm_W if norm_W else None}
                if info["norm_dW"] > 0:
                    r = min(cfg.amp_rank or u.rank or 8, cfg.max_dirs)
                    gen = torch.Generator().manual_seed(cfg.seed + zlib.crc32(f"{run.name}/{u.key}".encode()))
                    info["amplification"] = amplification(u.W, d, r, cfg.draws, gen)
            n = min(info["numerical_rank"], cfg.max_dirs)
            svds[u.key] = SVD(d.U[:, :n], d.S[:n], d.V[:, :n])
            modules[u.key] = info
        kept.append(svds)
        out["runs"].append(
            {
                "name": run.name,
                "path": run.path,
                "kind": run.kind,
                "rank": run.rank,
                "alpha": run.alpha,
                "base": run.base,
                "random_base": run.random_base,
                "notes": run.notes,
                "modules": modules,
            }
        )
    for a in range(len(runs_)):
        for b in range(a + 1, len(runs_)):
            grids = {}
            for key in kept[a].keys() & kept[b].keys():
                Va, Vb = kept[a][key].V, kept[b][key].V
                if Va.shape[1] and Vb.shape[1]:
                    phi = subspace_similarity(Va, Vb)
                    grids[key] = {
                        "n": Va.shape[0],
                        "i": Va.shape[1],
                        "j": Vb.shape[1],
                        "phi": [[round(float(x), 5) for x in row] for row in phi],
                    }
            grids = dict(sorted(grids.items(), key=lambda kv: _order(kv[0])))
            out["similarity"].append({"a": runs_[a].name, "b": runs_[b].name, "modules": grids})
    return out


def _order(key: str) -> tuple[int, int]:
    layer, matrix = key.removeprefix("h.").split(".", 1)
    return int(layer), MATRICES.index(matrix)


# ------------------------------------------------------------------ the table
def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _f(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


COLUMNS = (
    "matrix",
    "layers",
    "|dW|_F",
    "|dW|/|W|",
    "eff.rank",
    "r90",
    "r99",
    "top-1",
    "top-8",
    "amplif.",
    "random",
)
WIDTHS = (12, 6, 9, 10, 9, 5, 5, 7, 7, 9, 8)


def _row(cells) -> str:
    return "  " + "".join(
        f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, WIDTHS))
    )


def _matrix_row(matrix: str, ms: list[dict]) -> list[str]:
    """One matrix type of one run: means over layers, medians for the ranks."""
    amp = [m["amplification"] for m in ms if m["amplification"]]
    return [
        matrix,
        str(len(ms)),
        _f(_mean([m["norm_dW"] for m in ms])),
        _f(_mean([m["relative_change"] for m in ms])),
        _f(_mean([m["effective_rank"] for m in ms]), ".1f"),
        f"{statistics.median(m['rank_90'] for m in ms):g}",
        f"{statistics.median(m['rank_99'] for m in ms):g}",
        _f(_mean([m["energy_top"]["1"] for m in ms]), ".2f"),
        _f(_mean([m["energy_top"]["8"] for m in ms]), ".2f"),
        _f(_mean([a["factor"] for a in amp])),
        _f(_mean([a["factor_random"] for a in amp])),
    ]


def _phi_at(grids: list[dict], k: int) -> str:
    """Mean phi(k, k) over layers, where every grid reaches k."""
    if not all(min(g["i"], g["j"]) >= k for g in grids):
        return "-"
    return f"{_mean([g['phi'][k - 1][k - 1] for g in grids]):.3f}"


def table(result: dict) -> str:
    """Per run and matrix type, the mean over layers (median for the ranks); then phi per pair of runs."""
    kinds = {"full": "full fine-tune", "lora": "LoRA r={rank}", "dora": "DoRA r={rank}"}
    lines = []
    for run in result["runs"]:
        base = f"RANDOM base {run['base']}" if run["random_base"] else f"base {run['base']}"
        lines += ["", f"{run['name']}  ({kinds[run['kind']].format(rank=run['rank'])}, {base})"]
        lines += [f"  note: {n}" for n in run["notes"]]
        lines.append(_row(COLUMNS))
        for matrix in MATRICES:
            ms = [m for m in run["modules"].values() if m["matrix"] == matrix]
            if ms:
                lines.append(_row(_matrix_row(matrix, ms)))
    for pair in result["similarity"]:
        lines += [
            "",
            f"phi, {pair['a']} vs {pair['b']}  (mean over layers; unrelated random subspaces give "
            "about max(i,j)/n)",
        ]
        lines.append(
            f"  {'matrix':<12}{'layers':>6}{'phi(1,1)':>10}{'phi(4,4)':>10}{'phi(8,8)':>10}{'1/n':>8}"
        )
        for matrix in MATRICES:
            gs = [g for k, g in pair["modules"].items() if k.split(".", 2)[2] == matrix]
            if gs:
                at = [_phi_at(gs, k) for k in (1, 4, 8)]
                lines.append(
                    f"  {matrix:<12}{len(gs):>6}{at[0]:>10}{at[1]:>10}{at[2]:>10}{1 / gs[0]['n']:>8.4f}"
                )
    return "\n".join(lines[1:])


def write_outputs(result: dict, out: Path, layers: str | None, plots: bool = True) -> list[Path]:
    """analysis.json (written to a temp name, then renamed) and, with plots, the PNGs beside it."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".analysis.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out / "analysis.json")
    return [out / "analysis.json"] + (write_plots(result, out, layers) if plots else [])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(AnalyzeConfig, description=__doc__.split("\n")[0], prog="python -m lora.analyze")
    parser.add_argument("run", nargs="+", metavar="RUN", help="run folder, adapter folder or checkpoint")
    args = vars(parser.parse_args(argv))
    paths = args.pop("run")
    cfg = AnalyzeConfig(**args)
    if cfg.max_dirs < 1 or cfg.draws < 1 or (cfg.amp_rank is not None and cfg.amp_rank < 1):
        raise UsageError("--max-dirs, --draws and --amp-rank must be positive")
    if cfg.layers and not re.fullmatch(r"\d+(,\d+)*", cfg.layers.replace(" ", "")):
        raise UsageError(f"--layers {cfg.layers}: pass layer numbers separated by commas, e.g. 0,5,11")
    loaded = [load_run(p, cfg.base) for p in paths]
    names = [r.name for r in loaded]
    for r in loaded:  # two runs of one name (two final/ folders called alike): keep them apart
        if names.count(r.name) > 1:
            r.name = f"{r.name}#{names[: loaded.index(r)].count(r.name) + 1}"
    result = analyze(loaded, cfg)
    out = Path(cfg.out) if cfg.out else Path(paths[0]).resolve().parent / "analysis"
    written = write_outputs(result, out, cfg.layers, cfg.plots)
    print(table(result))
    print(f"\nwrote {', '.join(p.name for p in written)} to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
