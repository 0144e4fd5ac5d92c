"""The faster ghost clipping and length-split DP batches give each customer's clipped gradient as Opacus does."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from shared_model import embedding_norm
from shared_model.batching import physical_batches
from shared_model.features import build_sequences
from shared_model.ghost_clipping import GhostClippingSpeedup
from shared_model.loss import ProfileLoss
from shared_model.model import ProfileConfig, ProfileTransformer
from shared_model.training import TrainConfig, _Step

CONFIG = ProfileConfig(max_len=30, d_model=16, n_heads=2, n_layers=1, profile_dim=16, item_buckets=512,
                       category_buckets=64, brand_buckets=64, token_buckets=64, dropout=0.0)
CLIP = 0.05  # below every customer's gradient norm here, so clipping changes each one


@pytest.fixture(scope="module")
def data(small_log):
    return build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)


def _clipped_sum(data, *, speedup: bool, split: bool, model_config: ProfileConfig = CONFIG, one_pass: bool = False):
    """One logical batch of every training customer through Opacus (ghost clipping, no noise): the gradient it
    steps with, per parameter, and how many physical batches ran."""
    embedding_norm.install()
    torch.manual_seed(0)
    model = ProfileTransformer(model_config, data.catalogue.descriptors)
    tensors = [t.clone() for t in data.train.tensors()]
    for t in tensors:  # most customers here fill the window: cut two thirds of them to 4 events (right padding)
        if t.dim() == 2:
            t[: 2 * len(t) // 3, 4:] = -1 if t is tensors[-1] else 0  # purchase targets pad with -1 (unknown)
    loader = DataLoader(TensorDataset(*tensors), batch_size=len(tensors[0]))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    criterion = ProfileLoss(category_weight=0.1, purchase_weight=0.1)
    net, optimizer, criterion, loader = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, criterion=criterion, data_loader=loader, noise_multiplier=0.0,
        max_grad_norm=CLIP, poisson_sampling=False, grad_sample_mode="ghost", loss_reduction="mean")
    fast = GhostClippingSpeedup(net, optimizer, one_pass=one_pass) if speedup else None
    assert fast is None or fast.one_pass == one_pass
    config = TrainConfig(full_softmax=True, show_progress=False)  # every item a negative: no draw per batch
    step = _Step(net, optimizer, criterion, config, data, torch.device("cpu"), private=True, proximal_mu=0.0,
                 model=model, backward=fast.backward if fast else None)
    physical = 0
    for batch in physical_batches(loader, optimizer, physical_batch_size=None, private=split):
        step(batch)
        physical += 1
    norms = net.per_sample_gradient_norms.clone()
    grads = {name: p.grad.to_dense().clone() for name, p in model.named_parameters() if p.requires_grad}
    if fast:
        fast.close()
    net._close()
    return grads, physical, norms, model


def test_the_norms_only_first_pass_and_sparse_tables_clip_as_opacus_does(data):
    reference, _, norms, _ = _clipped_sum(data, speedup=False, split=False)
    fast, _, fast_norms, model = _clipped_sum(data, speedup=True, split=False, one_pass=False)
    assert bool((norms > CLIP).all())  # every customer clipped: the comparison covers the clipping
    torch.testing.assert_close(fast_norms, norms)
    assert reference.keys() == fast.keys()
    for name in reference:
        torch.testing.assert_close(fast[name], reference[name], rtol=1e-5, atol=1e-8, msg=name)
    # after close() the model is plain again: dense tables, the optimizer class's own accumulate
    assert not any(m.sparse for m in model.modules() if isinstance(m, nn.Embedding))


def test_the_one_pass_clipped_gradient_is_the_second_pass_one(data, monkeypatch):
    # book-keeping: each layer's clipped gradient from its input and the first pass's output gradient, no second
    # backward pass; over the whole model (item tables, attention, layer norms, heads) as Opacus gives it
    reference, _, norms, _ = _clipped_sum(data, speedup=False, split=False)
    passes = []
    real = torch.autograd.backward
    monkeypatch.setattr(torch.autograd, "backward", lambda *a, **k: passes.append(1) or real(*a, **k))
    one_pass, physical, one_pass_norms, _ = _clipped_sum(data, speedup=True, split=False, one_pass=True)
    assert len(passes) == physical == 1  # one backward pass a physical batch
    torch.testing.assert_close(one_pass_norms, norms)
    assert reference.keys() == one_pass.keys()
    for name in reference:
        torch.testing.assert_close(one_pass[name], reference[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("one_pass", [False, True])
def test_a_batch_split_by_length_sums_the_same_clipped_gradients(data, one_pass):
    whole, physical_whole, _, _ = _clipped_sum(data, speedup=True, split=False, one_pass=one_pass)
    split, physical_split, _, _ = _clipped_sum(data, speedup=True, split=True, one_pass=one_pass)
    assert physical_whole == 1 < physical_split  # the lengths here vary enough to split
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-7, msg=name)


def test_a_layer_the_first_pass_misses_is_an_error_not_a_short_norm(data):
    """Were a layer's per-customer norm left out, customers would be clipped by a norm below their gradient's."""
    embedding_norm.install()
    torch.manual_seed(0)
    model = ProfileTransformer(CONFIG, data.catalogue.descriptors)
    tensors = data.train.tensors()
    loader = DataLoader(TensorDataset(*tensors), batch_size=16)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    net, optimizer, criterion, loader = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, criterion=ProfileLoss(category_weight=0.1, purchase_weight=0.1), data_loader=loader, noise_multiplier=0.0,
        max_grad_norm=CLIP, poisson_sampling=False, grad_sample_mode="ghost", loss_reduction="mean")
    fast = GhostClippingSpeedup(net, optimizer)
    for handle, layer in zip(fast._handles, [m for m in net.modules()
                                             if any(p.requires_grad for p in m.parameters(recurse=False))]):
        if isinstance(layer, nn.Embedding):  # nothing lies below an embedding: its norm would go missing
            handle.remove()
    step = _Step(net, optimizer, criterion, TrainConfig(negatives=8, show_progress=False), data,
                 torch.device("cpu"), private=True, proximal_mu=0.0, model=model, backward=fast.backward)
    with pytest.raises(RuntimeError, match="no per-customer norm"):
        step(next(iter(loader)))


def test_one_pass_clipping_falls_back_to_two_passes_for_a_layer_it_cannot_form():
    linear = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    other = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(4, 4, 1))
    for net, expected in ((linear, True), (other, False)):
        fast = GhostClippingSpeedup(net, torch.optim.SGD(net.parameters(), lr=0.0))
        assert fast.one_pass is expected
        fast.close()
