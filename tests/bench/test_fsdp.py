"""bench/fsdp.py runs only on a GPU machine (bench/gpu.sh), where there is little time: the train.py flags it
passes must parse and validate here."""

from pathlib import Path

import pytest

from bench.fsdp import FSDPBenchConfig, run_args
from cli import parse_config
from training.config import TrainConfig, validate


@pytest.mark.parametrize("device, dtype", [("cuda", "fp32"), ("cuda", "bf16"), ("cpu", "fp32")])
def test_every_run_it_launches_is_a_valid_train_py_command(device, dtype):
    argv = [*run_args(FSDPBenchConfig(), device, dtype, Path("out")), "--shard", "fsdp"]
    cfg = parse_config(TrainConfig, argv, prog="train.py")
    validate(cfg)
    assert (cfg.device, cfg.dtype, cfg.shard, cfg.lora_rank, cfg.grad_accum) == (device, dtype, "fsdp", 0, 2)
