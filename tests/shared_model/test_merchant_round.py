"""A merchant's round in plain PyTorch: weights in and out, FedProx's pull, shape checks."""

from __future__ import annotations

import pytest
import torch

from shared_model.features import build_sequences
from shared_model.merchant_round import local_round
from shared_model.model import ProfileTransformer
from shared_model.run_config import RunConfig
from shared_model.shared_weights import embedding_table_names, initial_shared_state

RUN = RunConfig(dp=False, max_len=20, d_model=16, profile_dim=16, n_heads=1, n_layers=1, item_buckets=512,
                batch_size=32, negatives=32, lr=1e-2, local_epochs=2)


@pytest.fixture(scope="module")
def merchant_data(small_log):
    return build_sequences(small_log.events, small_log.users, RUN.model_config().hash_spec, max_len=20)


def _distance_moved(data, mu):
    shared = initial_shared_state(RUN.model_config())
    model = ProfileTransformer(RUN.model_config(), data.catalogue.descriptors)
    model.load_shared_state(shared)
    update = local_round(model, data, RUN, ledger_state=None, proximal_mu=mu, device=torch.device("cpu"))
    return sum(float((update.shared_state[k] - v).pow(2).sum()) for k, v in shared.items()) ** 0.5


def test_fedprox_keeps_local_weights_closer_to_the_global_model(merchant_data):
    free, pulled = _distance_moved(merchant_data, 0.0), _distance_moved(merchant_data, 50.0)
    assert pulled < 0.7 * free


def test_global_weights_of_another_model_config_are_refused(merchant_data):
    model = ProfileTransformer(RUN.model_config(), merchant_data.catalogue.descriptors)
    other = initial_shared_state(RUN.replace(d_model=32).model_config())
    with pytest.raises(ValueError, match="wrong shapes"):
        model.load_shared_state(other)
    partial = dict(initial_shared_state(RUN.model_config()))
    partial.pop(next(iter(partial)))
    with pytest.raises(ValueError, match="missing"):
        model.load_shared_state(partial)


def test_each_round_draws_its_own_batches_and_a_round_repeats_exactly(merchant_data):
    def update(server_round):
        model = ProfileTransformer(RUN.model_config(), merchant_data.catalogue.descriptors)
        model.load_shared_state(initial_shared_state(RUN.model_config()))
        out = local_round(model, merchant_data, RUN.replace(local_epochs=1), ledger_state=None,
                          server_round=server_round, device=torch.device("cpu"))
        return out.shared_state["blocks.0.attn.qkv.weight"]

    first = update(1)
    torch.testing.assert_close(update(1), first)  # reproducible for a given round
    assert not torch.allclose(update(2), first)  # but not the same samples in every round


@pytest.mark.parametrize("dp", [False, True])
def test_rows_a_merchant_never_looks_up_come_back_unchanged_without_dp_only(merchant_data, dp):
    """The premise of sparse-rows: plain training leaves unused table rows bit-identical, DP noise moves them all."""
    run = RUN.replace(local_epochs=1, dp=dp, target_epsilon=8.0)
    shared = initial_shared_state(run.model_config())
    model = ProfileTransformer(run.model_config(), merchant_data.catalogue.descriptors)
    model.load_shared_state(shared)
    update = local_round(model, merchant_data, run, ledger_state=None, device=torch.device("cpu"))
    name = "input_items.hash_a.weight"
    assert name in embedding_table_names(run.model_config())
    used = torch.zeros(run.item_buckets, dtype=torch.bool)
    used[merchant_data.catalogue.descriptors[:, 0].long()] = True
    changed = (update.shared_state[name] != shared[name]).any(dim=1)
    assert changed[used].any() and (~used).sum() > 100
    assert bool(changed[~used].all()) if dp else not changed[~used].any()
