"""Centralized Beauty with the federated benchmark's settings: one Adam for all epochs vs a fresh Adam every epoch.

A federated round starts each merchant's Adam afresh; this measures what that alone does to a centralized model
with the same data, model, batch and epoch budget as the centralized baseline of `bench/federated_quality.py`.
Repeat:
    python bench/adam_restarts.py                 # both, one after the other (about 4 + 4 minutes on 2 cores)
    python bench/adam_restarts.py --only restarts
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_model.device import pick_device  # noqa: E402
from shared_model.evaluation import evaluate  # noqa: E402
from shared_model.model import ProfileTransformer  # noqa: E402
from shared_model.run_config import RunConfig  # noqa: E402
from shared_model.training import train  # noqa: E402
from simulations.datasets import union  # noqa: E402

BEAUTY = Path(__file__).resolve().parents[2] / "shared/data/amazon-beauty"


def run_once(run: RunConfig, data, epochs: int, restarts: bool, device: torch.device) -> tuple[dict, float, list]:
    torch.manual_seed(run.seed)
    model = ProfileTransformer(run.model_config(), data.catalogue.descriptors)
    started, curve = time.perf_counter(), []
    if restarts:  # one epoch per call: a new optimizer (and a new seed, as each federated round has) every epoch
        for epoch in range(1, epochs + 1):
            train(model, data, run.train_config(epochs=1, server_round=epoch), device=device, validate=False)
            if epoch % 5 == 0:
                curve.append((epoch, evaluate(model, data.test, device=device, ks=(10,))["ndcg@10"]))
    else:
        train(model, data, run.train_config(epochs=epochs), device=device, validate=False)
    return evaluate(model, data.test, device=device, ks=(10,)), time.perf_counter() - started, curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(BEAUTY))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--only", choices=("one-adam", "restarts"))
    args = parser.parse_args()
    # the centralized baseline of bench/federated_quality.py (20 x 1 run, one block)
    run = RunConfig(data=args.data, data_format="amazon", partitioning="iid", dp=False, n_layers=1, n_heads=1,
                    dropout=0.3, negatives=1024, lr=1e-3, batch_size=128, num_rounds=args.epochs, local_epochs=1)
    data = union(run, 8)
    device = pick_device()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, device {device}; {len(data.train)} users, "
          f"{args.epochs} epochs, batch {run.batch_size}, lr {run.lr}")
    for restarts in (False, True):
        name = "restarts" if restarts else "one-adam"
        if args.only and args.only != name:
            continue
        metrics, seconds, curve = run_once(run, data, args.epochs, restarts, device)
        trail = "; test NDCG@10 by epoch " + ", ".join(f"{e}: {v:.4f}" for e, v in curve) if curve else ""
        print(f"{name:9s} test NDCG@10 {metrics['ndcg@10']:.4f} HR@10 {metrics['hr@10']:.4f} MRR {metrics['mrr']:.4f} "
              f"({seconds:.0f} s){trail}", flush=True)
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
