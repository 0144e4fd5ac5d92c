"""Membership inference against the published global model: loss threshold, LiRA and canary exposure."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from client.client_app import app as client_app
from server.coordinator import run_federation
from shared_model.checkpoint import load_global_model, model_for_catalogue, resolve_model_folder
from shared_model.data.synthetic import SyntheticConfig, SyntheticMerchant, generate, merge_merchants, write
from shared_model.device import pick_device
from shared_model.features import EVENT_FIELDS, SequenceData, SequenceSet, build_sequences
from shared_model.run_config import RunConfig
from simulations.inprocess import InProcessGrid

log = logging.getLogger("fedprofile.audit")
CANARY = "canary-"  # user-id prefixes of the planted customers
REFERENCE = "reference-"


@dataclass(frozen=True)
class AuditConfig:
    """K federations, each trained on a random half of every merchant's customers (each customer in exactly
    K/2 of them), so every model is a target and the others are its shadow models."""

    models: int = 6
    canaries: int = 20  # random-history customers planted in merchant 0, members of every model
    references: int = 500  # random histories drawn the same way, never trained on (exposure's yardstick)
    canary_events: int = 20
    seed: int = 0

    def __post_init__(self):
        if self.models < 4 or self.models % 2:
            raise ValueError(f"models must be even and at least 4 (each customer in half of them, and a target "
                             f"keeps shadows of both kinds); got {self.models}")


def population(run: RunConfig, num_merchants: int, config: AuditConfig) -> list[SyntheticMerchant]:
    """The built-in shops at the run's size, with canary and reference customers added to merchant 0."""
    shops = generate(SyntheticConfig(merchants=num_merchants, users_per_merchant=run.synthetic_users, seed=run.seed))
    first = shops[0]
    rng = np.random.default_rng(config.seed + 1)
    items = first.items if first.items is not None else \
        first.events.drop_duplicates("item_id")[["item_id", "category_id", "brand", "price"]]
    start = int(first.events["timestamp"].max()) + 86_400
    rows = []
    planted = [f"{CANARY}{i}" for i in range(config.canaries)] + [f"{REFERENCE}{i}" for i in range(config.references)]
    for n, user in enumerate(planted):
        picks = items.iloc[rng.integers(0, len(items), config.canary_events)]
        rows.append(pd.DataFrame({"user_id": user, "item_id": picks["item_id"].to_numpy(),
                                  "category_id": picks["category_id"].to_numpy(), "behavior": np.int8(1),
                                  "timestamp": start + 1000 * n + np.arange(config.canary_events) * 60,
                                  "price": picks["price"].to_numpy(), "brand": picks["brand"].to_numpy()}))
    events = pd.concat([first.events, *rows], ignore_index=True)[first.events.columns]
    users = pd.concat([first.users, pd.DataFrame({"user_id": planted})], ignore_index=True)
    return [dataclasses.replace(first, events=events, users=users), *shops[1:]]


def membership(shops: list[SyntheticMerchant], config: AuditConfig) -> dict[str, np.ndarray]:
    """Per merchant, a (K, U) bool matrix over its users (in `sorted_users` order): who trains each model.
    Canaries are in every model and references in none."""
    rng = np.random.default_rng(config.seed)
    out = {}
    for shop in shops:
        users = sorted_users(shop)
        mask = np.zeros((config.models, len(users)), dtype=bool)
        for u in range(len(users)):
            mask[rng.choice(config.models, config.models // 2, replace=False), u] = True
        mask[:, _prefixed(users, CANARY)] = True
        mask[:, _prefixed(users, REFERENCE)] = False
        out[shop.name] = mask
    return out


def sorted_users(shop: SyntheticMerchant) -> np.ndarray:
    return np.array(sorted(shop.events["user_id"].unique()), dtype=object)


def train_model(run: RunConfig, shops: list[SyntheticMerchant], masks: dict[str, np.ndarray], k: int,
                folder: Path) -> Path:
    """Model k: the real ClientApp and coordinator in process, each merchant holding only its members of k
    (written as its own data folder, as a deployed merchant's). Returns the published global model folder."""
    members = []
    for shop in shops:
        keep = set(sorted_users(shop)[masks[shop.name][k]])
        events = shop.events[shop.events["user_id"].isin(keep)]
        members.append(dataclasses.replace(shop, events=events, users=shop.users[shop.users["user_id"].isin(keep)]))
    data = write(members, folder / "data")
    nodes = [{"data-path": str(data / shop.name), "format": "synthetic", "merchant-name": shop.name,
              "state-dir": str(folder / "state" / shop.name), "policy-require-dp": run.dp} for shop in shops]
    result = run_federation(InProcessGrid(client_app, len(shops), node_configs=nodes),
                            dataclasses.replace(run, run_dir=str(folder / "run")))
    shutil.rmtree(folder / "data", ignore_errors=True)
    return resolve_model_folder(result.model_dir or folder / "run")


def scoring_data(run: RunConfig, shop: SyntheticMerchant) -> SequenceData:
    """Every user of the shop (members, others, canaries, references) as the ClientApp would build them."""
    logs = merge_merchants([shop])
    return build_sequences(logs.events, logs.users, run.model_config().hash_spec, max_len=run.max_len,
                           titles=logs.item_titles)


@torch.no_grad()
def log_likelihood(model, sequences: SequenceSet, *, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Each user's mean log-probability of every next item in its training sequence under the model's full
    softmax over the merchant's catalogue: (U,), in the users' order. Members of the training set score higher
    when the model remembers them."""
    model.eval()
    items = model.item_vectors(torch.arange(model.descriptors.shape[0], device=device)).float()  # (N+1, k)
    out = np.zeros(len(sequences))
    for start in range(0, len(sequences), batch_size):
        rows = slice(start, start + batch_size)
        T = max(1, int(sequences.lengths[rows].max()))
        inputs = [sequences.events[name][rows, :T].to(device) for name in EVENT_FIELDS]
        profiles = model.encode(*inputs, sequences.genders[rows].to(device), sequences.ages[rows].to(device))
        logits = profiles.float() @ items.T  # (b, T, N+1)
        logits[..., 0] = float("-inf")  # padding is not an item
        logp = torch.log_softmax(logits, dim=-1)
        targets = sequences.target_items[rows, :T].to(device)  # (b, T)
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (b, T)
        real = torch.arange(T, device=device)[None, :] < sequences.lengths[rows].to(device)[:, None]
        picked = torch.where(real, picked, torch.zeros_like(picked))
        out[start:start + picked.shape[0]] = (picked.sum(1) / real.sum(1).clamp(min=1)).cpu().numpy()
    return out


def score_models(run: RunConfig, shops: list[SyntheticMerchant], folders: list[Path]) -> dict[str, np.ndarray]:
    """Per merchant, a (K, U) matrix of each model's log-likelihood of each user (in `sorted_users` order)."""
    device = pick_device()
    out = {}
    for shop in shops:
        data = scoring_data(run, shop)
        order = pd.Index(data.train.user_ids).get_indexer(sorted_users(shop))
        if (order < 0).any():
            raise ValueError(f"{shop.name}: {int((order < 0).sum())} users have no training sequence to score")
        rows = []
        for folder in folders:
            config, shared, _ = load_global_model(folder)
            model = model_for_catalogue(config, shared, data.catalogue).to(device)
            rows.append(log_likelihood(model, data.train, device=device)[order])
        out[shop.name] = np.stack(rows)
    return out


def threshold_attack(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Loss-threshold attack (Yeom et al. 2018): per target model, AUC of the log-likelihood itself."""
    return np.array([roc_auc_score(masks[k], scores[k]) for k in range(len(scores))])


def lira(scores: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LiRA, online with a fixed variance (Carlini et al. 2022, for few shadow models): for each target model,
    the likelihood ratio of the user's score under Gaussians fitted to its scores in the shadows that trained
    on it and in those that did not. With few shadows a user's means rest on one to three scores each, so each
    Gaussian is the predictive one (pooled variance x (1 + 1/n)), over equally many shadows of each kind (see
    below): with no membership signal the AUC is 0.5 (tested). Returns (AUC per target, TPR at 1% FPR per
    target)."""
    aucs, tprs = [], []
    K = len(scores)
    for k in range(K):
        shadows = [j for j in range(K) if j != k]
        s, m = scores[shadows], masks[shadows]  # (K-1, U)
        target, y = scores[k], masks[k]
        # as many "in" as "out" shadows for every user: a target's members have one "in" shadow fewer than its
        # non-members, and unequal counts alone would tell them apart
        even = np.minimum(m.sum(0), (~m).sum(0))
        terms = []
        for side in (m & (np.cumsum(m, 0) <= even), ~m & (np.cumsum(~m, 0) <= even)):
            n = side.sum(0)
            mu = (s * side).sum(0) / np.maximum(n, 1)
            pooled = ((s - mu) ** 2 * side).sum() / max(1, int((n - 1).clip(min=0).sum()))
            sd = np.sqrt(pooled * (1 + 1 / np.maximum(n, 1))) + 1e-12
            terms.append((-0.5 * ((target - mu) / sd) ** 2 - np.log(sd), n > 0))
        (log_in, has_in), (log_out, has_out) = terms
        usable = has_in & has_out
        x, y = (log_in - log_out)[usable], y[usable]
        aucs.append(roc_auc_score(y, x))
        fpr, tpr, _ = roc_curve(y, x)
        tprs.append(float(tpr[np.searchsorted(fpr, 0.01, side="right") - 1]))
    return np.array(aucs), np.array(tprs)


def exposure(canary_scores: np.ndarray, reference_scores: np.ndarray) -> np.ndarray:
    """Exposure in bits (Carlini et al. 2019) of each canary among `reference_scores` drawn the same way:
    log2(R + 1) - log2(its rank), rank 1 = more likely than every reference. ~1 bit for a canary the model
    did not learn; log2(R + 1) at most."""
    ranks = 1 + (reference_scores[None, :] >= canary_scores[:, None]).sum(1)
    return np.log2(len(reference_scores) + 1) - np.log2(ranks)


def audit(run: RunConfig, num_merchants: int, config: AuditConfig, out: str | Path) -> dict:
    """Train the K models, score every user under each, and run the three attacks. Members and non-members are
    the real customers (canaries and references apart); figures pooled over merchants."""
    out = Path(out)
    shops = population(run, num_merchants, config)
    masks = membership(shops, config)
    folders, seconds = [], []
    for k in range(config.models):
        started = time.perf_counter()
        folders.append(train_model(run, shops, masks, k, out / f"model-{k}"))
        seconds.append(time.perf_counter() - started)
        log.info("model %d of %d trained in %.0fs", k + 1, config.models, seconds[-1])
    scores = score_models(run, shops, folders)
    real = {shop.name: ~(_prefixed(sorted_users(shop), CANARY) | _prefixed(sorted_users(shop), REFERENCE))
            for shop in shops}
    s = np.concatenate([scores[name][:, real[name]] for name in scores], axis=1)
    m = np.concatenate([masks[name][:, real[name]] for name in masks], axis=1)
    threshold = threshold_attack(s, m)
    lira_auc, lira_tpr = lira(s, m)
    first = shops[0]
    canaries, references = _prefixed(sorted_users(first), CANARY), _prefixed(sorted_users(first), REFERENCE)
    bits = np.stack([exposure(scores[first.name][k, canaries], scores[first.name][k, references])
                     for k in range(config.models)])
    np.savez(out / "scores.npz", **{f"scores-{n}": v for n, v in scores.items()},
             **{f"members-{n}": v for n, v in masks.items()})
    return {"models": config.models, "customers": int(m.shape[1]), "members-per-model": int(m[0].sum()),
            "threshold-auc": _summary(threshold), "lira-auc": _summary(lira_auc), "lira-tpr@1%fpr": _summary(lira_tpr),
            "canary-exposure-bits": {**_summary(bits.mean(1)), "max": float(bits.max()),
                                     "ceiling": float(np.log2(config.references + 1))},
            "seconds-per-model": float(np.mean(seconds))}


def _prefixed(users: np.ndarray, prefix: str) -> np.ndarray:
    return np.array([str(u).startswith(prefix) for u in users], dtype=bool)


def _summary(values: np.ndarray) -> dict:
    """Mean over target models with the spread across them (min, max)."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
