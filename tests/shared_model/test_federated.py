"""A merchant's round in plain PyTorch: weights in and out, FedProx's pull, shape checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared_model.features import build_sequences
from shared_model.federated import embedding_table_names, initial_shared_state, local_round, touched_row_average
from shared_model.model import ProfileTransformer
from shared_model.run_config import RunConfig

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


def test_touched_rows_move_at_the_speed_of_the_merchants_that_changed_them():
    sent = np.zeros((4, 2), dtype=np.float32)
    a, b = sent.copy(), sent.copy()
    a[0], a[1], a[3] = 1.0, 2.0, 1.0  # row 0 only merchant a changed; row 1 and 3 both
    b[1], b[3] = 6.0, 5.0  # row 2: nobody
    out = touched_row_average(sent, [a, b], [3.0, 1.0])
    np.testing.assert_allclose(out[0], [1.0, 1.0])  # a's whole update, not 3/4 of it
    np.testing.assert_allclose(out[1], [3.0, 3.0])  # (3 x 2 + 1 x 6) / 4, the plain weighted mean
    np.testing.assert_allclose(out[2], [0.0, 0.0])
    np.testing.assert_allclose(out[3], [2.0, 2.0])
    assert out.dtype == np.float32
    # with every row touched it is FedAvg
    c, d = sent + 1.0, sent + 3.0
    np.testing.assert_allclose(touched_row_average(sent, [c, d], [1.0, 1.0]), sent + 2.0)


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
