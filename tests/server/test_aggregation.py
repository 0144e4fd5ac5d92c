"""Aggregation on its own: the row-wise table average, reply screening, and the strategy state a restart keeps."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app import Error as FlowerError
from flwr.supercore.task_identity import TaskIdentity

from server.aggregation import (
    make_strategy,
    restore_strategy_state,
    screen_train_replies,
    strategy_state,
    touched_row_average,
)
from shared_model.run_config import RunConfig

EXPECTED = {"w": (2, 3), "b": (3,)}


@pytest.fixture(autouse=True)
def _task_identity():
    # a real ServerApp process has these set by Flower; messages need them
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _request(node: int) -> Message:
    msg = Message(RecordDict(), message_type="train", dst_node_id=node)
    msg.metadata.__dict__["_message_id"] = f"m{node}"  # what pushing to a SuperLink assigns
    return msg


def _reply(node: int, *, name: str = "", arrays=None, metrics=None, refused: str = "") -> Message:
    content = {"metrics": MetricRecord(metrics if metrics is not None else {"num-examples": 10, "refused": 0}),
               "merchant": ConfigRecord({"name": name or f"m{node}", "refused": refused})}
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    return Message(RecordDict(content), reply_to=_request(node))


def _good():
    return {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}


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


def test_screening_keeps_good_replies_and_says_why_it_set_the_others_aside():
    nan = _good()
    nan["w"][0, 0] = np.nan
    replies = [
        _reply(1, arrays=_good()),
        _reply(2, arrays={"w": np.ones((3, 2), np.float32), "b": np.zeros(3, np.float32)}),
        _reply(3, arrays=nan),
        _reply(4, arrays={"w": np.ones((2, 3), np.float32)}),
        _reply(5, arrays=_good(), metrics={"refused": 0}),
        _reply(6, arrays=_good(), metrics={"num-examples": 0, "refused": 0}),
        _reply(7, metrics={"num-examples": 10, "refused": 1}, refused="budget spent"),
    ]
    screened = screen_train_replies(replies, EXPECTED)
    assert [m.metadata.src_node_id for m in screened.accepted] == [1]
    why = dict(screened.rejected)
    assert "shape (3, 2)" in why["m2"]
    assert "NaN" in why["m3"]
    assert "missing ['w']" not in why["m4"] and "missing" in why["m4"]
    assert "num-examples" in why["m5"] and "positive" in why["m6"]
    assert screened.refused == [("m7", "budget spent")]
    assert screened.merchants == {i: f"m{i}" for i in range(1, 8)}


def test_an_error_reply_is_rejected_with_its_reason():
    msg = Message(FlowerError(code=1, reason="the ClientApp crashed"), reply_to=_request(9))
    screened = screen_train_replies([msg], EXPECTED)
    assert not screened.accepted
    assert "the ClientApp crashed" in screened.rejected[0][1]


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
