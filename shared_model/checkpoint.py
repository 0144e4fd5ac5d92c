"""Saving and loading a trained profile model with its config and the catalogue it was trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared_model.features import Catalogue
from shared_model.model import ProfileConfig, ProfileTransformer


def save_model(path: str | Path, model: ProfileTransformer, catalogue: Catalogue, *, metadata: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": model.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "catalogue": {
                "item_ids": catalogue.item_ids.tolist(),
                "categories": catalogue.categories.tolist(),
                "brands": catalogue.brands.tolist(),
                "prices": catalogue.prices.tolist(),
                "descriptors": catalogue.descriptors,
            },
            "metadata": metadata or {},
        },
        path,
    )
    return path


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[ProfileTransformer, Catalogue, dict]:
    blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    config = ProfileConfig(**blob["config"])
    cat = blob["catalogue"]
    catalogue = Catalogue(
        np.asarray(cat["item_ids"], dtype=object),
        np.asarray(cat["categories"], dtype=object),
        np.asarray(cat["brands"], dtype=object),
        np.asarray(cat["prices"], dtype=np.float64),
        cat["descriptors"],
    )
    model = ProfileTransformer(config, catalogue.descriptors)
    model.load_state_dict(blob["state_dict"])
    return model.to(device), catalogue, blob.get("metadata", {})


GLOBAL_MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"


def save_global_model(folder: str | Path, config: ProfileConfig, shared_state: dict, manifest: dict) -> Path:
    """A published global model: the shared weights and their config (no catalogue: each merchant brings its
    own) plus a manifest (version, rounds, run config, metrics, epsilon per merchant). Written to a temporary
    folder and renamed, so a reader never sees half a model."""
    import json
    import os
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"config": config.to_dict(), "shared_state": {k: torch.as_tensor(v).cpu() for k, v in shared_state.items()}},
               tmp / GLOBAL_MODEL_FILE)
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_global_model(folder: str | Path) -> tuple[ProfileConfig, dict[str, torch.Tensor], dict]:
    """(config, shared weights, manifest) of a published global model folder."""
    import json

    folder = Path(folder)
    if not (folder / GLOBAL_MODEL_FILE).exists():
        raise FileNotFoundError(f"{folder}: no {GLOBAL_MODEL_FILE} here; is this a published model version folder?")
    blob = torch.load(folder / GLOBAL_MODEL_FILE, map_location="cpu", weights_only=True)
    manifest = json.loads((folder / MANIFEST_FILE).read_text()) if (folder / MANIFEST_FILE).exists() else {}
    return ProfileConfig(**blob["config"]), blob["shared_state"], manifest


def model_for_catalogue(config: ProfileConfig, shared_state: dict, catalogue: Catalogue,
                        local_state: dict | None = None) -> ProfileTransformer:
    """A merchant's runnable model: the global shared weights over its own catalogue (and local weights)."""
    if config.local_items and config.local_items != catalogue.num_items + 1:
        config = ProfileConfig(**{**config.to_dict(), "local_items": catalogue.num_items + 1})
    model = ProfileTransformer(config, catalogue.descriptors)
    model.load_shared_state(shared_state)
    model.load_local_state(local_state or {})
    return model


def resolve_model_folder(path: str | Path) -> Path:
    """A run folder (models/LATEST), a models folder (LATEST) or a model folder itself -> the model folder."""
    path = Path(path)
    for pointer in (path / "models" / "LATEST", path / "LATEST"):
        if pointer.is_file():
            return pointer.parent / pointer.read_text().strip()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model folder")
    return path


def load_for_serving(path: str | Path, catalogue: Catalogue, *, local_state: dict | None = None,
                     device: torch.device | str = "cpu") -> tuple[ProfileTransformer, str, dict]:
    """A merchant's runnable model over its own catalogue from a published global model (`models/vNNNN`, a
    run folder, or a models folder with LATEST) or from a `fedprofile train` folder; returns the model, its
    version label and the manifest."""
    import hashlib
    import json

    folder = resolve_model_folder(path)
    file = folder / GLOBAL_MODEL_FILE if folder.is_dir() else folder
    if not file.exists():
        raise FileNotFoundError(f"{folder}: no {GLOBAL_MODEL_FILE}; give a published model version, a run folder "
                                "or a `fedprofile train` output folder")
    blob = torch.load(file, map_location="cpu", weights_only=False)
    if "shared_state" in blob:  # a published global model
        config, shared, manifest = load_global_model(file.parent)
        model = model_for_catalogue(config, shared, catalogue, local_state)
        version = f"v{int(manifest['version']):04d}" if "version" in manifest else file.parent.name
        if manifest.get("run_id"):  # versions restart with each run: the run id keeps labels unique
            version += f"@{manifest['run_id']}"
    else:  # a centrally trained model: keep its weights, score this merchant's catalogue
        config = ProfileConfig(**blob["config"])
        same_items = list(blob["catalogue"]["item_ids"]) == catalogue.item_ids.tolist()
        if config.local_items and not same_items:  # residuals belong to the items it was trained on
            config = ProfileConfig(**{**config.to_dict(), "local_items": 0})
        model = ProfileTransformer(config, catalogue.descriptors)
        state = {k: v for k, v in blob["state_dict"].items() if config.local_items or ".local." not in k}
        model.load_state_dict(state)
        manifest = {"metadata": blob.get("metadata", {})}
        digest = hashlib.sha256(json.dumps(blob["config"], sort_keys=True).encode() + str(file.stat().st_mtime_ns).encode())
        version = f"train-{digest.hexdigest()[:8]}"
    model.eval()
    return model.to(device), version, manifest


def read_model_config(path: str | Path) -> ProfileConfig:
    """The model config of anything `load_for_serving` accepts (to build the catalogue with its hash spec)."""
    folder = resolve_model_folder(path)
    file = folder / GLOBAL_MODEL_FILE if folder.is_dir() else folder
    if not file.exists():
        raise FileNotFoundError(f"{folder}: no {GLOBAL_MODEL_FILE}; give a published model version, a run folder "
                                "or a `fedprofile train` output folder")
    return ProfileConfig(**torch.load(file, map_location="cpu", weights_only=False)["config"])
