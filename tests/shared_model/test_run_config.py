"""The run config: one declaration in pyproject, parsed into RunConfig, unsafe or unknown settings refused."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from shared_model.run_config import RunConfig

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_declares_exactly_the_run_config():
    declared = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == RunConfig().to_flat()
    assert RunConfig.from_flat(declared) == RunConfig()


def test_flower_components_point_at_the_apps():
    components = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "server.server_app:app", "clientapp": "client.client_app:app"}


def test_parses_strings_from_the_command_line():
    run = RunConfig.from_flat({"num-rounds": "4", "dp": "false", "lr": "3e-3", "strategy": "fedprox"})
    assert (run.num_rounds, run.dp, run.lr, run.strategy) == (4, False, 3e-3, "fedprox")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"num-round": 3}, "unknown run config keys: num-round"),
        ({"strategy": "fedsgd"}, "strategy 'fedsgd' is not one of"),
        ({"target-epsilon": 0}, "target-epsilon must be positive"),
        ({"num-rounds": 0}, "num-rounds must be at least 1"),
        ({"dp": "maybe"}, "dp must be true or false"),
        ({"batch-size": 2.5}, "batch-size must be an integer"),
        ({"lr-schedule": "step"}, "lr-schedule must be one of constant, cosine"),
        ({"local-epochs": 0}, "local-epochs must be positive"),
        ({"server-momentum": 1.0}, "server-momentum must be in"),
        ({"sparse-rows": "true", "strategy": "krum"}, "sparse-rows works with the averaging strategies"),
        ({"fixed-item-vectors": "true", "local-table": "true"}, "fixed-item-vectors and local-table cannot both"),
        ({"item-buckets": 1 << 34}, "item-buckets must be at most 16777216"),  # a message is data: bounded
        ({"token-buckets": 1 << 30}, "token-buckets must be at most 16777216"),
        ({"category-buckets": 0}, "category-buckets must be at least 1"),
        ({"d-model": 4096}, "d-model must be at most 2048"),
        ({"d-model": 30, "n-heads": 4}, "d-model \\(30\\) must be a multiple of n-heads"),
        ({"lr": "nan"}, "lr must be a finite number"),
        ({"negatives": 10**9}, "negatives must be at most"),
        ({"max-examples": 0}, "max-examples must be at least 1"),
        ({"update-norm-bound": -1}, "update-norm-bound must be a finite number >= 0"),
        ({"loss-average": "items", "dp": "false"}, "loss-average must be one of users, positions"),
        ({"loss-average": "positions"}, "with dp = true set loss-average = users"),  # dp is the default
        ({"tie-item-tables": "true"}, "ghost clipping refuses"),
        ({"full-softmax": "true"}, "with dp = true set full-softmax = false"),
        ({"profile-mlp": "false", "dp": "false", "profile-dim": 32}, "d-model \\(64\\) must equal profile-dim"),
        ({"tie-item-tables": "true", "fixed-item-vectors": "true", "dp": "false"}, "tie-item-tables and fixed-item"),
    ],
)
def test_refuses_bad_settings_with_the_key_named(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_flat(values)


def test_privacy_plan_covers_every_round_and_honours_the_merchant_cap():
    run = RunConfig(num_rounds=5, local_epochs=2, target_epsilon=8.0)
    privacy = run.privacy_config(num_users=1000, epsilon_cap=3.0)
    assert privacy.planned_epochs == 10 and privacy.target_epsilon == 3.0
    assert privacy.target_delta == pytest.approx(1e-4 / 10)  # min(1e-5, 1/(10 x 1000))
    assert run.replace(target_delta=1e-3).privacy_config(num_users=1000, delta_cap=1e-6).target_delta == 1e-6
    assert RunConfig(dp=False).privacy_config(num_users=10) is None


def test_the_learning_rate_schedule_runs_over_the_whole_federation():
    run = RunConfig(num_rounds=5, local_epochs=2, lr_schedule="cosine")
    third = run.train_config(server_round=3)
    assert (third.schedule_epochs, third.schedule_start, third.lr_schedule) == (10, 4, "cosine")
    central = run.train_config(epochs=10)  # the centralized baseline: one call over the same 10 epochs
    assert (central.schedule_epochs, central.schedule_start) == (10, 0)


def test_the_metadata_tables_are_sized_by_the_run_and_default_to_the_models():
    from shared_model.model import ProfileConfig
    from shared_model.shared_weights import initial_shared_state

    assert RunConfig().model_config() == ProfileConfig(max_len=50, d_model=64, n_heads=2, n_layers=2, profile_dim=64,
                                                       dropout=0.2, item_buckets=1 << 15)
    small = RunConfig.from_flat({"category-buckets": "64", "brand-buckets": "32", "token-buckets": "16",
                                 "d-model": "32", "profile-dim": "32", "n-heads": "1", "item-buckets": "128"})
    shared = initial_shared_state(small.model_config(), seed=0)  # what every model message carries
    assert [tuple(shared[f"input_items.{t}.weight"].shape) for t in ("category", "brand", "title")] == \
        [(64, 32), (32, 32), (16, 32)]


def test_the_plain_recipe_reaches_the_model_and_the_training():
    run = RunConfig.from_flat({"dp": "false", "profile-mlp": "false", "tie-item-tables": "true",
                               "loss-average": "positions", "full-softmax": "true"})
    model, train = run.model_config(), run.train_config(server_round=2, num_items=12_101, positions_per_customer=5.7)
    assert (model.profile_mlp, model.tie_item_tables, train.loss_average, train.full_softmax) == \
        (False, True, "positions", True)
    # the whole catalogue only while a customer's logits fit the bound (Beauty's 5.7 x 12,101 = 69,000 do);
    # a merchant with a larger catalogue samples `negatives`, as `fedprofile train` does, whatever the batch size
    assert not run.train_config(num_items=100_000, positions_per_customer=5.7).full_softmax
    assert run.replace(batch_size=4096).train_config(num_items=12_101, positions_per_customer=5.7).full_softmax
    assert not run.train_config().full_softmax  # nothing known of the data: no whole-catalogue softmax
    default = RunConfig()  # the federation's defaults stay the DP model's
    assert (default.model_config().profile_mlp, default.model_config().tie_item_tables,
            default.train_config().loss_average, default.train_config().full_softmax) == (True, False, "users", False)


def test_distributed_dp_is_the_default_and_needs_dp():
    assert RunConfig().privacy == "distributed" and RunConfig().distributed_dp
    assert not RunConfig(dp=False).distributed_dp  # no DP: plain rounds, whatever the privacy mode says
    assert not RunConfig(privacy="local").distributed_dp
    with pytest.raises(ValueError, match="sample-rate must be in"):
        RunConfig(sample_rate=1.5)
    RunConfig(dp=False, sample_rate=1.5)  # not checked where it plays no part
