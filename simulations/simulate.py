"""One federated simulation on Flower's simulation engine, an optional centralized baseline, and its outputs."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation as flower_run_simulation

from client.client_app import app as client_app
from server.coordinator import run_federation
from shared_model.checkpoint import load_global_model, model_for_catalogue, resolve_model_folder
from shared_model.device import pick_device
from shared_model.evaluation import held_out_ranks, ndcg_at, paired_ratio
from shared_model.merchant_data import simulated_merchants
from shared_model.merchant_round import local_evaluate
from shared_model.model import ProfileTransformer
from shared_model.privacy import PrivacyConfig
from shared_model.run_config import RunConfig
from shared_model.training import train
from simulations.datasets import union
from simulations.report import write_report
from simulations.served import served_figures

log = logging.getLogger("fedprofile.simulation")


class _HideRunSimulationDeprecation(logging.Filter):
    """fedprofile calls flwr.simulation.run_simulation on purpose (flwr is pinned); say it once in the docs,
    not twice on every run."""
    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


def backend_config(num_merchants: int, *, cpus_per_merchant: int | None = None, gpu_fraction: float | None = None) -> dict:
    """Ray resources per simulated merchant: CPU cores, and a share of the GPU when CUDA is present."""
    cpus = cpus_per_merchant or max(1, min(os.cpu_count() or 1, 2))
    resources = {"num_cpus": cpus, "num_gpus": 0.0}
    if torch.cuda.is_available():
        resources["num_gpus"] = gpu_fraction if gpu_fraction else max(0.1, 1.0 / min(num_merchants, 4))
    return {"client_resources": resources, "init_args": {"logging_level": "ERROR", "log_to_driver": True}}


def run_simulation(run: RunConfig, num_merchants: int, *, on_round=None, cpus_per_merchant: int | None = None,
                   gpu_fraction: float | None = None):
    """Run the federation with `num_merchants` simulated SuperNodes; returns the coordinator's FederationResult."""
    # Ray's future default (do not touch CUDA_VISIBLE_DEVICES for actors without a GPU share); silences its warning
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flower_log = logging.getLogger("flwr")
    if not any(isinstance(f, _HideRunSimulationDeprecation) for f in flower_log.filters):
        flower_log.addFilter(_HideRunSimulationDeprecation())
    outcome = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:  # the same round loop as server.server_app, with this run's settings
        outcome["result"] = run_federation(grid, run, on_round=on_round)

    flower_run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_merchants,
                          backend_config=backend_config(num_merchants, cpus_per_merchant=cpus_per_merchant,
                                                        gpu_fraction=gpu_fraction))
    if "result" not in outcome:
        raise RuntimeError("the simulation ended without a result; see the Flower log above")
    return outcome["result"]


def train_centralized(run: RunConfig, num_merchants: int, *, batch_size: int | None = None, on_epoch=None):
    """The centralized model: trained on the union of the merchants' customers with the federation's epoch budget
    (rounds x local epochs) and the same privacy setting; `batch_size` (default: the merchants') lets it keep its
    own best batch. `on_epoch(model)` is called at each epoch's end. Returns (model, TrainResult, seconds)."""
    data = union(run, num_merchants)
    central = run.replace(local_table=False, batch_size=batch_size or run.batch_size)
    epochs = run.num_rounds * run.local_epochs
    privacy = run.privacy_config(num_users=len(data.train))  # planned over the same rounds x local epochs
    if run.distributed_dp:  # the very DP-SGD the federation runs: Poisson rate, steps, delta
        central, epochs, privacy = central_dp_twin(run, len(data.train))
    torch.manual_seed(run.seed)
    model = ProfileTransformer(central.model_config(), data.catalogue.descriptors)
    started = time.perf_counter()
    config = central.train_config(epochs=epochs, num_items=data.catalogue.num_items,
                                  positions_per_customer=data.train.positions_per_user())
    result = train(model, data, config, privacy=privacy,
                   device=pick_device(), validate=False,
                   on_epoch=(lambda row: on_epoch(model)) if on_epoch is not None else None)
    return model, result, time.perf_counter() - started


def central_dp_twin(run: RunConfig, num_users: int) -> tuple[RunConfig, float, PrivacyConfig]:
    """One central DP-SGD model with the distributed federation's epsilon, delta, sample rate and steps: batch
    size rate x users (Opacus samples at 1 / batches per epoch), one step per federated round, Adam at the
    coordinator's `server-lr`."""
    batch = max(1, round(run.sample_rate * num_users))
    batches = math.ceil(num_users / batch)
    epochs = run.num_rounds / batches
    privacy = PrivacyConfig(target_epsilon=run.target_epsilon, target_delta=run.target_delta or 1e-5,
                            max_grad_norm=run.max_grad_norm, planned_epochs=epochs)
    return run.replace(local_table=False, batch_size=batch, lr=run.server_lr), epochs, privacy


def centralized_baseline(run: RunConfig, num_merchants: int, *, batch_size: int | None = None,
                         federated_model: str | Path | None = None) -> dict:
    """`train_centralized`, evaluated like the federation: on each merchant's own test users and catalogue,
    weighted by test users. With `federated_model` (the federation's published model), `paired` compares the two
    user by user (see `paired_comparison`)."""
    model, result, seconds = train_centralized(run, num_merchants, batch_size=batch_size)
    device = pick_device()
    per_merchant, total = {}, 0
    for merchant in simulated_merchants(run, num_merchants):
        model.set_catalogue(merchant.sequences.catalogue.descriptors)
        per_merchant[merchant.name] = local_evaluate(model, merchant.sequences, device=device)
        total += per_merchant[merchant.name]["users"]
    metrics = {key: sum(m[key] * m["users"] for m in per_merchant.values()) / max(total, 1)
               for key in ("hr@10", "ndcg@10", "mrr", "valid-hr@10", "valid-ndcg@10")}
    twin = central_dp_twin(run, len(union(run, num_merchants).train)) if run.distributed_dp else None
    out = {**metrics, "epochs": twin[1] if twin else run.num_rounds * run.local_epochs,
           "batch_size": twin[0].batch_size if twin else batch_size or run.batch_size,
           "epsilon": result.epsilon, "delta": result.delta, "train_seconds": seconds,
           "users": len(union(run, num_merchants).train), "merchant_metrics": per_merchant}
    if federated_model is not None and not run.local_table:  # with local tables the federated model is per merchant
        out["paired"] = paired_comparison(run, num_merchants, federated_model, model)
    return out


PAIRED_FILE = "paired-ndcg.npz"  # per-user test NDCG@10 of the federated and the centralized model


def paired_comparison(run: RunConfig, num_merchants: int, federated_model: str | Path, centralized) -> dict:
    """Federated / centralized test NDCG@10 over the same users (every merchant's test users on its own
    catalogue), with a paired bootstrap interval over users; the per-user figures are kept in the run folder
    (PAIRED_FILE) so that seeds can be pooled. It needs every merchant's customers in one place, which only a
    simulation has: nothing here is part of a federated reply."""
    federated, manifest = published_per_user_ndcg(run, num_merchants, federated_model)
    central = per_user_ndcg(centralized, simulated_merchants(run, num_merchants))
    np.savez_compressed(run.run_path / PAIRED_FILE, federated=federated, centralized=central)
    summary = {"metric": "ndcg@10", "federated_version": manifest.get("version"), "users": len(central)}
    if not central.sum() > 0:
        return {**summary, "ratio": None, "why": "the centralized model ranks no test user's item in its top 10"}
    return {**summary, **paired_ratio(federated, central, seed=run.seed)}


def per_user_ndcg(model, merchants) -> np.ndarray:
    """Test NDCG@10 of every merchant's test users, each scored on its own merchant's catalogue, merchant by merchant."""
    device = pick_device()
    model.to(device)
    scores = []
    for merchant in merchants:
        model.set_catalogue(merchant.sequences.catalogue.descriptors)
        scores.append(ndcg_at(held_out_ranks(model, merchant.sequences.test, device=device), 10).numpy())
    return np.concatenate(scores)


def published_per_user_ndcg(run: RunConfig, num_merchants: int, model_folder: str | Path) -> tuple[np.ndarray, dict]:
    """`per_user_ndcg` of a published global model (a run folder, models folder or one version), and its manifest."""
    config, shared, manifest = load_global_model(resolve_model_folder(model_folder))
    merchants = simulated_merchants(run, num_merchants)
    return per_user_ndcg(model_for_catalogue(config, shared, merchants[0].sequences.catalogue), merchants), manifest


def simulate(run: RunConfig, num_merchants: int, out: str | Path, *, centralized: bool = False, on_round=None,
             cpus_per_merchant: int | None = None, gpu_fraction: float | None = None,
             centralized_batch_size: int | None = None, served: bool = False, served_without_dp: bool = False) -> dict:
    """Run a simulation into `out`: metrics.json (history, final HR@10/NDCG@10, epsilon per merchant, the
    centralized baseline and what each merchant would serve (`served`: alone, shared, on-site; with
    `served_without_dp`, the same federation trained without DP in `out/no-dp` beside them) when asked) and
    report.md with its plots."""
    out = Path(out)
    if not run.resume:  # a fresh simulation replaces the folder's earlier one (it is scratch output)
        for name in ("checkpoints", "models", "merchants", "archive"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    run = run.replace(run_dir=str(out))
    started = time.perf_counter()
    result = run_simulation(run, num_merchants, on_round=on_round, cpus_per_merchant=cpus_per_merchant,
                            gpu_fraction=gpu_fraction)
    metrics = {
        "merchants": num_merchants,
        "rounds": result.rounds_completed,
        "hr@10": result.final.get("hr@10"),
        "ndcg@10": result.final.get("ndcg@10"),
        "mrr": result.final.get("mrr"),
        "valid": {k[len("valid-"):]: v for k, v in result.final.items() if k.startswith("valid-")},
        "epsilon": result.epsilon,
        "delta": result.delta,
        "dp": run.dp,
        "privacy": run.privacy if run.dp else "none",
        "target_epsilon": run.target_epsilon if run.dp else None,
        "seconds": time.perf_counter() - started,
        "model": result.model_dir,
        "run_id": result.run_id,
        "run_config": run.to_flat(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "history": result.history,
    }
    if centralized:
        metrics["centralized"] = centralized_baseline(run, num_merchants, batch_size=centralized_batch_size,
                                                      federated_model=result.model_dir)
    if served:
        plain = None
        if served_without_dp and run.dp:
            plain_run = run.replace(dp=False, run_dir=str(out / "no-dp"), resume=False)
            shutil.rmtree(out / "no-dp", ignore_errors=True)
            plain = run_simulation(plain_run, num_merchants, cpus_per_merchant=cpus_per_merchant,
                                   gpu_fraction=gpu_fraction).model_dir
        metrics["served"] = served_figures(run, num_merchants, result.model_dir, without_dp=plain)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    write_report(metrics, out)
    return metrics
