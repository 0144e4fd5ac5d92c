"""A merchant's part of a federated round in plain PyTorch: take the global weights, train locally, evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from shared_model.evaluation import evaluate
from shared_model.features import ITEM_FIELDS, TITLE_TOKENS, SequenceData
from shared_model.model import ProfileConfig, ProfileTransformer
from shared_model.privacy import PrivacyBudgetExhausted, PrivacyLedger
from shared_model.run_config import RunConfig
from shared_model.training import train


def initial_shared_state(config: ProfileConfig, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The global model's first shared weights; they do not depend on any merchant's catalogue."""
    torch.manual_seed(seed)
    model = ProfileTransformer(config, torch.zeros(1, len(ITEM_FIELDS) + TITLE_TOKENS, dtype=torch.long))
    return {name: tensor.clone() for name, tensor in model.shared_state().items()}


def embedding_table_names(config: ProfileConfig) -> frozenset[str]:
    """The shared weights that are lookup tables (one row per hashed item, category, word...): a merchant's
    training changes only the rows its own data looks up."""
    model = ProfileTransformer(config, torch.zeros(1, len(ITEM_FIELDS) + TITLE_TOKENS, dtype=torch.long))
    shared = model.shared_state()
    return frozenset(f"{name}.weight" for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Embedding) and f"{name}.weight" in shared)


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


@dataclass
class LocalUpdate:
    """What one merchant's training round produced; only `shared_state` and the figures leave the merchant."""

    num_examples: int
    shared_state: dict[str, torch.Tensor] | None = None
    local_state: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: float = float("nan")
    epsilon: float = 0.0
    delta: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    ledger_state: dict | None = None
    optimizer_state: dict[str, torch.Tensor] = field(default_factory=dict)  # stays on the merchant
    refused: str | None = None  # why the merchant did not train (its privacy budget is spent)


def local_round(
    model: ProfileTransformer,
    data: SequenceData,
    run: RunConfig,
    *,
    ledger_state: dict | None,
    server_round: int = 0,
    epsilon_cap: float | None = None,
    proximal_mu: float = 0.0,
    optimizer_state: dict[str, torch.Tensor] | None = None,
    device: torch.device,
) -> LocalUpdate:
    """Train `model` (already holding the global shared weights) for the run's local epochs on this merchant's
    users. Under DP the ledger carries on from `ledger_state`, so epsilon accumulates over rounds; a round that
    would pass the merchant's target is refused before any step is taken."""
    privacy = run.privacy_config(num_users=len(data.train), epsilon_cap=epsilon_cap)
    started = time.perf_counter()
    try:
        result = train(model, data, run.train_config(server_round=server_round), privacy=privacy,
                       ledger_state=ledger_state, device=device, validate=False, proximal_mu=proximal_mu,
                       optimizer_state=optimizer_state if run.keep_optimizer_state else None)
    except PrivacyBudgetExhausted as exc:
        ledger = PrivacyLedger.from_state_dict(ledger_state) if ledger_state else None
        return LocalUpdate(num_examples=len(data.train), refused=str(exc), ledger_state=ledger_state,
                           epsilon=ledger.epsilon() if ledger else 0.0,
                           delta=ledger.target_delta if ledger else 0.0, local_state=model.local_state())
    model.cpu()
    return LocalUpdate(
        num_examples=len(data.train),
        shared_state={n: t.clone() for n, t in model.shared_state().items()},
        local_state={n: t.clone() for n, t in model.local_state().items()},
        loss=float(result.history[-1]["loss"]) if result.history else float("nan"),
        epsilon=result.epsilon,
        delta=result.delta,
        steps=result.steps,
        seconds=time.perf_counter() - started,
        ledger_state=result.privacy_state,
        optimizer_state=result.optimizer_state if run.keep_optimizer_state else {},
    )


def local_evaluate(model: ProfileTransformer, data: SequenceData, *, device: torch.device) -> dict[str, float]:
    """HR@10, NDCG@10 and MRR over the merchant's full catalogue on its test users (and `valid-` on validation)."""
    model.to(device)
    test = evaluate(model, data.test, device=device, ks=(10,))
    valid = evaluate(model, data.valid, device=device, ks=(10,))
    model.cpu()
    return {**{k: v for k, v in test.items() if k != "users"}, "users": test["users"],
            **{f"valid-{k}": v for k, v in valid.items() if k != "users"}}
