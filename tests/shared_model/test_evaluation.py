"""Full-ranking metrics on hand-computed cases: every item ranked, history masked except the target."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from shared_model.evaluation import evaluate, held_out_ranks, ndcg_at, paired_ratio
from shared_model.features import EVENT_FIELDS, SequenceSet


class FixedScores(nn.Module):
    """A stand-in model whose profile for user u scores item i as scores[u, i]."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = scores
        n_items = scores.shape[1]
        self.register_buffer("descriptors", torch.zeros(n_items, 5, dtype=torch.long))
        self.config = SimpleNamespace(profile_dim=n_items)

    def encode(self, items, *rest):
        user = items[:, :1].float()  # the first input item carries the user's row index
        profiles = self.scores[user.long().squeeze(1)]  # (B, N+1)
        return profiles.unsqueeze(1).expand(-1, items.shape[1], -1)

    def item_vectors(self, items):
        return torch.eye(self.scores.shape[1])[items]


def _heldout(targets, histories) -> SequenceSet:
    U = len(targets)
    events = {name: torch.zeros(U, 3, dtype=torch.long) for name in EVENT_FIELDS}
    events["items"][:, 0] = torch.arange(U)
    return SequenceSet(events=events, genders=torch.zeros(U, dtype=torch.long), ages=torch.zeros(U, dtype=torch.long),
                       lengths=torch.ones(U, dtype=torch.long), user_ids=np.arange(U).astype(str),
                       target_items=torch.tensor(targets), history=[np.asarray(h, dtype=np.int64) for h in histories])


def test_ranks_over_the_whole_catalogue_with_history_masked():
    # items 1..5 (0 is padding). user 0: target 3 is beaten by 5 and 4, but 5 is in the history -> rank 1.
    # user 1: target 2 is best -> rank 0. user 2: target 1 is beaten by 2,3,4,5 -> rank 4.
    scores = torch.tensor([
        [9.0, 0.1, 0.2, 0.5, 0.6, 0.9],
        [9.0, 0.1, 0.9, 0.5, 0.6, 0.2],
        [9.0, 0.1, 0.2, 0.5, 0.6, 0.9],
    ])
    sequences = _heldout([3, 2, 1], [[5], [2], []])  # user 1 saw its target before: it still counts
    metrics = evaluate(FixedScores(scores), sequences, device=torch.device("cpu"), ks=(1, 3))
    ranks = np.array([1, 0, 4])
    assert math.isclose(metrics["hr@1"], np.mean(ranks < 1))
    assert math.isclose(metrics["hr@3"], np.mean(ranks < 3))
    expected_ndcg3 = np.mean([1 / math.log2(r + 2) if r < 3 else 0.0 for r in ranks])
    assert math.isclose(metrics["ndcg@3"], expected_ndcg3)
    assert math.isclose(metrics["mrr"], np.mean(1 / (ranks + 1)))
    assert metrics["users"] == 3
    # the per-user ranks behind those figures, in the users' order
    per_user = held_out_ranks(FixedScores(scores), sequences, device=torch.device("cpu"))
    assert per_user.tolist() == ranks.tolist()
    assert ndcg_at(per_user, 3).tolist() == pytest.approx([1 / math.log2(3), 1.0, 0.0])


def test_paired_ratio_interval_covers_user_noise_and_nothing_else():
    rng = np.random.default_rng(1)
    base = np.where(rng.random(5000) < 0.1, rng.random(5000), 0.0)  # per-user NDCG: mostly zeros
    same = paired_ratio(base, base)
    assert same["ratio"] == same["low"] == same["high"] == pytest.approx(1.0)  # identical models: no doubt at all
    scaled = paired_ratio(0.9 * base, base)  # every user scored 10% lower: paired, the interval is a point
    assert scaled["low"] == pytest.approx(0.9) and scaled["high"] == pytest.approx(0.9)
    # a model that wins on some users and loses on others: the interval has width and holds the ratio
    mixed = np.where(rng.random(5000) < 0.5, base * 1.5, base * 0.5)
    wide = paired_ratio(mixed, base)
    assert wide["low"] < wide["ratio"] < wide["high"] and wide["high"] - wide["low"] > 0.02
    assert wide["ratio"] == pytest.approx(mixed.mean() / base.mean()) and wide["users"] == 5000
    few = np.zeros(20)
    few[0] = 1.0  # one hit among 20 users: most resamples of the denominator are all zeros
    assert paired_ratio(few, few)["low"] is None and paired_ratio(few, few)["ratio"] == 1.0
    with pytest.raises(ValueError, match="equally long"):
        paired_ratio(base, base[:-1])


def test_padding_index_is_never_ranked():
    scores = torch.tensor([[100.0, 0.1, 0.2]])  # padding column scores highest
    metrics = evaluate(FixedScores(scores), _heldout([2], [[]]), device=torch.device("cpu"), ks=(1,))
    assert metrics["hr@1"] == 1.0


def test_profiles_come_back_in_the_users_order_whatever_their_lengths(small_log):
    from shared_model.evaluation import last_profiles
    from shared_model.features import build_sequences
    from shared_model.model import ProfileConfig, ProfileTransformer

    config = ProfileConfig(max_len=20, d_model=16, n_heads=1, n_layers=1, profile_dim=8, item_buckets=256)
    data = build_sequences(small_log.events, small_log.users, config.hash_spec, max_len=config.max_len)
    torch.manual_seed(0)
    model = ProfileTransformer(config, data.catalogue.descriptors)
    cpu = torch.device("cpu")
    together = last_profiles(model, data.test, device=cpu, batch_size=7)
    for u in (0, len(data.test) // 2, len(data.test) - 1):  # one user alone, untrimmed window
        alone = data.test.select(np.array([u]))
        with torch.no_grad():
            model.eval()
            inputs = [alone.events[name] for name in EVENT_FIELDS]
            full = model.encode(*inputs, alone.genders, alone.ages)[0, int(alone.lengths[0]) - 1]
        torch.testing.assert_close(together[u], full)


def test_ties_nan_scores_and_a_nan_target_rank_against_the_model():
    """Before: a NaN model scored HR@10 = NDCG@10 = MRR = 1.0 (NaN compares false, so nothing ranked ahead)."""
    cpu = torch.device("cpu")
    tied = torch.tensor([[0.0, 0.5, 0.5, 0.1, 0.0]])  # target 1 tied with item 2: item 2 counts ahead
    assert held_out_ranks(FixedScores(tied), _heldout([1], [[]]), device=cpu).tolist() == [1.0]
    broken = torch.full((1, 5), float("nan"))  # a model of NaNs: the target ranks below all 3 other items
    assert held_out_ranks(FixedScores(broken), _heldout([1], [[]]), device=cpu).tolist() == [3.0]
    metrics = evaluate(FixedScores(broken), _heldout([1], [[]]), device=cpu, ks=(1,))
    assert metrics["hr@1"] == 0.0 and metrics["ndcg@1"] == 0.0 and metrics["mrr"] == 0.25

    class NaNItem(FixedScores):  # item 2's vector is NaN: it scores NaN for everyone
        def item_vectors(self, items):
            vectors = super().item_vectors(items).clone()
            vectors[items == 2] = float("nan")
            return vectors

    fine = torch.tensor([[0.0, 0.2, 0.9, 0.1, 0.0]])
    assert held_out_ranks(NaNItem(fine), _heldout([1], [[]]), device=cpu).tolist() == [1.0]


def test_a_boost_from_the_newest_input_item_is_added_to_the_models_scores():
    # user 0's newest input item is 0 (its row index): a boost of 1 on item 1 lifts the target from rank 2 to 0
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.6]])
    sequences = _heldout([1], [[]])
    seen = []

    def boost(last_items):
        seen.append(last_items.tolist())
        return torch.tensor([[0.0, 1.0, 0.0, 0.0]]).expand(len(last_items), -1)

    cpu = torch.device("cpu")
    assert held_out_ranks(FixedScores(scores), sequences, device=cpu).tolist() == [2.0]
    assert held_out_ranks(FixedScores(scores), sequences, device=cpu, boost=boost).tolist() == [0.0]
    assert seen == [[0]]
