"""Early stopping on the validation loss: stop once `patience` evaluations in a row bring no new best (the
rule of HF Trainer's EarlyStoppingCallback), and keep the best weights in best/ beside final/."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class EarlyStopping:
    patience: int  # evaluations in a row without a new best before the run stops
    best: float = math.inf
    best_step: int = 0
    since_best: int = 0  # evaluations since the best one

    def update(self, step: int, val_loss: float) -> bool:
        """Count one evaluation; True when it is a new best (then best/ is written)."""
        if val_loss < self.best:
            self.best, self.best_step, self.since_best = val_loss, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.since_best >= self.patience

    @classmethod
    def replay(cls, patience: int, metrics: Path) -> EarlyStopping:
        """The state a resumed run had: its validation losses so far, from metrics.jsonl (already cut back to
        the checkpoint's step), counted again in order."""
        stopper = cls(patience)
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        for row in rows:
            if row.get("val_loss") is not None:
                stopper.update(row["step"], row["val_loss"])
        return stopper
