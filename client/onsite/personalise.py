"""On-site personalisation: the best of the global model, its fine-tuned copy and the merchant's own, blended with its item statistics."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from client.onsite.adjacency import WEIGHTS, ItemAdjacency
from client.onsite.ensemble import WEIGHTS as ENSEMBLE_WEIGHTS
from client.onsite.ensemble import ScoreEnsemble
from shared_model.evaluation import held_out_ranks, last_profiles, ndcg_at
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
    blend: bool = True  # blend each candidate with the merchant's item adjacency, weight chosen on validation
    ensemble: bool = True  # the merchant's own model plus the federation's, scores added, a candidate too

    def train_config(self, *, alone: bool = False) -> TrainConfig:
        return TrainConfig(epochs=self.alone_epochs if alone else self.epochs, lr=self.alone_lr if alone else self.lr,
                           batch_size=self.batch_size, negatives=self.negatives, keep_best=True,
                           patience=self.patience, seed=self.seed, show_progress=False)


def personalise(global_model: ProfileTransformer, data: SequenceData, config: OnsiteConfig = OnsiteConfig(), *,
                alone: ProfileTransformer | None = None, adjacency: ItemAdjacency | None = None,
                device: torch.device | None = None, fitted: dict | None = None) -> tuple[ProfileTransformer, dict]:
    """The model this merchant serves, chosen on its validation users among the global model, a fine-tuned copy
    of it (`global_model` itself is left untouched) and, when given, the merchant's own model trained `alone`
    (where the federation's model is a worse start than none, as for a merchant unlike the others) and the
    score ensemble of that own model and the better of the other two (`config.ensemble`); each blended with the
    merchant's item `adjacency` at the weight its validation users like best (0 = no blend). Returns (model,
    figures); figures["chosen"] names the winner, figures["adjacency-weight"] its blend.
    `fitted`, when given, receives every candidate model by name (for measurements beside the choice)."""
    device = device or torch.device("cpu")
    global_model.set_catalogue(data.catalogue.descriptors)
    adjacency = adjacency if config.blend else None
    candidates = {"global": (global_model, *blend_weight(global_model, data, adjacency, device=device), 0)}
    if config.epochs > 0:
        model = copy.deepcopy(global_model)
        result = train(model, data, config.train_config(), device=device, evaluate_test=False)
        candidates["fine-tuned"] = (model, *blend_weight(model, data, adjacency, device=device), result.best_epoch)
    if alone is not None:
        alone.set_catalogue(data.catalogue.descriptors)
        candidates["alone"] = (alone, *blend_weight(alone, data, adjacency, device=device), 0)
    if alone is not None and config.ensemble:
        # the federation's part: the global model or its fine-tuned copy, whichever validates better alone
        partner = max(("global", "fine-tuned"), key=lambda name: candidates.get(name, (None, -1.0))[1])
        both, valid, weight = best_ensemble(alone, candidates[partner][0], data, adjacency, device=device)
        candidates["ensemble"] = (both, valid, weight, candidates[partner][3])
    if fitted is not None:
        fitted.update({name: (model, valid) for name, (model, valid, _, _) in candidates.items()})
    # strictly better than the global model, or the global model: ties keep what the federation published
    chosen = max(candidates, key=lambda name: (candidates[name][1], name == "global"))
    served, valid, weight, epochs = candidates[chosen]
    ensemble = {"ensemble-weight": served.weight, "ensemble-partner": partner} if chosen == "ensemble" else {}
    return served, {"chosen": chosen, "fine-tuned": chosen == "fine-tuned", **ensemble, "epochs": epochs,
                    "valid-ndcg@10": valid, "adjacency-weight": weight, "global-valid-ndcg@10": candidates["global"][1],
                    **{f"{name}-valid-ndcg@10": v for name, (_, v, _, _) in candidates.items() if name != "global"}}


def blend_weight(model: ProfileTransformer, data: SequenceData, adjacency: ItemAdjacency | None, *,
                 device: torch.device) -> tuple[float, float]:
    """(validation NDCG@10, weight): the blend weight of `adjacency` that `model`'s validation users rank their
    next item best with; the smaller weight on ties, so 0 (the model alone) unless a blend is strictly better."""
    by_weight = blend_curve(model, data, adjacency, device=device)
    weight = max(by_weight, key=lambda w: (by_weight[w], -w))
    return by_weight[weight], weight


def blend_curve(model: ProfileTransformer, data: SequenceData, adjacency: ItemAdjacency | None, *,
                device: torch.device) -> dict[float, float]:
    """Validation NDCG@10 of `model` blended with `adjacency` at each weight of WEIGHTS ({0: ...} without one)."""
    model.to(device)
    profiles = last_profiles(model, data.valid, device=device)  # (U, k), once for every weight
    curve = {}
    for weight in WEIGHTS if adjacency is not None else (0.0,):
        boost = adjacency.booster(weight) if adjacency is not None else None
        ranks = held_out_ranks(model, data.valid, device=device, boost=boost, profiles=profiles)
        curve[weight] = float(ndcg_at(ranks, 10).mean()) if len(ranks) else 0.0
    return curve


def best_ensemble(first: ProfileTransformer, second: ProfileTransformer, data: SequenceData,
                  adjacency: ItemAdjacency | None, *, device: torch.device) -> tuple[ScoreEnsemble, float, float]:
    """(ensemble, validation NDCG@10, adjacency weight): `first + w * second`, w and the adjacency blend chosen
    together on the validation customers."""
    tried = [(ensemble, *blend_weight(ensemble, data, adjacency, device=device))
             for ensemble in (ScoreEnsemble(first, second, weight) for weight in ENSEMBLE_WEIGHTS)]
    return max(tried, key=lambda row: row[1])  # the first (smallest) weight on ties


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
