"""Command-line plumbing shared by every entry point: a dataclass becomes the argparse parser, and user
mistakes end with one sentence and exit code 2 instead of a traceback.

    @dataclass
    class Config:
        lora_rank: int = field(default=8, metadata={"help": "LoRA rank; 0 = full fine-tune"})

    cfg = parse_config(Config, argv)   # --lora-rank 8, --flag/--no-flag for bools, --help from `help`
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path


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
    """One `--flag` per dataclass field; the field's `help` metadata and default are what --help prints."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = _field_type(hints[f.name])
        kw = dict(help=f.metadata.get("help", " ").replace("%", "%%"), dest=f.name)  # argparse formats %
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if f.metadata.get("nargs"):
            kw["nargs"] = f.metadata["nargs"]
            kw["const"] = f.metadata.get("const")
        parser.add_argument(flag, type=tp, default=default, **kw)
    return parser


def load_config_file(path: str) -> dict:
    """Read a JSON or TOML config file (keys are field names, dashes or underscores)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {path} does not exist; pass a JSON or TOML file")
    try:
        text = p.read_text()
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"--config {path} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {e}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def parse_config(cls, argv: list[str] | None = None, description: str = "", prog: str | None = None):
    """Parse argv into `cls`. A `config` field (a file path) sets defaults that explicit flags override."""
    parser = build_parser(cls, description, prog)
    args = parser.parse_args(argv)
    values = vars(args)
    if values.get("config"):
        names = {f.name for f in dataclasses.fields(cls)}
        from_file = load_config_file(values["config"])
        unknown = sorted(set(from_file) - names)
        if unknown:
            raise UsageError(f"--config {values['config']} has unknown keys: {', '.join(unknown)}")
        parser.set_defaults(**from_file)
        values = vars(parser.parse_args(argv))
    return cls(**values)


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
