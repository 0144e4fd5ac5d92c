"""Would a DP release of item-to-item statistics help what merchants serve? Own adjacency against own + a DP sum.

Issue 18, item 2. Per merchant (Amazon Beauty over 8 merchants by default), on its own test customers, every item
is ranked by how often it came next to the customer's newest item (popularity breaks ties; history masked as in
fedprofile's evaluation, `shared_model/evaluation.py`):
- own: the merchant's own counts, no DP, never sent: what the on-site blend uses (client/onsite/adjacency.py);
- own + pooled: every merchant's exact counts added (pooling, which is not allowed: the ceiling of any release);
- own + DP at epsilon E: what a secure sum of the merchants' noised counts would release. Each customer gives at
  most L distinct item pairs and L distinct items (L2 sensitivity sqrt(L)); two Gaussian releases, item counts
  (to pick the K most popular items) then pair counts among those K, with one noise multiplier sigma from
  Opacus' RDP accountant for both at (E, delta), so noise std sigma * sqrt(L) per cell (the sum of the
  merchants' shares when all survive). The release gets the whole E here, an upper bound on its worth: beside
  DP-SGD it would get a share.
Released counts are blended as `w * log(1 + max(count, 0))`, kept only above `t` noise deviations; w and t are
chosen on each merchant's validation customers (the merchant's own data: post-processing). Repeat:
    python bench/dp_statistics.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from opacus.accountants.utils import get_noise_multiplier
from scipy.sparse import coo_matrix

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.onsite.adjacency import ItemAdjacency, training_histories  # noqa: E402
from shared_model.evaluation import held_out_ranks, ndcg_at, paired_ratio  # noqa: E402
from shared_model.merchant_data import simulated_merchants  # noqa: E402
from shared_model.run_config import RunConfig  # noqa: E402

BEAUTY = Path(__file__).resolve().parents[2] / "shared/data/amazon-beauty"
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
THRESHOLDS = (2.0, 3.0, 4.0, 5.0)  # in noise deviations


class Popularity(torch.nn.Module):
    """A stand-in model that scores every item by the merchant's popularity, scaled far below one count."""

    def __init__(self, counts: np.ndarray):
        super().__init__()
        self.register_buffer("descriptors", torch.zeros(len(counts), 1, dtype=torch.long))
        self.pop = torch.from_numpy(1e-4 * counts / max(counts.max(), 1)).float()
        self.config = SimpleNamespace(profile_dim=1)

    def encode(self, items, *rest):
        return torch.ones(items.shape[0], items.shape[1], 1)

    def item_vectors(self, items):
        return self.pop[items][:, None]


def capped_pairs(history: np.ndarray, cap: int) -> list[tuple[int, int]]:
    """A customer's newest `cap` distinct unordered pairs of consecutive different items."""
    out: dict[tuple[int, int], None] = {}
    h = history[history > 0]
    for a, b in zip(h[::-1][1:], h[::-1][:-1]):
        if a != b:
            out.setdefault((min(a, b), max(a, b)), None)
            if len(out) == cap:
                break
    return list(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(BEAUTY))
    parser.add_argument("--format", default="amazon")
    parser.add_argument("--merchants", type=int, default=8)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 8.0, 64.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--cap", type=int, default=8, help="L: pairs and items per customer")
    parser.add_argument("--top", type=int, default=2000, help="K: items whose pairs are released")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/dp-statistics")
    args = parser.parse_args()
    started = time.perf_counter()
    run = RunConfig.from_flat({"data": args.data, "data-format": args.format, "partitioning": "iid",
                               "seed": str(args.seed)})
    shops = [m.sequences for m in simulated_merchants(run, args.merchants)]
    ids = sorted({str(i) for data in shops for i in data.catalogue.item_ids[1:]})
    G = len(ids) + 1  # the merchants' items together, 0 = none
    local_to_global = []  # per merchant: its catalogue index -> the global index
    lookup = {item: g + 1 for g, item in enumerate(ids)}
    for data in shops:
        local_to_global.append(np.array([0] + [lookup[str(i)] for i in data.catalogue.item_ids[1:]], dtype=np.int64))

    # every merchant's customers: exact counts (pooled ceiling) and capped contributions (what DP releases)
    exact = coo_matrix((G, G), dtype=np.float32).tocsr()
    capped_rows, capped_cols, item_counts = [], [], np.zeros(G)
    owns = [ItemAdjacency.from_training(data.train, data.catalogue.num_items) for data in shops]
    for data, l2g, own_counts in zip(shops, local_to_global, owns):
        own = own_counts.counts.tocoo()
        exact = exact + coo_matrix((own.data, (l2g[own.row], l2g[own.col])), shape=(G, G)).tocsr()
        for h in training_histories(data.train):
            g = l2g[h]
            for a, b in capped_pairs(g, args.cap):
                capped_rows.append(a)
                capped_cols.append(b)
            distinct = list(dict.fromkeys(g[g > 0][::-1]))[: args.cap]
            item_counts[distinct] += 1
    capped = coo_matrix((np.ones(len(capped_rows), np.float32), (capped_rows, capped_cols)), shape=(G, G)).tocsr()
    capped = (capped + capped.T).tocsr()  # both orders, so the upper triangle of any re-ordered block has each pair
    rng = np.random.default_rng(args.seed)

    releases = {"pooled, no DP": ("exact", None)}
    sigmas = {}
    for eps in args.epsilons:
        sigma = get_noise_multiplier(target_epsilon=eps, target_delta=args.delta, sample_rate=1.0, steps=2,
                                     accountant="rdp")
        sigmas[eps] = sigma
        std = sigma * np.sqrt(args.cap)
        top = np.argsort(-(item_counts + rng.normal(0, std, G))[1:])[: args.top] + 1  # DP popularity
        block = capped[top][:, top].toarray()
        noisy = np.triu(block + rng.normal(0, std, block.shape), 1)
        releases[f"DP epsilon {eps:g}"] = ("dp", (top, noisy, std))

    def global_counts(kind, payload, threshold):
        if kind == "exact":
            return exact
        top, noisy, std = payload
        kept = np.where(noisy > threshold * std, noisy, 0.0)
        m = coo_matrix(kept)
        m = coo_matrix((m.data, (top[m.row], top[m.col])), shape=(G, G)).tocsr()
        return (m + m.T).tocsr()

    cpu = torch.device("cpu")
    results = {name: [] for name in ["own", *releases]}
    chosen = {name: [] for name in releases}
    for data, l2g, own in zip(shops, local_to_global, owns):
        pop = Popularity(np.asarray(own.counts.sum(axis=1)).ravel())
        ndcg = lambda split, adjacency, w=1.0: ndcg_at(held_out_ranks(pop, split, device=cpu, boost=adjacency.booster(w)), 10)  # noqa: E731
        results["own"].append(ndcg(data.test, own).numpy())
        for name, (kind, payload) in releases.items():
            best = None
            for threshold in (THRESHOLDS if kind == "dp" else (0.0,)):
                counts = global_counts(kind, payload, threshold)[l2g][:, l2g]  # into the merchant's catalogue
                released = ItemAdjacency(counts.tocsr())
                for w in WEIGHTS:
                    blend = ItemAdjacency((own.counts.log1p() + w * released.counts.maximum(0).log1p()).expm1())
                    valid = float(ndcg(data.valid, blend).mean())
                    if best is None or valid > best[0]:
                        best = (valid, threshold, w, blend)
            results[name].append(ndcg(data.test, best[3]).numpy())
            chosen[name].append({"threshold": best[1], "weight": best[2]})

    own_all = np.concatenate(results["own"])
    out = {"own": float(own_all.mean()), "arms": {}}
    print(f"{len(shops)} merchants, {len(own_all)} test customers; L = {args.cap}, K = {args.top}")
    print(f"{'own (no DP, on site)':>24}: NDCG@10 {own_all.mean():.4f}")
    for name in releases:
        scores = np.concatenate(results[name])
        ratio = paired_ratio(scores, own_all, seed=args.seed)
        sigma = sigmas.get(float(name.split()[-1])) if name.startswith("DP") else None
        out["arms"][name] = {"ndcg@10": float(scores.mean()), "vs-own": ratio, "sigma": sigma, "chosen": chosen[name]}
        print(f"{'own + ' + name:>24}: NDCG@10 {scores.mean():.4f}  / own {ratio['ratio']:.3f} "
              f"({ratio['low']:.3f}-{ratio['high']:.3f})" + (f"  sigma {sigma:.2f}" if sigma else "")
              + f"  weights {[c['weight'] for c in chosen[name]]}")
    out.update(command="python " + " ".join(sys.argv), seconds=round(time.perf_counter() - started, 1),
               machine={"platform": platform.platform(), "threads": torch.get_num_threads()})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(out, indent=2, default=float))
    print(f"{out['seconds'] / 60:.1f} min; repeat: {out['command']}")


if __name__ == "__main__":
    main()
