"""The assistant: a docstring in, a Python function out, streamed as it is written, and optionally run and
tested in the sandbox.

    python generate.py --run runs/lora-r8 "Return the n-th Fibonacci number."
    python generate.py --init random --model tiny --run-code "Add two numbers."  # offline smoke test
    python generate.py --run runs/lora-r8 --interactive                     # a REPL, the model kept loaded

`complete()` is the library function underneath (evaluate.py uses it for BLEU and pass@k): batched, seeded,
cut at <|endoftext|> and at the first stop sequence, with an optional callback that receives the text as
it is generated.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import json
import os
import secrets
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import torch

from cli import DeviceOptions, SamplingOptions, UsageError, build_parser, opt, resolve_device, run_main
from data.prepare import DataConfig, format_prompt
from data.tokenizer import tokenizer_of
from generation import generate_stream
from runs import RunModelOptions, load_model_for_inference, read_config

# HumanEval's stops (Codex paper): a completion ends where the next top-level statement would begin.
STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
EOT_TEXT = "<|endoftext|>"


class RowText:
    """The text of one generated row, decoded token by token.

    A GPT-2 token is a run of bytes, and a UTF-8 character can span two tokens, so bytes go through an
    incremental decoder that only lets whole characters out. The text is cut at the first stop sequence;
    `take()` returns the part that is final: it holds back a tail that could still grow into a stop
    ("\\nde" may become "\\ndef"), so the pieces it hands out always add up to the finished completion.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # as tiktoken's decode()
        self.text = ""
        self.taken = 0  # characters already handed out by take()
        self.done = False

    def feed(self, data: bytes, final: bool = False) -> None:
        if self.done:
            return
        start = max(0, len(self.text) - self.longest + 1)  # a new stop must end in the new characters
        self.text += self.decoder.decode(data, final=final)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text, self.done = self.text[: min(hits)], True
        self.done |= final

    def finish(self) -> None:
        self.feed(b"", final=True)

    def take(self) -> str:
        """The newly final text since the last call."""
        end = len(self.text)
        if not self.done:  # hold back the longest tail that is the beginning of a stop sequence
            for s in self.stops:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        piece, self.taken = self.text[self.taken : end], max(self.taken, end)
        return piece


def complete(
    model,
    prompts: list[str],
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 256,
    stop: Sequence[str] = (),
    seed: int = 0,
    batch_size: int = 8,
    on_text: Callable[[int, str], None] | None = None,
    progress: bool = False,
    compile: bool = False,
) -> list[list[str]]:
    """n completions per prompt (text only, never the prompt), each cut at <|endoftext|> and at the first
    stop sequence; a row stops generating as soon as it is cut.

    Prompts go through the model `batch_size` at a time (so batch_size * n rows), shortest first to waste
    little padding. temperature 0 is greedy; sampling draws from one torch.Generator seeded with `seed`.
    on_text(row, piece) receives each row's text as it becomes final, row = prompt index * n + sample
    index; the pieces of a row add up to its completion exactly. compile: as generation.generate_stream's
    (one fp32 row on a CPU through torch.compile).
    """
    tok = tokenizer_of(model)  # the model's own: GPT-2's, or its checkpoint's tokenizer.json
    stops = [*stop, EOT_TEXT]  # the token ends a row; the literal text ends it too
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    encoded = tok.encode_batch(prompts) if prompts else []
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("every prompt needs at least one token")
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[list[str]] = [[""] * n for _ in prompts]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="generate", unit="batch", file=sys.stderr)
    for batch in batches:
        rows = [RowText(stops) for _ in range(len(batch) * n)]  # local row r = b * n + j

        def emit(r: int) -> None:
            piece = rows[r].take()
            if piece and on_text is not None:
                on_text(batch[r // n] * n + r % n, piece)

        def should_stop(r: int, ids: list[int]) -> bool:
            rows[r].feed(tok.decode_bytes(ids[-1:]))  # called once per new id of a running row
            emit(r)
            return rows[r].done

        stream = generate_stream(
            model,
            [encoded[i] for i in batch],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            n=n,
            eos=tok.eot,
            should_stop=should_stop,
            generator=gen,
            compile=compile,
        )
        for _, running in stream:  # tokens are fed in should_stop; here rows that ended are flushed
            for r in (~running).nonzero().flatten().tolist():
                if not rows[r].done:  # it just sampled <|endoftext|>
                    rows[r].finish()
                    emit(r)
        for r, row in enumerate(rows):  # rows still running at max_new_tokens
            row.finish()
            emit(r)
            out[batch[r // n]][r % n] = row.text
    return out


# ---------------------------------------------------------------- the command line
FORMATS = ("study", "docstring")
SETTINGS = (
    "prompt_format",
    "signature",
    "func_name",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "seed",
)


@dataclass
class GenerateConfig(RunModelOptions, SamplingOptions, DeviceOptions):
    prompt: str = opt("", "the docstring: what the function should do (or pass it as the last argument)")
    prompt_format: str | None = opt(
        None, "study or docstring (default: the run's, else the training default)", choices=FORMATS
    )
    signature: str | None = opt(None, 'docstring format: the def line, e.g. "def fib(n: int) -> int:"')
    func_name: str | None = opt(None, "docstring format without --signature: def NAME(): (default solution)")
    n: int = opt(1, "completions per prompt")
    seed: int = opt(0, "seed of the sampler")
    # what to do with the code
    run_code: bool = opt(False, "run each completion in the sandbox (script mode): status, output, duration")
    test: str | None = opt(None, 'asserts run after the code in the sandbox, e.g. "assert fib(10) == 55"')
    timeout: float = opt(5.0, "sandbox wall-clock limit per run, seconds")
    unsafe_no_sandbox: bool = opt(False, "run generated code with NO isolation (only code you trust)")
    # output
    interactive: bool = opt(
        False, "a REPL: one docstring per line, :help lists commands; the model stays loaded"
    )
    json: bool = opt(False, "print one JSON object (per prompt) instead of text")
    stream: bool | None = opt(None, "print tokens as they come (default: when stdout is a terminal; n=1)")
    compile: bool = opt(
        False,
        "CPU, one completion at a time: decode through torch.compile (the first docstring waits while it "
        "compiles; needs a C++ compiler; measured in docs/benchmarks.md)",
    )


def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    """Flags from GenerateConfig (cli.build_parser), plus the docstring as the trailing words."""
    parser = build_parser(GenerateConfig, description=__doc__.split("\n\n")[0], prog="generate.py")
    parser.add_argument("words", nargs="*", default=argparse.SUPPRESS, help="the docstring (as --prompt)")
    values = vars(parser.parse_args(argv))
    words = " ".join(values.pop("words", []))
    if words and values["prompt"]:
        raise UsageError("pass the docstring once: either as --prompt or as the last argument")
    return GenerateConfig(**{**values, "prompt": values["prompt"] or words})


def check_settings(cfg: GenerateConfig) -> None:
    """The sampling settings, also checked when the REPL changes one."""
    if cfg.n < 1:
        raise UsageError(f"--n {cfg.n}: ask for at least 1 completion")
    cfg.check_sampling()


def check_config(cfg: GenerateConfig) -> None:
    check_settings(cfg)
    if not cfg.interactive and not cfg.prompt.strip():
        raise UsageError(
            'the docstring is empty; say what the function should do, e.g. "Return the n-th Fibonacci '
            'number." (or pass --interactive)'
        )
    cfg.check_model()
    if cfg.stream and cfg.json:
        raise UsageError("--stream and --json exclude each other: JSON is printed once, complete")
    if cfg.timeout <= 0:
        raise UsageError(f"--timeout {cfg.timeout}: the sandbox needs a positive time limit")
    device = resolve_device(cfg.device)  # as load() will pick it ("auto": the GPU if there is one)
    if cfg.compile:
        check_compile(cfg, device)


def check_compile(cfg: GenerateConfig, device: torch.device) -> None:
    """--compile: fp32 decoding on a CPU, with a C++ compiler for inductor's kernels."""
    if device.type != "cpu":
        raise UsageError("--compile is for decoding on a CPU; drop it on a GPU (or pass --device cpu)")
    if cfg.dtype not in ("auto", "fp32"):
        raise UsageError(f"--compile decodes fp32 weights; drop --dtype {cfg.dtype} or --compile")
    cxx = os.environ.get("CXX", "g++")
    if not shutil.which(cxx):
        raise UsageError(
            f"--compile needs a C++ compiler ({cxx}) for torch.compile's CPU kernels; install one "
            "(apt-get install g++) or drop --compile"
        )


def resolve_prompt_format(cfg: GenerateConfig) -> str:
    """The run's prompt format (a model answers best in the format it was trained on), else the flag."""
    trained = read_config(cfg.run).get("prompt_format") if cfg.run else None
    if trained and cfg.prompt_format and cfg.prompt_format != trained:
        raise UsageError(
            f"{cfg.run} was trained with --prompt-format {trained}, not {cfg.prompt_format}; "
            "drop --prompt-format to use the run's"
        )
    fmt = cfg.prompt_format or trained or DataConfig().prompt_format
    if fmt != "docstring" and (cfg.signature or cfg.func_name):
        raise UsageError(
            f"--signature and --func-name shape the docstring prompt format; this model's format is {fmt}"
        )
    return fmt


def load(cfg: GenerateConfig):
    """(model, info) as runs.load_model_for_inference gives them, on the chosen device and dtype."""
    device, dtype = cfg.resolve(training=False)
    model, info = load_model_for_inference(cfg, device, dtype)
    info.update(device=str(device), dtype=str(dtype).removeprefix("torch."))
    return model, info


def code_head(model_prompt: str, fmt: str) -> str:
    """What goes before the completion to make runnable code: the docstring format's prompt is the def line
    and docstring, which the completion continues; the study format's completion is the whole function."""
    return model_prompt if fmt == "docstring" else ""


def run_tests(code: str, tests: str, sandbox) -> dict:
    """Run the code, then the asserts, as one sandboxed script: its result plus verdict passed/failed.
    The script ends with an exit code drawn per run, which only reaching the end of the asserts gives: code
    that exits 0 before them (sys.exit(0) is a clean exit to the sandbox, as to python3) fails."""
    end = 64 + secrets.randbelow(50)
    result = sandbox.run_script(code.rstrip("\n") + "\n\n\n" + tests + f"\nraise SystemExit({end})\n")
    if result["exit_code"] == end and result["status"] == "failed:exit":
        result = {**result, "status": "passed", "detail": ""}
    elif result["status"] == "passed":
        result = {**result, "status": "failed:exit", "detail": "exited 0 before the tests ran to their end"}
    return {**result, "verdict": "passed" if result["status"] == "passed" else "failed"}


def describe(kind: str, result: dict) -> str:
    """A sandbox result for people: verdict/status and duration, then why, and what the code printed."""
    label = result["status"]
    if result.get("verdict", label) != label:
        label = f"{result['verdict']} ({label})"
    lines = [f"# {kind}: {label} in {result['duration']:.2f} s"]
    if result.get("detail"):
        lines.append(f"#   {result['detail']}")
    for stream in ("stdout", "stderr"):
        if result.get(stream):
            lines += [f"# {stream}:", *("#   " + line for line in result[stream].rstrip("\n").split("\n"))]
    return "\n".join(lines)


class Assistant:
    """A loaded model and the current settings: answer() turns a docstring into printed code (and results)."""

    def __init__(self, model, info: dict, cfg: GenerateConfig, out: TextIO, err: TextIO):
        self.model, self.info, self.cfg, self.out, self.err = model, info, cfg, out, err
        self._sandbox = None

    def sandbox(self):
        if self._sandbox is None:  # only when code is run: the sandbox probes the machine when made
            from sandbox import Sandbox

            self._sandbox = Sandbox(timeout=self.cfg.timeout, unsafe_no_sandbox=self.cfg.unsafe_no_sandbox)
        return self._sandbox

    def notes(self, model_prompt: str) -> None:
        """Say when the settings cannot do what they ask (said here, instead of silently changed)."""
        s, room = self.cfg, self.model.config.block_size - len(tokenizer_of(self.model).encode(model_prompt))
        if 0 < room < s.max_new_tokens:  # generate_stream stops at the context limit
            print(
                f"note: the model's context leaves room for {room} new tokens, not {s.max_new_tokens}",
                file=self.err,
            )
        if s.n > 1 and s.temperature == 0:
            print(f"note: temperature 0 is greedy: the {s.n} samples will be identical", file=self.err)
        if s.n > 1 and s.compile:
            print(f"note: --compile decodes one row; the {s.n} samples decode eagerly", file=self.err)

    def answer(self, docstring: str) -> dict:
        s, out = self.cfg, self.out
        model_prompt = format_prompt(docstring.strip(), s.func_name, s.prompt_format, s.signature)
        head = code_head(model_prompt, s.prompt_format)
        self.notes(model_prompt)
        stream = s.n == 1 and not s.json and (s.stream if s.stream is not None else out.isatty())
        if stream:
            out.write(head)
            out.flush()
        try:
            with warnings.catch_warnings():  # the context-limit warning: notes() said it in one line
                warnings.filterwarnings("ignore", message="generation stops at the context limit")
                completions = complete(
                    self.model,
                    [model_prompt],
                    n=s.n,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    top_k=s.top_k,
                    max_new_tokens=s.max_new_tokens,
                    stop=STOP_SEQUENCES,
                    seed=s.seed,
                    compile=s.compile,
                    on_text=(lambda _row, piece: (out.write(piece), out.flush())) if stream else None,
                )[0]
        except ValueError as e:  # a prompt that fills the model's whole context
            raise UsageError(str(e)) from None
        samples = []
        for i, completion in enumerate(completions):
            sample = {"completion": completion, "code": head + completion}
            if not s.json:
                if s.n > 1:
                    out.write(f"# --- sample {i + 1}/{s.n}\n")
                out.write("" if stream else sample["code"])
                out.write("" if sample["code"].endswith("\n") else "\n")
            if s.run_code:
                sample["run"] = self.sandbox().run_script(sample["code"])
            if s.test:
                sample["test"] = run_tests(sample["code"], s.test, self.sandbox())
            if not s.json:
                for kind in ("run", "test"):
                    if kind in sample:
                        out.write(describe(kind, sample[kind]) + "\n")
            out.flush()
            samples.append(sample)
        record = {
            "prompt": docstring,
            "model_prompt": model_prompt,
            "model": self.info,
            "settings": {f: getattr(s, f) for f in SETTINGS} | {"stop": list(STOP_SEQUENCES)},
            "completions": samples,
        }
        if s.json:
            out.write(json.dumps(record) + "\n")
            out.flush()
        return record


# ---------------------------------------------------------------- the REPL
COMMANDS = {  # :command -> (GenerateConfig field, type)
    ":temp": ("temperature", float),
    ":n": ("n", int),
    ":top-p": ("top_p", float),
    ":top-k": ("top_k", int),
    ":max": ("max_new_tokens", int),
    ":seed": ("seed", int),
}
HELP = """\
Type a docstring (one line) to get a function. Commands:
  :temp X      sampling temperature (0 = greedy)       :n N       completions per docstring
  :top-p X     nucleus sampling mass (1 = off)          :top-k N   sample among the k likeliest (0 = off)
  :max N       new tokens at most                       :seed N    the sampler's seed
  :run         run each completion in the sandbox (toggles)
  :test CODE   asserts to run after each completion (":test" alone clears them)
  :show        the current settings      :help   this text      :quit   leave (Ctrl-D too)"""


def command(assistant: Assistant, line: str) -> bool:
    """Apply one :command to the assistant's settings; False means quit."""
    name, _, arg = line.strip().partition(" ")
    arg, cfg, say = arg.strip(), assistant.cfg, lambda msg: print(msg, file=assistant.err)
    if name in (":quit", ":q", ":exit"):
        return False
    if name == ":help":
        say(HELP)
    elif name == ":show":
        say(", ".join(f"{f}={getattr(cfg, f)}" for f in (*SETTINGS, "run_code", "test")))
    elif name == ":run":
        cfg.run_code = not cfg.run_code
        say(f"run_code={cfg.run_code}")
    elif name == ":test":
        cfg.test = arg or None
        say(f"test={cfg.test}")
    elif name in COMMANDS:
        key, typ = COMMANDS[name]
        try:
            new = dataclasses.replace(cfg, **{key: typ(arg)})
            check_settings(new)
        except ValueError:
            say(f"error: {name} needs a number ({typ.__name__}), e.g. {name} {typ(1)}")
        except UsageError as e:
            say(f"error: {e}")
        else:
            setattr(cfg, key, getattr(new, key))
            say(f"{key}={getattr(cfg, key)}")
    else:
        say(f"error: unknown command {name}; :help lists them")
    return True


def repl(assistant: Assistant, lines: TextIO) -> None:
    """One docstring per line until :quit or end of input; a bad line prints an error and the loop goes on."""
    tty = lines.isatty()
    if tty:
        import readline  # noqa: F401  (importing it gives input() line editing and history)

        print(HELP, file=assistant.err)
    while True:
        try:
            line = input("docstring> ") if tty else lines.readline()
        except EOFError:
            line = ""
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, as in Python's REPL
            print(file=assistant.err)
            continue
        if not line:  # end of input
            if tty:
                print(file=assistant.err)
            return
        line = line.strip()
        if not line:
            continue
        if line.startswith(":"):
            if not command(assistant, line):
                return
            continue
        try:
            assistant.answer(line)
        except UsageError as e:
            print(f"error: {e}", file=assistant.err)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the session
            print("\n(interrupted)", file=assistant.err)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    check_config(cfg)
    cfg.prompt_format = resolve_prompt_format(cfg)
    model, info = load(cfg)
    info["prompt_format"] = cfg.prompt_format
    print(
        f"model: {info['source']} | prompt format {cfg.prompt_format} | {info['device']} {info['dtype']}",
        file=sys.stderr,
    )
    if info["random_init"]:
        print(
            f"!!! NOTE: the model is RANDOM ({info['source']}"
            + (", a run trained from --init random" if cfg.run else "")
            + "): what it writes is noise, not code; a run fine-tuned from GPT-2 is the real assistant. !!!",
            file=sys.stderr,
        )
    assistant = Assistant(model, info, cfg, sys.stdout, sys.stderr)
    if cfg.prompt.strip():
        assistant.answer(cfg.prompt)
    if cfg.interactive:
        repl(assistant, sys.stdin)
    return 0


if __name__ == "__main__":
    run_main(main)
