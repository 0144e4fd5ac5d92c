"""The coordinator's run folder: atomic checkpoints, the LATEST pointers, published model versions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from server.store import Checkpoint, RunStore
from shared_model.checkpoint import load_global_model, model_for_catalogue
from shared_model.features import build_sequences
from shared_model.model import ProfileConfig
from shared_model.shared_weights import initial_shared_state


def _checkpoint(round_, value):
    return Checkpoint(round_, {"w": np.full((2, 3), value, dtype=np.float32)}, {"m_t/w": np.zeros((2, 3))},
                      {"run_id": "abc", "history": [{"round": r} for r in range(1, round_ + 1)], "epsilon": {"a": 0.5}})


def test_checkpoints_round_trip_and_keep_the_latest_two(tmp_path):
    store = RunStore(tmp_path)
    assert store.latest() is None
    for r in (1, 2, 3):
        store.save(_checkpoint(r, float(r)))
    latest = store.latest()
    assert latest.round == 3 and latest.arrays["w"][0, 0] == 3.0 and latest.state["epsilon"] == {"a": 0.5}
    assert latest.strategy_state["m_t/w"].shape == (2, 3)
    assert sorted(p.name for p in store.checkpoints.glob("round-*")) == ["round-0002", "round-0003"]


def test_an_interrupted_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    store.save(_checkpoint(1, 1.0))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("process killed while writing")

    monkeypatch.setattr("server.store.np.savez", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save(_checkpoint(2, 2.0))
    monkeypatch.undo()
    assert store.latest().round == 1 and store.latest().arrays["w"][0, 0] == 1.0


def test_published_versions_load_on_any_merchant_catalogue(tmp_path, small_log):
    config = ProfileConfig(d_model=16, profile_dim=16, n_heads=1, n_layers=1, item_buckets=512, max_len=10)
    shared = {k: v.numpy() for k, v in initial_shared_state(config).items()}
    store = RunStore(tmp_path)
    store.publish(1, config, shared, {"round": 1})
    folder = store.publish(2, config, shared, {"round": 2, "epsilon": {"merchant-0": 1.5}})
    assert store.latest_model() == folder and folder.name == "v0002"
    loaded_config, loaded, manifest = load_global_model(folder)
    assert loaded_config == config and manifest["version"] == 2 and manifest["epsilon"] == {"merchant-0": 1.5}
    data = build_sequences(small_log.events, small_log.users, config.hash_spec, max_len=10)
    model = model_for_catalogue(loaded_config, loaded, data.catalogue)
    for name, tensor in model.shared_state().items():
        torch.testing.assert_close(tensor, torch.as_tensor(shared[name]))
    with pytest.raises(FileNotFoundError, match="no model.pt"):
        load_global_model(tmp_path / "nowhere")


def test_a_fresh_run_moves_the_earlier_one_aside(tmp_path):
    store = RunStore(tmp_path)
    store.save(_checkpoint(2, 1.0))
    archived = store.archive_previous()
    assert archived == tmp_path / "archive" / "abc"
    assert (archived / "checkpoints" / "round-0002" / "global.npz").exists()
    assert store.latest() is None and store.archive_previous() is None
