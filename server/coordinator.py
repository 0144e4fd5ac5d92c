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
from shared_model.evaluation_request import EVALUATION, ask_evaluation
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
    final: dict = field(default_factory=dict)  # the latest federated evaluation
    final_round: int | None = None  # the round whose model `final` measured
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
                                  state.get("delta", {}), state.get("final", {}), state.get("final_round"),
                                  resumed_from=checkpoint.round)
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
    # a round's model evaluated by the next round's training messages (`evaluate-with-training`): (round, weights)
    pending = _unevaluated(run, result, average, arrays)

    for server_round in range(result.rounds_completed + 1, run.num_rounds + 1):
        started = time.perf_counter()
        row: dict = {"round": server_round}
        # (round, its weights as a record, or None when they are the weights this round trains: sent once)
        asked = None if pending is None else (pending[0], None if pending[1] is arrays else array_record(pending[1]))
        if distributed is not None:  # --- one central DP-SGD step through the secure sum ---
            secure = distributed.round(grid, server_round, arrays, settings, registry, evaluation=asked)
            row.update({"refused": {}, "rejected": {}, "merchants-trained": [], **secure.row})
            result.epsilon.update(secure.epsilon)
            result.delta.update(secure.delta)
            if secure.arrays is not None:
                arrays = secure.arrays
            folded = _evaluations(secure.evaluation_replies, run, registry) if asked else None
        else:  # --- each merchant trains and noises its own update ---
            arrays, folded = _local_round(grid, run, strategy, registry, server_round, arrays, settings, expected,
                                          result, row, started, asked)
        if pending is not None:  # the previous round's model, evaluated by this round's merchants before training
            # no training message answered (a secure round discarded at its keys): a stage of its own
            evaluated, dropped = folded or _evaluate(grid, run, strategy, registry, *pending, settings)
            _record_evaluation(result, result.history[-1], evaluated, dropped, evaluated_in=server_round)
            row["model-evaluated"] = {"round": pending[0], **result.final}  # what this round's merchants measured
            pending = None
        published = average.update(arrays)
        # --- federated evaluation of the (new) global model: every `evaluate-every` rounds and after the last ---
        if _evaluation_due(run, server_round) and run.evaluate_with_training and server_round < run.num_rounds:
            pending = (server_round, published)
        elif _evaluation_due(run, server_round):
            eval_started = time.perf_counter()
            _record_evaluation(result, row, *_evaluate(grid, run, strategy, registry, server_round, published, settings))
            row["evaluate-phase-seconds"] = time.perf_counter() - eval_started
        row["epsilon"] = dict(result.epsilon)
        row["seconds"] = time.perf_counter() - started
        result.history.append(row)
        result.rounds_completed = server_round
        state = {"run_id": result.run_id, "run_config": run.to_flat(), "history": result.history,
                 "epsilon": result.epsilon, "delta": result.delta, "final": result.final,
                 "final_round": result.final_round, "merchants": registry.state_dict()}
        saved_state = {**strategy_state(strategy), **(distributed.state_arrays() if distributed else {}),
                       **average.state_arrays()}
        store.save(Checkpoint(server_round, arrays, saved_state, state))
        manifest = {"run_id": result.run_id, "round": server_round, "rounds_planned": run.num_rounds,
                    "strategy": run.strategy, "run_config": run.to_flat(), "metrics": result.final,
                    "metrics_round": result.final_round,  # an earlier version's, when this one is evaluated later
                    "epsilon": result.epsilon, "delta": result.delta,
                    "dp": {"target_epsilon": run.target_epsilon, "unit": "one customer of one merchant"} if run.dp else None}
        result.model_dir = str(store.publish(server_round, model_config, published, manifest))
        if on_round is not None:
            on_round(row)
    return result


def _evaluate(grid: Grid, run: RunConfig, strategy, registry: MerchantRegistry, model_round: int,
              published: dict[str, np.ndarray], settings: dict) -> tuple[dict, dict]:
    """Federated evaluation as a message stage of its own: (label -> checked metrics, label -> why left out)."""
    messages = strategy.configure_evaluate(model_round, array_record(published), ConfigRecord(settings), grid)
    return screen_evaluate_replies(send_and_receive(grid, messages, timeout=run.round_timeout), registry=registry,
                                   max_examples=run.max_examples)


def _evaluations(replies: list, run: RunConfig, registry: MerchantRegistry) -> tuple[dict, dict] | None:
    """The evaluations that training replies carry (evaluate-with-training), screened like an evaluate stage's
    and then taken off the replies (Flower's strategies aggregate replies of one metric record); None when no
    reply came back."""
    if not replies:
        return None
    screened = screen_evaluate_replies(replies, registry=registry, max_examples=run.max_examples, folded=True)
    for reply in replies:
        if not reply.has_error() and EVALUATION in reply.content.metric_records:
            del reply.content[EVALUATION]
    return screened


def _evaluation_due(run: RunConfig, server_round: int) -> bool:
    """Whether the model of this round is evaluated: every `evaluate-every` rounds and after the last."""
    return run.fraction_evaluate > 0 and (server_round % run.evaluate_every == 0 or server_round == run.num_rounds)


def _unevaluated(run: RunConfig, result: FederationResult, average: WeightAverage,
                 arrays: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]] | None:
    """A resumed run whose last round's model was due for evaluation with the next round's training, which never
    came: (that round, its published weights), so the first round after the restart evaluates it."""
    if not result.history or not run.evaluate_with_training:
        return None
    last = result.history[-1]
    if last["round"] >= run.num_rounds or not _evaluation_due(run, last["round"]) or "evaluated-merchants" in last:
        return None
    return last["round"], average.published(arrays)


def _record_evaluation(result: FederationResult, row: dict, evaluated: dict, dropped: dict, *,
                       evaluated_in: int | None = None) -> None:
    """A round's federated evaluation into its history row (`evaluated-in`: the round whose training messages
    carried it) and into the run's latest figures."""
    row.update(weighted_evaluation(evaluated))
    if dropped:
        row["evaluation-left-out"] = dropped
    if evaluated_in is not None:
        row["evaluated-in"] = evaluated_in
    result.final = {k: row[k] for k in ("hr@10", "ndcg@10", "mrr", "valid-hr@10", "valid-ndcg@10") if k in row}
    result.final_round = row["round"]


def _local_round(grid: Grid, run: RunConfig, strategy, registry: MerchantRegistry, server_round: int,
                 arrays: dict[str, np.ndarray], settings: dict, expected: dict, result: FederationResult, row: dict,
                 started: float, asked: tuple | None) -> tuple[dict[str, np.ndarray], tuple | None]:
    """Local DP (or none): each merchant trains and noises its own update; screened, bounded, aggregated. Returns
    the new weights and the screened evaluation `asked` for (`_evaluations`)."""
    messages = strategy.configure_train(server_round, array_record(arrays), ConfigRecord(settings), grid)
    if asked is not None:
        ask_evaluation(messages, model_round=asked[0], published=asked[1])
    replies = send_and_receive(grid, messages, timeout=run.round_timeout)
    folded = _evaluations(replies, run, registry) if asked is not None else None
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
    return arrays, folded

