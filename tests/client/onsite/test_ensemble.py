"""The score ensemble: ranks by first's score + weight * second's, through the ordinary ranking code."""

import pickle

import numpy as np
import pytest
import torch

from client.onsite.ensemble import (
    SECOND_FILE,
    WEIGHTS,
    ScoreEnsemble,
    check_ensemble_weight,
    save_served,
    served_model,
)
from client.onsite.personalise import best_ensemble, blend_weight
from client.onsite.profile import model_outputs
from shared_model.checkpoint import open_model, save_global_model
from shared_model.evaluation import held_out_ranks, last_profiles
from shared_model.merchant_data import simulated_merchants
from shared_model.model import ProfileConfig, ProfileTransformer
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
    data, first, second = _two(tmp_path)
    ensemble, valid, blend = best_ensemble(first, second, data, None, device=torch.device("cpu"))
    assert blend == 0.0 and ensemble.weight in WEIGHTS
    others = [blend_weight(ScoreEnsemble(first, second, w), data, None, device=torch.device("cpu"))[0] for w in WEIGHTS]
    assert valid == max(others)


def test_profiles_of_an_ensemble_score_categories_by_both_and_purchases_by_the_first(tmp_path):
    data, first, second = _two(tmp_path)
    cpu = torch.device("cpu")
    both, one = model_outputs(ScoreEnsemble(first, second, 2.0), data.valid, data.catalogue, device=cpu), \
        model_outputs(first, data.valid, data.catalogue, device=cpu)
    other = model_outputs(second, data.valid, data.catalogue, device=cpu)
    assert both.vectors.shape[1] == first.config.profile_dim + second.config.profile_dim
    assert np.allclose(both.propensity, one.propensity, atol=1e-6)
    logits = np.log(one.next_categories) + 2.0 * np.log(other.next_categories)  # softmax of summed logits
    expected = np.exp(logits - logits.max(1, keepdims=True))
    assert np.allclose(both.next_categories, expected / expected.sum(1, keepdims=True), atol=1e-4)


def test_a_saved_ensemble_is_served_as_saved_and_refused_without_its_second_part(tmp_path):
    data, first, second = _two(tmp_path)
    folder = tmp_path / "fit"
    folder.mkdir()
    save_served(folder, ScoreEnsemble(first, second, 0.5), data.catalogue, metadata={"version": "v1+local1"})
    source = open_model(folder)
    built, _, _ = source.build(data.catalogue)
    served = served_model(source, built, data.catalogue, device=torch.device("cpu"))
    cpu = torch.device("cpu")
    assert isinstance(served, ScoreEnsemble) and served.weight == 0.5
    assert torch.equal(held_out_ranks(served, data.valid, device=cpu),
                       held_out_ranks(ScoreEnsemble(first.eval(), second.eval(), 0.5), data.valid, device=cpu))
    # a received global model never names a second part, whatever lies beside it
    published = save_global_model(tmp_path / "v0001", first.config, first.shared_state(), {"version": 1})
    (published / SECOND_FILE).write_bytes((folder / SECOND_FILE).read_bytes())
    received = open_model(published)
    model, _, _ = received.build(data.catalogue)
    assert served_model(received, model, data.catalogue, device=cpu) is model
    (folder / SECOND_FILE).unlink()
    with pytest.raises(ValueError, match="without its second"):
        served_model(source, built, data.catalogue, device=cpu)


def test_an_ensemble_weight_out_of_bounds_or_parts_that_hash_differently_are_refused(tmp_path):
    data, first, second = _two(tmp_path)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e9, "x"):
        with pytest.raises(ValueError, match="ensemble weight"):
            check_ensemble_weight(bad)
    other = ProfileTransformer(ProfileConfig(**{**first.config.to_dict(), "item_buckets": 999}),
                               data.catalogue.descriptors)
    with pytest.raises(ValueError, match="hash items alike"):
        ScoreEnsemble(first, other, 1.0)


def test_a_planted_second_part_is_read_as_data_and_refused_without_running_it(tmp_path):
    """Only the merchant writes STATE/onsite, but a second part that holds code (a pickle) is refused by the
    weights-only load before anything in it runs."""
    marker = tmp_path / "planted-ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    data, first, second = _two(tmp_path)
    folder = tmp_path / "fit"
    folder.mkdir()
    save_served(folder, ScoreEnsemble(first, second, 0.5), data.catalogue, metadata={})
    (folder / SECOND_FILE).write_bytes(pickle.dumps(Payload()))
    source = open_model(folder)
    built, _, _ = source.build(data.catalogue)
    with pytest.raises(ValueError, match="not a fedprofile model file"):
        served_model(source, built, data.catalogue, device=torch.device("cpu"))
    assert not marker.exists()
