"""On-site personalisation: the served model is the global model fine-tuned on the merchant's own customers."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from shared_model.evaluation import evaluate
from shared_model.features import SequenceData
from shared_model.model import ProfileTransformer
from shared_model.training import TrainConfig, train


@dataclass(frozen=True)
class OnsiteConfig:
    """How a merchant fits its served model. No DP: the fitted model and everything trained on site stay on site
    (docs/privacy.md); only the global model's weights ever went into what the merchant sends."""

    epochs: int = 30  # at most (patience stops earlier); the best epoch by validation NDCG@10 is kept, 0 = global
    lr: float = 1e-3
    batch_size: int = 128
    negatives: int = 256
    patience: int = 3  # validation passes without a better NDCG@10 before stopping
    seed: int = 0

    def train_config(self, epochs: int | None = None) -> TrainConfig:
        return TrainConfig(epochs=epochs or self.epochs, lr=self.lr, batch_size=self.batch_size,
                           negatives=self.negatives, keep_best=True, patience=self.patience, seed=self.seed,
                           show_progress=False)


def personalise(global_model: ProfileTransformer, data: SequenceData, config: OnsiteConfig = OnsiteConfig(), *,
                device: torch.device | None = None) -> tuple[ProfileTransformer, dict]:
    """A fine-tuned copy of `global_model` (left untouched) on `data`, chosen on the merchant's validation users:
    the global model itself when no epoch of fine-tuning beats it. Returns (model, figures)."""
    device = device or torch.device("cpu")
    global_model.set_catalogue(data.catalogue.descriptors)
    before = evaluate(global_model.to(device), data.valid, device=device, ks=(10,))["ndcg@10"]
    model = copy.deepcopy(global_model)
    result = train(model, data, config.train_config(), device=device, evaluate_test=False)
    after = result.valid.get("ndcg@10", float("-inf"))
    if not after > before:
        return global_model, {"fine-tuned": False, "epochs": 0, "valid-ndcg@10": before, "global-valid-ndcg@10": before}
    return model, {"fine-tuned": True, "epochs": result.best_epoch, "valid-ndcg@10": after,
                   "global-valid-ndcg@10": before}


def train_alone(template: ProfileTransformer, data: SequenceData, config: OnsiteConfig = OnsiteConfig(), *,
                epochs: int = 50, device: torch.device | None = None) -> tuple[ProfileTransformer, dict]:
    """The merchant without the federation: `template`'s architecture from fresh weights, trained on `data` alone
    (no DP: nothing leaves), best epoch by validation. The figure a merchant compares joining against."""
    device = device or torch.device("cpu")
    torch.manual_seed(config.seed)
    model = ProfileTransformer(template.config, data.catalogue.descriptors)
    result = train(model, data, config.train_config(epochs), device=device, evaluate_test=False)
    return model, {"epochs": result.best_epoch, "valid-ndcg@10": result.valid.get("ndcg@10")}
