"""The secure sum: the coordinator learns the survivors' sum and nothing about one merchant's vector."""

from __future__ import annotations

import numpy as np
import pytest

from shared_model.secure_sum import Party, SecureSumError, SumPlan, decode, encode, unmasked_sum

LENGTH = 4096


def _plan(n=5, threshold=3, min_survivors=4, bound=1e3, length=LENGTH) -> SumPlan:
    return SumPlan(parties=tuple(range(101, 101 + n)), threshold=threshold, min_survivors=min_survivors,
                   bound=bound, length=length)


def _share(plan):
    parties = {p: Party(node_id=p) for p in plan.parties}
    keys = {p: parties[p].keys() for p in plan.parties}
    sent = {p: parties[p].share(plan, keys) for p in plan.parties}
    return parties, keys, sent


def _mask(plan, parties, keys, sent, vectors, alive):
    masked = {}
    for p in alive:
        party = Party.from_state_dict(parties[p].state_dict())  # a fresh ClientApp process per message
        masked[p] = party.mask(encode(vectors[p], plan), plan, received={q: sent[q][p] for q in plan.parties if q != p},
                               sharers=list(plan.parties), public_keys=keys)
        parties[p] = party
    return masked


def test_the_unmasked_sum_is_the_plain_sum_even_when_a_merchant_drops_out_after_sharing():
    plan = _plan()
    rng = np.random.default_rng(0)
    vectors = {p: rng.normal(scale=30, size=LENGTH) for p in plan.parties}
    parties, keys, sent = _share(plan)
    alive, dropped = list(plan.parties[:4]), [plan.parties[4]]  # the last one never sends its vector
    masked = _mask(plan, parties, keys, sent, vectors, alive)
    shares = {p: parties[p].unmask(plan, survivors=alive, dropped=dropped, public_keys=keys) for p in alive[:3]}
    encoded = unmasked_sum(plan, masked=masked, shares=shares, sharers=list(plan.parties), public_keys=keys)
    np.testing.assert_array_equal(encoded, sum(encode(vectors[p], plan) for p in alive))  # exact in Z_2^64
    total = decode(encoded, plan)
    np.testing.assert_allclose(total, sum(vectors[p] for p in alive), rtol=0, atol=1e-9)
    assert not np.allclose(total, sum(vectors.values()))  # the dropped merchant's vector is not in it


def _chi_square_uniform(words: np.ndarray) -> float:
    """p-value of the top bytes of 64-bit words against the uniform distribution."""
    from scipy.stats import chisquare

    counts = np.bincount((words >> np.uint64(56)).astype(np.int64), minlength=256)
    return float(chisquare(counts).pvalue)


def test_one_masked_vector_looks_uniform_whatever_the_merchants_data():
    plan = _plan(length=1 << 15)
    outputs = []
    for vectors in ({p: np.zeros(plan.length) for p in plan.parties},  # no signal at all
                    {p: np.full(plan.length, 999.0) for p in plan.parties}):  # every value at the bound
        parties, keys, sent = _share(plan)
        masked = _mask(plan, parties, keys, sent, vectors, list(plan.parties))
        outputs.append(masked[plan.parties[0]])
        assert _chi_square_uniform(masked[plan.parties[0]]) > 1e-4
        assert _chi_square_uniform(encode(vectors[plan.parties[0]], plan)) < 1e-10  # the test can fail
    # the two data sets' masked vectors are indistinguishable: same top-byte distribution (two-sample)
    from scipy.stats import chi2_contingency

    table = [np.bincount((o >> np.uint64(56)).astype(np.int64), minlength=256) for o in outputs]
    assert chi2_contingency(table).pvalue > 1e-4


def test_a_round_below_the_minimum_is_discarded_and_no_share_revealed():
    plan = _plan()
    rng = np.random.default_rng(1)
    vectors = {p: rng.normal(size=LENGTH) for p in plan.parties}
    parties, keys, sent = _share(plan)
    alive = list(plan.parties[:3])  # 3 vectors, the plan needs 4
    masked = _mask(plan, parties, keys, sent, vectors, alive)
    with pytest.raises(SecureSumError, match="fewer than the 4"):
        parties[alive[0]].unmask(plan, survivors=alive, dropped=list(plan.parties[3:]), public_keys=keys)
    with pytest.raises(SecureSumError, match="fewer than the 4"):
        unmasked_sum(plan, masked=masked, shares={}, sharers=list(plan.parties), public_keys=keys)


def test_a_coordinator_cannot_ask_for_both_secrets_of_a_merchant_nor_swap_keys():
    plan = _plan()
    vectors = {p: np.ones(LENGTH) for p in plan.parties}
    parties, keys, sent = _share(plan)
    alive = list(plan.parties)
    _mask(plan, parties, keys, sent, vectors, alive)
    target = alive[0]
    with pytest.raises(SecureSumError, match="split the parties"):  # named as survivor and as dropped
        parties[alive[1]].unmask(plan, survivors=alive, dropped=[target], public_keys=keys)
    parties[alive[1]].unmask(plan, survivors=alive, dropped=[], public_keys=keys)
    with pytest.raises(SecureSumError, match="already revealed"):  # asked again, now calling the target dropped
        parties[alive[1]].unmask(plan, survivors=alive[1:], dropped=[target], public_keys=keys)
    swapped = {**keys, target: keys[alive[2]]}
    with pytest.raises(SecureSumError, match="public keys differ"):
        parties[alive[3]].unmask(plan, survivors=alive, dropped=[], public_keys=swapped)
    lowered = _plan(min_survivors=3)  # the plan shared under needed 4 vectors: a later stage may not need fewer
    with pytest.raises(SecureSumError, match="the plan or the public keys differ"):
        parties[alive[4]].unmask(lowered, survivors=alive[2:], dropped=alive[:2], public_keys=keys)


def test_values_out_of_range_are_refused_never_clipped():
    plan = _plan(bound=10.0)
    with pytest.raises(SecureSumError, match="1 of 4096 values"):
        encode(np.r_[np.zeros(LENGTH - 1), 10.5], plan)
    with pytest.raises(SecureSumError, match="not finite"):
        encode(np.r_[np.zeros(LENGTH - 1), np.nan], plan)
    x = np.linspace(-10, 10, LENGTH)
    assert np.abs(decode(encode(x, plan), plan) - x).max() <= plan.resolution / 2


def test_plans_that_would_let_a_minority_rebuild_secrets_are_refused():
    with pytest.raises(SecureSumError, match="majority"):
        _plan(n=6, threshold=3, min_survivors=4)
    with pytest.raises(SecureSumError, match="between the threshold"):
        _plan(n=6, threshold=4, min_survivors=3)


def _mask_whole(plan, vectors, alive):
    parties = {p: Party(node_id=p) for p in plan.parties}
    keys = {p: parties[p].keys() for p in plan.parties}
    masked = {}
    for p in alive:
        party = Party.from_state_dict(parties[p].state_dict())  # the keys' message and the step's: two processes
        masked[p] = party.mask_whole(encode(vectors[p], plan), plan, public_keys=keys)
        parties[p] = party
    return parties, keys, masked


def test_a_sum_of_every_party_is_the_plain_sum_with_no_shares_and_one_vector_still_looks_uniform():
    """min_survivors = every party: no secret is shared and no unmask asked; the pairwise masks cancel only when
    every vector is in, so a sum short of one is refused, and one masked vector is uniform whatever the data."""
    plan = _plan(min_survivors=5)
    assert not plan.recovers and _plan().recovers
    rng = np.random.default_rng(2)
    vectors = {p: rng.normal(scale=30, size=LENGTH) for p in plan.parties}
    parties, keys, masked = _mask_whole(plan, vectors, plan.parties)
    encoded = unmasked_sum(plan, masked=masked, shares={}, sharers=list(plan.parties), public_keys=keys)
    np.testing.assert_array_equal(encoded, sum(encode(vectors[p], plan) for p in plan.parties))  # exact in Z_2^64
    assert all(not party.self_seed and not party.received for party in parties.values())  # nothing was shared
    with pytest.raises(SecureSumError, match="fewer than the 5"):
        unmasked_sum(plan, masked={p: masked[p] for p in plan.parties[:4]}, shares={}, sharers=list(plan.parties),
                     public_keys=keys)
    at_bound = {p: np.full(LENGTH * 8, 999.0) for p in plan.parties}  # every value at the bound: far from uniform
    wide = _plan(min_survivors=5, length=LENGTH * 8)
    one = _mask_whole(wide, at_bound, plan.parties)[2][plan.parties[0]]
    assert _chi_square_uniform(one) > 1e-4 and _chi_square_uniform(encode(at_bound[plan.parties[0]], wide)) < 1e-10


def test_a_party_of_a_sum_of_every_party_masks_once_one_way_under_its_own_key():
    whole, recovering = _plan(min_survivors=5), _plan()
    vectors = {p: np.ones(LENGTH) for p in whole.parties}
    parties, keys, sent = _share(recovering)
    first = whole.parties[0]
    with pytest.raises(SecureSumError, match="already shared"):  # shared its secrets for a sum that recovers
        parties[first].mask_whole(encode(vectors[first], whole), whole, public_keys=keys)
    with pytest.raises(SecureSumError, match="shares no secrets"):
        Party(node_id=first).share(whole, keys)
    fresh = {p: Party(node_id=p) for p in whole.parties}
    keys = {p: fresh[p].keys() for p in whole.parties}
    with pytest.raises(SecureSumError, match="without a self mask"):
        fresh[first].mask(encode(vectors[first], whole), whole, received={}, sharers=list(whole.parties),
                          public_keys=keys)
    substituted = {**keys, first: Party(node_id=first).keys()}  # the coordinator swapped this party's own key
    with pytest.raises(SecureSumError, match="not the one it sent"):
        fresh[first].mask_whole(encode(vectors[first], whole), whole, public_keys=substituted)
    fresh[first].mask_whole(encode(vectors[first], whole), whole, public_keys=keys)
    with pytest.raises(SecureSumError, match="masks once"):  # a second vector under the same masks would leak
        fresh[first].mask_whole(encode(2 * vectors[first], whole), whole, public_keys=keys)
