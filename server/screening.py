"""Replies that cannot hurt: every train and evaluate reply checked in full, merchants known by their node, weights
and updates bounded before Flower's strategy sees them."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, Message

from shared_model.evaluation_request import EVALUATION

log = logging.getLogger("fedprofile.server")

# The whole metric set of a train reply and of an evaluate reply: a missing or extra key sets the reply aside.
TRAIN_METRICS = frozenset({"num-examples", "train-loss", "epsilon", "delta", "steps", "train-seconds", "refused"})
EVALUATE_METRICS = frozenset({"num-examples", "hr@10", "ndcg@10", "mrr", "valid-hr@10", "valid-ndcg@10", "valid-mrr"})
RATES = frozenset({"hr@10", "ndcg@10", "mrr", "valid-hr@10", "valid-ndcg@10", "valid-mrr"})  # in [0, 1]


class MerchantRegistry:
    """A merchant is its node (authenticated by its key in a deployment), not the name it declares: each node
    keeps the label it first came with, and a node declaring a name another node holds gets its node id added,
    so two nodes never share one epsilon entry. `declared` remembers each node's first training count, which
    bounds its weight in every later round of the run."""

    def __init__(self, labels: dict[int, str] | None = None, declared: dict[int, int] | None = None):
        self.labels: dict[int, str] = dict(labels or {})
        self.declared: dict[int, int] = dict(declared or {})

    def label(self, msg: Message) -> str:
        node = int(msg.metadata.src_node_id)
        if node not in self.labels:
            name = _declared(msg, "name", 100) or f"node-{node}"
            taken = set(self.labels.values())
            self.labels[node] = name if name not in taken else f"{name}#{node}"
        return self.labels[node]

    def state_dict(self) -> dict:
        return {"labels": {str(k): v for k, v in self.labels.items()},
                "declared": {str(k): v for k, v in self.declared.items()}}

    @classmethod
    def from_state_dict(cls, state: dict | None) -> "MerchantRegistry":
        state = state or {}
        return cls({int(k): v for k, v in state.get("labels", {}).items()},
                   {int(k): int(v) for k, v in state.get("declared", {}).items()})


def _declared(msg: Message, key: str, limit: int) -> str:
    """What a reply's `merchant` record says under `key` (its name, why it refused), cut to `limit` characters."""
    if msg.has_error() or "merchant" not in msg.content.config_records:
        return ""
    return str(msg.content.config_records["merchant"].get(key, ""))[:limit]


@dataclass
class ScreenedReplies:
    accepted: list[Message] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (merchant, why): its own policy or budget
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (merchant, why): broken replies
    merchants: dict[int, str] = field(default_factory=dict)  # node id -> merchant label
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> its checked metrics
    clipped: dict[str, float] = field(default_factory=dict)  # label -> update norm before clipping


def screen_train_replies(replies: list[Message], expected: dict[str, tuple[int, ...]], *,
                         registry: MerchantRegistry, max_examples: int) -> ScreenedReplies:
    """Keep replies whose metric set is whole and finite and whose weights have exactly the expected names and
    shapes and are finite; refusals (a merchant's policy or budget) and broken replies are set aside with their
    reason and never averaged. A kept reply's `num-examples` is bounded by `max_examples` and by what its node
    declared the first time, so no merchant can outweigh the others by claiming more customers."""
    out = ScreenedReplies()
    for msg in replies:
        name = registry.label(msg)
        node = int(msg.metadata.src_node_id)
        out.merchants[node] = name
        if msg.has_error():
            out.rejected.append((name, f"error reply: {str(msg.error.reason)[:300]}"))
            continue
        metrics, problem = _checked_metrics(msg, TRAIN_METRICS)
        if problem is None and metrics["refused"] not in (0.0, 1.0):
            problem = f"refused must be 0 or 1, got {metrics['refused']}"
        if problem is None and metrics["refused"] == 1.0:
            out.metrics[name] = metrics
            out.refused.append((name, _declared(msg, "refused", 500) or "refused"))
            continue
        if problem is None:
            problem = _count_problem(metrics["num-examples"], max_examples)
        if problem is None:
            problem = _weights_problem(msg.content, expected)
        if problem:
            out.rejected.append((name, problem))
            continue
        declared = registry.declared.setdefault(node, int(metrics["num-examples"]))
        bounded = min(int(metrics["num-examples"]), declared)
        msg.content.metric_records["metrics"]["num-examples"] = bounded
        metrics["num-examples"] = float(bounded)
        out.metrics[name] = metrics
        out.accepted.append(msg)
    for name, why in out.rejected:
        log.warning("rejected the update of %s: %s", name, why)
    for name, why in out.refused:
        log.info("%s did not train: %s", name, why)
    return out


def bound_updates(accepted: list[Message], sent: dict[str, np.ndarray], *, factor: float, min_cosine: float,
                  registry: MerchantRegistry) -> tuple[list[Message], dict[str, float], dict[str, str]]:
    """The round's updates (each merchant's weights minus the weights sent), made harmless before averaging.

    With three or more merchants (two have no majority to judge by), an update whose cosine with the
    coordinate-wise median of the round's updates is below `min_cosine` is set aside (a flipped or foreign
    direction; -1: off), and every kept update is clipped in place to `factor` x the median update norm (0: off),
    so no merchant moves the average further than an honest one could. Returns (kept replies, label -> norm of each clipped update, label -> why set
    aside)."""
    if len(accepted) < 3 or (factor <= 0 and min_cosine <= -1):  # two updates have no majority to judge by
        return accepted, {}, {}
    records = [next(iter(m.content.array_records.values())) for m in accepted]
    keys = sorted(sent)
    norms = np.zeros(len(records))
    dots = np.zeros(len(records))
    reference_sq = 0.0
    for key in keys:  # one weight at a time: memory stays at one tensor per merchant
        deltas = np.stack([r[key].numpy().astype(np.float32) - sent[key].astype(np.float32) for r in records])
        norms += np.square(deltas.reshape(len(records), -1)).sum(1, dtype=np.float64)
        if min_cosine > -1:
            reference = np.median(deltas, axis=0)
            dots += (deltas.reshape(len(records), -1) @ reference.reshape(-1)).astype(np.float64)
            reference_sq += float(np.square(reference, dtype=np.float64).sum())
    norms = np.sqrt(norms)
    set_aside: dict[str, str] = {}
    keep = np.ones(len(records), dtype=bool)
    if min_cosine > -1 and reference_sq > 0:
        cosines = dots / np.maximum(norms * np.sqrt(reference_sq), 1e-30)
        for i, cosine in enumerate(cosines):
            if cosine < min_cosine:
                keep[i] = False
                set_aside[registry.label(accepted[i])] = (f"its update points away from the others (cosine "
                                                          f"{cosine:.3f} with their median, below {min_cosine})")
    clipped = {}
    bound = factor * float(np.median(norms[keep])) if factor > 0 and keep.any() else 0.0
    for i, (msg, record) in enumerate(zip(accepted, records, strict=True)):
        if keep[i] and bound > 0 and norms[i] > bound:
            scale = bound / norms[i]
            for key in keys:
                value = record[key].numpy()
                delta = value.astype(np.float64) - sent[key]
                record[key] = Array((sent[key] + scale * delta).astype(value.dtype))
            clipped[registry.label(msg)] = float(norms[i])
    for name, norm in clipped.items():  # half the merchants sit above the median: say so only when it matters
        level = logging.WARNING if norm > 1.5 * bound else logging.DEBUG
        log.log(level, "clipped the update of %s: norm %.4g > %.4g (%.1f x the median)", name, norm, bound, factor)
    for name, why in set_aside.items():
        log.warning("set the update of %s aside: %s", name, why)
    return [m for m, k in zip(accepted, keep, strict=True) if k], clipped, set_aside


def screen_evaluate_replies(replies: list[Message], *, registry: MerchantRegistry, max_examples: int,
                            folded: bool = False) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """(label -> checked metrics, label -> why set aside) of a round's evaluate replies (`folded`: of training
    replies that carry an evaluation, shared_model/evaluation_request.py). Rates must lie in [0, 1]; a merchant's
    test users are bounded by what it declared for training (a merchant cannot have more test users than
    customers), so one claim of 1e9 test users cannot set the published figure."""
    record = EVALUATION if folded else "metrics"
    kept, dropped = {}, {}
    for msg in replies:
        name = registry.label(msg)
        if msg.has_error():
            dropped[name] = f"error reply: {str(msg.error.reason)[:300]}"
            continue
        if record not in msg.content.metric_records:
            refused = _declared(msg, "refused", 300)
            dropped[name] = f"refused: {refused}" if refused and not folded else "no evaluation"
            continue
        metrics, problem = _checked_metrics(msg, EVALUATE_METRICS, record)
        if problem is None:
            problem = next((f"{k} must be in [0, 1], got {metrics[k]}" for k in RATES if not 0 <= metrics[k] <= 1),
                           None)
        if problem is None:
            problem = _count_problem(metrics["num-examples"], max_examples, allow_zero=True)
        if problem:
            dropped[name] = problem
            continue
        declared = registry.declared.get(int(msg.metadata.src_node_id), max_examples)
        metrics["num-examples"] = float(min(metrics["num-examples"], declared))
        kept[name] = metrics
    for name, why in dropped.items():
        log.warning("left the evaluation of %s out: %s", name, why)
    return kept, dropped


def weighted_evaluation(kept: dict[str, dict[str, float]]) -> dict:
    """Test-user-weighted means of the kept merchants' metrics, and each merchant's own figures."""
    total = sum(m["num-examples"] for m in kept.values())
    out: dict = {"evaluated-merchants": len(kept), "merchant-metrics": kept}
    if total > 0:
        for key in sorted(EVALUATE_METRICS - {"num-examples"}):
            out[key] = sum(m[key] * m["num-examples"] for m in kept.values()) / total
    return out


def _checked_metrics(msg: Message, keys: frozenset[str], record: str = "metrics") -> tuple[dict[str, float], str | None]:
    records = msg.content.metric_records
    if record not in records or not set(records) <= {"metrics", EVALUATION}:
        return {}, f"expected the metric record {record!r} (and {EVALUATION!r} at most), got {sorted(records)[:5]}"
    metrics = records[record]
    names = set(metrics.keys())
    if names != keys:
        missing, extra = sorted(keys - names), sorted(names - keys)
        return {}, f"wrong metrics: missing {missing[:5]}, unexpected {[e[:40] for e in extra[:5]]}"
    out = {}
    for key in keys:
        value = metrics[key]
        if isinstance(value, list) or not math.isfinite(float(value)) or float(value) < 0:
            return {}, f"metric {key} must be a finite number >= 0, got {str(value)[:40]}"
        out[key] = float(value)
    return out, None


def _count_problem(count: float, max_examples: int, *, allow_zero: bool = False) -> str | None:
    if count != int(count) or count < (0 if allow_zero else 1):
        return f"num-examples must be a {'non-negative' if allow_zero else 'positive'} integer, got {count}"
    if count > max_examples:
        return f"num-examples {int(count):,} is above the run's max-examples {max_examples:,}"
    return None


def _weights_problem(content, expected: dict[str, tuple[int, ...]]) -> str | None:
    if len(content.array_records) != 1:
        return f"expected one array record, got {len(content.array_records)}"
    arrays = next(iter(content.array_records.values()))
    names = set(arrays.keys())
    if names != set(expected):
        missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
        return f"wrong weights: missing {missing[:3]}, unexpected {[e[:60] for e in extra[:3]]}"
    for key in expected:
        value = arrays[key].numpy()
        if tuple(value.shape) != tuple(expected[key]):
            return f"{key} has shape {tuple(value.shape)}, expected {tuple(expected[key])}"
        if not np.issubdtype(value.dtype, np.floating):
            return f"{key} has dtype {value.dtype}, expected floating point"
        if not np.isfinite(value).all():
            return f"{key} holds NaN or infinite values"
    return None
