"""Shared fixtures: the real data folder (skipped when absent) and small synthetic merchants."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data sets not found at {DATA_DIR} (the ../shared/data folder beside the checkout)")
    return DATA_DIR


@pytest.fixture(scope="session")
def small_merchants():
    from shared_model.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(merchants=2, users_per_merchant=60, items_per_merchant=400, seed=1))


@pytest.fixture(scope="session")
def small_log(small_merchants):
    from shared_model.synthetic import merge_merchants

    return merge_merchants(small_merchants)


def tiny_run(tmp_path, **changes):
    """A federation small enough for a test: two synthetic shops of 60 customers, a narrow model."""
    from shared_model.run_config import RunConfig

    base = dict(num_rounds=2, min_replies=2, synthetic_users=60, max_len=20, d_model=16, profile_dim=16,
                n_heads=1, n_layers=1, item_buckets=1024, batch_size=32, negatives=32, lr=3e-3,
                run_dir=str(tmp_path / "run"))
    return RunConfig(**{**base, **changes})
