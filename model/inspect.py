"""Inspect a GPT-2 checkpoint: where its files are, its config, parameters by component, dtype and size.

    python -m model.inspect gpt2                         # a hub id (local cache first, then the network)
    python -m model.inspect runs/full/model              # a folder with model.safetensors (+ config.json)
    python -m model.inspect path/to/model.safetensors    # a single file (its sibling config.json if any)
    python -m model.inspect gpt2 --json                  # one JSON object, for scripts

The first smoke test to run on a checkpoint: every tensor is read, checked and loaded into the model, so a
truncated file, another architecture or a config.json that does not match ends here, with one sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from cli import UsageError, build_parser, run_main
from model.hf import build_model, read_checkpoint


@dataclass
class InspectConfig:
    source: str = field(default="", metadata={"help": "checkpoint folder, .safetensors file or hub id"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of the report"})


def describe(source: str) -> dict:
    """Everything the report shows, as plain data."""
    ck = read_checkpoint(source)
    model = build_model(ck, dtype="auto")  # as stored, on CPU: a load without a copy
    counts = model.param_counts()
    return {
        "files": [str(f) for f in ck.files],
        "file_bytes": ck.nbytes,
        "layout": ck.layout,
        "config": ck.config.to_dict(),
        "config_from": ck.config_from,
        "stored_dtypes": ck.stored_dtypes,
        "params": counts,
        "lm_head_tied": model.lm_head.weight is model.transformer.wte.weight,
    }


def format_report(info: dict) -> str:
    c, counts = info["config"], info["params"]
    files = info["files"]
    where = files[0] if len(files) == 1 else f"{len(files)} shards: {files[0]} ..."
    stored = ", ".join(f"{d} ({n} tensors)" for d, n in info["stored_dtypes"].items())
    layout = "hub layout" if info["layout"] == "hub" else "transformers layout"
    lines = [
        f"checkpoint  {where}",
        f"file size   {info['file_bytes'] / 2**20:,.1f} MiB, {layout}, stored as {stored}",
        f"config      n_layer={c['n_layer']} n_head={c['n_head']} n_embd={c['n_embd']} "
        f"block_size={c['block_size']} vocab_size={c['vocab_size']} "
        f"layer_norm_epsilon={c['layer_norm_epsilon']:g}  (from {info['config_from']})",
        "parameters" + ("  (lm_head tied to wte: counted once)" if info["lm_head_tied"] else ""),
    ]
    total = counts["total"]
    for name, n in counts.items():
        if n or name == "total":
            lines.append(f"  {name:<11} {n:>14,}  {100 * n / total:5.1f}%")
    mib = total / 2**20
    lines.append(f"in memory   {4 * mib:,.1f} MiB in fp32, {2 * mib:,.1f} MiB in bf16/fp16")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(InspectConfig, description=__doc__.split("\n")[0], prog="python -m model.inspect")
    parser.add_argument("positional", nargs="?", metavar="SOURCE", help="same as --source")
    args = vars(parser.parse_args(argv))
    source = args.pop("positional") or args["source"]
    if not source:
        raise UsageError("no checkpoint given; pass a folder, a .safetensors file or a hub id such as gpt2")
    info = describe(source)
    print(json.dumps(info, indent=2) if args["json"] else format_report(info))
    return 0


if __name__ == "__main__":
    run_main(main)
