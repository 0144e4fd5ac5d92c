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


def test_a_second_runs_first_version_is_kept_and_latest_stays_valid(tmp_path, catalogue):
    """Before: versions were pruned by name, so a second run's v0001 was deleted as soon as it was written and
    LATEST named a missing folder (the merchant's service stopped taking new models)."""
    model = ProfileTransformer(CONFIG, catalogue.descriptors)
    models = tmp_path / "models"
    for version in range(1, 6):
        publish_version(models, version, CONFIG, model.shared_state(), {"run_id": "first"}, keep=3)
    publish_version(models, 1, CONFIG, model.shared_state(), {"run_id": "second"}, keep=3)
    latest = resolve_model_folder(models)
    assert latest.name == "v0001" and latest.is_dir()
    assert load_global_model(latest)[2]["run_id"] == "second"
    assert sorted(p.name for p in models.glob("v*")) == ["v0001", "v0004", "v0005"]
    publish_version(models, 2, CONFIG, model.shared_state(), {"run_id": "second"}, keep=3)
    assert sorted(p.name for p in models.glob("v*")) == ["v0001", "v0002", "v0005"]


def test_model_files_are_read_as_data_never_as_code(tmp_path, catalogue):
    """Before: `merchant serve`, the daemon and the CLI unpickled model.pt in full: a crafted file ran a command."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"config": CONFIG.to_dict(), "shared_state": {}, "payload": Payload()}, folder / "model.pt")
    for opener in (open_model, load_model, load_global_model):
        with pytest.raises(ValueError, match="not a fedprofile model file"):
            opener(folder if opener is not load_model else folder / "model.pt")
    assert not marker.exists()


def test_non_finite_weights_are_refused(tmp_path, catalogue):
    model = ProfileTransformer(CONFIG, catalogue.descriptors)
    shared = {k: v.clone() for k, v in model.shared_state().items()}
    next(iter(shared.values())).view(-1)[0] = float("inf")
    publish_version(tmp_path / "models", 1, CONFIG, shared, {})
    with pytest.raises(ValueError, match="NaN or infinite"):
        open_model(tmp_path / "models")
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_global_model(tmp_path / "models" / "v0001")
