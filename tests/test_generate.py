"""generate.complete(): the text a model writes after each prompt, batched, seeded, cut at stops, streamed."""

import pytest
import torch

import generate
import generation
from data.tokenizer import get_tokenizer
from generate import STOP_SEQUENCES, RowText, complete
from model.gpt2 import GPT, config_for

PROMPTS = ["def add(a, b):", "Return the n-th Fibonacci number.", "x"]  # different token lengths


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(config_for("tiny")).eval()


@pytest.fixture
def steps(monkeypatch) -> list:
    """The decoding steps complete() asks generation.generate_stream for, one entry per step."""
    taken = []

    def counting(*args, **kw):
        for step in generation.generate_stream(*args, **kw):
            taken.append(step)
            yield step

    monkeypatch.setattr(generate, "generate_stream", counting)
    return taken


def test_greedy_completion_is_the_decoded_new_tokens_and_never_the_prompt(model):
    tok = get_tokenizer()
    (text,) = complete(model, [PROMPTS[0]], max_new_tokens=20)[0]
    ids = generation.generate(model, [tok.encode(PROMPTS[0])], max_new_tokens=20, eos=tok.eot)[0]
    assert text == tok.decode(ids)
    assert len(ids) == 20 and not text.startswith(PROMPTS[0])


def test_completion_is_cut_before_the_first_stop_and_the_row_stops_there(model, steps):
    full = complete(model, [PROMPTS[1]], max_new_tokens=30)[0][0]
    assert len(steps) == 30  # no stop: every token
    stop = full[12:15]  # a piece of what the model writes anyway, so the cut point is known
    cut = full.index(stop)
    steps.clear()
    assert complete(model, [PROMPTS[1]], max_new_tokens=30, stop=[stop, "never appears"]) == [[full[:cut]]]
    assert 0 < len(steps) < 30


def test_endoftext_ends_a_row_and_never_shows_as_text(steps):
    torch.manual_seed(0)
    net = GPT(config_for("tiny")).eval()
    with torch.no_grad():  # constant logits wte @ v, with v best aligned with <|endoftext|>'s row
        v = torch.randn(net.config.n_embd)
        net.transformer.ln_f.weight.zero_()
        net.transformer.ln_f.bias.copy_(v)
        net.transformer.wte.weight[get_tokenizer().eot] = 10 * v
    assert complete(net, PROMPTS, max_new_tokens=10) == [[""]] * 3
    assert len(steps) == 1


def test_streamed_pieces_add_up_to_each_completion(model):
    pieces: dict[int, list[str]] = {}
    out = complete(
        model,
        PROMPTS,
        n=2,
        temperature=1.0,
        max_new_tokens=25,
        stop=STOP_SEQUENCES + (" the", "e"),
        batch_size=2,
        on_text=lambda row, piece: pieces.setdefault(row, []).append(piece),
    )
    assert [len(c) for c in out] == [2, 2, 2]
    for i in range(len(PROMPTS)):
        for j in range(2):
            assert "".join(pieces.get(i * 2 + j, [])) == out[i][j]
    assert any(len(p) > 1 for p in pieces.values())  # it really streamed, piece by piece


def test_batched_prompts_of_different_lengths_match_each_prompt_alone(model):
    together = complete(model, PROMPTS, max_new_tokens=12, batch_size=3)
    alone = [complete(model, [p], max_new_tokens=12)[0] for p in PROMPTS]
    assert together == alone


def test_sampling_is_seeded(model):
    kw = dict(n=2, temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=8)
    first = complete(model, PROMPTS[:2], seed=1, **kw)
    assert complete(model, PROMPTS[:2], seed=1, **kw) == first
    assert complete(model, PROMPTS[:2], seed=2, **kw) != first
    assert len(set(first[0])) > 1  # n samples differ from each other


def test_row_text_lets_out_a_character_split_across_tokens_only_when_whole():
    row = RowText(stops=())
    data = "é!".encode()  # b"\xc3\xa9!": tiktoken can put \xc3 and \xa9 in different tokens
    row.feed(data[:1])
    assert row.take() == ""
    row.feed(data[1:])
    assert row.take() == "é!"


def test_row_text_holds_back_what_may_become_a_stop():
    row = RowText(stops=STOP_SEQUENCES)
    row.feed(b"return 1\nd")
    assert row.take() == "return 1"  # "\nd" may be the start of "\ndef"
    row.feed(b"ef g():")
    assert row.done and row.text == "return 1" and row.take() == ""

    row = RowText(stops=STOP_SEQUENCES)
    row.feed(b"x = 1\nd")
    row.feed(b"o()")
    assert row.take() == "x = 1\ndo()"  # "\ndo" is no stop: released
