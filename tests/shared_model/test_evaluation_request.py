"""A training message's request to evaluate an earlier model: what it carries, and malformed requests ignored."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from shared_model.evaluation_request import PUBLISHED, ask_evaluation, asked_evaluation


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # set by Flower in a ServerApp


def _message(arrays: ArrayRecord) -> Message:
    return Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 2})}), message_type="train",
                   dst_node_id=1)


def test_the_published_weights_travel_only_when_they_are_not_the_weights_to_train():
    train = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    weights = {"w": np.ones(3, np.float32)}
    same, other = _message(train), _message(train)
    ask_evaluation([same], model_round=1, published=None)
    ask_evaluation([other], model_round=1, published=ArrayRecord({k: Array(v) for k, v in weights.items()}))
    assert PUBLISHED not in same.content.array_records
    round_, arrays = asked_evaluation(same.content)
    assert round_ == 1 and arrays is same.content["arrays"]
    round_, arrays = asked_evaluation(other.content)
    assert round_ == 1 and np.array_equal(arrays["w"].numpy(), weights["w"])


def test_no_request_or_a_malformed_one_asks_for_nothing():
    train = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    assert asked_evaluation(_message(train).content) is None
    for bad in ({}, {"round": "two"}, {"round": -1}):
        msg = _message(train)
        msg.content["evaluate"] = ConfigRecord(bad)
        assert asked_evaluation(msg.content) is None
    bare = Message(RecordDict({"evaluate": ConfigRecord({"round": 1})}), message_type="train", dst_node_id=1)
    assert asked_evaluation(bare.content) is None  # no model to evaluate
