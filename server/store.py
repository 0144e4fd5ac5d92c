"""The coordinator's run folder: a checkpoint after every round (atomic) and the published model versions."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared_model.checkpoint import LATEST, publish_version
from shared_model.files import atomic_folder, write_pointer
from shared_model.model import ProfileConfig


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]  # the global shared weights after `round`
    strategy_state: dict[str, np.ndarray]
    state: dict  # run id, run config, history, epsilon per merchant


class RunStore:
    """`checkpoints/round-NNNN/` (global.npz, strategy.npz, state.json) with a `checkpoints/LATEST` pointer,
    and `models/vNNNN/` (model.pt, manifest.json) with `models/LATEST`. Each is written under a temporary name
    and renamed, and the pointer is replaced last, so a process killed at any moment leaves the previous
    complete checkpoint in place."""

    def __init__(self, run_dir: str | Path, *, keep: int = 2, keep_models: int = 3):
        self.root = Path(run_dir)
        self.keep = keep
        self.keep_models = keep_models

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def save(self, checkpoint: Checkpoint) -> Path:
        final = self.checkpoints / f"round-{checkpoint.round:04d}"
        with atomic_folder(final) as tmp:
            np.savez(tmp / "global.npz", **checkpoint.arrays)
            np.savez(tmp / "strategy.npz", **checkpoint.strategy_state)
            (tmp / "state.json").write_text(json.dumps({"round": checkpoint.round, **checkpoint.state}, indent=1,
                                                       default=str))
        write_pointer(self.checkpoints / LATEST, final.name)
        for old in sorted(self.checkpoints.glob("round-*"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest_state(self) -> dict | None:
        """The newest checkpoint's state (round, history, epsilon per merchant, merchants) without its arrays."""
        pointer = self.checkpoints / LATEST
        if not pointer.exists():
            return None
        return json.loads((self.checkpoints / pointer.read_text().strip() / "state.json").read_text())

    def latest(self) -> Checkpoint | None:
        pointer = self.checkpoints / LATEST
        if not pointer.exists():
            return None
        folder = self.checkpoints / pointer.read_text().strip()
        state = json.loads((folder / "state.json").read_text())
        with np.load(folder / "global.npz") as arrays, np.load(folder / "strategy.npz") as strategy:
            return Checkpoint(int(state.pop("round")), {k: arrays[k] for k in arrays.files},
                              {k: strategy[k] for k in strategy.files}, state)

    def publish(self, version: int, config: ProfileConfig, arrays: dict[str, np.ndarray], manifest: dict) -> Path:
        return publish_version(self.models, version, config, arrays, manifest, keep=self.keep_models)

    def archive_previous(self) -> Path | None:
        """Move an earlier run's checkpoints and models aside (to archive/<run id>/) before a fresh run."""
        previous = self.latest()
        if previous is None:
            return None
        target = self.root / "archive" / str(previous.state.get("run_id", f"round-{previous.round}"))
        target.mkdir(parents=True, exist_ok=True)
        for folder in (self.checkpoints, self.models):
            if folder.exists():
                os.replace(folder, target / folder.name)
        return target

    def latest_model(self) -> Path | None:
        pointer = self.models / LATEST
        return self.models / pointer.read_text().strip() if pointer.exists() else None
