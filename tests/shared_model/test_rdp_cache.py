"""Remembered per-step RDP: the same figures as Opacus' own, the slow series run once per (q, sigma)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp

from shared_model.privacy import _epsilon_of, create_accountant
from shared_model.rdp_cache import remember_rdp

HISTORIES = [((1.1, 0.5, 10),), ((1.1, 0.5, 11),), ((0.8, 0.02, 400), (1.3, 0.05, 7))]
EPSILONS = """
import json
from opacus.accountants import PRVAccountant, RDPAccountant
out = []
for history in json.loads('HISTORIES'):
    for make in (PRVAccountant, RDPAccountant):
        acc = make()
        acc.history = [tuple(step) for step in history]
        out.append(acc.get_epsilon(1e-5))
print(json.dumps(out))
"""


def test_the_values_are_opacus_own_to_the_bit():
    remember_rdp()
    orders = RDPAccountant.DEFAULT_ALPHAS
    for sigma, q, steps in [(1.1, 0.5, 10), (0.8, 0.02, 400), (1.3, 0.05, 7)]:
        expected = np.array([rdp._compute_rdp(q, sigma, order) for order in orders]) * steps
        assert np.array_equal(rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders), expected)
    assert rdp.compute_rdp(q=0.5, noise_multiplier=1.1, steps=3, orders=2.5) == rdp._compute_rdp(0.5, 1.1, 2.5) * 3


def test_epsilons_match_an_accountant_without_it():
    # a fresh interpreter, where nothing installed the cache: Opacus as it ships
    plain = subprocess.run([sys.executable, "-c", EPSILONS.replace("HISTORIES", json.dumps(HISTORIES))],
                           capture_output=True, text=True, check=True)
    expected = json.loads(plain.stdout)
    got = []
    for history in HISTORIES:
        for name in ("prv", "rdp"):
            acc = create_accountant(name)
            acc.history = list(history)
            got.append(acc.get_epsilon(1e-5))
    assert got == expected


def test_the_series_runs_once_per_sample_rate_and_noise(monkeypatch):
    remember_rdp()
    calls = []
    slow = rdp._compute_log_a_for_frac_alpha
    monkeypatch.setattr(rdp, "_compute_log_a_for_frac_alpha", lambda *a: calls.append(a) or slow(*a))
    sigma = 1.2345  # a noise multiplier no other test used
    _epsilon_of("prv", ((sigma, 0.3, 20),), 1e-5)
    first = len(calls)
    assert first > 0
    for steps in (21, 22, 23):  # a round later: the same mechanism, more steps
        _epsilon_of("prv", ((sigma, 0.3, steps),), 1e-5)
    assert len(calls) == first
    # what a caller gets is its own array: changing it leaves the remembered values alone
    mine = rdp.compute_rdp(q=0.3, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    mine[:] = 0.0
    assert rdp.compute_rdp(q=0.3, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS).min() > 0
