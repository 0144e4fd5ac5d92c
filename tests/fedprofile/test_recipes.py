"""`fedprofile train`'s recipes."""

from __future__ import annotations

import pytest

from fedprofile.recipes import PLAIN, PRIVATE


def test_the_weight_average_spans_the_same_epochs_whatever_the_data_size():
    assert PLAIN.ema_decay(175) == pytest.approx(0.999, abs=5e-6)  # Amazon Beauty, where it was tuned
    small, large = PLAIN.ema_decay(8), PLAIN.ema_decay(1750)
    assert 1 / (1 - small) / 8 == pytest.approx(1 / (1 - large) / 1750) == pytest.approx(5.7)  # steps spanned / epoch
    assert PRIVATE.ema_decay(175) == 0.0


def test_choices_replace_the_recipe_and_unknown_ones_are_refused():
    chosen = PLAIN.with_choices(layers=3, dropout=None)
    assert chosen.layers == 3 and chosen.dropout == PLAIN.dropout and chosen.heads == PLAIN.heads
    with pytest.raises(TypeError, match="not recipe fields"):
        PLAIN.with_choices(learning_rate=1.0)


def test_the_whole_catalogue_is_scored_while_a_customer_costs_little_and_never_under_dp():
    assert PLAIN.full_softmax(num_items=12_101, positions_per_customer=5.73)  # Amazon Beauty: 69,000 a customer
    assert PLAIN.full_softmax(num_items=1_682, positions_per_customer=40.9)  # MovieLens-100k: 69,000
    assert not PLAIN.full_softmax(num_items=9_724, positions_per_customer=41.9)  # MovieLens latest-small: 407,000
    assert not PLAIN.full_softmax(num_items=61_330, positions_per_customer=41.6)  # the Taobao extracts: 2.6 M
    # per customer: a smaller batch (a user's --batch-size) does not switch latest-small over
    assert not PLAIN.with_choices(batch_size=8).full_softmax(num_items=9_724, positions_per_customer=41.9)
    edge = int(PLAIN.full_softmax_per_customer // 10.0)  # items at 10 scored positions per customer
    assert PLAIN.full_softmax(num_items=edge, positions_per_customer=10.0)
    assert not PLAIN.full_softmax(num_items=edge + 1, positions_per_customer=10.0)
    assert not PLAIN.full_softmax(num_items=0, positions_per_customer=5.0)
    assert not PRIVATE.full_softmax(num_items=100, positions_per_customer=5.0)
