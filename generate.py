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

import codecs
import sys
from collections.abc import Callable, Sequence

import torch

from data.tokenizer import get_tokenizer

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
) -> list[list[str]]:
    """n completions per prompt (text only, never the prompt), each cut at <|endoftext|> and at the first
    stop sequence; a row stops generating as soon as it is cut.

    Prompts go through the model `batch_size` at a time (so batch_size * n rows), shortest first to waste
    little padding. temperature 0 is greedy; sampling draws from one torch.Generator seeded with `seed`.
    on_text(row, piece) receives each row's text as it becomes final, row = prompt index * n + sample
    index; the pieces of a row add up to its completion exactly.
    """
    tok = get_tokenizer()
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

        stream = model.generate_stream(
            [encoded[i] for i in batch],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            n=n,
            eos=tok.eot,
            should_stop=should_stop,
            generator=gen,
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
