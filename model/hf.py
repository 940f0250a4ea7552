"""Hugging Face GPT-2 checkpoints in and out: safetensors files, folders, hub ids.

The same weights come in two key layouts:
    hub file (openai-community/gpt2 model.safetensors)   wte.weight, h.0.attn.c_attn.weight, ...
                                                          + h.N.attn.bias causal-mask buffers
                                                          (+ h.N.attn.masked_bias in some conversions)
    transformers save_pretrained                          transformer.wte.weight, ... no buffers
Both store the four Conv1D weights (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) as (in, out); our
nn.Linear wants (out, in), so they are transposed once on load and once on save. lm_head is tied to wte: it
is absent from the file, or present and equal. Every name and shape is checked, so a file that is not GPT-2
(or does not match its config.json) stops with one sentence naming the file and what to do.

Any GPT-2-architecture checkpoint loads: config.json's vocabulary and context sizes, n_inner,
activation_function and the three attention settings (scale_attn_weights, scale_attn_by_inverse_layer_idx,
reorder_and_upcast_attn) become GPTConfig fields; a setting model/gpt2.py does not implement is refused with
one sentence naming the key. A tokenizer.json beside the weights (CodeParrot's 32,768-token BPE, say) comes
with the model as `model.tokenizer` (data/tokenizer.py), and save_pretrained copies it into the folder it
writes. Repositories older than safetensors (pytorch_model.bin) load through torch.load(weights_only=True),
which rebuilds tensors and runs no code from the file.
"""

from __future__ import annotations

import json
import os
import re
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cli import UsageError, resolve_device, resolve_dtype
from data.tokenizer import EOT, TOKENIZER_FILES, TOKENIZER_JSON, Tokenizer, load_tokenizer, save_tokenizer
from model.gpt2 import ACTIVATIONS, GPT, PRESETS, GPTConfig, config_for

HUB_IDS = {  # short names -> hub repositories (a full "org/name" id is used as given)
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
    "codeparrot-small": "codeparrot/codeparrot-small",
    "codeparrot": "codeparrot/codeparrot",
}
WEIGHTS, INDEX, CONFIG = "model.safetensors", "model.safetensors.index.json", "config.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"  # before safetensors (CodeParrot's era)
# config.json keys that become GPTConfig fields of the same name (model/gpt2.py honours each)
FLAGS = ("n_inner", "activation_function", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
         "reorder_and_upcast_attn")  # fmt: skip
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(masked_)?bias")  # a constant causal mask, not a weight
_GPT_KEY = re.compile(
    r"transformer\.((wte|wpe)\.weight|ln_f\.(weight|bias)"
    r"|h\.\d+\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias))"
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class CheckpointError(UsageError):
    """A checkpoint that cannot be read as GPT-2: one sentence naming the file and what to do."""


@dataclass
class Checkpoint:
    """A checkpoint read from disk and converted to our names and (out, in) Linear weights."""

    files: list[Path]  # the safetensors file(s) the weights came from
    state_dict: dict[str, torch.Tensor]  # our keys, lm_head.weight is wte.weight
    config: GPTConfig
    config_from: str  # "config.json" or "tensor shapes"
    layout: str  # "hub" (no prefix, mask buffers) or "transformers" (transformer. prefix)
    stored_dtypes: dict[str, int]  # dtype as stored -> number of tensors
    nbytes: int  # total size of the weight files
    tokenizer: Tokenizer | None = None  # the tokenizer.json beside the weights; None: GPT-2's


# ------------------------------------------------------------------ public API
def load_pretrained(source: str | Path, device="cpu", dtype=None, *, dropout: float = 0.0) -> GPT:
    """GPT from a checkpoint folder, a .safetensors file or a hub id, in eval mode.

    dtype None -> float32 (as transformers does), "auto" -> as stored, else a torch dtype or its name.
    device "auto" picks cuda when available."""
    return build_model(read_checkpoint(source), device=device, dtype=dtype, dropout=dropout)


def save_pretrained(model: GPT, folder: str | Path) -> None:
    """Write model.safetensors + config.json in the transformers layout (GPT2LMHeadModel.from_pretrained
    loads it), and the model's own tokenizer files if it has them. Each weight or config file is written to a
    temporary name and renamed, so a crash never leaves half a file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = state_dict_to_hf(model)
    dtype = next(iter(tensors.values())).dtype
    tok = getattr(_unwrap(model), "tokenizer", None)
    _atomic(folder / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    cfg = config_to_hf(_unwrap(model).config, dtype, eot=tok.eot if tok else EOT)
    text = json.dumps(cfg, indent=2) + "\n"
    _atomic(folder / CONFIG, lambda tmp: Path(tmp).write_text(text))
    if tok is not None:
        save_tokenizer(tok, folder)


def state_dict_to_hf(model: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights -> the transformers layout: `transformer.` keys, Conv1D weights as (in, out), no lm_head.

    Takes a GPT (a torch.compile wrapper is unwrapped) or its state dict; any other key (e.g. LoRA's
    lora_A) is an error: merge and remove adapters first."""
    sd = _unwrap(model).state_dict() if isinstance(model, nn.Module) else dict(model)
    extra = [k for k in sd if k != "lm_head.weight" and not _GPT_KEY.fullmatch(k)]
    if extra:
        raise ValueError(f"not a plain GPT state dict: unexpected {', '.join(extra[:3])}; merge adapters")
    out = {}
    for k, v in sd.items():
        if k == "lm_head.weight":  # tied to wte: transformers re-ties it on load
            continue
        v = v.detach()
        out[k] = (v.t() if k.endswith(CONV1D) else v).contiguous().cpu()  # Linear (out, in) -> (in, out)
    return out


def state_dict_from_hf(sd: dict[str, torch.Tensor], name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """HF GPT-2 tensors in either layout -> our keys, Conv1D weights transposed to (out, in), mask buffers
    dropped, lm_head.weight set to wte.weight. Names and shapes are checked by check_state_dict."""
    out, lm_head = {}, None
    for k, v in sd.items():
        key = k.removeprefix("transformer.")
        if _MASK_BUFFER.fullmatch(key):
            continue
        if key == "lm_head.weight":
            lm_head = v
            continue
        if key.endswith(CONV1D):
            v = v.t().contiguous()  # Conv1D (in, out) -> Linear (out, in)
        out["transformer." + key] = v
    if "transformer.wte.weight" not in out:
        sample = ", ".join(list(sd)[:3]) or "no tensors at all"
        raise CheckpointError(
            f"{name} is not a GPT-2 checkpoint (no wte.weight; its keys look like {sample}); "
            "pass a GPT-2 checkpoint such as one written by save_pretrained"
        )
    wte = out["transformer.wte.weight"]
    if lm_head is not None and not (lm_head.shape == wte.shape and torch.equal(lm_head, wte)):
        raise CheckpointError(
            f"{name} has an lm_head.weight that differs from wte.weight, but GPT-2 ties the two; "
            "this toolkit loads tied GPT-2 checkpoints only"
        )
    out["lm_head.weight"] = wte
    return out


# ------------------------------------------------------------------ reading
def read_checkpoint(source: str | Path) -> Checkpoint:
    """Find the files for `source`, read them, convert the keys, infer and check the config."""
    files, config_file = resolve(source)
    raw: dict[str, torch.Tensor] = {}
    for f in files:
        raw.update(_read_weights(f))
    name = str(files[0]) if len(files) == 1 else f"{files[0].parent} (sharded)"
    hf_config = _read_json(config_file) if config_file else None
    layout = "transformers" if any(k.startswith("transformer.") for k in raw) else "hub"
    if hf_config is not None:
        _check_hf_config(hf_config, config_file)
    sd = state_dict_from_hf(raw, name)
    config = infer_config(sd, hf_config, name)
    check_state_dict(sd, config, name)
    for k, v in sd.items():  # a flipped byte in the data section often shows up here (no checksum exists)
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(
                f"{name} has non-finite values in {_hf_key(k)}; it is corrupt: get it again"
            )
    stored = Counter(str(v.dtype).removeprefix("torch.") for v in raw.values())
    tok_file = files[0].with_name(TOKENIZER_JSON)
    tokenizer = load_tokenizer(tok_file) if tok_file.is_file() else None
    _check_eos(hf_config or {}, config_file, tokenizer)
    return Checkpoint(
        files=files,
        state_dict=sd,
        config=config,
        config_from="config.json" if hf_config is not None else "tensor shapes",
        layout=layout,
        stored_dtypes=dict(stored),
        nbytes=sum(f.stat().st_size for f in files),
        tokenizer=tokenizer,
    )


def _check_eos(hf: dict, config_file: Path | None, tok: Tokenizer | None) -> None:
    """The end-of-text id is the tokenizer's; a config.json that says otherwise gets a warning (CodeParrot's
    says 50256, GPT-2's, while its own tokenizer puts <|endoftext|> at 0)."""
    eot = tok.eot if tok is not None else EOT
    said = hf.get("eos_token_id")
    if isinstance(said, int) and said != eot:
        whose = f"its tokenizer's ({tok.name})" if tok is not None else "GPT-2's tokenizer's"
        print(
            f"warning: {config_file} says eos_token_id={said}, but {whose} <|endoftext|> is {eot}; "
            f"{eot} is used (training targets end with it and generation stops there)",
            file=sys.stderr,
        )


def build_model(ck: Checkpoint, device="cpu", dtype=None, dropout: float = 0.0) -> GPT:
    """A GPT holding the checkpoint's weights, on `device` in `dtype`, in eval mode."""
    with torch.device("meta"):  # no time spent on a random init that is overwritten next line
        model = GPT(replace(ck.config, dropout=dropout))
    model.load_state_dict(ck.state_dict, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign=True swapped wte's Parameter: tie again
    model.tokenizer = ck.tokenizer  # None: GPT-2's (data.tokenizer.tokenizer_of)
    device = resolve_device(device)
    # "auto" here: as stored in the file
    target = None if dtype == "auto" else resolve_dtype(dtype, device, training=False)
    return model.to(device=device, dtype=target).eval()


def resolve(source: str | Path) -> tuple[list[Path], Path | None]:
    """(weight files, config.json or None) for a folder, a .safetensors file or a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_files(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path} is not a .safetensors file; pass a GPT-2 checkpoint folder, a .safetensors file "
                "or a hub id like gpt2 (convert other formats with transformers' save_pretrained)"
            )
        sibling = path.with_name(CONFIG)  # a lone file uses the config.json beside it, if any
        return [path], sibling if sibling.is_file() else None
    if _HUB_ID.fullmatch(str(source)) and not str(source).endswith(".safetensors"):
        return _folder_files(download(str(source)))
    raise CheckpointError(
        f"{source} does not exist; pass a GPT-2 checkpoint folder, a .safetensors file or a hub id "
        f"({', '.join(HUB_IDS)})"
    )


def download(source: str) -> Path:
    """The local snapshot folder of a hub repo's weights, config.json and tokenizer files: the cache first,
    then the network; safetensors weights where the repo has them, else pytorch_model.bin (huggingface_hub is
    imported here: only hub ids need it)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    repo = HUB_IDS.get(source, source)
    rest = [CONFIG, *TOKENIZER_FILES]
    kinds = ([WEIGHTS, INDEX, "model-*.safetensors"], [BIN, BIN_INDEX, "pytorch_model-*.bin"])
    why = f"{repo} on the hub has neither {WEIGHTS} nor {BIN}"
    for local in (True, False):  # the cache (perhaps partial), then the network
        for weights in kinds:  # safetensors where the repo has them, else pytorch_model.bin
            try:
                folder = Path(snapshot_download(repo, allow_patterns=weights + rest, local_files_only=local))
            except Exception as e:  # not cached; or no network, proxy, offline mode, no such repo, ...
                if local:
                    continue
                why = (
                    f"the hub has no repository {repo}"
                    if isinstance(e, RepositoryNotFoundError)
                    else f"the hub is unreachable ({type(e).__name__}) and {repo} is not in the local cache"
                )
                break  # the other kind of weights would get the same answer
            if any((folder / f).is_file() for f in (WEIGHTS, INDEX, BIN, BIN_INDEX)):
                return folder
    raise CheckpointError(
        f"{source} is not a local path and cannot be fetched: {why}; connect to a network, or download "
        f"{repo} (model.safetensors + config.json) elsewhere and pass its folder"
    )


def download_tokenizer(source: str) -> Path | None:
    """The snapshot folder of a hub repo's tokenizer files alone (the cache first, then the network); None
    when the repo has no tokenizer.json."""
    from huggingface_hub import snapshot_download

    repo = HUB_IDS.get(source, source)
    for local in (True, False):
        try:
            folder = Path(
                snapshot_download(repo, allow_patterns=list(TOKENIZER_FILES), local_files_only=local)
            )
        except Exception as e:  # not cached; then no network, no such repo, ...
            why = type(e).__name__
            continue
        if (folder / TOKENIZER_JSON).is_file():
            return folder
        if not local:
            return None
    raise CheckpointError(
        f"the tokenizer of {repo} is not cached and cannot be fetched ({why}); connect to a network, or pass "
        "--tokenizer with its tokenizer.json"
    )


def find_tokenizer(source: str | Path) -> Tokenizer:
    """--tokenizer: a tokenizer.json file, a folder holding one, or a hub id (its tokenizer files only)."""
    path = Path(source).expanduser()
    if path.exists() or not _HUB_ID.fullmatch(str(source)):
        return load_tokenizer(path)
    folder = download_tokenizer(str(source))
    if folder is None:
        raise CheckpointError(
            f"the hub repository {source} has no {TOKENIZER_JSON}; pass another --tokenizer"
        )
    return load_tokenizer(folder)


def tokenizer_for(source: str | Path) -> Tokenizer | None:
    """The tokenizer that goes with the weights at `source`, without reading them: a preset's, the
    tokenizer.json beside a local folder or file, or a hub repo's tokenizer files; None: GPT-2's."""
    if str(source) in HUB_IDS:
        return preset_tokenizer(str(source))
    path = Path(source).expanduser()
    if path.exists():
        file = (path if path.is_dir() else path.parent) / TOKENIZER_JSON
        return load_tokenizer(file) if file.is_file() else None
    folder = download_tokenizer(str(source))
    return load_tokenizer(folder) if folder is not None else None


def preset_tokenizer(preset: str) -> Tokenizer | None:
    """The tokenizer of a preset (also for its random weights): None (GPT-2's) where the preset has GPT-2's
    vocabulary, else its hub repository's own (CodeParrot's)."""
    if (
        preset not in HUB_IDS
        or preset not in PRESETS
        or config_for(preset).vocab_size == GPTConfig.vocab_size
    ):
        return None
    folder = download_tokenizer(HUB_IDS[preset])
    if folder is None:
        raise CheckpointError(
            f"the hub repository {HUB_IDS[preset]} has no {TOKENIZER_JSON}; pass --tokenizer"
        )
    return load_tokenizer(folder)


def infer_config(sd: dict[str, torch.Tensor], hf_config: dict | None, name: str = "checkpoint") -> GPTConfig:
    """Sizes from the tensor shapes; n_head, layer_norm_epsilon, the activation and the attention settings
    from config.json (default: 64-dim heads and GPT-2's settings). A config.json that disagrees with the
    shapes is an error, not a guess."""
    V, C = sd["transformer.wte.weight"].shape  # (V, C)
    layers = [int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))]
    shapes = dict(vocab_size=V, n_embd=C, n_layer=max(layers) + 1 if layers else 0)
    if "transformer.wpe.weight" in sd:
        shapes["block_size"] = sd["transformer.wpe.weight"].shape[0]  # (block_size, C)
    if "transformer.h.0.mlp.c_fc.weight" in sd:
        shapes["n_inner"] = sd["transformer.h.0.mlp.c_fc.weight"].shape[0]  # (H, C)
    hf = dict(hf_config or {})
    if hf_config is not None:
        hf["n_inner"] = hf.get("n_inner") or 4 * hf.get("n_embd", C)  # null in config.json: 4C
    for ours, theirs in [("vocab_size", "vocab_size"), ("n_embd", "n_embd"), ("n_layer", "n_layer")] + [
        ("block_size", "n_positions"),
        ("n_inner", "n_inner"),
    ]:
        if theirs in hf and ours in shapes and hf[theirs] != shapes[ours]:
            raise CheckpointError(
                f"{name} has {theirs}={shapes[ours]} but its config.json says {hf[theirs]}; "
                "the two files do not belong together: pass a matching pair"
            )
    n_head = hf.get("n_head")
    if n_head is None:
        if C % 64:
            raise CheckpointError(
                f"{name} has n_embd={C}, which is not a multiple of GPT-2's 64-dim heads, and no config.json "
                "to say n_head; put the model's config.json beside it"
            )
        n_head = C // 64
    if C % n_head:
        raise CheckpointError(f"{name}: n_embd={C} is not divisible by n_head={n_head}; fix its config.json")
    H = shapes.get("n_inner", 4 * C)
    flags = {k: hf[k] for k in FLAGS if k in hf and k != "n_inner"}
    return GPTConfig(
        block_size=shapes.get("block_size", hf.get("n_positions", GPTConfig.block_size)),
        vocab_size=V,
        n_layer=shapes["n_layer"],
        n_head=n_head,
        n_embd=C,
        layer_norm_epsilon=hf.get("layer_norm_epsilon", GPTConfig.layer_norm_epsilon),
        n_inner=None if H == 4 * C else H,
        **flags,
    )


def check_state_dict(sd: dict[str, torch.Tensor], cfg: GPTConfig, name: str = "checkpoint") -> None:
    """Every tensor GPT(cfg) needs is there with its shape, and nothing else; errors use the file's names."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT(cfg).state_dict().items()}
    missing = [_hf_key(k) for k in expected if k not in sd]
    unexpected = [_hf_key(k) for k in sd if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} tensors missing ({', '.join(missing[:3])})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})"] if unexpected else []
        raise CheckpointError(
            f"{name} does not match a {cfg.n_layer}-layer GPT-2: {' and '.join(parts)}; "
            "pass a complete GPT-2 checkpoint"
        )
    for k, shape in expected.items():
        if sd[k].shape != shape:
            flip = k.endswith(CONV1D)  # report shapes as stored in the file: Conv1D (in, out)
            got, want = (tuple(reversed(s)) if flip else tuple(s) for s in (sd[k].shape, shape))
            raise CheckpointError(
                f"{name}: {_hf_key(k)} has shape {got} where n_embd={cfg.n_embd}, n_head={cfg.n_head} "
                f"needs {want}; the checkpoint is damaged or does not match its config.json"
            )


def config_to_hf(cfg: GPTConfig, dtype: torch.dtype = torch.float32, eot: int = EOT) -> dict:
    """config.json for transformers' GPT2LMHeadModel; eot: the tokenizer's end-of-text id."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        **{k: getattr(cfg, k) for k in FLAGS},  # n_inner None = 4 * n_embd
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


# ------------------------------------------------------------------ helpers
def _folder_files(folder: Path) -> tuple[list[Path], Path | None]:
    config = folder / CONFIG
    config = config if config.is_file() else None
    for weights, index in ((WEIGHTS, INDEX), (BIN, BIN_INDEX)):
        if (folder / weights).is_file():
            return [folder / weights], config
        if (folder / index).is_file():  # sharded (transformers shards files over 5 GB, e.g. gpt2-xl in fp32)
            weight_map = _read_json(folder / index).get("weight_map", {})
            shards = [folder / s for s in dict.fromkeys(weight_map.values())]
            absent = [s.name for s in shards if not s.is_file()]
            if not shards or absent:
                raise CheckpointError(
                    f"{folder / index} lists shards that are not there ({', '.join(absent[:3]) or 'none'}); "
                    "download the whole checkpoint again"
                )
            return shards, config
    found = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".safetensors"})
    seen = f" (it has {', '.join(found[:3])})" if found else ""
    raise CheckpointError(
        f"{folder} has no {WEIGHTS} or {BIN}{seen}; pass a folder written by save_pretrained, a .safetensors "
        "file or a hub id like gpt2"
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a pytorch_model.bin through torch.load(weights_only=True): tensors come back,
    no code from the file runs."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{path} cannot be read as safetensors ({e}); it is truncated or corrupt: get or save it "
                "again"
            ) from None
    try:  # mmap: a 6 GB file is paged in as its tensors are copied, not read whole first
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch.load raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise CheckpointError(  # its own message would suggest weights_only=False: never for a download
            f"{path} cannot be read by torch.load(weights_only=True) ({type(e).__name__}); it is truncated, "
            "corrupt or not a state dict of tensors: get or save it again"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; pass a GPT-2 checkpoint's weights")
    return sd


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore it or delete it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; restore it or delete it")
    return data


def _check_hf_config(hf: dict, path: Path) -> None:
    """Refuse a config our GPT cannot compute, instead of loading it into the wrong computation: one sentence
    naming the key."""
    kind = hf.get("model_type", "gpt2")
    if kind != "gpt2":
        raise CheckpointError(
            f"{path} describes a {kind!r} model, not GPT-2; this toolkit loads GPT-2 checkpoints only"
        )
    checks = [  # (key, implemented?, what model/gpt2.py does instead)
        ("activation_function", hf.get("activation_function", "gelu_new") in ACTIVATIONS,
         f"its MLP knows {', '.join(ACTIVATIONS)}"),
        ("add_cross_attention", not hf.get("add_cross_attention"), "it is a decoder without cross-attention"),
        ("tie_word_embeddings", hf.get("tie_word_embeddings", True), "its output layer is the embedding"),
    ]  # fmt: skip
    for key, ok, instead in checks:
        if not ok:
            raise CheckpointError(
                f"{path} sets {key}={hf[key]!r}, which this toolkit's GPT-2 does not implement ({instead}); "
                "it cannot load this checkpoint"
            )


def _hf_key(k: str) -> str:
    return k.removeprefix("transformer.")


def _unwrap(model):
    return getattr(model, "_orig_mod", model)  # torch.compile's wrapper holds the real module


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
