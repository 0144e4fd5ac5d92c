"""The published model as a moving average of the global weights: what is published, kept and resumed."""

from __future__ import annotations

import numpy as np
import pytest

from client.client_app import app as client_app
from server.coordinator import run_federation
from server.store import RunStore
from server.weight_average import WeightAverage
from shared_model.checkpoint import load_global_model
from simulations.inprocess import InProcessGrid
from tests.conftest import tiny_run


def test_the_average_starts_at_the_first_weights_and_then_moves_by_one_minus_decay():
    average = WeightAverage(0.75)
    first = average.update({"w": np.array([4.0, 0.0])})
    np.testing.assert_allclose(first["w"], [4.0, 0.0])
    second = average.update({"w": np.array([0.0, 8.0])})
    np.testing.assert_allclose(second["w"], [3.0, 2.0])
    assert WeightAverage(0.0).update({"w": np.array([1.0])})["w"][0] == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        WeightAverage(1.0)


def test_the_coordinator_publishes_the_average_trains_on_the_last_weights_and_resumes_it(tmp_path):
    run = tiny_run(tmp_path / "a", num_rounds=2, dp=False, published_average=0.5, fraction_evaluate=0.0)
    run_federation(InProcessGrid(client_app, 2), run)
    store = RunStore(run.run_path)
    raw = store.latest().arrays  # training goes on from the last weights
    rounds = {}
    for version in (1, 2):
        _, weights, manifest = load_global_model(store.models / f"v{version:04d}")
        rounds[version] = {k: v.numpy() for k, v in weights.items()}
    # round 1 publishes its own weights; round 2 the mean of rounds 1 and 2: so raw_2 = 2 x published_2 - raw_1
    for name, value in raw.items():
        np.testing.assert_allclose(rounds[2][name], 0.5 * rounds[1][name] + 0.5 * value, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(rounds[2][n], raw[n]) for n in raw)
    # a resumed run carries the average on: round 3 published = 0.5 x published_2 + 0.5 x raw_3
    run_federation(InProcessGrid(client_app, 2), run.replace(num_rounds=3, resume=True))
    raw3 = store.latest().arrays
    _, weights, _ = load_global_model(store.models / "v0003")
    for name, value in weights.items():
        np.testing.assert_allclose(value.numpy(), 0.5 * rounds[2][name] + 0.5 * raw3[name], rtol=1e-5, atol=1e-6)
