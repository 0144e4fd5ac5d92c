"""The merchant's privacy policy: what it accepts from any run, set by the merchant alone and enforced on every message."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from shared_model.batching import steps_for
from shared_model.files import atomic_write
from shared_model.model import ProfileTransformer
from shared_model.run_config import RunConfig

POLICY_FILE = "privacy-policy.json"
NODE_PREFIX = "policy-"  # node config keys: policy-max-epsilon, policy-require-dp, ...


class PolicyRefusal(Exception):
    """A message asks for something the merchant's policy does not accept; the text says what and how to fix."""


@dataclass(frozen=True, kw_only=True)
class PrivacyPolicy:
    """Only the merchant sets these (its `fedprofile merchant run` options, kept in its state folder); a run
    config can ask for less privacy, never get it. The ceilings cover every run the merchant ever takes part
    in: each run trains on the same customers again, so their budgets add up in one ledger."""

    require_dp: bool = True
    max_epsilon: float = 8.0  # epsilon for one customer over every run, at max_delta or the run's smaller delta
    max_delta: float = 1e-5
    max_sample_rate: float = 1.0  # the Poisson rate of one DP step (1 / batches per epoch)
    max_steps: int = 100_000  # DP-SGD steps over every run
    max_parameters: int = 50_000_000  # size of the model it trains and sends
    accept_distributed: bool = True  # take part in distributed DP (its noise share relies on the secure sum)
    assumed_colluders: int = 0  # distributed: the fewest merchants it assumes collude with the coordinator

    def __post_init__(self):
        problems = []
        if not (math.isfinite(self.max_epsilon) and self.max_epsilon > 0):
            problems.append(f"max-epsilon must be a positive finite number, got {self.max_epsilon}")
        if not 0 < self.max_delta < 1:
            problems.append(f"max-delta must be in (0, 1), got {self.max_delta}; 1e-5 or 1/(10 x customers) is usual")
        if not 0 < self.max_sample_rate <= 1:
            problems.append(f"max-sample-rate must be in (0, 1], got {self.max_sample_rate}")
        if self.assumed_colluders < 0:
            problems.append(f"assumed-colluders must be >= 0, got {self.assumed_colluders}")
        if self.max_steps < 1 or self.max_parameters < 1:
            problems.append("max-steps and max-parameters must be at least 1")
        if problems:
            raise ValueError("invalid privacy policy: " + "; ".join(problems))

    # ---- what a run may use ---------------------------------------------------------------------------------

    def delta(self, run: RunConfig, *, num_users: int) -> float:
        """The delta this merchant accounts at: the run's (or the automatic one), never above its ceiling."""
        return run.replace(dp=True).privacy_config(num_users=num_users, delta_cap=self.max_delta).target_delta

    def check(self, run: RunConfig, *, num_users: int, steps_taken: int = 0) -> None:
        """Raise PolicyRefusal with the reason when training `run` on `num_users` customers would break the
        policy (before anything is trained or sent)."""
        if self.require_dp and not run.dp:
            raise PolicyRefusal("this merchant trains only with DP (its privacy policy requires it) and the run has "
                                "dp = false; run with dp = true")
        self.check_model(run)
        if not run.dp:
            return
        if run.privacy == "distributed":
            self.check_distributed(run, steps_taken=steps_taken)
            return
        batches = max(1, math.ceil(num_users / run.batch_size))
        rate = 1 / batches
        if rate > self.max_sample_rate * (1 + 1e-9):
            raise PolicyRefusal(f"batch-size {run.batch_size} over {num_users} customers samples {rate:.3f} of them a "
                                f"step, above this merchant's max-sample-rate {self.max_sample_rate}; lower batch-size "
                                f"to {max(1, int(num_users * self.max_sample_rate))} or less")
        steps = steps_for(run.local_epochs, batches)
        if steps_taken + steps > self.max_steps:
            raise PolicyRefusal(f"{steps} more DP steps after {steps_taken} would pass this merchant's max-steps "
                                f"{self.max_steps}")

    def check_distributed(self, run: RunConfig, *, steps_taken: int = 0, min_survivors: int | None = None) -> None:
        """Distributed DP: the merchant adds only a share of the noise, so it must accept the mode, and the run
        must assume at least as many colluders as it does, with a sum of enough merchants to carry the rest."""
        if not self.accept_distributed:
            raise PolicyRefusal("this merchant does not take part in distributed DP (accept-distributed = false); "
                                "run with privacy = local")
        if run.colluders < self.assumed_colluders:
            raise PolicyRefusal(f"the run assumes {run.colluders} colluding merchants, this merchant assumes "
                                f"{self.assumed_colluders}; set colluders = {self.assumed_colluders} or more")
        if run.sample_rate > self.max_sample_rate * (1 + 1e-9):
            raise PolicyRefusal(f"sample-rate {run.sample_rate} is above this merchant's max-sample-rate "
                                f"{self.max_sample_rate}")
        if steps_taken + 1 > self.max_steps:
            raise PolicyRefusal(f"one more DP step after {steps_taken} would pass this merchant's max-steps "
                                f"{self.max_steps}")
        if min_survivors is not None and min_survivors - run.colluders < 1:
            raise PolicyRefusal(f"a sum of {min_survivors} merchants with {run.colluders} colluding leaves no "
                                "honest noise; the round needs more merchants")

    def check_model(self, run: RunConfig) -> None:
        """Refuse a model larger than the merchant accepts, counted without allocating it."""
        count = shared_parameter_count(run)
        if count > self.max_parameters:
            raise PolicyRefusal(f"the run's model has {count:,} shared parameters, above this merchant's "
                                f"max-parameters {self.max_parameters:,}; use smaller item-buckets or d-model")

    # ---- where it lives --------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / POLICY_FILE
        atomic_write(path, json.dumps(asdict(self), indent=1).encode())
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "PrivacyPolicy":
        path = Path(folder) / POLICY_FILE
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable privacy policy ({exc})") from None
        return cls.from_mapping(values, source=str(path))

    @classmethod
    def from_mapping(cls, values: dict, *, source: str = "privacy policy") -> "PrivacyPolicy":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown privacy policy settings {unknown}; known: {sorted(known)}")
        out = {}
        for name, value in values.items():
            kind = {"bool": bool, "float": float, "int": int}[str(known[name].type)]
            if kind is bool and isinstance(value, str):
                value = value.lower() == "true"
            out[name] = kind(value)
        return cls(**out)

    @classmethod
    def for_node(cls, node_config: dict, run: RunConfig) -> "PrivacyPolicy":
        """The policy a ClientApp enforces: the file in the merchant's state folder when it has one, else the
        `policy-*` node config keys (and `max-epsilon`, read as policy-max-epsilon), else the defaults.
        A simulated merchant (a partition of one data set, no data of its own) is played by whoever runs the
        simulation, so without policy keys it accepts the run as configured (`simulated`)."""
        simulated = "partition-id" in node_config and "data-path" not in node_config
        if simulated and not any(k.startswith(NODE_PREFIX) or k == "max-epsilon" for k in node_config):
            return cls.simulated(run)
        state_dir = node_config.get("state-dir")
        if state_dir and (Path(str(state_dir)) / POLICY_FILE).is_file():
            return cls.load(str(state_dir))
        values = {k[len(NODE_PREFIX):].replace("-", "_"): v for k, v in node_config.items()
                  if k.startswith(NODE_PREFIX) and v not in (None, "")}
        if node_config.get("max-epsilon") not in (None, ""):
            values.setdefault("max_epsilon", node_config["max-epsilon"])
        return cls.from_mapping(values, source="node config")


    @classmethod
    def simulated(cls, run: RunConfig) -> "PrivacyPolicy":
        """What a simulated merchant accepts: the run's own privacy settings, with the default ceilings on size."""
        return cls(require_dp=run.dp, max_epsilon=run.target_epsilon if run.dp else cls.max_epsilon,
                   max_delta=run.target_delta or cls.max_delta)


def shared_parameter_count(run: RunConfig) -> int:
    """How many weights the run's shared model has, built on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        model = ProfileTransformer(run.model_config(), torch.zeros(1, 1, dtype=torch.long))
    return sum(t.numel() for t in model.shared_state().values())
