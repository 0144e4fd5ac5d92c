"""Replies that cannot hurt the coordinator: each probe is a reply a faulty or malicious merchant could send."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app import Error as FlowerError
from flwr.supercore.task_identity import TaskIdentity

from server.coordinator import run_federation
from server.screening import (
    MerchantRegistry,
    bound_updates,
    screen_evaluate_replies,
    screen_train_replies,
    weighted_evaluation,
)
from simulations.inprocess import InProcessGrid
from tests.conftest import tiny_run

EXPECTED = {"w": (2, 3), "b": (3,)}
GOOD_METRICS = {"num-examples": 10, "train-loss": 1.0, "epsilon": 1.0, "delta": 1e-5, "steps": 4,
                "train-seconds": 0.5, "refused": 0}
GOOD_EVAL = {"num-examples": 10, "hr@10": 0.2, "ndcg@10": 0.1, "mrr": 0.05, "valid-hr@10": 0.2,
             "valid-ndcg@10": 0.1, "valid-mrr": 0.05}


@pytest.fixture(autouse=True)
def _task_identity():
    # a real ServerApp process has these set by Flower; messages need them
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _request(node: int, kind: str = "train") -> Message:
    msg = Message(RecordDict(), message_type=kind, dst_node_id=node)
    msg.metadata.__dict__["_message_id"] = f"m{node}"  # what pushing to a SuperLink assigns
    return msg


def _reply(node: int, *, name: str = "", arrays=None, metrics=None, refused: str = "", kind: str = "train") -> Message:
    content = {"metrics": MetricRecord(dict(GOOD_METRICS if kind == "train" else GOOD_EVAL) if metrics is None
                                       else metrics),
               "merchant": ConfigRecord({"name": name or f"m{node}", "refused": refused})}
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    return Message(RecordDict(content), reply_to=_request(node, kind))


def _good(value: float = 1.0):
    return {"w": np.full((2, 3), value, np.float32), "b": np.zeros(3, np.float32)}


def _screen(replies, registry=None, max_examples=1_000_000):
    return screen_train_replies(replies, EXPECTED, registry=registry or MerchantRegistry(), max_examples=max_examples)


def test_screening_keeps_good_replies_and_says_why_it_set_the_others_aside():
    nan = _good()
    nan["w"][0, 0] = np.nan
    missing = dict(GOOD_METRICS)
    del missing["epsilon"]
    replies = [
        _reply(1, arrays=_good()),
        _reply(2, arrays={"w": np.ones((3, 2), np.float32), "b": np.zeros(3, np.float32)}),
        _reply(3, arrays=nan),
        _reply(4, arrays={"w": np.ones((2, 3), np.float32)}),
        _reply(5, arrays=_good(), metrics=missing),
        _reply(6, arrays=_good(), metrics={**GOOD_METRICS, "num-examples": 0}),
        _reply(7, metrics={**GOOD_METRICS, "refused": 1}, refused="budget spent"),
        _reply(8, arrays=_good(), metrics={**GOOD_METRICS, "extra": 1.0}),
        _reply(9, arrays=_good(), metrics={**GOOD_METRICS, "train-loss": float("inf")}),
    ]
    screened = _screen(replies)
    assert [m.metadata.src_node_id for m in screened.accepted] == [1]
    why = dict(screened.rejected)
    assert "shape (3, 2)" in why["m2"]
    assert "NaN" in why["m3"]
    assert "missing ['b']" in why["m4"]
    assert "missing ['epsilon']" in why["m5"]  # before: a KeyError in the coordinator ended the run
    assert "positive integer" in why["m6"]
    assert "unexpected ['extra']" in why["m8"]
    assert "train-loss must be a finite number" in why["m9"]
    assert screened.refused == [("m7", "budget spent")]
    assert screened.metrics["m7"]["epsilon"] == 1.0  # a refusing merchant still reports what it spent


def test_an_error_reply_is_rejected_with_its_reason():
    msg = Message(FlowerError(code=1, reason="the ClientApp crashed"), reply_to=_request(9))
    screened = _screen([msg])
    assert not screened.accepted
    assert "the ClientApp crashed" in screened.rejected[0][1]


def test_merchants_are_their_nodes_not_the_names_they_declare():
    """Before: two nodes declaring one name shared one epsilon entry."""
    registry = MerchantRegistry()
    screened = _screen([_reply(1, name="shop", arrays=_good()), _reply(2, name="shop", arrays=_good()),
                        _reply(3, name="shop", metrics={**GOOD_METRICS, "refused": 1}, refused="spent")], registry)
    assert sorted(screened.metrics) == ["shop", "shop#2", "shop#3"]
    later = _screen([_reply(2, name="someone-else", arrays=_good())], registry)  # a node keeps its first label
    assert list(later.metrics) == ["shop#2"]
    assert MerchantRegistry.from_state_dict(registry.state_dict()).labels == registry.labels


def test_example_counts_are_bounded_by_the_run_and_by_the_first_claim():
    """Before: a reply claiming 1e12 customers replaced the global model with that merchant's."""
    registry = MerchantRegistry()
    huge = _screen([_reply(1, arrays=_good(), metrics={**GOOD_METRICS, "num-examples": 10**12})], registry,
                   max_examples=10_000_000)
    assert "above the run's max-examples 10,000,000" in huge.rejected[0][1]
    _screen([_reply(2, arrays=_good(), metrics={**GOOD_METRICS, "num-examples": 500})], registry)
    grown = _screen([_reply(2, arrays=_good(), metrics={**GOOD_METRICS, "num-examples": 90_000})], registry)
    assert grown.accepted[0].content.metric_records["metrics"]["num-examples"] == 500


def test_a_scaled_update_is_clipped_to_a_multiple_of_the_median():
    """Before: one merchant's update x1e4 took the global weight norm from 22.8 to 3.4 million."""
    sent = {k: v.astype(np.float64) for k, v in _good(0.0).items()}
    registry = MerchantRegistry()
    replies = [_reply(i, arrays=_good(1.0)) for i in (1, 2, 3)] + [_reply(4, arrays=_good(1e4))]
    screened = _screen(replies, registry)
    kept, clipped, aside = bound_updates(screened.accepted, sent, factor=3.0, min_cosine=0.0, registry=registry)
    assert list(clipped) == ["m4"] and not aside and len(kept) == 4
    updated = next(iter(kept[3].content.array_records.values()))["w"].numpy()
    honest = np.sqrt(6.0)  # norm of an honest update: six ones
    assert np.linalg.norm(updated) == pytest.approx(3 * honest, rel=1e-5)
    assert bound_updates(kept, sent, factor=0.0, min_cosine=-1.0, registry=registry)[1:] == ({}, {})


def test_an_update_pointing_away_from_the_others_is_set_aside():
    sent = {k: v.astype(np.float64) for k, v in _good(0.0).items()}
    rng = np.random.default_rng(0)
    honest = [{"w": (1.0 + 0.3 * rng.standard_normal((2, 3))).astype(np.float32), "b": np.zeros(3, np.float32)}
              for _ in range(4)]
    flipped = {"w": -honest[0]["w"], "b": honest[0]["b"]}
    registry = MerchantRegistry()
    screened = _screen([_reply(i + 1, arrays=a) for i, a in enumerate(honest)] + [_reply(5, arrays=flipped)], registry)
    kept, _, aside = bound_updates(screened.accepted, sent, factor=3.0, min_cosine=0.0, registry=registry)
    assert [m.metadata.src_node_id for m in kept] == [1, 2, 3, 4]
    assert "points away from the others" in aside["m5"]
    two = _screen([_reply(6, arrays=honest[0]), _reply(7, arrays=_good(50.0))], registry)  # no majority to judge by
    assert bound_updates(two.accepted, sent, factor=1.0, min_cosine=0.0, registry=registry)[1:] == ({}, {})


def test_evaluation_replies_are_screened_and_weighted_by_bounded_counts():
    """Before: one merchant claiming 1e9 test users set the published NDCG@10 to 0.99999."""
    registry = MerchantRegistry(declared={1: 100, 2: 100, 3: 100})
    replies = [_reply(1, kind="evaluate"), _reply(2, kind="evaluate"),
               _reply(3, kind="evaluate", metrics={**GOOD_EVAL, "num-examples": 10**9, "ndcg@10": 0.99999}),
               _reply(4, kind="evaluate", metrics={**GOOD_EVAL, "ndcg@10": 7.0}),
               _reply(5, kind="evaluate", metrics={"num-examples": 10})]
    kept, dropped = screen_evaluate_replies(replies, registry=registry, max_examples=10**10)
    assert sorted(kept) == ["m1", "m2", "m3"] and kept["m3"]["num-examples"] == 100
    assert "must be in [0, 1]" in dropped["m4"] and "missing" in dropped["m5"]
    figures = weighted_evaluation(kept)
    assert figures["ndcg@10"] == pytest.approx((0.1 * 10 + 0.1 * 10 + 0.99999 * 100) / 120)
    assert figures["evaluated-merchants"] == 3


@pytest.mark.slow
def test_a_run_survives_malformed_replies_and_a_scaled_update(tmp_path):
    """A whole (tiny) federation in process: one merchant's update x1e4, another's metrics missing a key; the
    run finishes, the broken reply is rejected, the scaled one clipped, the global model stays sane."""
    import torch

    def tamper(node, reply):
        if reply.has_error() or "arrays" not in reply.content.array_records:
            return reply
        if node == 2:
            arrays = reply.content.array_records["arrays"]
            for key in list(arrays.keys()):
                arrays[key] = Array(arrays[key].numpy() * 1e4)
        if node == 3:
            del reply.content.metric_records["metrics"]["epsilon"]
        return reply

    run = tiny_run(tmp_path, num_rounds=1, min_replies=2, dp=False)
    grid = InProcessGrid(__import__("client.client_app", fromlist=["app"]).app, 4, tamper=tamper)
    result = run_federation(grid, run)
    row = result.history[0]
    assert row["aggregated"] and ("merchant-1" in row["clipped"] or "merchant-1" in row["rejected"])
    assert "missing ['epsilon']" in row["rejected"]["merchant-2"]
    norm = sum(float(torch.as_tensor(v).float().norm() ** 2) for v in
               torch.load(next((tmp_path / "run" / "models").glob("v0001")) / "model.pt",
                          weights_only=True)["shared_state"].values()) ** 0.5
    assert norm < 1_000
