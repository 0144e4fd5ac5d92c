"""A merchant's part of a federated round in plain PyTorch: take the global weights, train locally, evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from shared_model.evaluation import evaluate
from shared_model.features import SequenceData
from shared_model.model import ProfileTransformer
from shared_model.privacy import PrivacyBudgetExhausted
from shared_model.run_config import RunConfig
from shared_model.training import train


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
    delta_cap: float | None = None,
    proximal_mu: float = 0.0,
    optimizer_state: dict[str, torch.Tensor] | None = None,
    device: torch.device,
) -> LocalUpdate:
    """Train `model` (already holding the global shared weights) for the run's local epochs on this merchant's
    users. Under DP the ledger carries on from `ledger_state`, so epsilon accumulates over rounds; a round that
    would pass the merchant's target is refused before any step is taken."""
    privacy = run.privacy_config(num_users=len(data.train), epsilon_cap=epsilon_cap, delta_cap=delta_cap)
    started = time.perf_counter()
    try:
        config = run.train_config(server_round=server_round, num_items=data.catalogue.num_items,
                                  positions_per_customer=data.train.positions_per_user())
        result = train(model, data, config, privacy=privacy,
                       ledger_state=ledger_state, device=device, validate=False, proximal_mu=proximal_mu,
                       optimizer_state=optimizer_state if run.keep_optimizer_state else None)
    except PrivacyBudgetExhausted as exc:
        # a kept ledger stays as checked (a ceiling lowered since the last round holds from now on); a first round
        # refused before any step leaves no ledger behind
        ledger = exc.ledger if ledger_state else None
        return LocalUpdate(num_examples=len(data.train), refused=str(exc),
                           ledger_state=ledger.state_dict() if ledger else None,
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
