"""What each merchant's customers would be served: the merchant alone, the shared model, and the on-site model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from client.onsite.adjacency import ItemAdjacency
from client.onsite.personalise import OnsiteConfig, blend_weight, personalise, train_alone
from shared_model.checkpoint import load_global_model, model_for_catalogue, resolve_model_folder
from shared_model.device import pick_device
from shared_model.evaluation import held_out_ranks, ndcg_at, paired_ratio
from shared_model.merchant_data import simulated_merchants
from shared_model.run_config import RunConfig

KINDS = ("alone", "shared", "onsite")  # own customers only, no DP / the published global model / the best on site
PLAIN_KINDS = ("no-dp-shared", "no-dp-onsite")  # the same federation trained without DP, as published / on site


def onsite_config(run: RunConfig, *, blend: bool = True) -> OnsiteConfig:
    """How a simulated merchant fits on site: the run's batch and negatives, fine-tuning at most at 1e-3."""
    return OnsiteConfig(lr=min(run.lr, 1e-3), batch_size=run.batch_size, negatives=run.negatives, seed=run.seed,
                        alone_lr=run.lr, blend=blend)


def served_figures(run: RunConfig, num_merchants: int, model_folder: str | Path, *,
                   without_dp: str | Path | None = None, onsite: OnsiteConfig | None = None,
                   progress: Callable[[str, dict], None] | None = None) -> dict:
    """Test HR@10 and NDCG@10 of each kind, per merchant (its own test users, its own catalogue) and over all of
    them, with paired ratios over users (onsite / alone, onsite / shared). Alone and on site are served as a
    merchant would serve them: blended with its own item adjacency at the weight its validation users chose
    (`onsite.blend`); the shared models as published. `without_dp`: the same federation's
    model trained without DP, whose shared and on-site figures come beside them (`no-dp`). Only a simulation holds
    every merchant: each figure is what that merchant alone could measure on its own site. `progress(name, row)`
    is called as each merchant's row is done (a Beauty run takes an hour or more)."""
    onsite = onsite or onsite_config(run)
    config, shared, _ = load_global_model(resolve_model_folder(model_folder))
    plain = load_global_model(resolve_model_folder(without_dp))[:2] if without_dp is not None else None
    device = pick_device()
    kinds = KINDS + (PLAIN_KINDS if plain else ())
    ranks = {kind: [] for kind in kinds}
    merchants = {}
    for merchant in simulated_merchants(run, num_merchants):
        data = merchant.sequences
        adjacency = ItemAdjacency.from_training(data.train, data.catalogue.num_items) if onsite.blend else None
        global_model = model_for_catalogue(config, shared, data.catalogue)
        alone, trained = train_alone(global_model, data, onsite, device=device)
        trained["valid-ndcg@10"], trained["adjacency-weight"] = blend_weight(alone, data, adjacency, device=device)
        served, fitted = personalise(global_model, data, onsite, alone=alone, adjacency=adjacency, device=device)
        row = {"users": len(data.test), "onsite-fit": fitted, "alone-fit": trained}
        # (kind, model, blend weight): the shared models as published; alone and on site as the merchant serves
        models = [("alone", alone, trained["adjacency-weight"]), ("shared", global_model, 0.0),
                  ("onsite", served, fitted["adjacency-weight"])]
        if plain:
            plain_model = model_for_catalogue(*plain, data.catalogue)
            plain_served, row["no-dp-onsite-fit"] = personalise(plain_model, data, onsite, alone=alone,
                                                                adjacency=adjacency, device=device)
            models += [("no-dp-shared", plain_model, 0.0),
                       ("no-dp-onsite", plain_served, row["no-dp-onsite-fit"]["adjacency-weight"])]
        for kind, model, weight in models:
            model.set_catalogue(data.catalogue.descriptors)
            boost = adjacency.booster(weight) if adjacency is not None else None
            r = held_out_ranks(model.to(device), data.test, device=device, boost=boost).numpy()
            ranks[kind].append(r)
            row[kind] = _metrics(r)
        merchants[merchant.name] = row
        if progress is not None:
            progress(merchant.name, row)
    ranks = {kind: np.concatenate(parts) for kind, parts in ranks.items()}
    ndcg = {kind: _ndcg(r) for kind, r in ranks.items()}
    out = {kind: _metrics(ranks[kind]) for kind in KINDS}
    pairs = [("onsite", "alone"), ("onsite", "shared"), ("shared", "alone")]
    if plain:
        out["no-dp"] = {kind: _metrics(ranks[f"no-dp-{kind}"]) for kind in ("shared", "onsite")}
        pairs += [("onsite", "no-dp-onsite"), ("no-dp-onsite", "alone")]
    out["ratios"] = {f"{a}/{b}": paired_ratio(ndcg[a], ndcg[b], seed=run.seed) for a, b in pairs}
    out["merchants"] = merchants
    return out


def _ndcg(ranks: np.ndarray) -> np.ndarray:
    return ndcg_at(torch.from_numpy(ranks), 10).numpy()


def _metrics(ranks: np.ndarray) -> dict:
    return {"hr@10": float((ranks < 10).mean()), "ndcg@10": float(_ndcg(ranks).mean())}
