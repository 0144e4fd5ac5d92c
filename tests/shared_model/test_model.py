"""The profile Transformer under Opacus: per-user gradients are exact, and shared/local parameters are marked."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.validators import ModuleValidator

from shared_model.features import build_sequences
from shared_model.loss import ProfileLoss
from shared_model.model import LOCAL_PARAMETER_PREFIXES, LowPassFilter, ProfileConfig, ProfileTransformer, is_shared

TINY = ProfileConfig(max_len=12, d_model=16, n_heads=2, n_layers=2, profile_dim=8, dropout=0.0, item_buckets=64,
                     category_buckets=32, brand_buckets=32, price_buckets=8, gap_buckets=8)


def _setup(small_log, *, local: bool):
    data = build_sequences(small_log.events, small_log.users, TINY.hash_spec, max_len=TINY.max_len)
    config = ProfileConfig(**{**TINY.to_dict(), "local_items": data.catalogue.num_items + 1 if local else 0})
    torch.manual_seed(0)
    model = ProfileTransformer(config, data.catalogue.descriptors)
    B = 5
    *inputs, target_items, target_categories, target_purchase = [t[:B] for t in data.train.tensors()]
    negatives = torch.randint(1, data.catalogue.num_items + 1, (16,))
    category_set = torch.unique(data.catalogue.descriptors[1:, 2])
    per_user = (target_items, target_categories)
    shared = (negatives, category_set)
    return model, inputs, per_user, shared, (target_items, target_categories, target_purchase, negatives, category_set)


def _loss(reduction: str) -> ProfileLoss:
    return ProfileLoss(category_weight=0.5, purchase_weight=0.5, reduction=reduction)


def _forward(model, inputs, per_user, shared, *, rows=slice(None)):
    negatives, categories = shared
    return model(*[t[rows] for t in inputs], per_user[0][rows], negatives, per_user[1][rows], categories,
                 train_negatives=False)


def _per_user_reference(model, inputs, per_user, shared, targets) -> list[dict[str, torch.Tensor]]:
    """Each user's gradient from a batch of one, with plain autograd."""
    grads = []
    for i in range(inputs[0].shape[0]):
        model.zero_grad()
        one = slice(i, i + 1)
        loss = _loss("sum")(_forward(model, inputs, per_user, shared, rows=one),
                            (targets[0][one], targets[1][one], targets[2][one], *targets[3:]))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return grads


def test_model_passes_opacus_validation(small_log):
    model, *_ = _setup(small_log, local=True)
    assert ModuleValidator.validate(model, strict=False) == []


def test_per_sample_gradients_match_microbatches_for_every_parameter(small_log):
    model, inputs, per_user, shared, targets = _setup(small_log, local=True)
    reference = _per_user_reference(model, inputs, per_user, shared, targets)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    gsm.zero_grad()
    _loss("sum")(_forward(gsm, inputs, per_user, shared), targets).backward()
    checked = 0
    for name, p in model.named_parameters():
        expected = torch.stack([r.get(name, torch.zeros_like(p)) for r in reference])
        assert p.grad_sample is not None, f"no per-sample gradient for {name}"
        torch.testing.assert_close(p.grad_sample, expected, atol=1e-5, rtol=1e-4, msg=f"per-sample grad of {name}")
        checked += 1
    assert checked == len(list(model.parameters()))
    gsm._close()


@pytest.mark.parametrize("fast_embedding_norm", [False, True])
def test_ghost_clipping_norms_match_true_per_user_norms(small_log, fast_embedding_norm, monkeypatch):
    if fast_embedding_norm:
        from shared_model import embedding_norm

        monkeypatch.setitem(GradSampleModuleFastGradientClipping.NORM_SAMPLERS, torch.nn.Embedding,
                            embedding_norm.embedding_norm_sample)
    model, inputs, per_user, shared, targets = _setup(small_log, local=False)
    reference = _per_user_reference(model, inputs, per_user, shared, targets)
    true_norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in r.values())) for r in reference])
    ghost = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="sum", max_grad_norm=1.0,
                                                 use_ghost_clipping=True)
    losses = _loss("none")(_forward(ghost, inputs, per_user, shared), targets)
    losses.sum().backward()
    torch.testing.assert_close(ghost.get_norm_sample(), true_norms, atol=1e-4, rtol=1e-3)
    ghost._close()


def test_fast_embedding_norm_matches_opacus():
    from opacus.grad_sample.embedding_norm_sample import compute_embedding_norm_sample

    from shared_model.embedding_norm import embedding_norm_sample

    torch.manual_seed(0)
    layer = torch.nn.Embedding(20, 4)
    ids = torch.randint(0, 20, (6, 7, 3))  # repeated ids within examples, 3-D input like title words
    backprops = torch.randn(6, 7, 3, 4)
    ours = embedding_norm_sample(layer, [ids], backprops)[layer.weight]
    theirs = compute_embedding_norm_sample(layer, [ids], backprops)[layer.weight]
    torch.testing.assert_close(ours, theirs)


def test_shared_and_local_parameters_are_marked_in_one_place(small_log):
    model, *_ = _setup(small_log, local=True)
    local = [n for n, _ in model.named_parameters() if not is_shared(n)]
    assert local == ["input_items.local.weight", "output_items.local.weight"]
    assert all(n.startswith(LOCAL_PARAMETER_PREFIXES) for n in model.local_state())
    assert set(model.shared_state()) | set(model.local_state()) == {n for n, _ in model.named_parameters()}
    assert "descriptors" not in model.state_dict()  # the catalogue is data, never part of the weights


def test_profiles_are_causal(small_log):
    """A profile at position t must not change when the content of later events changes (with recency
    position ids their count sets the positions, as in left-padded SASRec)."""
    model, inputs, *_ = _setup(small_log, local=False)
    model.eval()
    before = model.encode(*inputs)
    changed = [t.clone() for t in inputs]
    changed[0][:, -1] = 1  # alter the last event's item
    after = model.encode(*changed)
    torch.testing.assert_close(before[:, :-1], after[:, :-1])


def test_the_low_pass_filter_is_bsarecs_for_the_newest_event_and_causal(small_log):
    """With frequency_mix, each position gets what BSARec's FFT filter gives the newest event of a window ending
    there, and later events change nothing before them."""
    config = ProfileConfig(**{**TINY.to_dict(), "frequency_mix": 0.7, "frequency_cutoff": 5})
    window = LowPassFilter(config)
    x = torch.randn(3, config.max_len, config.d_model)
    spectrum = torch.fft.rfft(x, dim=1, norm="ortho")
    spectrum[:, 5 // 2 + 1:, :] = 0
    low = torch.fft.irfft(spectrum, n=config.max_len, dim=1, norm="ortho")  # BSARec's low-pass, whole window
    beta2 = window.sqrt_beta ** 2
    torch.testing.assert_close(window(x)[:, -1], (low + beta2 * (x - low))[:, -1], atol=1e-5, rtol=1e-4)
    data = build_sequences(small_log.events, small_log.users, config.hash_spec, max_len=config.max_len)
    torch.manual_seed(0)
    model = ProfileTransformer(config, data.catalogue.descriptors).eval()
    inputs = [t[:5] for t in data.train.tensors()][:-3]
    changed = [t.clone() for t in inputs]
    changed[0][:, -1] = 1
    torch.testing.assert_close(model.encode(*inputs)[:, :-1], model.encode(*changed)[:, :-1])
    assert model.encode(*inputs).shape == (5, config.max_len, config.profile_dim)


def test_dp_training_refuses_the_low_pass_filter_with_the_reason(small_log):
    from shared_model.privacy import PrivacyConfig
    from shared_model.training import TrainConfig, train

    config = ProfileConfig(**{**TINY.to_dict(), "frequency_mix": 0.5})
    data = build_sequences(small_log.events, small_log.users, config.hash_spec, max_len=config.max_len)
    model = ProfileTransformer(config, data.catalogue.descriptors)
    with pytest.raises(ValueError, match="frequency_mix is for plain training"):
        train(model, data, TrainConfig(epochs=1, batch_size=8, negatives=8, show_progress=False),
              privacy=PrivacyConfig(target_epsilon=8, target_delta=1e-5), device=torch.device("cpu"))
    with pytest.raises(ValueError, match="frequency_mix must be in"):
        ProfileTransformer(ProfileConfig(**{**TINY.to_dict(), "frequency_mix": 1.5}), data.catalogue.descriptors)


@pytest.mark.parametrize("item_metadata", [True, False])
def test_an_ids_only_model_ignores_item_metadata(small_log, item_metadata):
    """item_metadata=False: item vectors come from the id hashes alone, so a catalogue whose categories, brands,
    prices and titles change gives the same vectors; with metadata (the default) they change."""
    config = ProfileConfig(**{**TINY.to_dict(), "item_metadata": item_metadata})
    data = build_sequences(small_log.events, small_log.users, config.hash_spec, max_len=config.max_len)
    torch.manual_seed(0)
    model = ProfileTransformer(config, data.catalogue.descriptors).eval()
    items = torch.arange(1, data.catalogue.num_items + 1)
    before = model.item_vectors(items)
    other = data.catalogue.descriptors.clone()
    other[1:, 2:5] = (other[1:, 2:5] + 1) % torch.tensor([config.category_buckets, config.brand_buckets,
                                                          config.price_buckets])  # other category, brand, price
    other[1:, 5] = 7  # one title word each
    model.set_catalogue(other)
    moved = (model.item_vectors(items) - before).abs().max().item()
    assert (moved == 0) == (not item_metadata)
    assert (model.descriptors[:, :2] == other[:, :2]).all()  # the id hashes are the catalogue's either way


def test_without_time_features_the_hour_weekday_and_gap_change_nothing(small_log):
    """time_features=False: no hour, weekday or gap tables (none left unused for DP), and profiles ignore them;
    with them (the default) the same change moves the profiles."""
    data = build_sequences(small_log.events, small_log.users, TINY.hash_spec, max_len=TINY.max_len)
    inputs = [t[:5] for t in data.train.tensors()][:-3]  # items, behaviours, hours, weekdays, gaps, genders, ages
    changed = [t.clone() for t in inputs]
    for field in (2, 3, 4):  # hours, weekdays, gaps: another valid bucket
        changed[field] = torch.where(changed[field] > 0, changed[field] % 7 + 1, changed[field])
    for time_features in (True, False):
        torch.manual_seed(0)
        model = ProfileTransformer(ProfileConfig(**{**TINY.to_dict(), "time_features": time_features}),
                                   data.catalogue.descriptors).eval()
        assert any("hour" in name for name, _ in model.named_parameters()) == time_features
        moved = (model.encode(*inputs) - model.encode(*changed)).abs().max().item()
        assert (moved > 0) == time_features


def test_without_the_profile_mlp_profiles_are_the_normalised_encoder_states(small_log):
    """profile_mlp=False scores the encoder's final LayerNorm output directly (as SASRec): no decoder weights,
    and a width that does not match the item vectors is refused with the fix."""
    data = build_sequences(small_log.events, small_log.users, TINY.hash_spec, max_len=TINY.max_len)
    inputs = [t[:5] for t in data.train.tensors()][:-3]
    square = {**TINY.to_dict(), "profile_dim": TINY.d_model}
    torch.manual_seed(0)
    model = ProfileTransformer(ProfileConfig(**{**square, "profile_mlp": False}), data.catalogue.descriptors).eval()
    assert not any(name.startswith("decoder.") for name, _ in model.named_parameters())
    x = model.dropout(model.embed(model.input_items(model.descriptors[inputs[0]], inputs[0]), *inputs))
    for block in model.blocks:
        x = block(x)
    assert torch.allclose(model.encode(*inputs), model.norm(x))
    with_mlp = ProfileTransformer(ProfileConfig(**square), data.catalogue.descriptors)
    assert any(name.startswith("decoder.") for name, _ in with_mlp.named_parameters())
    with pytest.raises(ValueError, match="d_model .* must equal profile_dim"):
        ProfileTransformer(ProfileConfig(**{**TINY.to_dict(), "profile_mlp": False}), data.catalogue.descriptors)
