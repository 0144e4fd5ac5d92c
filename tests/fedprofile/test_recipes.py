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


def test_the_whole_catalogue_is_scored_up_to_a_size_and_never_under_dp():
    assert PLAIN.full_softmax(12_101)  # Amazon Beauty
    assert not PLAIN.full_softmax(61_330)  # the Taobao extracts: sampled negatives
    assert PLAIN.full_softmax(PLAIN.full_softmax_items) and not PLAIN.full_softmax(PLAIN.full_softmax_items + 1)
    assert not PLAIN.full_softmax(0) and not PRIVATE.full_softmax(100)
