"""generation.generate: the KV cache changes nothing but speed, batching changes nothing, sampling is
seeded and respects top-k / top-p, rows stop at eos or a stop condition, and the context limit ends
cleanly."""

from __future__ import annotations

import pytest
import torch

from generation import generate, sample
from model.gpt2 import GPT, config_for

PROMPTS = [[464, 329, 318], [154, 995, 11, 314, 101, 257, 133, 13, 137], [7], [429, 751, 7, 64, 11, 275]]


@pytest.fixture(scope="module")
def model(randomize) -> GPT:
    """Tiny, with a 1024-token vocabulary (sampling sorts the vocabulary every step) and weights large
    enough (std 0.3) that greedy continuations vary instead of repeating one token."""
    return randomize(GPT(config_for("tiny", vocab_size=1024)), seed=5, std=0.3).eval()


@torch.no_grad()
def generate_without_cache(model, prompt, n_new, temperature=0.0, top_k=0, top_p=1.0, generator=None):
    """The reference: recompute the whole sequence for every new token."""
    ids = list(prompt)
    for _ in range(n_new):
        logits = model(torch.tensor([ids]))[:, -1]  # (1, V)
        ids.append(int(sample(logits, temperature, top_k, top_p, generator)))
    return ids[len(prompt) :]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["3-tokens", "9-tokens", "1-token", "6-tokens"])
def test_kv_cache_greedy_equals_recomputing_every_step(model, prompt):
    assert generate(model, [prompt], max_new_tokens=24)[0] == generate_without_cache(model, prompt, 24)


def test_kv_cache_sampling_equals_recomputing_every_step(model):
    kw = dict(temperature=0.9, top_k=50, top_p=0.95)
    got = generate(model, [PROMPTS[1]], max_new_tokens=24, generator=torch.Generator().manual_seed(3), **kw)[
        0
    ]
    ref = generate_without_cache(model, PROMPTS[1], 24, generator=torch.Generator().manual_seed(3), **kw)
    assert got == ref


def test_batch_of_different_lengths_equals_one_prompt_at_a_time(model):
    batched = generate(model, PROMPTS, max_new_tokens=20)
    alone = [generate(model, [p], max_new_tokens=20)[0] for p in PROMPTS]
    assert batched == alone
    assert len({tuple(r) for r in batched}) > 1  # the prompts really lead to different continuations


def test_n_samples_per_prompt_come_grouped_by_prompt(model):
    greedy = generate(model, PROMPTS[:2], max_new_tokens=8, n=3)
    assert greedy[0:3] == [generate(model, [PROMPTS[0]], max_new_tokens=8)[0]] * 3  # row b*n + j
    assert greedy[3:6] == [generate(model, [PROMPTS[1]], max_new_tokens=8)[0]] * 3
    g = torch.Generator().manual_seed(0)
    sampled = generate(model, [PROMPTS[0]], max_new_tokens=8, n=3, temperature=1.0, generator=g)
    assert len({tuple(r) for r in sampled}) > 1


def test_sampling_is_reproducible_with_a_seeded_generator(model):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, PROMPTS, max_new_tokens=16, temperature=1.0, top_p=0.9, generator=g)

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_top_k_1_is_greedy(model):
    g = torch.Generator().manual_seed(0)
    sampled = generate(model, PROMPTS, max_new_tokens=12, temperature=1.5, top_k=1, generator=g)
    assert sampled == generate(model, PROMPTS, max_new_tokens=12)


def test_top_k_draws_only_from_the_k_largest_logits():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, -1.0, 2.0, 0.5]]).repeat(2000, 1)  # (2000, 7)
    ids = sample(logits, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == {1, 3, 5}


def test_top_p_keeps_the_smallest_prefix_that_reaches_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    logits = probs.log().repeat(4000, 1)  # (4000, 4)
    g = torch.Generator().manual_seed(0)
    assert set(sample(logits, 1.0, top_p=0.4, generator=g).tolist()) == {1}
    assert set(sample(logits, 1.0, top_p=0.7, generator=g).tolist()) == {1, 3}
    assert set(sample(logits, 1.0, top_p=0.9, generator=g).tolist()) == {1, 3, 2}
    kept = sample(logits, 1.0, top_p=0.7, generator=g)
    share = (kept == 1).float().mean().item()  # renormalized over the kept tokens: 0.5 / 0.8
    assert abs(share - 0.625) < 0.03


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (4, 1.0), (0, 0.8)], ids=["plain", "top-k", "top-p"])
def test_sampled_frequencies_match_the_renormalized_probabilities(top_k, top_p):
    """Inverse-CDF sampling draws each kept id with its probability (chi-square, 7 ids, 40,000 draws)."""
    probs = torch.tensor([0.02, 0.3, 0.04, 0.2, 0.1, 0.25, 0.09])
    want = probs.clone()
    if top_k:
        want[want < want.topk(top_k).values[-1]] = 0
    if top_p < 1:  # sorted: 0.3, 0.25, 0.2 reach 0.75 < 0.8, so 0.1 is kept too; 0.09, 0.04, 0.02 dropped
        want[want < 0.1] = 0
    want = want / want.sum()
    n = 40_000
    ids = sample(probs.log().repeat(n, 1), 1.0, top_k, top_p, torch.Generator().manual_seed(3))
    seen = torch.bincount(ids, minlength=7).double()
    assert seen[want == 0].sum() == 0
    kept = want > 0
    chi2 = ((seen[kept] - n * want[kept]) ** 2 / (n * want[kept])).sum().item()
    assert chi2 < 20.5  # p = 0.001 at 6 degrees of freedom or fewer


def test_rows_stop_at_eos_while_the_others_go_on(model):
    full = generate(model, PROMPTS[:2], max_new_tokens=12)
    eos = full[0][3]  # make row 0's fourth token the end of text
    assert eos not in full[1]
    rows = generate(model, PROMPTS[:2], max_new_tokens=12, eos=eos)
    assert rows[0] == full[0][: full[0].index(eos) + 1]  # ends with the eos, nothing after it
    assert rows[1] == full[1]


def test_should_stop_ends_a_row_where_it_fires(model):
    # a stop sequence as a caller writes one: stop once the row's new ids end with a given pair
    full = generate(model, [PROMPTS[3]], max_new_tokens=12)[0]
    stop = full[4:6]
    rows = generate(model, [PROMPTS[3]], max_new_tokens=12, should_stop=lambda r, ids: ids[-2:] == stop)
    first = next(i for i in range(2, 13) if full[i - 2 : i] == stop)  # where the pair first completes
    assert rows[0] == full[:first] and len(rows[0]) < 12


def test_generation_stops_at_the_context_limit_with_a_warning(model):
    block = model.config.block_size  # 128
    prompt = [464] * (block - 5)
    with pytest.warns(UserWarning, match="context limit: 5 new tokens at most"):
        rows = generate(model, [prompt], max_new_tokens=50)
    assert len(rows[0]) == 5


def test_a_prompt_that_fills_the_context_is_a_clear_error(model):
    with pytest.raises(ValueError, match="fills the context of 128 tokens; shorten it"):
        generate(model, [[464] * 128], max_new_tokens=1)
    with pytest.raises(ValueError, match="past the context of 128 tokens"):
        model(torch.zeros(1, 129, dtype=torch.long))
