"""On-site personalisation: a fine-tuned copy chosen on validation users; the global model is never changed."""

from dataclasses import replace

import numpy as np
import torch

from client.onsite.adjacency import ItemAdjacency
from client.onsite.personalise import OnsiteConfig, personalise, train_alone
from shared_model.merchant_data import simulated_merchants
from shared_model.model import ProfileTransformer
from tests.conftest import tiny_run


def _shop(tmp_path):
    run = tiny_run(tmp_path, synthetic_users=120)
    data = simulated_merchants(run, 2)[0].sequences
    torch.manual_seed(0)
    return run, data, ProfileTransformer(run.model_config(), data.catalogue.descriptors)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fine_tuning_returns_a_better_copy_and_leaves_the_global_model_alone(tmp_path):
    run, data, untrained = _shop(tmp_path)
    before = _weights(untrained)
    served, fit = personalise(untrained, data, OnsiteConfig(epochs=4, lr=1e-2, batch_size=32, negatives=32))
    assert served is not untrained and fit["fine-tuned"] and 1 <= fit["epochs"] <= 4
    assert fit["valid-ndcg@10"] > fit["global-valid-ndcg@10"]
    assert all(torch.equal(before[k], v) for k, v in untrained.state_dict().items())


def test_the_global_model_is_served_when_fine_tuning_does_not_beat_it(tmp_path):
    run, data, model = _shop(tmp_path)
    served, fit = personalise(model, data, OnsiteConfig(epochs=2, lr=0.0, batch_size=32, negatives=32))
    assert served is model and fit["chosen"] == "global" and not fit["fine-tuned"] and fit["epochs"] == 0
    assert fit["valid-ndcg@10"] == fit["global-valid-ndcg@10"] >= fit["fine-tuned-valid-ndcg@10"]


def test_the_merchants_own_model_is_served_when_it_beats_both_on_validation(tmp_path):
    run, data, untrained = _shop(tmp_path)
    alone, _ = train_alone(untrained, data, OnsiteConfig(alone_lr=1e-2, batch_size=32, negatives=32, alone_epochs=4))
    served, fit = personalise(untrained, data, OnsiteConfig(epochs=1, lr=0.0, batch_size=32, negatives=32),
                              alone=alone)
    assert fit["alone-valid-ndcg@10"] > fit["global-valid-ndcg@10"]
    assert served is alone and fit["chosen"] == "alone" and fit["valid-ndcg@10"] == fit["alone-valid-ndcg@10"]


def test_a_merchant_alone_starts_from_fresh_weights_of_the_same_architecture(tmp_path):
    run, data, template = _shop(tmp_path)
    before = _weights(template)
    alone, fit = train_alone(template, data, OnsiteConfig(batch_size=32, negatives=32, alone_epochs=2))
    assert alone is not template and alone.config == template.config and 1 <= fit["epochs"] <= 2
    assert all(torch.equal(before[k], v) for k, v in template.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in alone.state_dict().items())


def _oracle(data) -> ItemAdjacency:
    """An adjacency that pairs each validation customer's newest input item with its next item."""
    items, lengths = data.valid.events["items"].numpy(), data.valid.lengths.numpy()
    pairs = [[items[u, n - 1], int(data.valid.target_items[u])] for u, n in enumerate(lengths)]
    return ItemAdjacency.from_histories(pairs, data.catalogue.num_items)


def test_a_blend_is_chosen_only_when_the_adjacency_ranks_validation_customers_better(tmp_path):
    run, data, model = _shop(tmp_path)
    no_fit = OnsiteConfig(epochs=0, batch_size=32, negatives=32)
    served, fit = personalise(model, data, no_fit, adjacency=_oracle(data))
    assert served is model and fit["adjacency-weight"] > 0
    assert fit["valid-ndcg@10"] > personalise(model, data, no_fit)[1]["valid-ndcg@10"]
    empty = ItemAdjacency.from_histories([], data.catalogue.num_items)  # says nothing: the model alone
    assert personalise(model, data, no_fit, adjacency=empty)[1]["adjacency-weight"] == 0
    off = OnsiteConfig(epochs=0, batch_size=32, negatives=32, blend=False)
    assert personalise(model, data, off, adjacency=_oracle(data))[1]["adjacency-weight"] == 0
    assert np.isfinite(fit["global-valid-ndcg@10"])


def test_the_merchants_own_model_and_the_federations_together_are_a_candidate(tmp_path):
    from client.onsite.ensemble import ScoreEnsemble

    run, data, untrained = _shop(tmp_path)
    alone, _ = train_alone(untrained, data, OnsiteConfig(alone_lr=1e-2, batch_size=32, negatives=32, alone_epochs=3))
    config = OnsiteConfig(epochs=2, lr=1e-2, batch_size=32, negatives=32, blend=False)
    candidates = {}
    served, fit = personalise(untrained, data, config, alone=alone, fitted=candidates)
    ensemble, valid = candidates["ensemble"]
    assert isinstance(ensemble, ScoreEnsemble) and ensemble.first is alone
    partner = "fine-tuned" if fit["fine-tuned-valid-ndcg@10"] > fit["global-valid-ndcg@10"] else "global"
    assert ensemble.second is candidates[partner][0] and valid == fit["ensemble-valid-ndcg@10"]
    best = max(candidates, key=lambda name: candidates[name][1])
    assert fit["valid-ndcg@10"] == candidates[best][1] and (served is ensemble) == (fit["chosen"] == "ensemble")
    if fit["chosen"] == "ensemble":
        assert fit["ensemble-weight"] == ensemble.weight and fit["ensemble-partner"] == partner
    off = personalise(untrained, data, replace(config, ensemble=False), alone=alone)[1]
    assert "ensemble-valid-ndcg@10" not in off and off["chosen"] != "ensemble"
