"""Privacy audit: membership inference and canary exposure against the published global model, with and without DP.

The built-in synthetic shops at `make run`'s size (4 merchants x 500 customers), the run-config defaults
(distributed DP at epsilon 8, 20 rounds), run in process (the real ClientApp and coordinator, no Ray). K
federations each train on a random half of every merchant's customers (each customer in exactly K/2), so each
model is a target and the other K-1 are its shadow models. Attacks on the final global model, which every
merchant and the coordinator see (under distributed DP nothing else of one merchant's is visible):
  threshold  the user's mean next-item log-likelihood (full softmax over its merchant's catalogue) as the score
  LiRA       that score's likelihood ratio under the user's "in" and "out" Gaussians from the shadows
  exposure   20 random-history canary customers planted in merchant 0 (members of every model), ranked among
             500 random histories never trained on; log2(501) = 9 bits is full memorisation, ~1 bit none
The same is run without DP, which shows whether the audit has power. Target (issue 18): AUC <= 0.55 at
epsilon 8, clearly above 0.5 without DP.
Repeat:
    python bench/membership_audit.py                      # both arms, K = 6 (about 2 x 6 federations)
    python bench/membership_audit.py --arms no-dp --models 4 --set local-epochs=4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_model.run_config import RunConfig  # noqa: E402
from simulations.audit import AuditConfig, audit  # noqa: E402

ARMS = {"dp": {}, "no-dp": {"dp": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="dp,no-dp")
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--merchants", type=int, default=4)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--set", action="append", default=[], help="further run-config key=value (both arms)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/membership-audit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("fedprofile.audit").setLevel(logging.INFO)
    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        extra[key] = value
    results = {}
    for arm in args.arms.split(","):
        run = RunConfig.from_flat({**{k.replace("_", "-"): v for k, v in ARMS[arm].items()}, **extra,
                                      "synthetic-users": args.users, "seed": args.seed})
        started = time.perf_counter()
        figures = audit(run, args.merchants, AuditConfig(models=args.models, seed=args.seed), Path(args.out) / arm)
        figures["seconds"] = round(time.perf_counter() - started, 1)
        figures["run"] = {k: v for k, v in dataclasses.asdict(run).items()
                          if k in ("dp", "privacy", "target_epsilon", "num_rounds", "local_epochs", "sample_rate")}
        results[arm] = figures
        print(f"{arm}: threshold AUC {figures['threshold-auc']['mean']:.3f} "
              f"({figures['threshold-auc']['min']:.3f}-{figures['threshold-auc']['max']:.3f}), "
              f"LiRA AUC {figures['lira-auc']['mean']:.3f} ({figures['lira-auc']['min']:.3f}-"
              f"{figures['lira-auc']['max']:.3f}), LiRA TPR@1%FPR {figures['lira-tpr@1%fpr']['mean']:.3f}, "
              f"canary exposure {figures['canary-exposure-bits']['mean']:.2f} bits (max "
              f"{figures['canary-exposure-bits']['max']:.2f} of {figures['canary-exposure-bits']['ceiling']:.2f}); "
              f"{figures['seconds']:.0f}s", flush=True)
    results["machine"] = {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                          "device": "cuda" if torch.cuda.is_available() else "cpu"}
    results["command"] = "python " + " ".join(sys.argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "audit.json").write_text(json.dumps(results, indent=2))
    print(f"figures in {args.out}/audit.json; repeat: {results['command']}")


if __name__ == "__main__":
    main()
