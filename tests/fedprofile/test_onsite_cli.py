"""The profile commands for people: JSON out, a segment table and plot, clear errors."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from client.onsite.fitter import saved_adjacency_weight
from fedprofile.cli import app
from shared_model.checkpoint import save_model
from shared_model.features import build_sequences
from shared_model.model import ProfileTransformer

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_profile_and_recommend_print_json(onsite):
    common = ["--model", onsite.models / "v0001", "--data", onsite.data, "--format", "synthetic"]
    user = onsite.log.events["user_id"].iloc[0]
    result = _run("profile", *common, "--user", user)
    assert result.exit_code == 0, result.output
    profile = json.loads(result.stdout)
    assert profile["user_id"] == user and profile["model_version"] == "v0001@test-run"
    assert {"interests", "price_level", "active_hours", "purchase_propensity", "rfm", "value_segment", "risk"} <= set(profile)
    assert "vector" not in profile
    result = _run("recommend", *common, "--user", user, "-k", 7, "--in-stock-only")
    assert result.exit_code == 0, result.output
    recs = json.loads(result.stdout)
    assert len(recs["items"]) == 7 and all("reasons" in i for i in recs["items"])
    stock = onsite.log.items.set_index("item_id")["in_stock"]
    assert all(stock[i["item_id"]] for i in recs["items"])


def _train_file(onsite, path, metadata: dict):
    """A `fedprofile train`-style model file of the fixture's shop with this metadata (weights random)."""
    sequences = build_sequences(onsite.log.events, onsite.log.users, onsite.config.hash_spec,
                                max_len=onsite.config.max_len)
    torch.manual_seed(0)
    return save_model(path, ProfileTransformer(onsite.config, sequences.catalogue.descriptors), sequences.catalogue,
                      metadata=metadata)


def test_recommend_serves_the_adjacency_weight_saved_with_the_model(onsite, tmp_path):
    model = _train_file(onsite, tmp_path / "model.pt", {"adjacency-weight": 4.0})
    user = onsite.log.events["user_id"].value_counts().index[0]

    def ranked(path, *extra):
        result = _run("recommend", "--model", path, "--data", onsite.data, "--format", "synthetic", "--user", user,
                      "-k", 20, *extra)
        assert result.exit_code == 0, result.output
        return [(item["item_id"], round(item["score"], 5)) for item in json.loads(result.stdout)["items"]]

    saved = ranked(model)
    assert saved == ranked(model, "--adjacency-weight", 4) and saved != ranked(model, "--adjacency-weight", 0)
    assert saved_adjacency_weight(onsite.models / "v0001") == 0.0  # a published global model: none
    bad = _train_file(onsite, tmp_path / "bad.pt", {"adjacency-weight": 1e6})
    result = _run("recommend", "--model", bad, "--data", onsite.data, "--format", "synthetic", "--user", user)
    assert result.exit_code != 0 and "adjacency weight" in result.output and "Traceback" not in result.output


def test_segments_table_and_plot(onsite, tmp_path):
    plot = tmp_path / "segments.png"
    result = _run("segments", "--model", onsite.models / "v0001", "--data", onsite.data, "--format", "synthetic",
                  "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "seg" in result.stdout and "name" in result.stdout
    assert plot.stat().st_size > 10_000


def test_audience_and_risk(onsite):
    common = ["--model", onsite.models / "v0001", "--data", onsite.data, "--format", "synthetic"]
    result = _run("audience", *common, "--category", "c0", "-n", 5)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["users"]) == 5
    result = _run("risk", *common, "--top", 3)
    assert result.exit_code == 0, result.output
    flagged = json.loads(result.stdout)["users"]
    assert len(flagged) == 3 and all(onsite.truth[u["user_id"]]["bot"] for u in flagged)


def test_unknown_user_and_missing_model_are_clear_errors(onsite, tmp_path):
    common = ["--data", onsite.data, "--format", "synthetic"]
    result = _run("profile", "--model", onsite.models / "v0001", *common, "--user", "nobody")
    assert result.exit_code == 2 and "nobody" in result.output
    result = _run("profile", "--model", tmp_path / "missing", *common, "--user", "x")
    assert result.exit_code == 2 and "missing" in result.output
