"""Saving and loading a trained profile model with its config and the catalogue it was trained on."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from shared_model.features import Catalogue
from shared_model.files import atomic_folder, atomic_torch_save, write_pointer
from shared_model.model import ProfileConfig, ProfileTransformer


def save_model(path: str | Path, model: ProfileTransformer, catalogue: Catalogue, *, metadata: dict | None = None) -> Path:
    """A `fedprofile train` model: weights, config, the catalogue it was trained on and metadata (as JSON), all
    readable by a weights-only load."""
    path = Path(path)
    atomic_torch_save(path, {
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "catalogue": catalogue.state_dict(),
        "metadata_json": json.dumps(metadata or {}, default=str),
    })
    return path


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[ProfileTransformer, Catalogue, dict]:
    blob = _load_weights(Path(path))
    config = ProfileConfig(**blob["config"])
    catalogue = Catalogue.from_state_dict(blob["catalogue"])
    model = ProfileTransformer(config, catalogue.descriptors)
    model.load_state_dict(blob["state_dict"])
    return model.to(device), catalogue, json.loads(blob.get("metadata_json", "{}"))


def _load_weights(file: Path) -> dict:
    """A model file read as data, never as code: weights-only unpickling (tensors, numbers, strings, lists), and
    its weights refused when any is NaN or infinite (such a model ranks every item alike and looks perfect)."""
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{file}: not a fedprofile model file (it holds more than weights and data; "
                         f"refused: {str(exc).splitlines()[0][:200]})") from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{file}: not a readable model file ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(blob, dict) or "config" not in blob:
        raise ValueError(f"{file}: not a fedprofile model file (no config)")
    weights = blob.get("shared_state", blob.get("state_dict", {}))
    bad = [name for name, tensor in weights.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise ValueError(f"{file}: weights hold NaN or infinite values ({', '.join(bad[:3])}); refused")
    return blob


GLOBAL_MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
LATEST = "LATEST"


def save_global_model(folder: str | Path, config: ProfileConfig, shared_state: dict, manifest: dict, *,
                      extra: dict[str, object] | None = None) -> Path:
    """A published global model: the shared weights and their config (no catalogue: each merchant brings its
    own) plus a manifest (version, rounds, run config, metrics, epsilon per merchant) and any `extra` files
    (name -> object for torch.save). Written aside and renamed, so a reader never sees half a model."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        torch.save({"config": config.to_dict(),
                    "shared_state": {k: torch.as_tensor(v).cpu() for k, v in shared_state.items()}},
                   tmp / GLOBAL_MODEL_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
        for name, obj in (extra or {}).items():
            torch.save(obj, tmp / name)
    return folder


def publish_version(models: str | Path, version: int, config: ProfileConfig, shared_state: dict, manifest: dict, *,
                    keep: int = 3, extra: dict[str, object] | None = None) -> Path:
    """`models/vNNNN/` (see save_global_model) and `models/LATEST` pointing at it, written last; only the `keep`
    most recently written versions stay, and never the one LATEST names (a second run's v0001 is newer than the
    first run's v0005, whatever the names say). The coordinator publishes this way and a merchant keeps what it
    receives this way."""
    models = Path(models)
    folder = save_global_model(models / f"v{version:04d}", config, shared_state, {"version": version, **manifest},
                               extra=extra)
    write_pointer(models / LATEST, folder.name)
    versions = sorted((p for p in models.glob("v[0-9]*") if p.is_dir()), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for old in versions[:-keep]:
        if old.name != folder.name:  # readers load the one LATEST names
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load_global_model(folder: str | Path) -> tuple[ProfileConfig, dict[str, torch.Tensor], dict]:
    """(config, shared weights, manifest) of a published global model folder."""
    folder = Path(folder)
    if not (folder / GLOBAL_MODEL_FILE).exists():
        raise FileNotFoundError(f"{folder}: no {GLOBAL_MODEL_FILE} here; is this a published model version folder?")
    blob = _load_weights(folder / GLOBAL_MODEL_FILE)
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
    for pointer in (path / "models" / LATEST, path / LATEST):
        if pointer.is_file():
            return pointer.parent / pointer.read_text().strip()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model folder")
    return path


@dataclass
class ModelSource:
    """A model file opened once: a published global model (shared weights + manifest) or a `fedprofile train`
    model (all weights + the catalogue it was trained on). Its `config` says how to hash a catalogue for it."""

    file: Path
    blob: dict
    config: ProfileConfig

    def build(self, catalogue: Catalogue, *, local_state: dict | None = None,
              device: torch.device | str = "cpu") -> tuple[ProfileTransformer, str, dict]:
        """The runnable model over `catalogue` (built with `self.config.hash_spec`), its version label and
        manifest."""
        if "shared_state" in self.blob:  # a published global model
            manifest_file = self.file.parent / MANIFEST_FILE
            manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
            model = model_for_catalogue(self.config, self.blob["shared_state"], catalogue, local_state)
            version = f"v{int(manifest['version']):04d}" if "version" in manifest else self.file.parent.name
            if manifest.get("run_id"):  # versions restart with each run: the run id keeps labels unique
                version += f"@{manifest['run_id']}"
        else:  # a centrally trained model: keep its weights, score this merchant's catalogue
            config = self.config
            same_items = list(self.blob["catalogue"]["item_ids"]) == catalogue.item_ids.tolist()
            if config.local_items and not same_items:  # residuals belong to the items it was trained on
                config = ProfileConfig(**{**config.to_dict(), "local_items": 0})
            model = ProfileTransformer(config, catalogue.descriptors)
            model.load_state_dict({k: v for k, v in self.blob["state_dict"].items()
                                   if config.local_items or ".local." not in k})
            manifest = {"metadata": json.loads(self.blob.get("metadata_json", "{}"))}
            digest = hashlib.sha256(json.dumps(self.blob["config"], sort_keys=True).encode()
                                    + str(self.file.stat().st_mtime_ns).encode())
            version = manifest["metadata"].get("version") or f"train-{digest.hexdigest()[:8]}"
        model.eval()
        return model.to(device), version, manifest


def open_model(path: str | Path) -> ModelSource:
    """Open what a merchant serves from: a published model version (`models/vNNNN`), a run folder or a models
    folder (their LATEST), or a `fedprofile train` output folder or file."""
    folder = resolve_model_folder(path)
    file = folder / GLOBAL_MODEL_FILE if folder.is_dir() else folder
    if not file.exists():
        raise FileNotFoundError(f"{folder}: no {GLOBAL_MODEL_FILE}; give a published model version, a run folder "
                                "or a `fedprofile train` output folder")
    blob = _load_weights(file)
    return ModelSource(file, blob, ProfileConfig(**blob["config"]))

