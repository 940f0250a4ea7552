"""training/tensorboard.py: event files written by hand, read back by TensorBoard's own reader."""

import math

from training.tensorboard import EventWriter, crc32c


def test_crc32c_matches_the_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert crc32c(b"") == 0


def test_tensorboard_reads_every_number_of_each_row_at_its_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    w = EventWriter(tmp_path)
    w.add_row({"step": 1, "loss": 2.5, "lr": 1e-4, "mfu": None, "tokens": 96})
    w.add_row({"step": 2, "loss": 2.25, "lr": 2e-4, "tokens": 80})
    w.add_row({"step": 2, "val_loss": 2.75})
    w.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss", "lr", "tokens", "val_loss"]  # None is not a number
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.5), (2, 2.25)]
    assert [e.step for e in events.Scalars("val_loss")] == [2]
    assert math.isclose(events.Scalars("lr")[1].value, 2e-4, rel_tol=1e-6)  # stored as float32
