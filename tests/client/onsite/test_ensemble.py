"""The score ensemble: ranks by first's score + weight * second's, through the ordinary ranking code."""

import torch

from client.onsite.ensemble import ScoreEnsemble
from client.onsite.personalise import best_ensemble
from shared_model.evaluation import held_out_ranks, last_profiles
from shared_model.merchant_data import simulated_merchants
from shared_model.model import ProfileTransformer
from tests.conftest import tiny_run


def _two(tmp_path):
    run = tiny_run(tmp_path, synthetic_users=120)
    data = simulated_merchants(run, 2)[0].sequences
    torch.manual_seed(0)
    first = ProfileTransformer(run.model_config(), data.catalogue.descriptors)
    second = ProfileTransformer(run.model_config(), data.catalogue.descriptors)
    return data, first, second


def _scores(model, data):
    items = model.item_vectors(torch.arange(model.descriptors.shape[0]))
    return last_profiles(model, data.valid, device=torch.device("cpu")) @ items.T  # (U, N+1)


def test_the_ensemble_scores_are_the_sum_of_its_models_scores(tmp_path):
    data, first, second = _two(tmp_path)
    with torch.no_grad():
        both = _scores(ScoreEnsemble(first, second, 0.5), data)
        expected = _scores(first, data) + 0.5 * _scores(second, data)
    assert torch.allclose(both, expected, atol=1e-4)


def test_a_weight_near_zero_ranks_as_the_first_model_and_a_large_one_as_the_second(tmp_path):
    data, first, second = _two(tmp_path)
    cpu = torch.device("cpu")
    alone = held_out_ranks(first, data.valid, device=cpu)
    assert torch.equal(held_out_ranks(ScoreEnsemble(first, second, 1e-9), data.valid, device=cpu), alone)
    second_ranks = held_out_ranks(second, data.valid, device=cpu)
    assert not torch.equal(alone, second_ranks)  # otherwise the test could not tell them apart
    big = held_out_ranks(ScoreEnsemble(first, second, 1e6), data.valid, device=cpu)
    assert (big - second_ranks).abs().mean() < (big - alone).abs().mean()


def test_the_best_ensemble_is_chosen_on_validation(tmp_path):
    from client.onsite.ensemble import WEIGHTS
    from client.onsite.personalise import blend_weight

    data, first, second = _two(tmp_path)
    ensemble, valid, blend = best_ensemble(first, second, data, None, device=torch.device("cpu"))
    assert blend == 0.0 and ensemble.weight in WEIGHTS
    others = [blend_weight(ScoreEnsemble(first, second, w), data, None, device=torch.device("cpu"))[0] for w in WEIGHTS]
    assert valid == max(others)
