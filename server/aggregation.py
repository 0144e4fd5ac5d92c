"""Choosing Flower's aggregation strategy from the run config, the row-wise table average, and the strategy's state."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, Krum, Strategy

from shared_model.run_config import AVERAGING_STRATEGIES, RunConfig
from shared_model.shared_weights import embedding_table_names


def touched_row_average(sent: np.ndarray, returned: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Average a table's updates row by row over only the merchants whose training changed that row.

    A row no merchant looked up comes back bit-identical (its gradient and optimiser moments are exactly 0), so
    plain FedAvg counts it as a zero update and moves an item that 2 of 8 merchants sell at a quarter of the
    speed those two merchants train it. Rows every merchant changed get plain FedAvg; untouched rows keep `sent`.
    Under DP-SGD the noise changes every row, so this is plain FedAvg there."""
    sent = np.asarray(sent)  # (rows, dim)
    update_sum = np.zeros(sent.shape, dtype=np.float64)
    weight_sum = np.zeros(sent.shape[:1], dtype=np.float64)  # (rows,)
    for table, weight in zip(returned, weights, strict=True):
        delta = np.asarray(table, dtype=np.float64) - sent
        touched = np.any(delta != 0, axis=tuple(range(1, delta.ndim)))  # (rows,)
        update_sum += weight * delta
        weight_sum += weight * touched
    shape = (-1,) + (1,) * (sent.ndim - 1)
    update = update_sum / np.maximum(weight_sum, 1e-300).reshape(shape)
    return (sent + update).astype(sent.dtype)


class TouchedRowsFedAvg(FedAvg):
    """FedAvg whose embedding tables are averaged row by row over the merchants that changed each row
    (`shared_model.merchant_round.touched_row_average`); every other weight is Flower's weighted mean."""

    # Set after construction: FedAvgM and FedProx pass only FedAvg's own arguments up their __init__.
    table_names: frozenset[str] = frozenset()
    _sent: dict[str, np.ndarray] | None = None  # this round's tables as sent, set by configure_train

    def configure_train(self, server_round, arrays, config, grid):
        self._sent = {name: arrays[name].numpy() for name in self.table_names if name in arrays}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None or not self._sent:
            return averaged, metrics
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        weights = [float(m.content.metric_records["metrics"][self.weighted_by_key]) for m in valid]
        records = [next(iter(m.content.array_records.values())) for m in valid]
        tables = {name: Array(touched_row_average(sent, [r[name].numpy() for r in records], weights))
                  for name, sent in self._sent.items()}
        return ArrayRecord({name: tables.get(name, value) for name, value in averaged.items()}), metrics


# FedAvgM and FedProx call FedAvg's aggregate_train / configure_train through super(): with TouchedRowsFedAvg
# next in line, the server momentum and the proximal term work on the row-wise average.
class TouchedRowsFedAvgM(FedAvgM, TouchedRowsFedAvg):
    pass


class TouchedRowsFedProx(FedProx, TouchedRowsFedAvg):
    pass


_AVERAGING = {"fedavg": (FedAvg, TouchedRowsFedAvg), "fedavgm": (FedAvgM, TouchedRowsFedAvgM),
              "fedprox": (FedProx, TouchedRowsFedProx)}  # strategy -> (Flower's, with sparse-rows)


def make_strategy(run: RunConfig) -> Strategy:
    """Flower's own strategies; fedprofile adds only the screening and the bookkeeping around them, and
    (`sparse-rows`) the row-wise average of the embedding tables for the averaging strategies."""
    common = dict(fraction_train=run.fraction_train, fraction_evaluate=run.fraction_evaluate,
                  min_train_nodes=run.min_replies, min_evaluate_nodes=run.min_replies if run.fraction_evaluate else 0,
                  min_available_nodes=run.min_replies)
    if run.strategy in AVERAGING_STRATEGIES:
        plain, rowwise = _AVERAGING[run.strategy]
        extra = {"fedavgm": dict(server_momentum=run.server_momentum),
                 "fedprox": dict(proximal_mu=run.proximal_mu)}.get(run.strategy, {})
        strategy = (rowwise if run.sparse_rows else plain)(**common, **extra)
        if run.sparse_rows:
            strategy.table_names = embedding_table_names(run.model_config())
        return strategy
    if run.strategy == "fedadam":
        return FedAdam(**common, eta=run.server_lr, eta_l=run.lr, tau=run.server_tau)
    if run.strategy == "fedmedian":
        return FedMedian(**common)
    if run.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=run.trim_beta)
    if run.strategy == "krum":
        return Krum(**common, num_malicious_nodes=run.krum_byzantine)
    raise ValueError(f"unknown strategy {run.strategy!r}")


# Server-side optimiser state that must survive a restart: FedAdam's moments (dicts by weight name) and
# FedAvgM's momentum (a list in weight order).
_STATE_ATTRIBUTES = ("m_t", "v_t")
_LIST_STATE_ATTRIBUTES = ("momentum_vector",)


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    out = {}
    for attribute in _STATE_ATTRIBUTES:
        for name, value in (getattr(strategy, attribute, None) or {}).items():
            out[f"{attribute}/{name}"] = np.asarray(value)
    for attribute in _LIST_STATE_ATTRIBUTES:
        for index, value in enumerate(getattr(strategy, attribute, None) or []):
            out[f"{attribute}/{index:05d}"] = np.asarray(value)
    return out


def restore_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    for attribute in _STATE_ATTRIBUTES:
        values = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(attribute + "/")}
        if values:
            setattr(strategy, attribute, values)
    for attribute in _LIST_STATE_ATTRIBUTES:
        values = [state[k] for k in sorted(k for k in state if k.startswith(attribute + "/"))]
        if values:
            setattr(strategy, attribute, values)


def array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """The global weights as the ArrayRecord a message carries (torch tensors over the same memory)."""
    return ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
