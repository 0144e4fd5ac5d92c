"""End to end: `fedprofile simulate` on Flower's simulation engine (Ray), two merchants, two rounds, DP on."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from client.onsite.adjacency import WEIGHTS
from shared_model.checkpoint import load_global_model, model_for_catalogue, resolve_model_folder
from shared_model.evaluation import paired_ratio
from shared_model.merchant_data import simulated_merchants
from shared_model.run_config import RunConfig


@pytest.mark.ray
def test_simulate_two_merchants_two_rounds_with_dp(tmp_path):
    out = tmp_path / "sim"
    cmd = [sys.executable, "-m", "fedprofile", "simulate", "--merchants", "2", "--rounds", "2", "--local-epochs", "1", "--dp",
           "--privacy", "local",
           "--epsilon", "8", "--centralized-baseline", "--out", str(out), "--cpus-per-merchant", "1",
           "--set", "synthetic-users=80", "--set", "max-len=20", "--set", "d-model=16", "--set", "profile-dim=16",
           "--set", "item-buckets=1024", "--set", "n-layers=1", "--set", "batch-size=32", "--set", "negatives=32"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "round 1: 2 merchants trained" in done.stdout and "round 2: 2 merchants trained" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["round"] for row in metrics["history"]] == [1, 2]
    assert metrics["privacy"] == "local"
    assert 0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1
    assert set(metrics["epsilon"]) == {"merchant-0", "merchant-1"}
    assert all(0 < eps <= 8.0 * (1 + 1e-3) for eps in metrics["epsilon"].values())
    assert metrics["centralized"]["epochs"] == 2 and 0 <= metrics["centralized"]["ndcg@10"] <= 1
    assert (out / "report.md").exists() and (out / "metrics.png").exists() and (out / "epsilon.png").exists()

    # the user-by-user comparison scores the same users with the published model and the baseline: its means are
    # the two reported figures (the federation's comes from the merchants' evaluate replies)
    paired = metrics["centralized"]["paired"]
    users = np.load(out / "paired-ndcg.npz")
    assert len(users["federated"]) == len(users["centralized"]) == paired["users"] > 0
    assert users["federated"].mean() == pytest.approx(metrics["ndcg@10"], abs=1e-9)
    assert users["centralized"].mean() == pytest.approx(metrics["centralized"]["ndcg@10"], abs=1e-9)
    # the reported ratio and interval are paired_ratio's over the kept per-user figures (how the interval behaves
    # with many or few hits is tested in tests/shared_model/test_evaluation.py)
    if users["centralized"].sum() > 0:  # a tiny DP model can miss every test user (its noise is secret, unseeded)
        assert paired["ratio"] == pytest.approx(metrics["ndcg@10"] / metrics["centralized"]["ndcg@10"])
        expected = paired_ratio(users["federated"], users["centralized"], seed=0)
        assert {k: paired[k] for k in ("ratio", "low", "high", "level")} == pytest.approx(
            {k: expected[k] for k in ("ratio", "low", "high", "level")}, nan_ok=True)
    else:  # no ratio to report, and it says why
        assert paired["ratio"] is None and "no test user" in paired["why"]

    # what each merchant would serve: the shared model's figure is the published model's on the same users
    served = metrics["served"]
    assert set(served["merchants"]) == {"merchant-0", "merchant-1"}
    assert sum(m["users"] for m in served["merchants"].values()) == paired["users"]
    assert served["shared"]["ndcg@10"] == pytest.approx(metrics["ndcg@10"], abs=1e-9)
    for kind in ("alone", "shared", "onsite"):
        assert 0 <= served[kind]["ndcg@10"] <= served[kind]["hr@10"] <= 1
    assert set(served["ratios"]) == {"onsite/alone", "onsite/shared", "shared/alone", "onsite/no-dp-onsite",
                                     "no-dp-onsite/alone"}
    # beside them, the same federation without DP (its own run folder, a model of its own)
    assert set(served["no-dp"]) == {"shared", "onsite"}
    _, _, plain_manifest = load_global_model(resolve_model_folder(out / "no-dp"))
    assert RunConfig.from_flat(plain_manifest["run_config"]).dp is False
    assert not any(plain_manifest["epsilon"].values())
    for fit in (m["onsite-fit"] for m in served["merchants"].values()):  # the best of four on its validation users
        assert fit["chosen"] in ("global", "fine-tuned", "alone", "ensemble")
        assert fit["valid-ndcg@10"] == max(fit["global-valid-ndcg@10"], fit["fine-tuned-valid-ndcg@10"],
                                           fit["alone-valid-ndcg@10"], fit["ensemble-valid-ndcg@10"])
        assert fit["adjacency-weight"] in WEIGHTS  # each candidate blended at its validation users' best weight
    assert all(m["alone-fit"]["adjacency-weight"] in WEIGHTS for m in served["merchants"].values())
    assert "What each merchant would serve" in (out / "report.md").read_text()
    assert "served NDCG@10" in done.stdout

    # the published global model loads, and runs over a merchant's own catalogue
    config, shared, manifest = load_global_model(metrics["model"])
    assert manifest["version"] == 2 and manifest["rounds_planned"] == 2
    assert set(manifest["epsilon"]) == {"merchant-0", "merchant-1"}
    run = RunConfig.from_flat(manifest["run_config"])
    merchant = simulated_merchants(run, 2)[0]
    model = model_for_catalogue(config, shared, merchant.sequences.catalogue)
    assert model.item_vectors(torch.arange(3)).shape == (3, 16)


@pytest.mark.ray
def test_simulate_distributed_dp_against_its_central_twin(tmp_path):
    out = tmp_path / "sim"
    cmd = [sys.executable, "-m", "fedprofile", "simulate", "--merchants", "3", "--rounds", "3", "--privacy",
           "distributed", "--centralized-baseline", "--no-served", "--out", str(out), "--cpus-per-merchant", "1",
           "--set", "sample-rate=0.1", "--set", "synthetic-users=100", "--set", "max-len=20", "--set", "d-model=16",
           "--set", "profile-dim=16", "--set", "item-buckets=1024", "--set", "n-layers=1", "--set", "negatives=32"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "distributed DP" in done.stdout and "round 3: 3 merchants trained" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["privacy"] == "distributed"
    assert "the coordinator sees only the secure sum" in (out / "report.md").read_text()  # the threat model, stated
    assert all(row["aggregated"] and row["secure-sum-seconds"] > 0 for row in metrics["history"])
    central = metrics["centralized"]
    # the same DP-SGD: batch = rate x the union's customers, one step a round, the same epsilon and delta
    assert central["batch_size"] == 30 and central["epochs"] == pytest.approx(0.3)
    assert central["delta"] == 1e-5
    for epsilon in metrics["epsilon"].values():
        assert epsilon == pytest.approx(central["epsilon"], rel=1e-6)
