"""Solving the noise multiplier: fedprofile's search against Opacus' get_noise_multiplier, same accountant.

Both find sigma whose epsilon lies within 0.01 below the target; measured alternately in one run (Opacus, then
ours, per setting; ours uncached). A merchant's first DP round and every `fedprofile train --dp` wait for it.
Then ours and one epsilon a step later (what a merchant computes each round) with Opacus' RDP as it ships and with
its per-step values remembered (shared_model/rdp_cache.py), alternately, the same figures both ways. Repeat:
    python bench/noise_search.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opacus.accountants import create_accountant  # noqa: E402
from opacus.accountants.analysis import rdp  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402

from shared_model import privacy, rdp_cache  # noqa: E402

SETTINGS = [  # (epsilon, delta, sample rate, steps) and what uses it
    (8.0, 1e-5, 0.5, 6, "deployment tests' merchant, 3 rounds of 1 epoch"),
    (8.0, 1e-5, 0.183, 55, "Beauty distributed DP, 55 rounds"),
    (8.0, 4.5e-6, 512 / 22_363, 880, "fedprofile train --dp on Beauty, 20 epochs"),
    (1.0, 1e-5, 0.01, 1000, "a tight budget"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accountant", default="prv", choices=["prv", "rdp"])
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    create_accountant(args.accountant)  # imports and first-call costs outside the timings
    shipped = rdp.compute_rdp
    rdp_cache.remember_rdp()
    remembered = rdp.compute_rdp
    rdp.compute_rdp = shipped  # Opacus as it ships, until the comparison below
    privacy.remember_rdp = lambda: None  # which chooses, here, which of the two runs
    for epsilon, delta, rate, steps, what in SETTINGS:
        started = time.perf_counter()
        theirs = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=rate, steps=steps,
                                      accountant=args.accountant)
        opacus_s = time.perf_counter() - started
        privacy._noise_multiplier.cache_clear()
        started = time.perf_counter()
        ours = privacy.solve_noise_multiplier(epsilon=epsilon, delta=delta, sample_rate=rate, steps=steps,
                                              accountant=args.accountant)
        ours_s = time.perf_counter() - started
        acc = create_accountant(args.accountant)
        acc.history = [(ours, rate, steps)]
        print(f"{what}: epsilon {epsilon}, q {rate:.4f}, {steps} steps: Opacus sigma {theirs:.4f} in {opacus_s:.1f} s, "
              f"ours {ours:.4f} (epsilon {acc.get_epsilon(delta):.4f}) in {ours_s:.1f} s, {opacus_s / ours_s:.1f}x")
    print("Opacus' RDP as it ships / remembered per step:")
    for epsilon, delta, rate, steps, what in SETTINGS:
        row = {}
        for name, compute in (("shipped", shipped), ("remembered", remembered), ("shipped", shipped),
                              ("remembered", remembered)):
            rdp.compute_rdp = compute
            rdp_cache._per_step.cache_clear()
            privacy._noise_multiplier.cache_clear()
            privacy._epsilon_of.cache_clear()
            started = time.perf_counter()
            sigma = privacy.solve_noise_multiplier(epsilon=epsilon, delta=delta, sample_rate=rate, steps=steps,
                                                   accountant=args.accountant)
            solved = time.perf_counter() - started
            started = time.perf_counter()
            later = privacy._epsilon_of(args.accountant, ((sigma, rate, steps + 1),), delta)
            row.setdefault(name, []).append((solved, time.perf_counter() - started, sigma, later))
        (s1, e1, sig1, eps1), (s2, e2, sig2, eps2) = (min(row[n]) for n in ("shipped", "remembered"))
        assert (sig1, eps1) == (sig2, eps2), "the remembered RDP changed a figure"
        print(f"  {what}: solve {s1:.2f} / {s2:.2f} s, an epsilon a step later {e1:.3f} / {e2:.3f} s "
              f"(sigma {sig1:.4f}, epsilon {eps1:.4f} both ways)")
    rdp.compute_rdp = remembered
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
