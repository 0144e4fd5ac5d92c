"""Saving and opening models: a trained model round-trips, published versions keep the newest and LATEST."""

from __future__ import annotations

import pytest
import torch

from shared_model.checkpoint import (
    LATEST,
    load_global_model,
    load_model,
    model_for_catalogue,
    open_model,
    publish_version,
    resolve_model_folder,
    save_model,
)
from shared_model.features import build_sequences
from shared_model.model import ProfileConfig, ProfileTransformer

CONFIG = ProfileConfig(max_len=20, d_model=16, profile_dim=16, n_heads=1, n_layers=1, item_buckets=512)


@pytest.fixture(scope="module")
def catalogue(small_log):
    return build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=20).catalogue


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_trained_model_round_trips_with_its_catalogue(tmp_path, catalogue):
    torch.manual_seed(0)
    model = ProfileTransformer(CONFIG, catalogue.descriptors)
    path = save_model(tmp_path / "run" / "model.pt", model, catalogue, metadata={"epochs": 3})
    loaded, cat, metadata = load_model(path)
    assert _same_weights(model, loaded)
    assert cat.item_ids.tolist() == catalogue.item_ids.tolist() and metadata == {"epochs": 3}
    served, version, _ = open_model(tmp_path / "run").build(catalogue)
    assert version.startswith("train-") and _same_weights(model, served)


def test_published_versions_keep_the_newest_and_latest_names_the_last(tmp_path, catalogue):
    torch.manual_seed(0)
    model = ProfileTransformer(CONFIG, catalogue.descriptors)
    models = tmp_path / "models"
    for version in range(1, 6):
        publish_version(models, version, CONFIG, model.shared_state(), {"run_id": "r1"}, keep=3)
    assert sorted(p.name for p in models.iterdir()) == [LATEST, "v0003", "v0004", "v0005"]
    assert resolve_model_folder(models) == models / "v0005"
    assert resolve_model_folder(tmp_path) == models / "v0005"  # a run folder: models/LATEST
    config, shared, manifest = load_global_model(models / "v0005")
    assert config == CONFIG and manifest == {"version": 5, "run_id": "r1"}
    rebuilt = model_for_catalogue(config, shared, catalogue)
    assert all(torch.equal(rebuilt.shared_state()[k], v) for k, v in model.shared_state().items())
    _, version, _ = open_model(models).build(catalogue)
    assert version == "v0005@r1"


def test_a_folder_without_a_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.pt here"):
        load_global_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        resolve_model_folder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no model.pt"):
        open_model(tmp_path)
