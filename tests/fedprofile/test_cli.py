"""The `fedprofile` command line: validation output, training artefacts, help everywhere."""

from __future__ import annotations

import json

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from client.onsite.adjacency import WEIGHTS as ADJACENCY_WEIGHTS
from client.onsite.fitter import saved_adjacency_weight
from fedprofile.cli import app

runner = CliRunner()

BROKEN = (
    "user_id,item_id,category_id,behavior,timestamp\n"
    "1,10,5,view,1511544070\n"
    "1,10,5,view,1511544070\n"
    "2,11,5,wink,1511544071\n"
)


def test_data_validate_json_counts_add_up(tmp_path):
    source = tmp_path / "log.csv"
    source.write_text(BROKEN)
    quarantine = tmp_path / "q.csv"
    result = runner.invoke(app, ["data", "validate", str(source), "--format", "events", "--json",
                                 "--quarantine", str(quarantine)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    for key in ("rows_read", "rows_accepted", "duplicates", "rows_quarantined", "quarantine_path", "users", "items"):
        assert key in summary
    assert (summary["rows_read"], summary["rows_accepted"], summary["duplicates"], summary["rows_quarantined"]) == (3, 1, 1, 1)
    assert summary["quarantine_path"] == str(quarantine)
    assert "unknown behaviour: wink" in quarantine.read_text()


def test_unreadable_file_fails_with_its_name(tmp_path):
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "nope.csv"), "--format", "taobao"])
    assert result.exit_code == 2
    assert "nope.csv" in result.output and "not found" in result.output


@pytest.mark.parametrize("dp", [False, True])
def test_train_writes_metrics_and_model(tmp_path, dp):
    data = tmp_path / "shops"
    assert runner.invoke(app, ["data", "synthesize", "--out", str(data), "--merchants", "1", "--users", "80",
                               "--items", "300"]).exit_code == 0
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--format", "synthetic", "--epochs", "2", "--out", str(out),
            "--d-model", "16", "--profile-dim", "16", "--layers", "1", "--max-len", "20", "--negatives", "32",
            "--item-buckets", "1024", "--batch-size", "16"]
    if dp:
        args += ["--dp", "--epsilon", "4", "--delta", "1e-5"]
        refused = runner.invoke(app, [*args, "--refit"])
        assert refused.exit_code != 0 and "plain training" in refused.output
    else:
        args += ["--refit"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("hr@10", "ndcg@10", "mrr", "epsilon", "delta", "train_seconds", "examples_per_second"):
        assert key in metrics
    assert (out / "model.pt").exists()
    if dp:
        assert 0 < metrics["epsilon"] <= 4.0 * (1 + 1e-3) and metrics["delta"] == 1e-5
        assert "with_adjacency" not in metrics  # raw counts next to a DP model would not be private
    else:
        # what a merchant serves: the model plus the item adjacency, its weight chosen on validation
        blend = metrics["with_adjacency"]
        assert blend["weight"] in ADJACENCY_WEIGHTS and blend["valid"] >= metrics["valid"]["ndcg@10"] - 1e-9
        assert set(blend["test"]) >= {"hr@10", "ndcg@10"} and set(blend["selection_test"]) >= {"hr@10", "ndcg@10"}
        assert saved_adjacency_weight(out / "model.pt") == blend["weight"]  # what the on-site commands serve
        assert metrics["epsilon"] == 0.0
        # the refit trains as many epochs as validation chose, and the selection run's test figures are kept
        assert sum(1 for row in metrics["history"] if row.get("refit")) == metrics["best_epoch"]
        assert set(metrics["selection_test"]) >= {"hr@10", "ndcg@10"}


def _walk(command: click.Command, path=()):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, path + (name,))


def test_every_command_and_option_has_help():
    for path, command in _walk(get_command(app)):
        assert command.help or command.short_help, f"command {' '.join(path)} has no help"
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"option {param.opts} of {' '.join(path)} has no help"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "lr"], "--set needs key=value"),
        (["--set", "learning-rate=1"], "unknown run config keys: learning-rate"),
        (["--format", "amazon"], "needs --data PATH"),
        (["--strategy", "fedsgd"], "strategy 'fedsgd' is not one of"),
    ],
)
def test_simulate_refuses_bad_settings_before_starting(tmp_path, args, message):
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path / "sim"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_train_defaults_are_the_recipe_of_each_mode_unless_told(tmp_path):
    data = tmp_path / "shops"
    assert runner.invoke(app, ["data", "synthesize", "--out", str(data), "--merchants", "1", "--users", "60",
                               "--items", "200"]).exit_code == 0
    small = ["--d-model", "16", "--profile-dim", "16", "--max-len", "12", "--item-buckets", "512", "--epochs", "1",
             "--data", str(data), "--format", "synthetic"]
    # the weight average spans 5.7 epochs: 0.999 a step on Beauty's 175 steps an epoch of 128, here 2 of 32 customers
    # 200 items: the plain recipe scores the whole catalogue; DP samples its negatives
    plain = {"batch_size": 32, "negatives": 1024, "ema_decay": 1 - 1 / (5.7 * 2), "eval_every": 2, "patience": 10,
             "loss_average": "positions", "full_softmax": True}
    private = {"batch_size": 512, "negatives": 1024, "ema_decay": 0.0, "eval_every": 1, "patience": None,
               "loss_average": "users", "full_softmax": False}
    for flags, train, model in (
            ([], plain, {"n_layers": 1, "n_heads": 1, "dropout": 0.3, "profile_mlp": False, "tie_item_tables": True}),
            (["--dp"], private, {"n_layers": 1, "n_heads": 1, "dropout": 0.2, "profile_mlp": True,
                                 "tie_item_tables": False}),
            (["--profile-mlp", "--loss-average", "users", "--no-tie-item-tables", "--no-full-softmax"],
             {**plain, "loss_average": "users", "full_softmax": False},
             {"n_layers": 1, "n_heads": 1, "dropout": 0.3, "profile_mlp": True, "tie_item_tables": False}),
            (["--dp", "--batch-size", "32", "--layers", "2", "--negatives", "16"],
             {**private, "batch_size": 32, "negatives": 16},
             {"n_layers": 2, "n_heads": 1, "dropout": 0.2, "profile_mlp": True, "tie_item_tables": False})):
        out = tmp_path / f"run-{'-'.join(flags) or 'defaults'}"
        result = runner.invoke(app, ["train", *small, *flags, "--out", str(out)])
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert {key: metrics["train"][key] for key in train} == train, flags
        assert {key: metrics["model"][key] for key in model} == model, flags
    refused = runner.invoke(app, ["train", *small, "--dp", "--patience", "3", "--out", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "drop --patience" in refused.output
    refused = runner.invoke(app, ["train", *small, "--dp", "--full-softmax", "--out", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "--full-softmax is for plain training" in refused.output
    refused = runner.invoke(app, ["train", *small, "--dp", "--loss-average", "positions", "--out", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "no per-customer loss to clip" in refused.output
    refused = runner.invoke(app, ["train", *small, "--no-profile-mlp", "--profile-dim", "8", "--out", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "--d-model (16) must equal --profile-dim (8)" in refused.output
