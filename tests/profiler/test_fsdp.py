"""profiler/fsdp.py: FSDP2's slices and padding, and the dry run's answer to "how many GPUs of what size".
That the prediction equals the bytes each rank holds is tested on 2 ranks in tests/training/test_fsdp.py."""

import pytest

from profiler.fsdp import estimate_sharded, format_sharded, main, per_rank_peak, slice_rows, unsharded
from training.config import TrainConfig


def test_slices_follow_torch_chunk_with_padding_on_the_last_ranks():
    assert [slice_rows(50257, 4, r) for r in range(4)] == [(12565, 12565)] * 3 + [(12562, 12565)]
    assert slice_rows(3, 4, 3) == (0, 1)  # fewer rows than ranks: an empty, padded slice
    for d0, world in ((50257, 2), (7, 3), (1024, 8)):
        assert sum(slice_rows(d0, world, r)[0] for r in range(world)) == d0


def test_dry_run_answers_how_many_gpus_of_what_size():
    """gpt2-xl full fine-tuning in bf16: the per-rank bytes fall with the ranks (weights, gradients and
    AdamW state divided, activations not), and the table names the fewest ranks per GPU size."""
    cfg = TrainConfig(model="gpt2-xl", lora_rank=0, init="random", batch_size=4, dtype="bf16", device="cuda",
                      shard="fsdp", dry_run=True)  # fmt: skip
    base = unsharded(cfg)
    est = {w: estimate_sharded(cfg, w, base) for w in (1, 2, 4, 8)}
    for a, b in ((1, 2), (2, 4), (4, 8)):
        for k in ("params_trainable", "grads", "optimizer"):  # halved, give or take the padding
            assert est[b]["components"][k] == pytest.approx(est[a]["components"][k] / 2, rel=1e-3)
        assert est[b]["components"]["activations"] == est[a]["components"]["activations"]
    peaks = [per_rank_peak(est[w]) for w in (1, 2, 4, 8)]
    assert peaks == sorted(peaks, reverse=True)
    fits = {gib: min(w for w, p in zip((1, 2, 4, 8), peaks) if p <= gib * 2**30) for gib in (16, 24)}
    text = format_sharded(cfg, 4)
    assert text.startswith("FSDP2 over 4 ranks, per rank (rank 0; bf16 gathers, fp32 reduce):")
    assert f"fewest ranks per GPU size: 16 GiB: {fits[16]}, 24 GiB: {fits[24]}," in text


def test_the_cli_prints_the_per_rank_table(capsys):
    assert main(["--model", "tiny", "--world", "2", "--dtype", "fp32", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FSDP2 over 2 ranks, per rank (rank 0; float32 throughout):")
    assert "per-rank peak by ranks: 1: " in out and "fewest ranks per GPU size: 16 GiB: 1," in out
