"""The federation's round loop: Flower's strategy proposes and aggregates; fedprofile screens, checkpoints, publishes."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from server.aggregation import (
    make_strategy,
    merchant_name,
    restore_strategy_state,
    screen_train_replies,
    strategy_state,
)
from server.store import Checkpoint, RunStore
from shared_model.run_config import RunConfig
from shared_model.shared_weights import initial_shared_state

log = logging.getLogger("fedprofile.server")


@dataclass
class FederationResult:
    run_id: str
    rounds_completed: int
    history: list[dict] = field(default_factory=list)
    epsilon: dict[str, float] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=dict)
    final: dict = field(default_factory=dict)  # the last round's federated evaluation
    model_dir: str | None = None
    resumed_from: int | None = None


def run_federation(grid: Grid, run: RunConfig, *, on_round: Callable[[dict], None] | None = None) -> FederationResult:
    """Rounds `1..num_rounds` (or, with `resume`, from the round after the last checkpoint)."""
    store = RunStore(run.run_path)
    strategy = make_strategy(run)
    model_config = run.model_config()
    checkpoint = store.latest() if run.resume else None
    if checkpoint is not None:
        arrays = checkpoint.arrays
        restore_strategy_state(strategy, checkpoint.strategy_state)
        state = checkpoint.state
        result = FederationResult(state["run_id"], checkpoint.round, state["history"], state["epsilon"],
                                  state.get("delta", {}), state.get("final", {}), resumed_from=checkpoint.round)
        log.info("resuming run %s after round %d from %s", result.run_id, checkpoint.round, store.checkpoints)
    else:
        archived = store.archive_previous()
        if archived is not None:
            log.warning("%s held an earlier run; moved it to %s (resume = true continues a run)", store.root, archived)
        arrays = {k: v.numpy() for k, v in initial_shared_state(model_config, seed=run.seed).items()}
        result = FederationResult(uuid.uuid4().hex[:12], 0)
    expected = {k: v.shape for k, v in arrays.items()}
    settings = {**run.to_flat(), "run-id": result.run_id}

    for server_round in range(result.rounds_completed + 1, run.num_rounds + 1):
        started = time.perf_counter()
        row: dict = {"round": server_round}
        # --- training on the merchants ---
        messages = strategy.configure_train(server_round, ArrayRecord(_torch(arrays)), ConfigRecord(settings), grid)
        replies = list(grid.send_and_receive(messages, timeout=run.round_timeout))
        row["train-phase-seconds"] = time.perf_counter() - started
        screened = screen_train_replies(replies, expected)
        for msg in screened.accepted:
            metrics = msg.content.metric_records["metrics"]
            name = merchant_name(msg)
            result.epsilon[name] = float(metrics["epsilon"])
            result.delta[name] = float(metrics["delta"])
        for msg in replies:  # a refusing merchant still reports what it has spent
            if not msg.has_error() and int(msg.content.metric_records["metrics"].get("refused", 0)):
                metrics = msg.content.metric_records["metrics"]
                result.epsilon[merchant_name(msg)] = float(metrics["epsilon"])
        row["merchants-trained"] = [merchant_name(m) for m in screened.accepted]
        row["refused"] = dict(screened.refused)
        row["rejected"] = dict(screened.rejected)
        row["local-train-seconds"] = {merchant_name(m): float(m.content.metric_records["metrics"]["train-seconds"])
                                      for m in screened.accepted}
        if len(screened.accepted) >= run.min_replies:
            aggregated, train_metrics = strategy.aggregate_train(server_round, screened.accepted)
            if aggregated is not None:
                arrays = {k: v.numpy() for k, v in aggregated.items()}
            row["aggregated"] = aggregated is not None
            row["train-loss"] = float(train_metrics["train-loss"]) if train_metrics else None
        else:
            row["aggregated"] = False
            log.warning("round %d: %d good replies, quorum is %d; the global model is unchanged",
                        server_round, len(screened.accepted), run.min_replies)
        # --- federated evaluation of the (new) global model ---
        if run.fraction_evaluate > 0:
            eval_started = time.perf_counter()
            messages = strategy.configure_evaluate(server_round, ArrayRecord(_torch(arrays)), ConfigRecord(settings), grid)
            row.update(_evaluation(list(grid.send_and_receive(messages, timeout=run.round_timeout))))
            row["evaluate-phase-seconds"] = time.perf_counter() - eval_started
            result.final = {k: row[k] for k in ("hr@10", "ndcg@10", "mrr", "valid-hr@10", "valid-ndcg@10") if k in row}
        row["epsilon"] = dict(result.epsilon)
        row["seconds"] = time.perf_counter() - started
        result.history.append(row)
        result.rounds_completed = server_round
        state = {"run_id": result.run_id, "run_config": run.to_flat(), "history": result.history,
                 "epsilon": result.epsilon, "delta": result.delta, "final": result.final}
        store.save(Checkpoint(server_round, arrays, strategy_state(strategy), state))
        manifest = {"run_id": result.run_id, "round": server_round, "rounds_planned": run.num_rounds,
                    "strategy": run.strategy, "run_config": run.to_flat(), "metrics": result.final,
                    "epsilon": result.epsilon, "delta": result.delta,
                    "dp": {"target_epsilon": run.target_epsilon, "unit": "one customer of one merchant"} if run.dp else None}
        result.model_dir = str(store.publish(server_round, model_config, arrays, manifest))
        if on_round is not None:
            on_round(row)
    return result


def _evaluation(replies: list[Message]) -> dict:
    """Test-user-weighted means of the merchants' metrics, and each merchant's own figures."""
    good = [m for m in replies if not m.has_error() and "metrics" in m.content.metric_records]
    per_merchant = {merchant_name(m): dict(m.content.metric_records["metrics"]) for m in good}
    total = sum(float(v["num-examples"]) for v in per_merchant.values())
    out: dict = {"evaluated-merchants": len(per_merchant), "merchant-metrics": per_merchant}
    if total > 0:
        keys = [k for k in next(iter(per_merchant.values())) if k != "num-examples"]
        for key in keys:
            out[key] = sum(float(v[key]) * float(v["num-examples"]) for v in per_merchant.values()) / total
    return out


def _torch(arrays: dict[str, np.ndarray]):
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
