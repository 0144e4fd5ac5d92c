"""One training loop for plain and DP-SGD training of the profile Transformer."""

from __future__ import annotations

import copy
import math
import time
import warnings
from contextlib import contextmanager
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from shared_model.evaluation import evaluate
from shared_model.features import SequenceData
from shared_model.model import ProfileTransformer
from shared_model.privacy import PrivacyConfig, PrivacyLedger


# Opacus notes that repeat on every call and say nothing about this run: fedprofile does not claim a secure
# RNG, and ghost clipping's double backward fires hooks without input gradients by design.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to module outputs")
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when present (or when asked for), CPU otherwise."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 20  # a fraction (e.g. 0.5 of an epoch per federated round) stops after that share of the steps
    batch_size: int = 128  # expected batch size (Poisson sampling under DP): one optimizer step
    physical_batch_size: int | None = None  # DP only: users per forward/backward pass (bounds memory)
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "cosine": from lr down to 0 over schedule_epochs
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
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")


def scheduled_lr(config: TrainConfig, epochs_done: float) -> float:
    """The learning rate after `epochs_done` epochs of this call (fractions count), on the run's schedule."""
    if config.lr_schedule == "constant":
        return config.lr
    total = config.schedule_epochs or config.epochs
    progress = min(1.0, (config.schedule_start + epochs_done) / total)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _contrastive(profiles, positives, negatives, target_ids, negative_ids) -> torch.Tensor:
    """Softmax loss of each position's target against shared negatives (a negative equal to the target
    is masked): profiles, positives (P, k), negatives (N, k), target_ids (P,), negative_ids (N,) -> (P,)."""
    positive = (profiles * positives).sum(-1, keepdim=True)  # (P, 1)
    negative = profiles @ negatives.T  # (P, N)
    negative = negative.masked_fill(negative_ids.view(1, -1) == target_ids.unsqueeze(-1), float("-inf"))
    logits = torch.cat([positive, negative], dim=-1).float()
    return torch.logsumexp(logits, dim=-1) - logits[:, 0]


class ProfileLoss(nn.Module):
    """Per-user loss: sampled-softmax next-item loss + next-category softmax + purchase-propensity terms,
    averaged over the user's positions. `reduction` is what Opacus' ghost clipping toggles ('none' gives (B,))."""

    def __init__(self, *, category_weight: float, purchase_weight: float, reduction: str = "mean"):
        super().__init__()
        self.category_weight = category_weight
        self.purchase_weight = purchase_weight
        self.reduction = reduction

    def forward(self, outputs, targets) -> torch.Tensor:
        profiles, positives, target_category_vectors, negatives, category_vectors, purchase_logits = outputs
        target_items, target_categories, target_purchase, negative_ids, category_ids = targets
        # Score real positions only: on short-history data (Beauty: 6 of 50) padding would be most of the work.
        users, steps = (target_items > 0).nonzero(as_tuple=True)  # (P,) each
        here = profiles[users, steps]  # (P, k)
        item_loss = _contrastive(here, positives[users, steps], negatives, target_items[users, steps], negative_ids)
        category_loss = _contrastive(here, target_category_vectors[users, steps], category_vectors,
                                     target_categories[users, steps], category_ids)
        known = (target_purchase >= 0).float()
        purchase_loss = F.binary_cross_entropy_with_logits(
            purchase_logits.float(), target_purchase.clamp(min=0), reduction="none"
        ) * known  # (B, T)
        B = target_items.shape[0]
        per_user_sum = torch.zeros(B, device=item_loss.device, dtype=item_loss.dtype).index_add(
            0, users, item_loss + self.category_weight * category_loss
        ) + self.purchase_weight * purchase_loss.sum(1)
        per_user = per_user_sum / (target_items > 0).sum(1).clamp(min=1)  # (B,)
        if self.reduction == "none":
            return per_user
        return per_user.sum() if self.reduction == "sum" else per_user.mean()


def length_grouped_batches(lengths: torch.Tensor, batch_size: int, *, seed: int, group: int = 64):
    """Shuffled batches of users with similar history lengths (plain training): each chunk of `group` batches
    is sorted by length before it is cut, so a batch can be trimmed to its longest user; batch order is shuffled."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator)
    batches = []
    for start in range(0, len(order), batch_size * group):
        chunk = order[start:start + batch_size * group]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def trim_padding(batch: list[torch.Tensor], targets: torch.Tensor) -> list[torch.Tensor]:
    """Cut the right padding the whole batch shares: (B, L) tensors -> (B, T), T = the most targets any user has
    (`targets` (B, L), 0 = none). With right padding and causal attention, the kept positions do not change."""
    if targets.shape[0] == 0:
        return batch
    T = max(1, int((targets > 0).sum(1).max()))
    return [t[:, :T] if t.dim() == 2 else t for t in batch]


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


def _steps_for(epochs: float, batches_per_epoch: int) -> int:
    """Whole epochs take every batch; a fraction rounds down (at least one step), so rounds of half an epoch never
    take more steps than the privacy plan for the same number of epochs allowed."""
    return max(1, int(epochs * batches_per_epoch))


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def _moments(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat tensors ("<parameter index>.<name>"), e.g. Adam's moments."""
    return {f"{index}.{name}": value.detach().cpu().clone() for index, state in optimizer.state_dict()["state"].items()
            for name, value in state.items() if torch.is_tensor(value)}


def _load_moments(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    """Carry on from `_moments` of the same model's optimizer; this call's learning rate and other settings hold."""
    state: dict[int, dict] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _batch_to(batch, device):
    return [t.to(device, non_blocking=True) for t in batch]


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
    num_items = data.catalogue.num_items
    category_set = torch.unique(data.catalogue.descriptors[1:, 2]).to(device)  # the merchant's category buckets
    if len(dataset) == 0:
        raise ValueError("no training sequences: every user needs at least 2 events before the held-out ones")
    if privacy is None and config.group_by_length:
        loader = DataLoader(dataset, batch_sampler=_EpochBatches(data.train.lengths, config.batch_size, config.seed))
    else:  # DP-SGD replaces this with Poisson sampling over all users
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=False)
    optimizer = _optimizer(model, config)
    if optimizer_state:
        _load_moments(optimizer, optimizer_state)
    criterion = ProfileLoss(category_weight=config.category_weight, purchase_weight=config.purchase_weight)
    ledger = engine = None
    net = model
    # The average is made from the weights alone, after each step: under DP it is post-processing (no privacy cost).
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay)) if config.ema_decay else None
    scored = ema.module if ema is not None else model  # what validation sees and what is kept
    if privacy is not None:
        if model.config.tie_item_tables:
            raise ValueError(
                "tie_item_tables is for plain training: DP-SGD's ghost clipping refuses one item table used for "
                "both inputs and outputs; build the model with tie_item_tables=False"
            )
        from opacus import PrivacyEngine

        from shared_model import embedding_norm

        embedding_norm.install()

        sample_rate = 1 / len(loader)
        steps_now = _steps_for(config.epochs, len(loader))
        if ledger_state is not None:
            ledger = PrivacyLedger.from_state_dict(ledger_state)
        else:
            planned_epochs = privacy.planned_epochs or config.epochs
            ledger = PrivacyLedger.plan(privacy, sample_rate=sample_rate, planned_steps=int(round(planned_epochs * len(loader))))
        ledger.check_budget(steps_now)
        engine = PrivacyEngine(accountant=ledger.accountant_name)
        if ledger.accountant_state:
            engine.accountant.load_state_dict(copy.deepcopy(ledger.accountant_state))
        mode = "ghost" if privacy.ghost_clipping else "hooks"
        wrapped = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=loader,
            noise_multiplier=ledger.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=mode,
            loss_reduction="mean",
        )
        if mode == "ghost":
            net, optimizer, criterion, loader = wrapped
        else:
            net, optimizer, loader = wrapped

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    result = TrainResult(delta=privacy.target_delta if privacy else 0.0)
    # Under DP the weights returned are the last ones: picking a checkpoint by the users' validation
    # items would spend privacy that the accountant does not count.
    select_best = config.keep_best and privacy is None and validate
    # FedProx's proximal term mu/2 |w - w_global|^2, applied as a decoupled step after each optimizer step:
    # it does not depend on any user's data, so DP-SGD's per-user clipping and noise are untouched.
    anchor = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad] if proximal_mu > 0 else []
    best = (-1.0, None, 0)
    stale = 0
    examples, train_seconds = 0, 0.0
    last = math.ceil(config.epochs)
    total_steps, steps = _steps_for(config.epochs, len(loader)), 0  # optimizer steps; under DP, logical steps
    epochs = tqdm(range(1, last + 1), desc="train", unit="epoch", disable=not config.show_progress)
    for epoch in epochs:
        started = time.perf_counter()
        total_loss, batches = 0.0, 0
        with _physical_batches(loader, optimizer, config, privacy) as physical:
            for batch in physical:
                if batch[0].shape[0] == 0 and privacy is None:
                    continue
                *inputs, target_items, target_categories, target_purchase = _batch_to(trim_padding(list(batch), batch[-3]), device)
                B, T = target_items.shape
                if config.full_softmax:  # every other catalogue item is a negative
                    negatives = torch.arange(1, num_items + 1, device=device)
                else:
                    negatives = torch.randint(1, num_items + 1, (config.negatives,), device=device)
                if config.lr_schedule != "constant":
                    for group in optimizer.param_groups:
                        group["lr"] = scheduled_lr(config, steps / len(loader))
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    outputs = net(*inputs, target_items, negatives, target_categories, category_set,
                                  train_negatives=privacy is None)
                    loss = criterion(outputs, (target_items, target_categories, target_purchase, negatives, category_set))
                loss.backward()
                optimizer.step()
                stepped = not getattr(optimizer, "_is_last_step_skipped", False)
                if anchor and stepped:
                    with torch.no_grad():
                        for param, start in anchor:
                            param.sub_(config.lr * proximal_mu * (param - start))
                if ema is not None and stepped:
                    ema.update_parameters(model)
                total_loss += float(loss.item()) if B else 0.0
                batches += 1
                examples += B
                steps += stepped
                if steps >= total_steps:  # a fractional epoch ends here, after a whole (logical) step
                    break
        train_seconds += time.perf_counter() - started
        row = {"epoch": epoch, "loss": total_loss / max(batches, 1), "seconds": round(train_seconds, 2)}
        if engine is not None:
            ledger.record(engine.accountant)
            row["epsilon"] = ledger.epsilon()
        last_epoch = epoch == last or (config.max_seconds is not None and train_seconds >= config.max_seconds)
        if validate and ((config.eval_every and epoch % config.eval_every == 0) or last_epoch):
            row["valid"] = evaluate(scored, data.valid, device=device, ks=(10,))
            if config.track_test:
                row["test"] = evaluate(scored, data.test, device=device, ks=(10,))
            if row["valid"]["ndcg@10"] > best[0]:
                best = (row["valid"]["ndcg@10"], copy.deepcopy(scored.state_dict()) if select_best else None, epoch)
                stale = 0
            else:
                stale += 1
                last_epoch = last_epoch or (select_best and config.patience is not None and stale >= config.patience)
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        epochs.set_postfix({k: (round(v, 4) if isinstance(v, float) else v) for k, v in
                            [("loss", row["loss"]), ("ndcg@10", row.get("valid", {}).get("ndcg@10", float("nan"))),
                             ("eps", row.get("epsilon", 0.0))]})
        if last_epoch:
            break
    if select_best and best[1] is not None:
        model.load_state_dict(best[1])
        result.best_epoch = best[2]
    else:
        result.best_epoch = result.history[-1]["epoch"]
    if engine is not None:
        ledger.record(engine.accountant)
        result.epsilon = ledger.epsilon()
        result.noise_multiplier = ledger.noise_multiplier
        result.steps = ledger.steps_taken()
        result.privacy_state = ledger.state_dict()
        net._close()  # removes Opacus hooks and per-sample attributes; `model` is plain again
    else:
        result.steps = steps
    if ema is not None and not (select_best and best[1] is not None):
        model.load_state_dict(ema.module.state_dict())
    result.optimizer_state = _moments(optimizer.original_optimizer if engine is not None else optimizer)
    result.train_seconds = train_seconds
    result.examples_per_second = examples / train_seconds if train_seconds > 0 else 0.0
    if validate:
        result.valid = evaluate(model, data.valid, device=device)
    if validate and evaluate_test:
        result.test = evaluate(model, data.test, device=device)
    return result


def refit(model: ProfileTransformer, data: SequenceData, selected: TrainResult, config: TrainConfig, *,
          device: torch.device | None = None) -> TrainResult:
    """Train `model` (fresh) for the epochs validation chose in `selected`, on `data` built with
    `train_on_validation=True`, and test it. Validation figures stay the selection run's (the refit has
    seen the validation events); its test figures are kept as `selection_test`."""
    device = device or pick_device()
    plain = replace(config, epochs=selected.best_epoch, keep_best=False, eval_every=0, patience=None, max_seconds=None)
    result = train(model, data, plain, device=device, validate=False)
    result.test = evaluate(model, data.test, device=device)
    result.valid, result.best_epoch, result.selection_test = selected.valid, selected.best_epoch, selected.test
    result.history = selected.history + [{**row, "refit": True} for row in result.history]
    result.train_seconds += selected.train_seconds
    return result


class _EpochBatches:
    """A batch sampler that draws new length-grouped batches every epoch."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def __iter__(self):
        self.epoch += 1
        return iter(length_grouped_batches(self.lengths, self.batch_size, seed=self.seed * 100_003 + self.epoch))

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


@contextmanager
def _physical_batches(loader, optimizer, config: TrainConfig, privacy):
    """Under DP, split each sampled (logical) batch into physical ones; accounting stays per logical batch."""
    if privacy is None or not config.physical_batch_size or config.physical_batch_size >= config.batch_size:
        yield loader
        return
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=config.physical_batch_size,
                            optimizer=optimizer) as physical:
        yield physical
