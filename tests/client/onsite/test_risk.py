"""Risk signals and scores on hand-made logs: each signal counts what it says, scores come with reasons."""

from __future__ import annotations

import numpy as np
import pandas as pd

from client.onsite.risk import behaviour_signals, replace_rows, risk_scores
from shared_model.data.schema import Behavior

DAY = 86_400
START = 1_600_000_000 - 1_600_000_000 % DAY + 12 * 3600  # noon UTC


def _events(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "behavior", "timestamp"])
    return frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def _crowd(n=40) -> list:
    """Ordinary customers: a view every 10 minutes over a day, a purchase, no review."""
    rows = []
    for u in range(n):
        for k in range(12):
            rows.append((f"u{u}", f"i{(u * 7 + k) % 50}", int(Behavior.VIEW), START + u * 60 + k * 600))
        rows.append((f"u{u}", f"i{u % 50}", int(Behavior.PURCHASE), START + u * 60 + 12 * 600))
    return rows


def test_each_signal_counts_what_it_says():
    rows = [("bot", "x", int(Behavior.VIEW), START + s) for s in range(0, 30, 2)]  # 15 views in 30 s, one item
    rows += [("buyer", "y", int(Behavior.PURCHASE), START + k * DAY) for k in range(4)]
    rows += [("buyer", "y", int(Behavior.REVIEW), START + k * DAY + 60) for k in range(2)]
    signals = behaviour_signals(_events(rows))
    assert signals.loc["bot", "burst"] == 15
    assert signals.loc["bot", "fast_gaps"] == 1.0
    assert signals.loc["bot", "item_concentration"] == 15
    assert signals.loc["buyer", "repeat_purchases"] == 4
    assert signals.loc["buyer", "fast_reviews"] == 2
    assert signals.loc["buyer", "night_share"] == 0.0
    assert "profile_outlier" not in signals.columns


def test_a_click_farmer_scores_high_with_reasons_and_the_crowd_low_without():
    rows = _crowd() + [("farm", "z", int(Behavior.VIEW), START + s) for s in range(0, 120, 3)]
    scores = risk_scores(behaviour_signals(_events(rows)))
    assert scores.loc["farm", "score"] > 0.9
    assert any("within one minute" in r for r in scores.loc["farm", "reasons"])
    crowd = scores.drop(index="farm")
    assert crowd["score"].max() < 0.05
    assert all(len(r) == 0 for r in crowd["reasons"])


def test_profile_outliers_are_measured_against_the_other_customers():
    rows = _crowd(10)
    vectors = pd.DataFrame(np.zeros((10, 4)), index=[f"u{u}" for u in range(10)])
    vectors.iloc[:, 0] = np.linspace(-1, 1, 10)
    vectors.loc["u3"] = [0.0, 50.0, 0.0, 0.0]
    signals = behaviour_signals(_events(rows), vectors)
    assert signals["profile_outlier"].idxmax() == "u3"


def test_replace_rows_swaps_fresh_users_and_keeps_the_rest():
    population = pd.DataFrame({"burst": [1.0, 2.0]}, index=pd.Index(["a", "b"], name="user_id"))
    fresh = pd.DataFrame({"burst": [9.0, 3.0]}, index=pd.Index(["b", "c"], name="user_id"))
    out = replace_rows(population, fresh)
    assert out["burst"].to_dict() == {"a": 1.0, "b": 9.0, "c": 3.0}
