"""The privacy audit's attacks: chance with no membership signal, above it with one; exposure in bits."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.audit import AuditConfig, exposure, lira, threshold_attack


def _scores(K: int, users: int, effect: float, seed: int = 0):
    """Scores with a per-user difficulty (what makes the threshold attack weak) and a membership effect."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((K, users), dtype=bool)
    for u in range(users):
        masks[rng.choice(K, K // 2, replace=False), u] = True
    difficulty = rng.normal(0, 1, users)
    return difficulty + rng.normal(0, 0.3, (K, users)) + effect * masks, masks


@pytest.mark.parametrize("K", [4, 6, 8])
def test_with_no_membership_signal_both_attacks_are_at_chance(K):
    scores, masks = _scores(K, 4000, effect=0.0)
    assert abs(lira(scores, masks)[0].mean() - 0.5) < 0.02  # equal "in" and "out" shadow counts keep it fair
    assert abs(threshold_attack(scores, masks).mean() - 0.5) < 0.02


def test_lira_finds_members_that_the_threshold_attack_barely_separates():
    scores, masks = _scores(6, 4000, effect=0.3)
    auc, tpr = lira(scores, masks)
    threshold = threshold_attack(scores, masks)
    assert auc.mean() > threshold.mean() + 0.05 and threshold.mean() > 0.55
    assert (tpr > 0.01).all()  # beyond chance where it matters: few false positives


def test_exposure_counts_the_references_a_canary_beats():
    references = np.arange(1023, dtype=float)  # 1023 references: log2(1024) = 10 bits at most
    bits = exposure(np.array([2000.0, 511.5, -1.0]), references)
    assert bits[0] == pytest.approx(10.0)  # more likely than every reference: rank 1
    assert bits[1] == pytest.approx(1.0)  # in the middle: rank 512
    assert bits[2] == pytest.approx(0.0)  # below all: rank 1024


def test_an_audit_needs_an_even_number_of_models():
    with pytest.raises(ValueError, match="even"):
        AuditConfig(models=5)


@pytest.mark.slow
def test_the_audit_catches_a_federation_that_memorises_its_customers(tmp_path):
    """End to end (real ClientApp and coordinator, members written as each merchant's own data, every user
    scored under every model): a federation without DP trained to overfit is caught by all three attacks, so
    a low AUC under DP is the DP's doing, not a broken pipeline (mismatched users would score 0.5)."""
    from shared_model.run_config import RunConfig
    from simulations.audit import audit

    run = RunConfig(num_rounds=1, synthetic_users=40, max_len=20, d_model=16, profile_dim=16, n_heads=1,
                    n_layers=1, item_buckets=1024, batch_size=32, negatives=32, dp=False, local_epochs=8, lr=1e-2)
    figures = audit(run, 2, AuditConfig(models=4, canaries=4, references=31), tmp_path)
    assert figures["threshold-auc"]["min"] > 0.7 and figures["lira-auc"]["min"] > 0.7
    assert figures["canary-exposure-bits"]["mean"] > 3.0  # of 5 bits: the random canaries are remembered
