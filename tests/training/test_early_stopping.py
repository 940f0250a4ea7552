"""training/early_stopping.py: the patience rule, and the state a resumed run rebuilds from metrics.jsonl."""

import json

from training.early_stopping import EarlyStopping


def test_stops_after_patience_evaluations_without_a_new_best():
    s = EarlyStopping(patience=2)
    seen = [
        (s.update(step, v), s.should_stop) for step, v in [(1, 3.0), (2, 2.0), (3, 2.5), (4, 2.0), (5, 2.1)]
    ]
    assert seen == [(True, False), (True, False), (False, False), (False, True), (False, True)]
    assert (s.best, s.best_step) == (2.0, 2)  # a tie is not an improvement


def test_replay_rebuilds_the_state_from_the_logged_validation_losses(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 4.0}, {"step": 2, "val_loss": 3.0}, {"step": 3, "loss": 3.5},
            {"step": 4, "val_loss": 3.2}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = EarlyStopping.replay(3, path)
    assert (s.best, s.best_step, s.since_best) == (3.0, 2, 1)
    assert EarlyStopping.replay(3, tmp_path / "missing.jsonl") == EarlyStopping(3)
