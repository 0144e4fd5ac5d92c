"""The federation's round loop: Flower's strategy proposes and aggregates; fedprofile screens, checkpoints, publishes."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from server.aggregation import array_record, make_strategy, restore_strategy_state, strategy_state
from server.distributed import DistributedTraining
from server.exchange import send_and_receive
from server.screening import (
    MerchantRegistry,
    bound_updates,
    screen_evaluate_replies,
    screen_train_replies,
    weighted_evaluation,
)
from server.store import Checkpoint, RunStore
from server.weight_average import WeightAverage
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
        registry = MerchantRegistry.from_state_dict(state.get("merchants"))
        log.info("resuming run %s after round %d from %s", result.run_id, checkpoint.round, store.checkpoints)
    else:
        archived = store.archive_previous()
        if archived is not None:
            log.warning("%s held an earlier run; moved it to %s (resume = true continues a run)", store.root, archived)
        arrays = {k: v.numpy() for k, v in initial_shared_state(model_config, seed=run.seed).items()}
        result = FederationResult(uuid.uuid4().hex[:12], 0)
        registry = MerchantRegistry()
    expected = {k: v.shape for k, v in arrays.items()}
    settings = {**run.to_flat(), "run-id": result.run_id}
    distributed = DistributedTraining(run, arrays, sequential=getattr(grid, "sequential", False)) \
        if run.distributed_dp else None
    if distributed is not None and checkpoint is not None:
        distributed.load_state_arrays(checkpoint.strategy_state)
    average = WeightAverage(run.published_average)  # what is evaluated, published and served
    if checkpoint is not None:
        average.load_state_arrays(checkpoint.strategy_state)

    for server_round in range(result.rounds_completed + 1, run.num_rounds + 1):
        started = time.perf_counter()
        row: dict = {"round": server_round}
        if distributed is not None:  # --- one central DP-SGD step through the secure sum ---
            secure = distributed.round(grid, server_round, arrays, settings, registry)
            row.update({"refused": {}, "rejected": {}, "merchants-trained": [], **secure.row})
            result.epsilon.update(secure.epsilon)
            result.delta.update(secure.delta)
            if secure.arrays is not None:
                arrays = secure.arrays
        else:  # --- each merchant trains and noises its own update ---
            arrays = _local_round(grid, run, strategy, registry, server_round, arrays, settings, expected, result,
                                  row, started)
        published = average.update(arrays)
        # --- federated evaluation of the (new) global model: every `evaluate-every` rounds and after the last ---
        if run.fraction_evaluate > 0 and (server_round % run.evaluate_every == 0 or server_round == run.num_rounds):
            eval_started = time.perf_counter()
            messages = strategy.configure_evaluate(server_round, array_record(published), ConfigRecord(settings), grid)
            evaluated, dropped = screen_evaluate_replies(
                send_and_receive(grid, messages, timeout=run.round_timeout), registry=registry,
                max_examples=run.max_examples)
            row.update(weighted_evaluation(evaluated))
            if dropped:
                row["evaluation-left-out"] = dropped
            row["evaluate-phase-seconds"] = time.perf_counter() - eval_started
            result.final = {k: row[k] for k in ("hr@10", "ndcg@10", "mrr", "valid-hr@10", "valid-ndcg@10") if k in row}
        row["epsilon"] = dict(result.epsilon)
        row["seconds"] = time.perf_counter() - started
        result.history.append(row)
        result.rounds_completed = server_round
        state = {"run_id": result.run_id, "run_config": run.to_flat(), "history": result.history,
                 "epsilon": result.epsilon, "delta": result.delta, "final": result.final,
                 "merchants": registry.state_dict()}
        saved_state = {**strategy_state(strategy), **(distributed.state_arrays() if distributed else {}),
                       **average.state_arrays()}
        store.save(Checkpoint(server_round, arrays, saved_state, state))
        manifest = {"run_id": result.run_id, "round": server_round, "rounds_planned": run.num_rounds,
                    "strategy": run.strategy, "run_config": run.to_flat(), "metrics": result.final,
                    "epsilon": result.epsilon, "delta": result.delta,
                    "dp": {"target_epsilon": run.target_epsilon, "unit": "one customer of one merchant"} if run.dp else None}
        result.model_dir = str(store.publish(server_round, model_config, published, manifest))
        if on_round is not None:
            on_round(row)
    return result


def _local_round(grid: Grid, run: RunConfig, strategy, registry: MerchantRegistry, server_round: int,
                 arrays: dict[str, np.ndarray], settings: dict, expected: dict, result: FederationResult, row: dict,
                 started: float) -> dict[str, np.ndarray]:
    """Local DP (or none): each merchant trains and noises its own update; screened, bounded, aggregated."""
    messages = strategy.configure_train(server_round, array_record(arrays), ConfigRecord(settings), grid)
    replies = send_and_receive(grid, messages, timeout=run.round_timeout)
    row["train-phase-seconds"] = time.perf_counter() - started
    screened = screen_train_replies(replies, expected, registry=registry, max_examples=run.max_examples)
    for name, metrics in screened.metrics.items():  # a refusing merchant still reports what it has spent
        result.epsilon[name] = metrics["epsilon"]
        result.delta[name] = metrics["delta"]
    row["refused"] = dict(screened.refused)
    row["rejected"] = dict(screened.rejected)
    row["local-train-seconds"] = {registry.label(m): screened.metrics[registry.label(m)]["train-seconds"]
                                  for m in screened.accepted}
    kept, row["clipped"], aside = bound_updates(screened.accepted, arrays, factor=run.update_norm_bound,
                                                min_cosine=run.min_update_cosine, registry=registry)
    row["rejected"].update(aside)
    row["merchants-trained"] = [registry.label(m) for m in kept]
    if len(kept) >= run.min_replies:
        aggregated, train_metrics = strategy.aggregate_train(server_round, kept)
        if aggregated is not None:
            arrays = {k: v.numpy() for k, v in aggregated.items()}
        row["aggregated"] = aggregated is not None
        row["train-loss"] = float(train_metrics["train-loss"]) if train_metrics else None
    else:
        row["aggregated"] = False
        log.warning("round %d: %d good replies, quorum is %d; the global model is unchanged",
                    server_round, len(kept), run.min_replies)
    return arrays

