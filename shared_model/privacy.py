"""User-level DP-SGD settings and the privacy ledger that carries a merchant's accountant across calls."""

from __future__ import annotations

import copy
import functools
import math
import secrets
from dataclasses import asdict, dataclass, field

import torch

from shared_model.rdp_cache import remember_rdp


class PrivacyBudgetExhausted(RuntimeError):
    """Raised instead of training when the next steps would take epsilon past the merchant's target; `ledger`
    is the ledger that was checked (with any ceiling lowered since it was planned), to keep as it is."""

    def __init__(self, message: str, *, ledger: "PrivacyLedger"):
        super().__init__(message)
        self.ledger = ledger


@dataclass(frozen=True)
class PrivacyConfig:
    """(epsilon, delta) for one merchant's customers over the whole planned training."""

    target_epsilon: float
    target_delta: float
    max_grad_norm: float = 1.0
    planned_epochs: float | None = None  # epochs over all calls (e.g. rounds x local epochs); None = this call's
    accountant: str = "prv"
    ghost_clipping: bool = True
    # with ghost clipping: each layer's clipped gradient from the first pass's output gradients (book-keeping),
    # no second backward pass; the same gradient (tests/shared_model/test_ghost_clipping.py). False: two passes
    one_pass_clipping: bool = True
    # tests only: the Poisson sample and the noise repeat for this seed. None (the only value the run config can
    # give): both come from a generator seeded with the OS's secret randomness, never from the run's public seed
    noise_seed: int | None = None

    def __post_init__(self):
        if not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
            raise ValueError(f"target_epsilon must be a positive finite number, got {self.target_epsilon}")
        if not (0 < self.target_delta < 1):
            raise ValueError(f"target_delta must be in (0, 1), got {self.target_delta}; use 1/(10 x number of users) or less")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive, got {self.max_grad_norm}")
        if self.planned_epochs is not None and self.planned_epochs <= 0:
            raise ValueError(f"planned_epochs must be positive, got {self.planned_epochs}")


def create_accountant(name: str):
    """Opacus' accountant of that name, Opacus imported only here (shared_model/dp_engine.py says why)."""
    from opacus.accountants import create_accountant as opacus_accountant

    remember_rdp()  # the same figures, the per-step RDP computed once (shared_model/rdp_cache.py)
    return opacus_accountant(name)


def secret_generator(seed: int | None = None, *, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator DP-SGD draws its Poisson sample or its noise from, on `device` (the noise is drawn where the
    parameters are: CUDA refuses a CPU generator there). Seeded with 63 secret bits from the OS: a generator
    seeded with anything public (the run's seed, which the coordinator sends; torch's fixed default in a fresh
    process) would let whoever knows it redraw the noise and subtract it. `seed`: tests only."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63) if seed is None else seed)


MAX_SIGMA = 1e6  # as Opacus: past this the budget is too low to meet with any useful training


@functools.lru_cache(maxsize=64)
def _noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str,
                      tolerance: float = 0.01) -> float:
    """What Opacus' `get_noise_multiplier` returns, by the same accountant and stopping rule (the smallest noise
    found whose epsilon lies within `tolerance` below the target), in 4-6 accountant calls instead of 15-20.

    Opacus bisects sigma over [0, 20]; with PRV each call takes 0.3-0.7 s on CPU-2, so each merchant's first
    round and every DP training waited 6-12 s for it. log epsilon is close to linear in log sigma, so false
    position there lands within the tolerance in a few calls (a bisection step whenever one side stalls keeps
    the bracket shrinking). Cached: merchants of equal size in one process share the answer."""
    acc = create_accountant(accountant)

    def spent(sigma: float) -> float:
        acc.history = [(sigma, sample_rate, steps)]
        value = float(acc.get_epsilon(delta=delta))
        return value if math.isfinite(value) else math.inf

    # bracket: low spends more than the target, high no more than it
    low, high = 0.5, 1.0
    e_low, e_high = spent(low), spent(high)
    while e_high > epsilon:
        low, e_low, high = high, e_high, high * 2
        if high > MAX_SIGMA:
            raise ValueError(f"no noise multiplier up to {MAX_SIGMA:g} meets epsilon {epsilon} at delta {delta}: "
                             "the privacy budget is too low for these steps; raise epsilon or take fewer steps")
        e_high = spent(high)
    while e_low <= epsilon:
        high, e_high, low = low, e_low, low / 2
        e_low = spent(low)
    aim, stalled = math.log(max(epsilon - tolerance / 2, epsilon / 2)), 0  # inside the accepted band
    while epsilon - e_high > tolerance:
        x_low, x_high = math.log(low), math.log(high)
        x = (x_low + x_high) / 2
        if stalled < 2 and math.isfinite(e_low) and e_high > 0:  # false position on (log sigma, log epsilon)
            f_low, f_high = math.log(e_low), math.log(e_high)
            guess = x_high + (aim - f_high) * (x_high - x_low) / (f_high - f_low)
            x = guess if x_low < guess < x_high else x
        sigma = math.exp(x)
        value = spent(sigma)
        if value <= epsilon:
            high, e_high, stalled = sigma, value, 0
        else:
            low, e_low, stalled = sigma, value, stalled + 1
    return high


@functools.lru_cache(maxsize=4096)
def _epsilon_of(accountant: str, history: tuple, delta: float) -> float:
    """Epsilon of a history of (noise multiplier, sample rate, steps): a function of these alone, and a second or
    more with PRV, so each is computed once per process (a round checks it before and reports it after)."""
    if not history:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = [tuple(entry) for entry in history]
    return float(acc.get_epsilon(delta))


def solve_noise_multiplier(*, epsilon: float, delta: float, sample_rate: float, steps: int,
                           accountant: str = "prv") -> float:
    """The noise multiplier that `steps` Poisson-subsampled Gaussian steps at `sample_rate` need for (epsilon, delta)."""
    return _noise_multiplier(epsilon, delta, sample_rate, steps, accountant)


def delta_for(num_users: int) -> float:
    """A conventional delta well below 1/n for n users."""
    return min(1e-5, 1.0 / (10 * max(num_users, 1)))


@dataclass
class PrivacyLedger:
    """Noise multiplier fixed once for the planned steps, and the accountant's history of steps taken.

    `state_dict()` / `load_state_dict()` persist it, so epsilon accumulates across calls and restarts."""

    target_epsilon: float
    target_delta: float
    sample_rate: float
    noise_multiplier: float
    planned_steps: int
    accountant_name: str = "prv"
    accountant_state: dict = field(default_factory=dict)

    @classmethod
    def plan(cls, config: PrivacyConfig, *, sample_rate: float, planned_steps: int) -> "PrivacyLedger":
        sigma = _noise_multiplier(config.target_epsilon, config.target_delta, sample_rate, planned_steps,
                                  config.accountant)
        return cls(config.target_epsilon, config.target_delta, sample_rate, sigma, planned_steps, config.accountant)

    def accountant(self):
        acc = create_accountant(self.accountant_name)
        if self.accountant_state:
            acc.load_state_dict(copy.deepcopy(self.accountant_state))
        return acc

    def steps_taken(self) -> int:
        return sum(steps for _, _, steps in self.accountant().history)

    def epsilon(self) -> float:
        return _epsilon_of(self.accountant_name, tuple(map(tuple, self.accountant().history)), self.target_delta)

    def epsilon_after(self, extra_steps: int, *, sample_rate: float | None = None) -> float:
        """Epsilon if `extra_steps` more steps were taken at this ledger's noise and `sample_rate` (the rate the
        next steps will really use; the planned one when not given)."""
        rate = self.sample_rate if sample_rate is None else sample_rate
        acc = self.accountant()
        acc.step(noise_multiplier=self.noise_multiplier, sample_rate=rate) if extra_steps else None
        if extra_steps > 1:
            acc.history[-1] = (self.noise_multiplier, rate, acc.history[-1][2] + extra_steps - 1)
        return _epsilon_of(self.accountant_name, tuple(map(tuple, acc.history)), self.target_delta)

    def tighten(self, *, epsilon: float, delta: float) -> None:
        """Lower the ledger's targets to a ceiling set since it was planned (never raise them): what was spent
        stays spent, and the next check is against the lower ceiling."""
        self.target_epsilon = min(self.target_epsilon, epsilon)
        self.target_delta = min(self.target_delta, delta)

    def check_budget(self, extra_steps: int, *, sample_rate: float | None = None) -> None:
        projected = self.epsilon_after(extra_steps, sample_rate=sample_rate)
        # the noise was solved to land on target within the accountant's tolerance; allow that slack only
        if projected > self.target_epsilon * (1 + 1e-3):
            raise PrivacyBudgetExhausted(
                f"{extra_steps} more steps would spend epsilon {projected:.3f} > target {self.target_epsilon} "
                f"(spent so far {self.epsilon():.3f} over {self.steps_taken()} steps); this merchant stops training",
                ledger=self,
            )

    def spend(self, steps: int, *, noise_multiplier: float, sample_rate: float) -> None:
        """Record `steps` steps of the Poisson-subsampled Gaussian mechanism taken outside Opacus' optimizer (a
        distributed-DP round: the noise of the whole sum, the merchant's own sample rate)."""
        acc = self.accountant()
        for _ in range(steps):
            acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        self.record(acc)

    def record(self, accountant) -> None:
        self.accountant_state = copy.deepcopy(accountant.state_dict())

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> "PrivacyLedger":
        return cls(**copy.deepcopy(state))
