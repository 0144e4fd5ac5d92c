"""Aggregation on its own: the row-wise table average, reply screening, and the strategy state a restart keeps."""

from __future__ import annotations

import numpy as np
import pytest

from server.aggregation import (
    make_strategy,
    restore_strategy_state,
    strategy_state,
    touched_row_average,
)
from shared_model.run_config import RunConfig


def test_touched_rows_move_at_the_speed_of_the_merchants_that_changed_them():
    sent = np.zeros((4, 2), dtype=np.float32)
    a, b = sent.copy(), sent.copy()
    a[0], a[1], a[3] = 1.0, 2.0, 1.0  # row 0 only merchant a changed; row 1 and 3 both
    b[1], b[3] = 6.0, 5.0  # row 2: nobody
    out = touched_row_average(sent, [a, b], [3.0, 1.0])
    np.testing.assert_allclose(out[0], [1.0, 1.0])  # a's whole update, not 3/4 of it
    np.testing.assert_allclose(out[1], [3.0, 3.0])  # (3 x 2 + 1 x 6) / 4, the plain weighted mean
    np.testing.assert_allclose(out[2], [0.0, 0.0])
    np.testing.assert_allclose(out[3], [2.0, 2.0])
    assert out.dtype == np.float32
    # with every row touched it is FedAvg
    c, d = sent + 1.0, sent + 3.0
    np.testing.assert_allclose(touched_row_average(sent, [c, d], [1.0, 1.0]), sent + 2.0)


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm"])
def test_server_optimizer_state_survives_a_restart(strategy):
    run = RunConfig(strategy=strategy, server_momentum=0.5)
    live = make_strategy(run)
    live.m_t = {"w": np.full((2, 3), 0.5)} if strategy == "fedadam" else None
    live.v_t = {"w": np.full((2, 3), 0.25)} if strategy == "fedadam" else None
    if strategy == "fedavgm":
        live.momentum_vector = [np.full((2, 3), 0.1), np.full(3, 0.2)]
    saved = strategy_state(live)
    fresh = make_strategy(run)
    restore_strategy_state(fresh, saved)
    if strategy == "fedadam":
        np.testing.assert_array_equal(fresh.m_t["w"], live.m_t["w"])
        np.testing.assert_array_equal(fresh.v_t["w"], live.v_t["w"])
    else:
        for a, b in zip(fresh.momentum_vector, live.momentum_vector, strict=True):
            np.testing.assert_array_equal(a, b)


def test_sparse_rows_average_only_the_embedding_tables():
    strategy = make_strategy(RunConfig(strategy="fedavg", sparse_rows=True, d_model=16, profile_dim=16, n_heads=1,
                                       n_layers=1, item_buckets=256))
    assert strategy.table_names and all(name.endswith(".weight") for name in strategy.table_names)
    assert not any("blocks." in name for name in strategy.table_names)
