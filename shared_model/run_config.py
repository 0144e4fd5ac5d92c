"""The federation's run settings: declared in pyproject's [tool.flwr.app.config], parsed once into RunConfig."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from shared_model.loss import AVERAGES
from shared_model.model import ProfileConfig
from shared_model.negatives import whole_catalogue_fits
from shared_model.privacy import PrivacyConfig, delta_for, solve_noise_multiplier
from shared_model.training import LR_SCHEDULES, TrainConfig

PRIVACY_MODES = ("local", "distributed")
SERVER_OPTIMIZERS = ("adam", "adambc")
STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedprox", "fedmedian", "fedtrimmedavg", "krum")
AVERAGING_STRATEGIES = ("fedavg", "fedavgm", "fedprox")  # weighted means of the replies (sparse-rows applies)
PARTITIONINGS = ("natural", "iid", "dirichlet")
# Upper bounds on what a run config may ask of a merchant: a message is data, and a model of item-buckets 2^34
# or a negatives count in the billions would exhaust a merchant's memory before any check of its own.
LIMITS = {"num_rounds": 100_000, "local_epochs": 1_000, "batch_size": 1_000_000, "negatives": 1_000_000,
          "max_len": 4_096, "d_model": 2_048, "n_layers": 48, "n_heads": 64, "profile_dim": 2_048,
          "item_buckets": 1 << 24, "category_buckets": 1 << 24, "brand_buckets": 1 << 24, "token_buckets": 1 << 24,
          "synthetic_users": 10_000_000}


@dataclass(frozen=True)
class RunConfig:
    """One field per kebab-case key of [tool.flwr.app.config] (`num_rounds` <-> `num-rounds`)."""

    # rounds and aggregation
    num_rounds: int = 20
    strategy: str = "fedavg"
    min_replies: int = 2  # quorum: a round with fewer good training replies is not aggregated
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    # federated evaluation, which also hands merchants the new version to serve, every this many rounds and after the
    # last: a message stage of its own, so many short rounds (distributed DP) spend less on it
    evaluate_every: int = 1
    # a round's evaluation rides on the next round's training messages (those merchants evaluate the model first):
    # one message stage a round fewer; the last round's has a stage of its own (false: every evaluation does)
    evaluate_with_training: bool = True
    round_timeout: float = 3600.0  # seconds to wait for replies
    proximal_mu: float = 0.01  # fedprox
    server_lr: float = 0.01  # the coordinator's learning rate: fedadam's eta, distributed DP's Adam
    server_tau: float = 1e-3  # fedadam: adaptivity
    server_momentum: float = 0.0  # fedavgm: momentum over rounds of the averaged update
    sparse_rows: bool = False  # fedavg/fedavgm/fedprox: average each table row over the merchants that changed it
    trim_beta: float = 0.2  # fedtrimmedavg: fraction cut from each end
    krum_byzantine: int = 0  # krum: merchants assumed malicious
    update_norm_bound: float = 1.0  # each merchant's update clipped to this x the round's median update norm (0: off)
    max_examples: int = 10_000_000  # a reply claiming more customers than this is rejected
    min_update_cosine: float = 0.0  # updates pointing away from the round's median update are set aside (-1: off)
    # local training on each merchant
    local_epochs: float = 1  # a fraction trains that share of the merchant's batches each round
    lr: float = 3e-3
    lr_schedule: str = "constant"  # "cosine": the local lr falls to 0 over the run's rounds x local epochs
    batch_size: int = 128
    negatives: int = 256
    full_softmax: bool = False  # every other item of the merchant's catalogue a negative, within a bound (no DP)
    keep_optimizer_state: bool = False  # carry each merchant's Adam moments from one round into the next
    # "users": each customer's positions averaged, then customers (what DP-SGD clips); "positions": every scored
    # position alike, as SASRec (no DP)
    loss_average: str = "users"
    # user-level DP-SGD, per merchant, over the whole run
    dp: bool = True
    target_epsilon: float = 8.0
    target_delta: float = 0.0  # 0: each merchant uses min(1e-5, 1 / (10 x its users))
    max_grad_norm: float = 1.0
    # "local": each merchant noises its own update (it trusts no one); "distributed": one central DP-SGD step per
    # round over every merchant's customers, each merchant adding a share of the noise, summed by secure aggregation
    privacy: str = "distributed"
    sample_rate: float = 0.5  # distributed: the Poisson rate at which each merchant samples its customers a round
    colluders: int = 0  # distributed: merchants assumed to collude with the coordinator (they add no noise)
    min_survivors: int = 0  # distributed: the fewest merchants a round's sum must hold (0: every one asked)
    server_optimizer: str = "adam"  # distributed: "adam", or "adambc" (the sum's noise variance out of Adam's v)
    published_average: float = 0.0  # publish an average of the global weights over rounds, this decay (0: off)
    # the shared model
    max_len: int = 50
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    profile_dim: int = 64
    dropout: float = 0.2
    profile_mlp: bool = True  # an MLP between the encoder and the scores (false: the normalised states, d-model = profile-dim)
    tie_item_tables: bool = False  # one item encoder for inputs and outputs (no DP: ghost clipping refuses it)
    item_buckets: int = 1 << 15
    # rows of the hashed metadata tables (categories, brands, title words): on a narrow model they are most of its
    # weights, so of every model message, whether or not the merchants' catalogues carry such metadata
    category_buckets: int = ProfileConfig.category_buckets  # the model's own defaults, declared there once
    brand_buckets: int = ProfileConfig.brand_buckets
    token_buckets: int = ProfileConfig.token_buckets
    local_table: bool = False  # a merchant-local item residual table (never leaves the merchant)
    frozen_item_ids: bool = False  # keep the hashed item-id tables fixed (fewer noised weights under DP)
    fixed_item_vectors: bool = False  # item and category vectors = trained mixes of fixed random catalogue features
    # simulation data (deployment merchants read theirs from node_config)
    data: str = "synthetic"  # "synthetic" (built-in merchants) or a data set path
    data_format: str = "synthetic"
    synthetic_users: int = 500  # customers per built-in synthetic merchant
    partitioning: str = "natural"  # natural: one synthetic merchant each; iid / dirichlet: split users
    dirichlet_alpha: float = 0.5
    # run bookkeeping
    run_dir: str = "~/.fedprofile/federation"  # checkpoints and published models (and simulated merchants' state)
    resume: bool = False
    seed: int = 0

    def __post_init__(self):
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.partitioning not in PARTITIONINGS:
            problems.append(f"partitioning {self.partitioning!r} is not one of {', '.join(PARTITIONINGS)}")
        if not self.local_epochs > 0:
            problems.append(f"local-epochs must be positive, got {self.local_epochs}")
        for name in ("num_rounds", "batch_size", "negatives", "min_replies", "synthetic_users", "max_len", "d_model",
                     "n_layers", "n_heads", "profile_dim", "item_buckets", "category_buckets", "brand_buckets",
                     "token_buckets", "evaluate_every"):
            if getattr(self, name) < 1:
                problems.append(f"{_key(name)} must be at least 1, got {getattr(self, name)}")
        for name, limit in LIMITS.items():
            if getattr(self, name) > limit:
                problems.append(f"{_key(name)} must be at most {limit}, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            problems.append(f"d-model ({self.d_model}) must be a multiple of n-heads ({self.n_heads})")
        for name in ("lr", "max_grad_norm", "dropout", "proximal_mu", "server_lr", "server_tau", "round_timeout"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                problems.append(f"{_key(name)} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.fraction_train <= 1 or not 0 <= self.fraction_evaluate <= 1:
            problems.append("fraction-train must be in (0, 1] and fraction-evaluate in [0, 1]")
        if self.loss_average not in AVERAGES:
            problems.append(f"loss-average must be one of {', '.join(AVERAGES)}, got {self.loss_average!r}")
        if (not self.profile_mlp or self.tie_item_tables) and self.d_model != self.profile_dim:
            problems.append(f"profile-mlp = false or tie-item-tables = true scores the encoder's states against the "
                            f"items: d-model ({self.d_model}) must equal profile-dim ({self.profile_dim})")
        if self.tie_item_tables and self.fixed_item_vectors:
            problems.append("tie-item-tables and fixed-item-vectors cannot both be true: the fixed catalogue features "
                            "have item encoders of their own; turn one of them off")
        if self.dp:
            if self.loss_average != "users":
                problems.append("loss-average = positions has no per-customer loss for DP-SGD to clip: with dp = true "
                                "set loss-average = users")
            if self.full_softmax:
                problems.append("full-softmax = true is for plain training: under DP-SGD the negatives' vectors take "
                                "no gradient and the measured DP recipe samples `negatives`; with dp = true set "
                                "full-softmax = false")
            if self.tie_item_tables:
                problems.append("tie-item-tables = true uses one item table on both sides, which DP-SGD's ghost "
                                "clipping refuses: with dp = true set tie-item-tables = false")
            if not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
                problems.append(f"target-epsilon must be positive and finite with dp = true, got {self.target_epsilon}")
            if not 0 <= self.target_delta < 1:
                problems.append(f"target-delta must be in [0, 1) (0 = automatic), got {self.target_delta}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 <= self.server_momentum < 1:
            problems.append(f"server-momentum must be in [0, 1), got {self.server_momentum}")
        if self.sparse_rows and self.strategy not in AVERAGING_STRATEGIES:
            problems.append(f"sparse-rows works with the averaging strategies ({', '.join(AVERAGING_STRATEGIES)}), "
                            f"not {self.strategy!r}; set sparse-rows = false or pick one of those")
        if self.fixed_item_vectors and self.local_table:
            problems.append("fixed-item-vectors and local-table cannot both be true: the fixed catalogue features "
                            "have no merchant-local residual; turn one of them off")
        if not (math.isfinite(self.update_norm_bound) and self.update_norm_bound >= 0):
            problems.append(f"update-norm-bound must be a finite number >= 0 (0: off), got {self.update_norm_bound}")
        if not -1 <= self.min_update_cosine <= 1:
            problems.append(f"min-update-cosine must be in [-1, 1] (-1: off), got {self.min_update_cosine}")
        if self.max_examples < 1:
            problems.append(f"max-examples must be at least 1, got {self.max_examples}")
        if not 0 <= self.trim_beta < 0.5:
            problems.append(f"trim-beta must be in [0, 0.5), got {self.trim_beta}")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            problems.append(f"server-optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, "
                            f"got {self.server_optimizer!r}")
        if not 0 <= self.published_average < 1:
            problems.append(f"published-average must be in [0, 1) (0 publishes the last weights), "
                            f"got {self.published_average}")
        if self.privacy not in PRIVACY_MODES:
            problems.append(f"privacy must be one of {', '.join(PRIVACY_MODES)}, got {self.privacy!r}")
        if self.distributed_dp:
            if not 0 < self.sample_rate <= 1:
                problems.append(f"sample-rate must be in (0, 1], got {self.sample_rate}")
            if self.colluders < 0 or self.min_survivors < 0:
                problems.append("colluders and min-survivors must be >= 0")
            elif self.min_survivors and self.min_survivors <= self.colluders:
                problems.append(f"min-survivors ({self.min_survivors}) must exceed colluders ({self.colluders}): "
                                "the noise comes from the merchants that do not collude")
        if problems:
            raise ValueError("invalid run config: " + "; ".join(problems))

    @property
    def distributed_dp(self) -> bool:
        """Rounds are secure sums of noised gradients; with dp = false the privacy mode plays no part."""
        return self.dp and self.privacy == "distributed"

    @classmethod
    def from_flat(cls, values: Mapping[str, object]) -> "RunConfig":
        """Parse kebab-case keys (a Flower run config or a message's ConfigRecord); unknown keys are refused,
        keys of other apps' namespaces (containing '.') and Flower's own ('server-round') are ignored."""
        known = {_key(f.name): f for f in fields(cls)}
        unknown = sorted(k for k in values if k not in known and "." not in k and k != "server-round")
        if unknown:
            raise ValueError(f"unknown run config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        kwargs = {}
        for key, value in values.items():
            if key in known:
                kwargs[known[key].name] = _coerce(known[key], value)
        return cls(**kwargs)

    def to_flat(self) -> dict[str, object]:
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir).expanduser()

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def model_config(self, *, local_items: int = 0) -> ProfileConfig:
        return ProfileConfig(max_len=self.max_len, d_model=self.d_model, n_heads=self.n_heads,
                             n_layers=self.n_layers, profile_dim=self.profile_dim, dropout=self.dropout,
                             item_buckets=self.item_buckets, category_buckets=self.category_buckets,
                             brand_buckets=self.brand_buckets, token_buckets=self.token_buckets,
                             local_items=local_items if self.local_table else 0,
                             frozen_item_ids=self.frozen_item_ids, fixed_item_vectors=self.fixed_item_vectors,
                             profile_mlp=self.profile_mlp, tie_item_tables=self.tie_item_tables)

    def train_config(self, *, epochs: float | None = None, server_round: int = 0, show_progress: bool = False,
                     num_items: int = 0, positions_per_customer: float = 0.0) -> TrainConfig:
        """Local training settings; each round draws its own batches, negatives and dropout (a seed per round),
        so a merchant does not repeat one round's samples in every round. `num_items` and `positions_per_customer`
        (the training set's mean) say whether full-softmax fits this data, as `fedprofile train` decides (else the
        merchant samples `negatives`)."""
        whole = self.full_softmax and whole_catalogue_fits(num_items=num_items,
                                                           positions_per_customer=positions_per_customer)
        # the schedule runs over the whole federation; round r starts where round r - 1 ended
        return TrainConfig(epochs=epochs or self.local_epochs, batch_size=self.batch_size, lr=self.lr,
                           lr_schedule=self.lr_schedule, schedule_epochs=self.num_rounds * self.local_epochs,
                           schedule_start=max(server_round - 1, 0) * self.local_epochs,
                           negatives=self.negatives, full_softmax=whole,
                           seed=self.seed * 1_000_003 + server_round, eval_every=0,
                           loss_average=self.loss_average,
                           keep_best=False, show_progress=show_progress)

    def distributed_noise(self) -> float:
        """sigma of the whole round's sum (the merchants' shares add up to it): the noise one central DP-SGD step
        at `sample-rate` needs for the target (epsilon, delta) over `num-rounds` steps (delta: the run's, or 1e-5)."""
        return solve_noise_multiplier(epsilon=self.target_epsilon, delta=self.target_delta or 1e-5,
                                      sample_rate=self.sample_rate, steps=self.num_rounds)

    def privacy_config(self, *, num_users: int, epsilon_cap: float | None = None,
                       delta_cap: float | None = None) -> PrivacyConfig | None:
        """The merchant's DP settings for the whole run; `epsilon_cap` and `delta_cap` are the merchant's own
        ceilings (its privacy policy), which the run's targets never exceed."""
        if not self.dp:
            return None
        epsilon = min(self.target_epsilon, epsilon_cap) if epsilon_cap else self.target_epsilon
        delta = self.target_delta or delta_for(num_users)
        delta = min(delta, delta_cap) if delta_cap else delta
        return PrivacyConfig(target_epsilon=epsilon, target_delta=delta, max_grad_norm=self.max_grad_norm,
                             planned_epochs=self.num_rounds * self.local_epochs)


def _key(name: str) -> str:
    return name.replace("_", "-")


def _coerce(field: dataclasses.Field, value: object) -> object:
    kind = field.type if isinstance(field.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[field.type]
    if kind is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{_key(field.name)} must be true or false, got {value!r}")
            return value.lower() == "true"
        return bool(value)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{_key(field.name)} must be an integer, got {value}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_key(field.name)} must be {kind.__name__}, got {value!r}") from None
