"""On-site personalisation: the served model is the best of the global model, its fine-tuned copy and the merchant's own."""

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
    alone_epochs: int = 50  # the merchant's own model from fresh weights, a candidate too (0: not trained)
    alone_lr: float = 3e-3

    def train_config(self, *, alone: bool = False) -> TrainConfig:
        return TrainConfig(epochs=self.alone_epochs if alone else self.epochs, lr=self.alone_lr if alone else self.lr,
                           batch_size=self.batch_size, negatives=self.negatives, keep_best=True,
                           patience=self.patience, seed=self.seed, show_progress=False)


def personalise(global_model: ProfileTransformer, data: SequenceData, config: OnsiteConfig = OnsiteConfig(), *,
                alone: ProfileTransformer | None = None,
                device: torch.device | None = None) -> tuple[ProfileTransformer, dict]:
    """The model this merchant serves, chosen on its validation users among the global model, a fine-tuned copy
    of it (`global_model` itself is left untouched) and, when given, the merchant's own model trained `alone`
    (where the federation's model is a worse start than none, as for a merchant unlike the others).
    Returns (model, figures); figures["chosen"] names the winner."""
    device = device or torch.device("cpu")
    global_model.set_catalogue(data.catalogue.descriptors)
    before = evaluate(global_model.to(device), data.valid, device=device, ks=(10,))["ndcg@10"]
    candidates = {"global": (global_model, before, 0)}
    if config.epochs > 0:
        model = copy.deepcopy(global_model)
        result = train(model, data, config.train_config(), device=device, evaluate_test=False)
        candidates["fine-tuned"] = (model, result.valid.get("ndcg@10", float("-inf")), result.best_epoch)
    if alone is not None:
        alone.set_catalogue(data.catalogue.descriptors)
        candidates["alone"] = (alone, evaluate(alone.to(device), data.valid, device=device, ks=(10,))["ndcg@10"], 0)
    # strictly better than the global model, or the global model: ties keep what the federation published
    chosen = max(candidates, key=lambda name: (candidates[name][1], name == "global"))
    served, valid, epochs = candidates[chosen]
    return served, {"chosen": chosen, "fine-tuned": chosen == "fine-tuned", "epochs": epochs, "valid-ndcg@10": valid,
                    "global-valid-ndcg@10": before,
                    **{f"{name}-valid-ndcg@10": v for name, (_, v, _) in candidates.items() if name != "global"}}


def train_alone(template: ProfileTransformer, data: SequenceData, config: OnsiteConfig = OnsiteConfig(), *,
                device: torch.device | None = None) -> tuple[ProfileTransformer, dict]:
    """The merchant without the federation: `template`'s architecture from fresh weights, trained on `data` alone
    (no DP: nothing leaves) for at most `config.alone_epochs`, best epoch by validation. The figure a merchant
    compares joining against, and a candidate for what it serves."""
    device = device or torch.device("cpu")
    torch.manual_seed(config.seed)
    model = ProfileTransformer(template.config, data.catalogue.descriptors)
    result = train(model, data, config.train_config(alone=True), device=device, evaluate_test=False)
    return model, {"epochs": result.best_epoch, "valid-ndcg@10": result.valid.get("ndcg@10")}
