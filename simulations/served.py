"""What each merchant's customers would be served: the merchant alone, the shared model, and the on-site model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from client.onsite.personalise import OnsiteConfig, personalise, train_alone
from shared_model.checkpoint import load_global_model, model_for_catalogue, resolve_model_folder
from shared_model.device import pick_device
from shared_model.evaluation import held_out_ranks, ndcg_at, paired_ratio
from shared_model.merchant_data import simulated_merchants
from shared_model.run_config import RunConfig

KINDS = ("alone", "shared", "onsite")  # own customers only, no DP / the published global model / the best on site
PLAIN_KINDS = ("no-dp-shared", "no-dp-onsite")  # the same federation trained without DP, as published / on site


def served_figures(run: RunConfig, num_merchants: int, model_folder: str | Path, *,
                   without_dp: str | Path | None = None, onsite: OnsiteConfig | None = None) -> dict:
    """Test HR@10 and NDCG@10 of each kind, per merchant (its own test users, its own catalogue) and over all of
    them, with paired ratios over users (onsite / alone, onsite / shared). `without_dp`: the same federation's
    model trained without DP, whose shared and on-site figures come beside them (`no-dp`). Only a simulation holds
    every merchant: each figure is what that merchant alone could measure on its own site."""
    onsite = onsite or OnsiteConfig(lr=min(run.lr, 1e-3), batch_size=run.batch_size, negatives=run.negatives,
                                    seed=run.seed, alone_lr=run.lr)
    config, shared, _ = load_global_model(resolve_model_folder(model_folder))
    plain = load_global_model(resolve_model_folder(without_dp))[:2] if without_dp is not None else None
    device = pick_device()
    kinds = KINDS + (PLAIN_KINDS if plain else ())
    ranks = {kind: [] for kind in kinds}
    merchants = {}
    for merchant in simulated_merchants(run, num_merchants):
        data = merchant.sequences
        global_model = model_for_catalogue(config, shared, data.catalogue)
        alone, trained = train_alone(global_model, data, onsite, device=device)
        served, fitted = personalise(global_model, data, onsite, alone=alone, device=device)
        row = {"users": len(data.test), "onsite-fit": fitted, "alone-fit": trained}
        models = [("alone", alone), ("shared", global_model), ("onsite", served)]
        if plain:
            plain_model = model_for_catalogue(*plain, data.catalogue)
            plain_served, row["no-dp-onsite-fit"] = personalise(plain_model, data, onsite, alone=alone, device=device)
            models += [("no-dp-shared", plain_model), ("no-dp-onsite", plain_served)]
        for kind, model in models:
            model.set_catalogue(data.catalogue.descriptors)
            r = held_out_ranks(model.to(device), data.test, device=device).numpy()
            ranks[kind].append(r)
            row[kind] = _metrics(r)
        merchants[merchant.name] = row
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
