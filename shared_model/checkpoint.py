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
