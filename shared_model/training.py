"""One training loop for plain and DP-SGD training of the profile Transformer."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from shared_model.batching import EpochBatches, physical_batches, steps_for, trim_padding
from shared_model.device import autocast_for, pick_device
from shared_model.dp_engine import PrivateTraining, make_private
from shared_model.evaluation import evaluate
from shared_model.features import SequenceData
from shared_model.loss import AVERAGES, ProfileLoss
from shared_model.model import ProfileTransformer
from shared_model.optimizers import OPTIMIZERS, load_moments, make_optimizer, optimizer_moments
from shared_model.privacy import PrivacyConfig
from shared_model.selection import Selection

# Opacus notes that repeat on every call and say nothing about this run: fedprofile does not claim a secure
# RNG, and ghost clipping's double backward fires hooks without input gradients by design.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to module outputs")
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")


LR_SCHEDULES = ("constant", "cosine")  # fixed in advance: what a federated round can follow
PLATEAU = "plateau"  # halve the rate when validation stalls: a training call that validates as it goes


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 20  # a fraction (e.g. 0.5 of an epoch per federated round) stops after that share of the steps
    batch_size: int = 128  # expected batch size (Poisson sampling under DP): one optimizer step
    physical_batch_size: int | None = None  # DP only: users per forward/backward pass (bounds memory)
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "cosine": from lr down to 0 over schedule_epochs; "plateau": see below
    plateau_evaluations: int = 2  # "plateau": halve lr after this many validation passes without a better NDCG@10
    epoch_lrs: tuple[float, ...] = ()  # each epoch's lr as a run recorded it (a refit replays a plateau run's)
    schedule_epochs: float | None = None  # the schedule's length in epochs (None: this call's epochs)
    schedule_start: float = 0.0  # epochs of the schedule done before this call (a federated round's offset)
    weight_decay: float = 0.0
    optimizer: str = "adam"  # "sgd" (momentum 0.9): under DP, Adam scales pure-noise coordinates up to ~lr a step
    negatives: int = 256  # uniform negatives shared by the batch (sampled softmax)
    full_softmax: bool = False  # use the whole catalogue as negatives instead
    group_by_length: bool = True  # plain training: batch users of similar history length (less padding)
    ema_decay: float = 0.0  # > 0: evaluate, keep and return an exponential moving average of the weights
    category_weight: float = 0.1
    purchase_weight: float = 0.1
    loss_average: str = "users"  # "positions": every scored position alike, as SASRec (plain training only)
    seed: int = 0
    eval_every: int = 1  # epochs between validation passes (0: only at the end)
    keep_best: bool = True  # restore the weights with the best validation NDCG@10 (plain training only)
    max_seconds: float | None = None  # stop after this much training time
    patience: int | None = None  # stop after this many validation passes without a better NDCG@10 (plain only)
    track_test: bool = False  # also record test metrics at each validation pass (for metric-vs-time curves)
    show_progress: bool = True

    def __post_init__(self):
        if not self.epochs > 0 or self.batch_size < 1 or self.negatives < 1:
            raise ValueError("epochs must be positive, batch_size and negatives at least 1")
        if self.lr_schedule not in (*LR_SCHEDULES, PLATEAU):
            raise ValueError(f"lr_schedule must be one of {', '.join((*LR_SCHEDULES, PLATEAU))}, "
                             f"got {self.lr_schedule!r}")
        if self.lr_schedule == PLATEAU and (self.eval_every < 1 or self.plateau_evaluations < 1):
            raise ValueError("lr_schedule='plateau' follows validation: it needs eval_every >= 1 and "
                             "plateau_evaluations >= 1")
        if self.loss_average not in AVERAGES:
            raise ValueError(f"loss_average must be one of {', '.join(AVERAGES)}, got {self.loss_average!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")


def scheduled_lr(config: TrainConfig, epochs_done: float) -> float:
    """The learning rate after `epochs_done` epochs of this call (fractions count), on the run's schedule
    (a plateau run's rate depends on its validation passes: `_Plateau` sets it)."""
    if config.epoch_lrs:
        return config.epoch_lrs[min(int(epochs_done), len(config.epoch_lrs) - 1)]
    if config.lr_schedule in ("constant", PLATEAU):
        return config.lr
    total = config.schedule_epochs or config.epochs
    progress = min(1.0, (config.schedule_start + epochs_done) / total)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    valid: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    epsilon: float = 0.0
    delta: float = 0.0
    noise_multiplier: float = 0.0
    steps: int = 0
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    best_epoch: int = 0
    privacy_state: dict | None = None
    optimizer_state: dict | None = None  # the optimizer's moments at the end (flat tensors) to carry on from
    selection_test: dict | None = None  # with a refit: test metrics of the model validation selected

    def metrics(self) -> dict:
        out = {**self.test, "epsilon": self.epsilon, "delta": self.delta, "noise_multiplier": self.noise_multiplier,
               "steps": self.steps, "train_seconds": self.train_seconds,
               "examples_per_second": self.examples_per_second, "best_epoch": self.best_epoch,
               "valid": self.valid, "history": self.history}
        if self.selection_test is not None:
            out["selection_test"] = self.selection_test
        return out


def train(
    model: ProfileTransformer,
    data: SequenceData,
    config: TrainConfig,
    *,
    privacy: PrivacyConfig | None = None,
    ledger_state: dict | None = None,
    device: torch.device | None = None,
    evaluate_test: bool = True,
    validate: bool = True,
    proximal_mu: float = 0.0,
    optimizer_state: dict | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `model` in place on `data.train`; with `privacy`, user-level DP-SGD (one user = one example).

    `ledger_state` continues an earlier privacy ledger (same merchant), so epsilon accumulates;
    `validate=False` skips every validation/test pass (a federated round evaluates separately);
    `proximal_mu` > 0 pulls the weights back towards where they started after each step (FedProx);
    `optimizer_state` (an earlier result's) carries the optimizer's moments on instead of starting afresh;
    `on_epoch` receives each epoch's history row (loss, time, epsilon, validation metrics)."""
    device = device or pick_device()
    torch.manual_seed(config.seed)
    model.to(device)
    model.train()
    dataset = TensorDataset(*data.train.tensors())
    if len(dataset) == 0:
        raise ValueError("no training sequences: every user needs at least 2 events before the held-out ones")
    if privacy is None and config.group_by_length:
        loader = DataLoader(dataset, batch_sampler=EpochBatches(data.train.lengths, config.batch_size, config.seed))
    else:  # DP-SGD replaces this with Poisson sampling over all users
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=False)
    optimizer = make_optimizer(model, name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    if optimizer_state:
        load_moments(optimizer, optimizer_state)
    if privacy is not None and config.loss_average != "users":
        raise ValueError("DP-SGD bounds each customer's gradient: its loss averages over users; drop loss_average="
                         f"{config.loss_average!r}")
    positions_per_user = data.train.positions_per_user() if config.loss_average == "positions" else 1.0
    criterion = ProfileLoss(category_weight=config.category_weight, purchase_weight=config.purchase_weight,
                            average=config.loss_average, positions_per_user=positions_per_user)
    selection = Selection(model, select_best=config.keep_best and privacy is None and validate,
                          ema_decay=config.ema_decay, patience=config.patience)
    if config.lr_schedule == PLATEAU and (privacy is not None or not validate):
        raise ValueError("lr_schedule='plateau' lowers the rate when validation stalls: under DP validation picks "
                         "nothing (it would spend privacy the accountant does not count) and without validation "
                         "there is nothing to follow; use 'constant' or 'cosine'")
    private: PrivateTraining | None = None
    net = model
    if privacy is not None:
        private = make_private(model, optimizer, criterion, loader, privacy=privacy, epochs=config.epochs,
                               ledger_state=ledger_state)
        net, optimizer, criterion, loader = private.net, private.optimizer, private.criterion, private.loader
    step = _Step(net, optimizer, criterion, config, data, device, private=privacy is not None,
                 proximal_mu=proximal_mu, model=model, backward=private.backward if private else None)
    # "plateau": the rate halves after `plateau_evaluations` validation passes without a better NDCG@10 (torch's
    # patience counts the stalls it lets pass, so the rate falls at the next one)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.5, patience=config.plateau_evaluations - 1, threshold=0.0) \
        if config.lr_schedule == PLATEAU else None

    result = TrainResult(delta=privacy.target_delta if privacy else 0.0)
    examples, train_seconds = 0, 0.0
    last = math.ceil(config.epochs)
    total_steps, steps = steps_for(config.epochs, len(loader)), 0  # optimizer steps; under DP, logical steps
    epochs = tqdm(range(1, last + 1), desc="train", unit="epoch", disable=not config.show_progress)
    for epoch in epochs:
        started = time.perf_counter()
        total_loss, batches = 0.0, 0
        for batch in physical_batches(loader, optimizer, physical_batch_size=config.physical_batch_size,
                                      private=privacy is not None):
            if batch[0].shape[0] == 0 and privacy is None:
                continue
            if config.lr_schedule == "cosine" or config.epoch_lrs:
                for group in optimizer.param_groups:
                    group["lr"] = scheduled_lr(config, steps / len(loader))
            loss, size, stepped = step(batch)
            if stepped:
                selection.after_step(model)
            total_loss += loss
            batches += 1
            examples += size
            steps += stepped
            if steps >= total_steps:  # a fractional epoch ends here, after a whole (logical) step
                break
        train_seconds += time.perf_counter() - started
        row = {"epoch": epoch, "loss": total_loss / max(batches, 1), "seconds": round(train_seconds, 2),
               "lr": optimizer.param_groups[0]["lr"]}
        if private is not None:
            row["epsilon"] = private.epsilon()
        last_epoch = epoch == last or (config.max_seconds is not None and train_seconds >= config.max_seconds)
        if validate and ((config.eval_every and epoch % config.eval_every == 0) or last_epoch):
            row["valid"] = evaluate(selection.scored, data.valid, device=device, ks=(10,))
            if config.track_test:
                row["test"] = evaluate(selection.scored, data.test, device=device, ks=(10,))
            last_epoch = selection.observe(epoch, row["valid"]["ndcg@10"]) or last_epoch
            if plateau is not None:
                plateau.step(row["valid"]["ndcg@10"])
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        epochs.set_postfix({k: (round(v, 4) if isinstance(v, float) else v) for k, v in
                            [("loss", row["loss"]), ("ndcg@10", row.get("valid", {}).get("ndcg@10", float("nan"))),
                             ("eps", row.get("epsilon", 0.0))]})
        if last_epoch:
            break
    result.best_epoch = selection.restore_best(model, result.history[-1]["epoch"])
    if private is not None:
        result.epsilon = private.epsilon()
        result.noise_multiplier = private.ledger.noise_multiplier
        result.steps = private.ledger.steps_taken()
        result.privacy_state = private.ledger.state_dict()
        private.close()
    else:
        result.steps = steps
    selection.keep_average(model)
    result.optimizer_state = optimizer_moments(optimizer.original_optimizer if private is not None else optimizer)
    result.train_seconds = train_seconds
    result.examples_per_second = examples / train_seconds if train_seconds > 0 else 0.0
    if validate:
        result.valid = evaluate(model, data.valid, device=device)
    if validate and evaluate_test:
        result.test = evaluate(model, data.test, device=device)
    return result


class _Step:
    """One optimizer step on one (physical) batch: fresh negatives, forward and backward under the device's
    autocast, the step, then FedProx's pull. Returns (loss, users, whether the optimizer stepped)."""

    def __init__(self, net, optimizer, criterion, config: TrainConfig, data: SequenceData, device: torch.device, *,
                 private: bool, proximal_mu: float, model: ProfileTransformer, backward: Callable | None = None):
        self.net, self.optimizer, self.criterion, self.config, self.device = net, optimizer, criterion, config, device
        self.backward = backward or (lambda loss: loss.backward())
        self.private = private
        self.num_items = data.catalogue.num_items
        self.category_set = torch.unique(data.catalogue.descriptors[1:, 2]).to(device)  # the merchant's categories
        self.autocast = autocast_for(device)
        self.proximal_mu = proximal_mu
        # FedProx's proximal term mu/2 |w - w_global|^2, applied as a decoupled step after each optimizer step:
        # it does not depend on any user's data, so DP-SGD's per-user clipping and noise are untouched.
        self.anchor = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad] if proximal_mu > 0 else []

    def __call__(self, batch) -> tuple[float, int, bool]:
        config, device = self.config, self.device
        batch = [t.to(device, non_blocking=True) for t in trim_padding(list(batch), batch[-3])]
        *inputs, target_items, target_categories, target_purchase = batch
        B = target_items.shape[0]
        if config.full_softmax:  # every other catalogue item is a negative
            negatives = torch.arange(1, self.num_items + 1, device=device)
        else:
            negatives = torch.randint(1, self.num_items + 1, (config.negatives,), device=device)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            outputs = self.net(*inputs, target_items, negatives, target_categories, self.category_set,
                               train_negatives=not self.private)
            loss = self.criterion(outputs, (target_items, target_categories, target_purchase, negatives,
                                            self.category_set))
        self.backward(loss)
        self.optimizer.step()
        stepped = not getattr(self.optimizer, "_is_last_step_skipped", False)
        if self.anchor and stepped:
            with torch.no_grad():
                for param, start in self.anchor:
                    param.sub_(config.lr * self.proximal_mu * (param - start))
        return (float(loss.item()) if B else 0.0), B, stepped


def refit(model: ProfileTransformer, data: SequenceData, selected: TrainResult, config: TrainConfig, *,
          device: torch.device | None = None) -> TrainResult:
    """Train `model` (fresh) for the epochs validation chose in `selected`, on `data` built with
    `train_on_validation=True`, and test it. Validation figures stay the selection run's (the refit has
    seen the validation events); its test figures are kept as `selection_test`."""
    device = device or pick_device()
    # a plateau run's rates followed its validation passes: the refit, which has none, replays them epoch by epoch
    epoch_lrs = tuple(row["lr"] for row in selected.history) if config.lr_schedule == PLATEAU else config.epoch_lrs
    # a cosine run's refit stops at the chosen epoch of the same schedule, not at the end of a shorter one
    plain = replace(config, epochs=selected.best_epoch, keep_best=False, eval_every=0, patience=None, max_seconds=None,
                    lr_schedule="constant" if config.lr_schedule == PLATEAU else config.lr_schedule,
                    schedule_epochs=config.schedule_epochs or config.epochs, epoch_lrs=epoch_lrs)
    result = train(model, data, plain, device=device, validate=False)
    result.test = evaluate(model, data.test, device=device)
    result.valid, result.best_epoch, result.selection_test = selected.valid, selected.best_epoch, selected.test
    result.history = selected.history + [{**row, "refit": True} for row in result.history]
    result.train_seconds += selected.train_seconds
    return result
