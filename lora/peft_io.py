"""LoRA adapters in Hugging Face PEFT's on-disk format, and the merged model as a plain GPT-2 checkpoint.

    adapter_config.json        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
                                "target_modules": ["c_attn"], "fan_in_fan_out": true, "bias": "none", ...}
    adapter_model.safetensors  base_model.model.transformer.h.0.attn.c_attn.lora_A.weight   (R, in)
                               base_model.model.transformer.h.0.attn.c_attn.lora_B.weight   (out, R)
                               metadata {"format": "pt"}

PEFT wraps GPT2LMHeadModel, whose module names are ours ("transformer.h.0.attn.c_attn"), under
`base_model.model.`; the adapter name ("default") is not part of saved keys. A wrong prefix makes PEFT load
nothing, silently: tests/test_lora_peft.py checks logits, not just that loading ran. HF's GPT-2 stores its
four projections as Conv1D with (in, out) weights, so `fan_in_fan_out: true` tells PEFT to transpose W when
merging; A and B have the shapes above either way.

PEFT has no q/v slices of c_attn, but a slice adapter IS a c_attn adapter of rank R = n*r whose A and B are
block structured (LoRALinear.full_B). PEFT scales by lora_alpha / R, so to keep s = alpha / r that module is
written with alpha * n (rslora: alpha / sqrt(R) needs alpha * sqrt(n)), through `rank_pattern` and
`alpha_pattern`. The slices are also named in the safetensors metadata ("lora_slices", which PEFT ignores),
so load_adapter rebuilds the per-slice layers instead of a joint one.

DoRA (lora/dora.py) adds `use_dora: true` and one more tensor per module,
`base_model.model.<module>.lora_magnitude_vector` (out,): for a slice adapter the c_attn-wide vector, with
m = ||W_k|| on the rows of the slices that are off (there PEFT's m / ||W + s B A|| is 1, as ours). A QLoRA
adapter is an ordinary LoRA adapter (the 4-bit base is the base model's business), and merged_state_dict
dequantizes an NF4 base before it adds dW.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cli import UsageError
from data.tokenizer import save_tokenizer
from lora.config import LoRAConfig, LoRAConfigError
from lora.lora import ADAPTER_TENSORS, add_lora, lora_layers, trainable_report
from model.gpt2 import GPT
from model.hf import save_pretrained
from model.nf4 import NF4Linear, nf4_weights

CONFIG, WEIGHTS, WEIGHTS_BIN = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"
PREFIX = "base_model.model."
_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?:(?P<AB>[AB])\.weight|(?P<m>magnitude_vector))")


class AdapterError(UsageError):
    """An adapter folder that cannot be loaded: one sentence naming the folder and what to do."""


def peft_name(module: str) -> str:
    """PEFT's target name: "transformer.h.0.attn.c_attn" -> "c_attn", "...mlp.c_proj" -> "mlp.c_proj"."""
    parts = module.split(".")
    return parts[-1] if parts[-1] == "c_attn" else ".".join(parts[-2:])


# ------------------------------------------------------------------ save
def save_adapter(model: torch.nn.Module, folder: str | Path, base_model_name_or_path: str = "gpt2") -> None:
    """Write the LoRA layers of `model` as a PEFT adapter (PeftModel.from_pretrained loads it)."""
    layers = lora_layers(model)
    if not layers:
        raise AdapterError("the model has no LoRA layers to save; call inject_lora or load_adapter first")
    if len({m.rslora for m in layers.values()}) > 1:
        raise AdapterError("PEFT has one use_rslora per adapter; these LoRA layers mix both scalings")
    dora = {hasattr(m, "lora_magnitude_vector") for m in layers.values()}
    if len(dora) > 1:
        raise AdapterError("PEFT has one use_dora per adapter; these layers mix DoRA and plain LoRA")
    first = next(iter(layers.values()))
    tensors, slices, ranks, alphas = {}, {}, {}, {}
    for name, m in layers.items():
        n = sum(m.slices) if m.slices else 1
        tensors[PREFIX + name + ".lora_A.weight"] = m.lora_A.detach().float().cpu().contiguous()  # (R, in)
        tensors[PREFIX + name + ".lora_B.weight"] = m.full_B().detach().float().cpu().contiguous()  # (out, R)
        if True in dora:  # m over every output row (out,): ||W|| on the slices that are off
            tensors[PREFIX + name + ".lora_magnitude_vector"] = (
                m.magnitude().detach().float().cpu().contiguous()
            )
        ranks[name] = n * m.rank
        alphas[name] = m.alpha * (math.sqrt(n) if m.rslora else n)  # PEFT's alpha / R (or / sqrt R) == ours
        if m.slices:
            slices[name] = ",".join("qkv"[i] for i, on in enumerate(m.slices) if on)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": first.rank,
        "lora_alpha": first.alpha,
        "target_modules": sorted({peft_name(n) for n in layers}),
        "rank_pattern": _patterns(ranks, first.rank),
        "alpha_pattern": _patterns(alphas, first.alpha),
        "lora_dropout": first.dropout.p if isinstance(first.dropout, torch.nn.Dropout) else 0.0,
        "fan_in_fan_out": True,  # HF GPT-2's Conv1D stores W as (in, out)
        "bias": "none",
        "use_rslora": first.rslora,
        "use_dora": True in dora,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"} | ({"lora_slices": json.dumps(slices)} if slices else {})
    tmp = folder / f".{WEIGHTS}.tmp"  # temp name + rename: a crash never leaves half an adapter
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, folder / WEIGHTS)
    (folder / f".{CONFIG}.tmp").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(folder / f".{CONFIG}.tmp", folder / CONFIG)
    if getattr(model, "tokenizer", None) is not None:  # the base's own tokenizer, as PEFT users keep it
        save_tokenizer(model.tokenizer, folder)


def _patterns(values: dict[str, float], default: float) -> dict[str, float]:
    """Modules whose value differs from the default, keyed by PEFT name ("c_attn") when all its layers
    agree, else by the full module name (PEFT matches a key as a suffix of the module name)."""
    by_target: dict[str, set] = {}
    for name, v in values.items():
        by_target.setdefault(peft_name(name), set()).add(v)
    out = {}
    for name, v in values.items():
        if v != default:
            target = peft_name(name)
            out[target if len(by_target[target]) == 1 else name] = v
    return out


# ------------------------------------------------------------------ read
def read_adapter(folder: str | Path) -> tuple[dict, list[dict]]:
    """(adapter_config.json, one dict per adapted module: name, A (R, in), B (out, R), rank R, alpha,
    scaling, slices like (True, False, True) or None), checked for what this toolkit can load."""
    folder = Path(folder)
    hint = "pass a folder written by lora.peft_io.save_adapter or PEFT's save_pretrained"
    if not folder.is_dir():
        raise AdapterError(f"adapter folder {folder} does not exist; {hint}")
    if not (folder / CONFIG).is_file():
        raise AdapterError(f"{folder} has no {CONFIG}; {hint}")
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except ValueError as e:
        raise AdapterError(
            f"{folder / CONFIG} is not valid JSON ({e}); restore it or save the adapter again"
        ) from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        kind = cfg.get("peft_type") if isinstance(cfg, dict) else None
        raise AdapterError(f"{folder} holds a {kind!r} adapter; only PEFT LORA adapters load")
    if "r" not in cfg or "lora_alpha" not in cfg:
        raise AdapterError(f"{folder / CONFIG} has no r and lora_alpha; restore it or save the adapter again")
    tensors, metadata = _read_weights(folder, hint)
    if cfg.get("bias", "none") != "none" or cfg.get("modules_to_save"):
        raise AdapterError(
            f"{folder} trains biases or modules_to_save, which this toolkit does not implement; "
            "train a LoRA or DoRA adapter (bias none)"
        )
    modules: dict[str, dict] = {}
    for key, t in tensors.items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise AdapterError(
                f"{folder / WEIGHTS} has a tensor {key} that is not a LoRA A or B (or DoRA magnitude) under "
                f"{PREFIX}; only LoRA and DoRA adapters of a GPT-2 causal LM load"
            )
        name = m["module"] if m["module"].startswith("transformer.") else "transformer." + m["module"]
        modules.setdefault(name, {"name": name})[m["AB"] or "m"] = t.float()
    slices = json.loads(metadata.get("lora_slices", "{}"))
    out = []
    for name, mod in modules.items():
        if "A" not in mod or "B" not in mod or mod["A"].shape[0] != mod["B"].shape[1]:
            raise AdapterError(f"{folder}: {name} needs lora_A (R, in) and lora_B (out, R) of one rank R")
        if bool(cfg.get("use_dora")) != ("m" in mod) or "m" in mod and mod["m"].shape != mod["B"].shape[:1]:
            raise AdapterError(
                f"{folder}: {name} must have a lora_magnitude_vector (out,) exactly when {CONFIG} says "
                f"use_dora (it says {bool(cfg.get('use_dora'))}); the files do not match"
            )
        R = mod["A"].shape[0]
        want = _pattern_value(cfg.get("rank_pattern") or {}, name, cfg["r"])
        if R != want:
            raise AdapterError(
                f"{folder}: {name} has rank {R} but {CONFIG} says {want}; the files do not match"
            )
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, name, cfg["lora_alpha"])
        scaling = alpha / math.sqrt(R) if cfg.get("use_rslora") else alpha / R
        on = slices[name].split(",") if name in slices else None  # "q,v" -> (True, False, True)
        out.append(
            mod | dict(rank=R, alpha=alpha, scaling=scaling, slices=on and tuple(s in on for s in "qkv"))
        )
    if not out:
        raise AdapterError(f"{folder / WEIGHTS} holds no LoRA tensors; {hint}")
    return cfg, sorted(out, key=lambda m: _natural(m["name"]))


def _read_weights(folder: Path, hint: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = folder / WEIGHTS
    try:
        if path.is_file():
            with open(path, "rb") as f:  # the header: 8-byte length, then JSON with __metadata__
                n = int.from_bytes(f.read(8), "little")
                metadata = json.loads(f.read(n)).get("__metadata__") or {}
            return load_file(path), metadata
        if (folder / WEIGHTS_BIN).is_file():  # older PEFT versions wrote a torch pickle
            return torch.load(folder / WEIGHTS_BIN, map_location="cpu", weights_only=True), {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterError(
            f"{path} cannot be read ({e}); it is truncated or corrupt: save it again"
        ) from None
    raise AdapterError(f"{folder} has no {WEIGHTS}; {hint}")


def _pattern_value(pattern: dict, name: str, default):
    """PEFT's rule (utils.other.get_pattern_key): the first key that matches a suffix of the module name."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in name.split(".")]


# ------------------------------------------------------------------ load
def load_adapter(model: GPT, folder: str | Path, verbose: bool = False) -> list[str]:
    """Add the adapter in `folder` (ours or PEFT's) to a plain GPT: LoRA layers with its weights, the rest
    frozen. Returns the adapted module names."""
    cfg, modules = read_adapter(folder)
    if lora_layers(model):
        raise AdapterError(f"the model already has LoRA layers; load {folder} into a plain GPT")
    base = cfg.get("base_model_name_or_path") or "the model it was trained on"
    layers = dict(model.named_modules())
    for mod in modules:
        linear, out, fan_in = layers.get(mod["name"]), mod["B"].shape[0], mod["A"].shape[1]
        if not isinstance(linear, (torch.nn.Linear, NF4Linear)):  # NF4Linear: a QLoRA base (model/nf4.py)
            raise AdapterError(
                f"{folder} adapts {mod['name']}, which this {model.config.n_layer}-layer GPT-2 does not "
                f"have; load it onto its base model ({base})"
            )
        if (linear.out_features, linear.in_features) != (out, fan_in):
            raise AdapterError(
                f"{folder} was trained on another base shape: {mod['name']} is {fan_in} -> {out} in the "
                f"adapter but {linear.in_features} -> {linear.out_features} here; load it onto {base}"
            )
        mod["B_ours"] = _unblock(mod, folder) if mod["slices"] else mod["B"]
        n = sum(mod["slices"]) if mod["slices"] else 1
        rslora = cfg.get("use_rslora", False)
        alpha = mod["alpha"] / (math.sqrt(n) if rslora else n)  # undo save_adapter's rescaling
        try:
            mod["lora"] = LoRAConfig(
                mod["rank"] // n,
                alpha,
                dropout=cfg.get("lora_dropout", 0.0),
                rslora=rslora,
                dora=bool(cfg.get("use_dora")),
            )
        except LoRAConfigError as e:
            raise AdapterError(f"{folder}: {mod['name']}: {e}") from None
    model.requires_grad_(False)  # checked everything first: a refused adapter leaves the model as it was
    for mod in modules:
        layer = add_lora(model, mod["name"], mod["lora"], mod["slices"])
        with torch.no_grad():
            layer.lora_A.copy_(mod["A"])  # (R, in): A_q over A_v for a slice layer, as stored
            layer.lora_B.copy_(mod["B_ours"])
            if "m" in mod:  # DoRA: a slice layer trains its slices' rows of the c_attn-wide vector
                rows = mod["m"].split(layer.slice_out) if mod["slices"] else [mod["m"]]
                layer.lora_magnitude_vector.copy_(
                    torch.cat([r for r, on in zip(rows, mod["slices"] or [1]) if on])
                )
    if verbose:
        r = trainable_report(model)
        print(f"loaded LoRA adapter {folder}: {len(modules)} modules, trainable params: {r['trainable']:,}")
    return [m["name"] for m in modules]


def _unblock(mod: dict, folder) -> torch.Tensor:
    """A slice layer's lora_B (n*C, r) from the block-structured (3C, n*r) B that save_adapter wrote."""
    B, n = mod["B"], sum(mod["slices"])
    r = B.shape[1] // n
    rows = [
        b for b, on in zip(B.split(B.shape[0] // 3), mod["slices"]) if on
    ]  # q,v: [B_q 0] and [0 B_v], each (C, 2r)
    diag = torch.cat([b[:, j * r : (j + 1) * r] for j, b in enumerate(rows)])  # (n*C, r): B_q over B_v
    if torch.count_nonzero(diag) != torch.count_nonzero(B):
        raise AdapterError(
            f"{folder}: {mod['name']} is marked as q/k/v slices but its B is not block structured"
        )
    return diag


# ------------------------------------------------------------------ export
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain GPT state dict with every adapter folded in (W + dW in fp32, cast back to W's dtype; DoRA:
    g * (W + s B A)) and every NF4 weight dequantized (to the dtype it was quantized from). The model itself
    is not touched: merged or not, it stays as it was."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    layers, nf4 = lora_layers(model), nf4_weights(model)
    sd = {k: v for k, v in model.state_dict().items()
          if k.rsplit(".", 1)[-1] not in ADAPTER_TENSORS and k.rpartition(".")[0] not in nf4}  # fmt: skip
    for name, w in nf4.items():  # "...c_fc.weight": the NF4Weight module sits where the tensor did
        sd[name] = w.dequantize()
    for name, m in layers.items():
        if not m.merged:
            W = m.dense_weight().detach()
            sd[name + ".weight"] = (W.float() + m.delta_weight().to(W.device)).to(W.dtype)
    return sd


def export_merged(model: GPT, folder: str | Path) -> None:
    """Base + merged adapter as an HF GPT-2 checkpoint (model.safetensors + config.json) that
    transformers.GPT2LMHeadModel.from_pretrained loads with no PEFT at all."""
    model = getattr(model, "_orig_mod", model)
    with torch.device("meta"):  # a plain GPT around the merged tensors, without allocating its own
        plain = GPT(model.config)
    plain.load_state_dict(merged_state_dict(model), assign=True)
    plain.lm_head.weight = plain.transformer.wte.weight
    plain.tokenizer = getattr(model, "tokenizer", None)  # its files are copied beside the weights
    save_pretrained(plain, folder)
