"""Synthetic merchants: planted truth shows in the logs, merchants differ, and the mix resembles Taobao."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared_model.data.formats.synthetic import load as load_synthetic
from shared_model.data.loaders import load_events
from shared_model.data.schema import Behavior
from shared_model.data.synthetic import SyntheticConfig, generate, merge_merchants, write


@pytest.fixture(scope="module")
def default_log():
    return merge_merchants(generate(SyntheticConfig()))


def _shares(events: pd.DataFrame) -> pd.Series:
    kinds = events["behavior"].map({1: "view", 2: "cart", 3: "fav", 4: "purchase", 5: "review"})
    kinds = kinds[kinds != "review"]  # Taobao has no reviews
    return kinds.value_counts(normalize=True)


@pytest.mark.realdata
def test_behaviour_mix_and_events_per_user_resemble_taobao(default_log, real_data):
    taobao = load_events(real_data / "taobao-userbehavior", "taobao").events
    ours, theirs = _shares(default_log.events), _shares(taobao)
    # measured: Taobao view/cart/fav/purchase 0.899/0.053/0.027/0.021; synthetic default within these bounds
    assert abs(ours["view"] - theirs["view"]) < 0.02
    for kind in ("cart", "fav", "purchase"):
        assert ours[kind] / theirs[kind] == pytest.approx(1.0, abs=0.3), kind
    q = [0.1, 0.25, 0.5, 0.75, 0.9]
    ours_n = default_log.events.groupby("user_id").size().quantile(q).to_numpy()
    theirs_n = taobao.groupby("user_id").size().quantile(q).to_numpy()
    # measured: Taobao quantiles 19/39/75/135/223 events per user
    assert np.all(np.abs(np.log(ours_n / theirs_n)) < np.log(1.35)), (ours_n, theirs_n)


def test_funnel_order_and_planted_truth_is_visible(default_log):
    e = default_log.events
    counts = e["behavior"].value_counts()
    assert counts[Behavior.VIEW] > 10 * counts[Behavior.CART]
    assert counts[Behavior.CART] > counts[Behavior.FAV] > counts[Behavior.REVIEW]
    truth = default_log.truth["users"]
    humans = [u for u, t in truth.items() if t["bot"] is None]
    views = e[e["behavior"] == Behavior.VIEW]
    top = views.groupby(["user_id", "category_id"]).size().groupby(level=0).idxmax()
    hit = np.mean([top[u][1] in list(truth[u]["interests"])[:3] for u in humans if u in top.index])
    assert hit > 0.8  # each user's most-viewed category is one of the three planted top interests


def test_merchants_are_non_iid_and_demographics_correlate_with_interests():
    merchants = generate(SyntheticConfig(merchants=3, users_per_merchant=300))
    mixes = [m.events["category_id"].value_counts(normalize=True) for m in merchants]
    a, b = mixes[0].align(mixes[1], fill_value=0)
    assert 0.5 * np.abs(a - b).sum() > 0.3  # total variation between two shops' category mixes
    assert not set(merchants[0].events["item_id"]) & set(merchants[1].events["item_id"])  # own catalogues
    users = pd.DataFrame.from_dict({u: t for m in merchants for u, t in m.truth["users"].items()}, orient="index")
    top = users["interests"].map(lambda d: next(iter(d)))
    by_gender = pd.crosstab(top, users["gender"], normalize="columns")
    assert 0.5 * (by_gender["F"] - by_gender["M"]).abs().sum() > 0.2  # women and men favour different categories


def test_bots_burst_and_segments_differ(default_log):
    e = default_log.events
    truth = default_log.truth["users"]
    bots = {u for u, t in truth.items() if t["bot"]}
    assert 0.01 < len(bots) / len(truth) < 0.06
    gaps = e.groupby("user_id")["timestamp"].diff()
    median_gap = gaps.groupby(e["user_id"]).median()
    assert median_gap[list(bots)].median() < 10 < median_gap.drop(list(bots)).median()
    seg = pd.Series({u: t["segment"] for u, t in truth.items() if not t["bot"]})
    purchases = e[e["behavior"] == Behavior.PURCHASE].groupby("user_id").size().reindex(seg.index, fill_value=0)
    assert purchases[seg == "high_value"].mean() > 2 * purchases[seg == "new"].mean()
    last_day = e.groupby("user_id")["timestamp"].max().reindex(seg.index)
    assert last_day[seg == "at_risk"].median() < last_day[seg == "regular"].median()


def test_written_merchants_load_through_the_validating_loader(tmp_path):
    merchants = generate(SyntheticConfig(merchants=2, users_per_merchant=30, items_per_merchant=200))
    write(merchants, tmp_path)
    log = load_synthetic(tmp_path, quarantine_path=tmp_path / "q.csv")
    assert log.summary.is_balanced()
    assert log.summary.rows_read == sum(len(m.events) for m in merchants)
    assert len(log.users) == 60 and len(log.truth["users"]) == 60
    one = load_synthetic(tmp_path / "merchant-0")
    assert one.num_users == 30


def _category_runs(events: pd.DataFrame) -> pd.DataFrame:
    """One row per run of consecutive events in one category (a new run also after 30 minutes of silence)."""
    e = events.sort_values(["user_id", "timestamp"], kind="stable")
    u, c, t = e["user_id"].to_numpy(), e["category_id"].astype(str).to_numpy(), e["timestamp"].to_numpy()
    new = np.r_[True, (u[1:] != u[:-1]) | (c[1:] != c[:-1]) | (np.diff(t) > 1800)]
    return pd.DataFrame({"user_id": u[new], "category_id": c[new]})


@pytest.mark.realdata
def test_customers_wander_between_categories_like_taobao_customers(default_log, real_data):
    taobao = load_events(real_data / "taobao-userbehavior", "taobao").events
    ours = _category_runs(default_log.events).groupby("user_id").size()
    theirs = _category_runs(taobao).groupby("user_id").size()
    # measured: Taobao 46 runs for the median customer, 1.64 events a run; synthetic 42 and 1.85
    assert ours.median() / theirs.median() == pytest.approx(1.0, abs=0.25)
    per_run = (len(default_log.events) / ours.sum()) / (len(taobao) / theirs.sum())
    assert per_run == pytest.approx(1.0, abs=0.25)


def test_planted_top_three_interests_are_identifiable_from_the_log(default_log):
    """The planted truth must be in the data: counting category runs recovers most customers' top 3."""
    truth = default_log.truth["users"]
    runs = _category_runs(default_log.events).value_counts().rename("n").reset_index()
    top = (runs.sort_values(["user_id", "n", "category_id"], ascending=[True, False, True])
           .groupby("user_id")["category_id"].apply(lambda s: list(s)[:3]))
    humans = [x for x, v in truth.items() if v["bot"] is None]
    precision = np.mean([len(set(top[x]) & set(list(truth[x]["interests"])[:3])) / 3 for x in humans])
    assert precision > 0.9  # measured 0.95
