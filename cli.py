"""Command-line plumbing shared by every entry point: a dataclass becomes the argparse parser, the option
groups every entry point shares are defined once, and user mistakes end with one sentence and exit code 2
instead of a traceback.

    @dataclass
    class Config(ModelOptions, DeviceOptions):
        batch_size: int = opt(8, "examples per micro-batch")

    cfg = parse_config(Config, argv)   # --batch-size 8, --flag/--no-flag for bools, --help from `help`
    device, dtype = cfg.resolve(training=False)  # the one meaning of --device auto and --dtype auto

The shared groups: ModelOptions (which weights), DeviceOptions (where, in what precision), SamplingOptions
(how to pick tokens); a train.py run to load is runs.RunModelOptions, LoRA's lora.config.LoRAOptions, the
data's data.prepare.DataConfig. --help lists a group's flags under the first line of its docstring.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import sys
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

INITS = ("pretrained", "random")
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def opt(default, help: str, **kw):
    """A config field: its default and the help line --help prints (choices=, nargs=, const= as argparse)."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


class UsageError(Exception):
    """Bad input from the user: printed as `error: <message>` and exit code 2, never a traceback."""


def _field_type(tp) -> type:
    """`int | None` -> int; `str` -> str (argparse needs one concrete converter)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def build_parser(cls, description: str = "", prog: str | None = None) -> argparse.ArgumentParser:
    """One `--flag` per dataclass field; the field's `help` metadata and default are what --help prints.

    Fields that a config inherits from an option group with a docstring (ModelOptions, ...) are listed
    under that docstring's first line, one section per group in the order of the config's bases, after the
    config's own fields. Sections change what --help shows, never what is parsed."""
    parser = _Parser(prog=prog, description=description, formatter_class=_DefaultOnce)
    fields = dataclasses.fields(cls)
    owner = {f.name: next(c for c in cls.__mro__ if f.name in inspect.get_annotations(c)) for f in fields}
    grouped = [c for c in cls.__mro__[1:] if c in owner.values() and _title(c)]
    sections = {c: parser.add_argument_group(_title(c)) for c in grouped}
    rank = {c: i + 1 for i, c in enumerate(grouped)}  # 0: the config's own fields, listed first
    hints = typing.get_type_hints(cls)
    for f in sorted(fields, key=lambda f: rank.get(owner[f.name], 0)):  # usage line in --help's order
        where = sections.get(owner[f.name], parser)
        flag = "--" + f.name.replace("_", "-")
        tp = _field_type(hints[f.name])
        kw = dict(help=f.metadata.get("help", " ").replace("%", "%%"), dest=f.name)  # argparse formats %
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if tp is bool:
            where.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if f.metadata.get("nargs"):
            kw["nargs"] = f.metadata["nargs"]
            kw["const"] = f.metadata.get("const")
        where.add_argument(flag, type=tp, default=default, **kw)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse, with a suggestion for a mistyped flag: "did you mean --lora-rank?"."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            typed = [w.split("=")[0] for w in message.split(":", 1)[1].split() if w.startswith("-")]
            close = [m for w in typed for m in difflib.get_close_matches(w, known, n=1, cutoff=0.6)]
            if close:
                message += f" (did you mean {' or '.join(close)}?)"
        super().error(message)


class _DefaultOnce(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default printed once: not where the help text already says its default, nor for None."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def _title(cls) -> str | None:
    """An option group's --help section: the first line of its docstring; None for a class without one
    (@dataclass fills a missing docstring with "Name(field=...)")."""
    doc = cls.__dict__.get("__doc__") or ""
    if not dataclasses.is_dataclass(cls) or doc.startswith(cls.__name__ + "("):
        return None
    return doc.strip().split("\n")[0].rstrip(".") or None


# ------------------------------------------------------------------------------------- shared option groups
@dataclass
class ModelOptions:
    """The GPT-2 architecture and its weights."""

    model: str = opt(
        "gpt2",
        "architecture preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, codeparrot-small, codeparrot (GPT-2 "
        "pretrained on Python, its own tokenizer), tiny",
    )
    weights: str | None = opt(None, "an HF GPT-2 folder, .safetensors file or hub id (default: the preset's)")
    tokenizer: str | None = opt(
        None, "a tokenizer.json, its folder or a hub id (default: the weights' own, else the preset's)"
    )
    init: str = opt(
        "pretrained", "pretrained weights, or random (same architecture; smoke runs, speed)", choices=INITS
    )


@dataclass
class DeviceOptions:
    """Where the model runs, and in what precision."""

    device: str = opt("auto", "auto (a GPU if there is one, else the CPU), cpu, cuda, cuda:N")
    dtype: str = opt(
        "auto",
        "auto: bf16 on GPUs that have it, fp16 on older ones; fp32 on a CPU (bf16 autocast for training "
        "where the CPU computes bf16 natively)",
        choices=["auto", "fp32", "bf16", "fp16"],
    )

    def resolve(self, *, training: bool) -> tuple[torch.device, torch.dtype]:
        """(device, dtype) for --device and --dtype, "auto" resolved as resolve_dtype says."""
        device = resolve_device(self.device)
        return device, resolve_dtype(self.dtype, device, training=training)


@dataclass
class SamplingOptions:
    """How each next token is picked."""

    temperature: float = opt(0.0, "0 = greedy; 0.2 for one good answer (pass@1), 0.8 for variety (pass@10)")
    top_p: float = opt(0.95, "nucleus sampling: keep the smallest set of tokens with this much probability")
    top_k: int = opt(0, "sample among the k likeliest tokens (0 = all)")
    max_new_tokens: int = opt(256, "tokens generated per completion at most")

    def check_sampling(self) -> None:
        """Each setting in range, or a UsageError naming the flag (also for a setting changed later)."""
        if self.temperature < 0:
            raise UsageError(f"--temperature {self.temperature} is negative; use 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p {self.top_p} is outside (0, 1]; 1 turns nucleus sampling off")
        if self.top_k < 0:
            raise UsageError(f"--top-k {self.top_k} is negative; 0 turns top-k off")
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens {self.max_new_tokens}: generate at least 1 token")


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as torch understands it. Asking for CUDA
    where there is none is a usage error, not a crash on the first tensor."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device} is not a device; pass auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for CUDA, but no GPU is visible; pass --device cpu")
    return dev


def resolve_dtype(name: str | torch.dtype | None, device: torch.device, *, training: bool) -> torch.dtype:
    """A dtype name (fp32, bf16, fp16, or their torch names) -> torch dtype; None -> fp32. "auto", the one
    rule every entry point uses: on a GPU bf16 where it has it, else fp16; on a CPU fp32, except bf16
    autocast for training where the CPU computes bf16 natively (AVX512-BF16, AMX; elsewhere bf16 is emulated
    and far slower). Inference on a CPU stays fp32: exact, and its weights are read once per token anyway."""
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if training and device.type == "cpu" and cpu_has_bf16() else torch.float32
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)} or auto")
    return DTYPES[name]


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX), read from this CPU's flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


# ------------------------------------------------------------------------------------- parsing
CONFIG_FORMATS = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".json": "JSON"}


def load_config_file(path: str) -> dict:
    """Read a YAML, TOML or JSON config file (by its suffix): one mapping of option names (dashes or
    underscores) to values, as configs/*.yaml are written."""
    p = Path(path)
    kind = CONFIG_FORMATS.get(p.suffix.lower())
    if kind is None:
        raise UsageError(f"--config {path}: unknown format; name it .yaml, .toml or .json")
    if not p.is_file():
        raise UsageError(f"--config {path} does not exist; pass a {'/'.join(CONFIG_FORMATS)} file")
    try:
        text = p.read_text()
        data = {"YAML": yaml.safe_load, "TOML": tomllib.loads, "JSON": json.loads}[kind](text)
    except (ValueError, tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"--config {path} is not valid {kind}: {' '.join(str(e).split())}")
    if data is None:  # an empty YAML file: no settings
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"--config {path} must hold one mapping of option: value, not a {type(data).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _config_file_values(cls, path: str) -> dict:
    """The settings of a --config file, every key an option of `cls` (else a usage error naming them)."""
    from_file = load_config_file(path)
    unknown = sorted(set(from_file) - {f.name for f in dataclasses.fields(cls)} - {"config"})
    if unknown:
        names = [f.name for f in dataclasses.fields(cls)]
        hint = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {hint[0]}?)" if hint else ""
        raise UsageError(
            f"--config {path} has unknown key{'s' * (len(unknown) > 1)}: {', '.join(unknown)}{hint}"
        )
    from_file.pop("config", None)  # a file does not name another file
    return from_file


def parse_config(cls, argv: list[str] | None = None, description: str = "", prog: str | None = None):
    """Parse argv into `cls`. A `config` field (a file path) sets defaults that explicit flags override."""
    parser = build_parser(cls, description, prog)
    values = vars(parser.parse_args(argv))
    if values.get("config"):
        parser.set_defaults(**_config_file_values(cls, values["config"]))
        values = vars(parser.parse_args(argv))
    return cls(**values)


def given_flags(cls, argv: list[str] | None = None) -> set[str]:
    """The fields of `cls` set on the command line or in its --config file (not left at their defaults),
    for a resumed run to tell a setting the user gave from one never mentioned."""
    parser = build_parser(cls)
    unset = object()
    parser.set_defaults(**{f.name: unset for f in dataclasses.fields(cls)})
    given = {k for k, v in vars(parser.parse_args(argv)).items() if v is not unset}
    if "config" in given:
        given |= set(_config_file_values(cls, vars(parser.parse_args(argv))["config"]))
    return given


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run an entry point: UsageError -> `error: ...` on stderr and exit 2; Ctrl-C -> exit 130."""
    try:
        code = main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
