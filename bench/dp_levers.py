"""DP levers on one merchant's share of Amazon Beauty: what keeps DP-SGD above chance at epsilon 8.

One of the 8 IID merchants of `bench/federated_quality.py` (2,796 customers) trains alone for the federated budget
(20 epochs), with DP-SGD at epsilon 8 (delta 1e-5) under each variant, and without DP for reference; each is tested
on that merchant's test users over the full catalogue. A merchant alone is the federation's building block: its
noisy steps are what FedAvg averages. Repeat:
    python bench/dp_levers.py                                  # every variant (about 3 minutes each on 2 cores)
    python bench/dp_levers.py --only adam sgd-frozen-ids
    python bench/dp_levers.py --only adam-fixed-items --lr 1e-2 --batch-size 1024   # DP settings swept
    python bench/dp_levers.py --only adam adam-fixed-items --grad-norms 64          # what clipping at 1.0 meets
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_model.batching import trim_padding  # noqa: E402
from shared_model.device import pick_device  # noqa: E402
from shared_model.evaluation import evaluate  # noqa: E402
from shared_model.loss import ProfileLoss  # noqa: E402
from shared_model.model import ProfileTransformer  # noqa: E402
from shared_model.privacy import PrivacyConfig  # noqa: E402
from shared_model.run_config import RunConfig  # noqa: E402
from shared_model.training import train  # noqa: E402
from simulations.datasets import simulated_merchants  # noqa: E402

BEAUTY = Path(__file__).resolve().parents[2] / "shared/data/amazon-beauty"
# name -> (DP?, train settings, model settings); the DP ones share 4c's batch 256, dropout 0.2
VARIANTS = {
    "no-dp": (False, dict(batch_size=16, lr=1e-3), dict(dropout=0.3)),
    "adam": (True, dict(lr=3e-3), {}),
    "adam-frozen-ids": (True, dict(lr=3e-3), dict(frozen_item_ids=True)),
    "sgd": (True, dict(optimizer="sgd", lr=0.1), {}),
    "sgd-frozen-ids": (True, dict(optimizer="sgd", lr=0.1), dict(frozen_item_ids=True)),
    "no-dp-frozen-ids": (False, dict(batch_size=16, lr=1e-3), dict(dropout=0.3, frozen_item_ids=True)),
    "no-dp-fixed-items": (False, dict(batch_size=16, lr=1e-3), dict(dropout=0.3, fixed_item_vectors=True)),
    "adam-fixed-items": (True, dict(lr=3e-3), dict(fixed_item_vectors=True)),
    "sgd-fixed-items": (True, dict(optimizer="sgd", lr=0.1), dict(fixed_item_vectors=True)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(BEAUTY))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--merchant", type=int, default=0, help="which of the 8 IID merchants")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--grad-norms", type=int, default=0, metavar="N",
                        help="instead of training: each variant's per-customer gradient norms at its start, over N customers")
    parser.add_argument("--lr", type=float, default=None, help="override the DP variants' learning rate")
    parser.add_argument("--batch-size", type=int, default=None, help="override the DP variants' expected batch")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = RunConfig(data=args.data, data_format="amazon", partitioning="iid", n_layers=1, n_heads=1, dropout=0.2,
                     negatives=1024, batch_size=256, num_rounds=args.epochs, local_epochs=1,
                     privacy="local")  # one merchant training its own update
    data = simulated_merchants(base, 8)[args.merchant].sequences
    device = pick_device()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, device {device}, {torch.get_num_threads()} threads; "
          f"merchant {args.merchant}: {len(data.train)} customers, {args.epochs} epochs", flush=True)
    for name in args.only or VARIANTS:
        dp, train_changes, model_changes = VARIANTS[name]
        run = base.replace(**model_changes)
        overrides = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size)) if dp and v is not None}
        config = dataclasses.replace(run.train_config(epochs=args.epochs), **{**train_changes, **overrides})
        privacy = PrivacyConfig(target_epsilon=8.0, target_delta=1e-5, planned_epochs=args.epochs) if dp else None
        torch.manual_seed(run.seed)
        model = ProfileTransformer(run.model_config(), data.catalogue.descriptors)
        if args.grad_norms:
            norms = per_customer_grad_norms(model, data, config, args.grad_norms)
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"{name:16s} {trained:,} trained weights; per-customer gradient norm over {len(norms)} customers: "
                  f"10th percentile {norms.quantile(0.1):.2f}, median {norms.median():.2f}, 90th {norms.quantile(0.9):.2f} "
                  f"(DP clips at {base.max_grad_norm})", flush=True)
            continue
        started = time.perf_counter()
        result = train(model, data, config, privacy=privacy, device=device, validate=False)
        seconds = time.perf_counter() - started
        metrics = evaluate(model, data.test, device=device, ks=(10,))
        eps = f"epsilon {result.epsilon:.3f}" if dp else "no DP"
        print(f"{name:16s} test NDCG@10 {metrics['ndcg@10']:.4f} HR@10 {metrics['hr@10']:.4f} | loss "
              f"{result.history[0]['loss']:.3f} -> {result.history[-1]['loss']:.3f} | {eps} | {seconds:.0f} s | "
              f"{config.optimizer} lr {config.lr:g} batch {config.batch_size}"
              + (" frozen ids" if run.frozen_item_ids else "") + (" fixed item vectors" if run.fixed_item_vectors else ""),
              flush=True)
    print("repeat: python " + " ".join(sys.argv))


def per_customer_grad_norms(model, data, config, customers: int) -> torch.Tensor:
    """The norm of each of the first `customers` customers' own loss gradient (what DP-SGD clips), at the start."""
    criterion = ProfileLoss(category_weight=config.category_weight, purchase_weight=config.purchase_weight)
    tensors = data.train.tensors()
    categories = torch.unique(data.catalogue.descriptors[1:, 2])
    trained = [p for p in model.parameters() if p.requires_grad]
    norms = []
    for user in range(min(customers, len(data.train))):
        *inputs, items, cats, purchase = trim_padding([t[user:user + 1] for t in tensors], tensors[-3][user:user + 1])
        negatives = torch.randint(1, data.catalogue.num_items + 1, (config.negatives,))
        model.zero_grad()
        outputs = model(*inputs, items, negatives, cats, categories, train_negatives=False)
        criterion(outputs, (items, cats, purchase, negatives, categories)).backward()
        norms.append(torch.sqrt(sum((p.grad ** 2).sum() for p in trained if p.grad is not None)))
    return torch.stack(norms)


if __name__ == "__main__":
    main()
