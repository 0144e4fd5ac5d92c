"""A training message that also asks for the evaluation of an earlier round's model, and its reply's metrics."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

EVALUATE = "evaluate"  # the message's ConfigRecord {"round": r}: evaluate round r's published model
PUBLISHED = "published"  # that model's ArrayRecord, sent only when it differs from the weights to train
EVALUATION = "evaluation"  # the reply's MetricRecord: the same metrics as an evaluate reply's "metrics"
FOLDS_EVALUATION = frozenset({"train", "train.distributed"})  # the message types that may carry the request


def ask_evaluation(messages: Iterable[Message], *, model_round: int, published: ArrayRecord | None) -> None:
    """Add the request to training messages; `published` None: the model is the weights they train (no weight
    average), so no second copy travels. One record shared by every message is packed once (packing.py)."""
    for msg in messages:
        msg.content[EVALUATE] = ConfigRecord({"round": int(model_round)})
        if published is not None:
            msg.content[PUBLISHED] = published


def asked_evaluation(content: RecordDict) -> tuple[int, ArrayRecord] | None:
    """(round, the model's arrays) that a message asks to evaluate, or None when it asks for none or the
    request is malformed (no round, no model)."""
    asked = content.config_records.get(EVALUATE)
    if asked is None:
        return None
    try:
        model_round = int(asked["round"])
    except (KeyError, TypeError, ValueError):
        return None
    arrays = content.array_records.get(PUBLISHED) or content.array_records.get("arrays")
    return None if arrays is None or model_round < 0 else (model_round, arrays)
