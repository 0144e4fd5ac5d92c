"""Training learns, checkpoints round-trip, and DP training runs end to end on the synthetic merchants."""

from __future__ import annotations

from dataclasses import replace

import torch

from shared_model.checkpoint import load_model, save_model
from shared_model.evaluation import evaluate
from shared_model.features import build_sequences
from shared_model.model import ProfileConfig, ProfileTransformer
from shared_model.training import TrainConfig, train

CONFIG = ProfileConfig(max_len=30, d_model=32, n_heads=2, n_layers=1, profile_dim=32, item_buckets=2048,
                       category_buckets=256, brand_buckets=256, token_buckets=256, dropout=0.1)


def test_training_beats_an_untrained_model_and_checkpoints_round_trip(small_log, tmp_path):
    data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)
    torch.manual_seed(0)
    model = ProfileTransformer(CONFIG, data.catalogue.descriptors)
    cpu = torch.device("cpu")
    before = evaluate(model, data.test, device=cpu)["ndcg@10"]
    result = train(model, data, TrainConfig(epochs=6, batch_size=16, negatives=64, show_progress=False), device=cpu)
    assert result.test["ndcg@10"] > before + 0.05
    assert result.examples_per_second > 0 and result.train_seconds > 0
    path = save_model(tmp_path / "model.pt", model, data.catalogue)
    loaded, catalogue, _ = load_model(path)
    assert list(catalogue.item_ids) == list(data.catalogue.item_ids)
    assert evaluate(loaded, data.test, device=cpu) == evaluate(model, data.test, device=cpu)


def test_tied_item_tables_train_plainly_and_dp_refuses_them(small_log):
    import pytest

    from shared_model.privacy import PrivacyConfig

    config = ProfileConfig(**{**CONFIG.to_dict(), "tie_item_tables": True})
    data = build_sequences(small_log.events, small_log.users, config.hash_spec, max_len=config.max_len)
    model = ProfileTransformer(config, data.catalogue.descriptors)
    assert model.output_items is model.input_items
    assert not any(n.startswith("output_items.") for n, _ in model.named_parameters())
    result = train(model, data, TrainConfig(epochs=1, batch_size=16, negatives=64, show_progress=False),
                   device=torch.device("cpu"))
    assert result.test["users"] > 0
    with pytest.raises(ValueError, match="ghost clipping refuses"):
        train(model, data, TrainConfig(epochs=1, show_progress=False),
              privacy=PrivacyConfig(target_epsilon=8.0, target_delta=1e-5), device=torch.device("cpu"))


def test_fixed_item_vectors_train_only_the_sequence_model_under_dp(small_log):
    """Fixed catalogue features shared by both sides and the category scorer: DP-SGD accepts them (nothing shared
    is trained), leaves them untouched and trains the three mixes on top and the sequence model; no weight is
    trained per item or per category."""
    from shared_model.privacy import PrivacyConfig

    config = ProfileConfig(**{**CONFIG.to_dict(), "fixed_item_vectors": True})
    data = build_sequences(small_log.events, small_log.users, config.hash_spec, max_len=config.max_len)
    torch.manual_seed(0)
    model = ProfileTransformer(config, data.catalogue.descriptors)
    assert model.output_items.features is model.input_items.features
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"input_items.mix.weight", "output_items.mix.weight", "category_vectors.mix.weight"} <= trained
    assert not any(".features." in n for n in trained)
    assert model.category_vectors.features is model.input_items.features
    assert all(p.shape[0] < config.category_buckets for n, p in model.named_parameters() if p.requires_grad)
    result = train(model, data, TrainConfig(epochs=1, batch_size=32, negatives=64, optimizer="sgd", lr=0.1,
                                            show_progress=False),
                   privacy=PrivacyConfig(target_epsilon=8.0, target_delta=1e-5), device=torch.device("cpu"))
    assert 0 < result.epsilon <= 8.0
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if n not in trained)
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    assert not torch.equal(after["output_items.mix.weight"], before["output_items.mix.weight"])
    assert not torch.equal(after["category_vectors.mix.weight"], before["category_vectors.mix.weight"])


def test_the_weight_average_is_what_training_returns(small_log):
    data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)
    cpu = torch.device("cpu")
    one_batch = dict(batch_size=len(data.train), negatives=64, show_progress=False, keep_best=False, lr=1e-2)

    def weights(epochs, **changes):
        torch.manual_seed(0)
        model = ProfileTransformer(CONFIG, data.catalogue.descriptors)
        train(model, data, TrainConfig(epochs=epochs, **one_batch, **changes), device=cpu, validate=False)
        return model.blocks[0].attn.qkv.weight.detach().clone()

    after_one_step = weights(1)
    assert not torch.allclose(weights(3), after_one_step, atol=1e-4)  # three steps move on
    # an average that barely moves after its first value holds the first step's weights
    torch.testing.assert_close(weights(3, ema_decay=1 - 1e-9), after_one_step, atol=1e-6, rtol=1e-5)


def test_a_fraction_of_an_epoch_takes_that_share_of_the_steps(small_log):
    """A federated round of half an epoch trains on half of the merchant's batches (a fresh draw each round)."""
    data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)
    batches = -(-len(data.train) // 16)
    config = TrainConfig(epochs=0.5, batch_size=16, negatives=32, eval_every=0, show_progress=False)
    model = ProfileTransformer(CONFIG, data.catalogue.descriptors)
    result = train(model, data, config, device=torch.device("cpu"), validate=False)
    assert result.steps == batches // 2 and len(result.history) == 1
    assert train(model, data, replace(config, epochs=1.5), device=torch.device("cpu"), validate=False).steps == \
        batches + batches // 2


def test_the_cosine_schedule_spans_the_whole_run_across_calls():
    """A federated round continues the schedule where the previous round ended; the centralized baseline, one
    call over the same epochs, sees the same learning rates."""
    import math

    import pytest

    from shared_model.training import scheduled_lr

    whole = TrainConfig(epochs=4, lr=1e-3, lr_schedule="cosine", show_progress=False)
    assert scheduled_lr(whole, 0) == pytest.approx(1e-3)
    assert scheduled_lr(whole, 2) == pytest.approx(5e-4)
    assert scheduled_lr(whole, 4) == pytest.approx(0, abs=1e-12)
    third_round = replace(whole, epochs=1, schedule_epochs=4, schedule_start=2)
    for done in (0.0, 0.25, 0.5, 1.0):
        assert scheduled_lr(third_round, done) == pytest.approx(scheduled_lr(whole, 2 + done))
    assert scheduled_lr(replace(whole, lr_schedule="constant"), 3) == 1e-3
    assert math.isclose(scheduled_lr(whole, 9), 0, abs_tol=1e-12)  # past the end it stays at the floor
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_a_scheduled_run_trains_differently_from_a_constant_one(small_log):
    data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)
    weights = []
    for schedule in ("constant", "cosine"):
        torch.manual_seed(0)
        model = ProfileTransformer(CONFIG, data.catalogue.descriptors)
        config = TrainConfig(epochs=2, batch_size=32, negatives=32, lr_schedule=schedule, show_progress=False)
        train(model, data, config, device=torch.device("cpu"), validate=False)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.allclose(weights[0], weights[1])


def test_optimizer_moments_carry_over_from_one_call_to_the_next(small_log):
    """A merchant with keep-optimizer-state starts a round with its Adam moments from the last one."""
    data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)
    cpu = torch.device("cpu")
    config = TrainConfig(epochs=1, batch_size=len(data.train), negatives=64, show_progress=False, keep_best=False,
                         lr=1e-2)
    torch.manual_seed(0)
    model = ProfileTransformer(CONFIG, data.catalogue.descriptors)
    first = train(model, data, config, device=cpu, validate=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    assert first.optimizer_state["0.step"].item() == 1

    def second_round(moments):
        model.load_state_dict(start)
        result = train(model, data, config, device=cpu, validate=False, optimizer_state=moments)
        return result.optimizer_state, model.blocks[0].attn.qkv.weight.detach().clone()

    carried, carried_weights = second_round(first.optimizer_state)
    fresh, fresh_weights = second_round(None)
    assert carried["0.step"].item() == 2 and fresh["0.step"].item() == 1
    # the second step's first moment mixes both rounds' gradients: not what a fresh optimizer holds
    assert not torch.allclose(carried["0.exp_avg"], fresh["0.exp_avg"])
    assert not torch.allclose(carried_weights, fresh_weights)


def test_dp_refuses_a_loss_averaged_over_positions(small_log):
    import pytest

    from shared_model.privacy import PrivacyConfig

    data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)
    model = ProfileTransformer(CONFIG, data.catalogue.descriptors)
    with pytest.raises(ValueError, match="averages over users"):
        train(model, data, TrainConfig(epochs=1, loss_average="positions", show_progress=False),
              privacy=PrivacyConfig(target_epsilon=8.0, target_delta=1e-5), device=torch.device("cpu"))


def _scripted_validation(monkeypatch, scores):
    """Validation NDCG@10 of each pass in turn, so that the plateau schedule sees stalls where the test puts them."""
    import shared_model.training as training

    passes = iter(scores)
    real = training.evaluate
    monkeypatch.setattr(training, "evaluate",
                        lambda model, split, **kw: {**real(model, split, **kw), "ndcg@10": next(passes, 0.0)})


def test_the_plateau_schedule_halves_the_rate_after_stalled_validation_and_the_refit_replays_it(small_log,
                                                                                              monkeypatch):
    """Two validation passes without a better NDCG@10 halve the rate for the epochs after; a refit, which has no
    validation to follow, trains each epoch at the rate the selection run had then."""
    from shared_model.training import refit

    data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)
    cpu = torch.device("cpu")
    #                       best  best  stall stall best  stall stall  (then the final passes)
    _scripted_validation(monkeypatch, [0.1, 0.2, 0.2, 0.15, 0.3, 0.25, 0.3])
    config = TrainConfig(epochs=8, batch_size=32, negatives=32, lr=1e-3, lr_schedule="plateau", show_progress=False)
    torch.manual_seed(0)
    selected = train(ProfileTransformer(CONFIG, data.catalogue.descriptors), data, config, device=cpu)
    assert [row["lr"] for row in selected.history] == [1e-3] * 4 + [5e-4] * 3 + [2.5e-4]
    assert selected.best_epoch == 5

    refit_data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len,
                                 train_on_validation=True)
    result = refit(ProfileTransformer(CONFIG, refit_data.catalogue.descriptors), refit_data, selected, config,
                   device=cpu)
    assert [row["lr"] for row in result.history if row.get("refit")] == [1e-3] * 4 + [5e-4]


def test_a_refit_follows_the_cosine_schedule_of_the_run_it_repeats(small_log, monkeypatch):
    import pytest

    from shared_model.training import refit

    data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)
    cpu = torch.device("cpu")
    _scripted_validation(monkeypatch, [0.1, 0.2, 0.3, 0.2, 0.1, 0.1])  # validation chooses epoch 3 of 6
    config = TrainConfig(epochs=6, batch_size=32, negatives=32, lr_schedule="cosine", show_progress=False)
    torch.manual_seed(0)
    selected = train(ProfileTransformer(CONFIG, data.catalogue.descriptors), data, config, device=cpu)
    assert selected.best_epoch == 3
    refit_data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len,
                                 train_on_validation=True)
    result = refit(ProfileTransformer(CONFIG, refit_data.catalogue.descriptors), refit_data, selected, config,
                   device=cpu)
    refit_lrs = [row["lr"] for row in result.history if row.get("refit")]
    # the last step of each epoch is at the same point of the 6-epoch schedule, whatever the epoch's steps
    assert refit_lrs == pytest.approx([row["lr"] for row in selected.history[:3]], rel=0.05)
    assert refit_lrs[-1] > 0.4 * config.lr  # not the end of a 3-epoch schedule (0)


def test_the_plateau_schedule_needs_validation_and_no_dp(small_log):
    import pytest

    from shared_model.privacy import PrivacyConfig

    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(lr_schedule="plateau", eval_every=0)
    data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)
    model = ProfileTransformer(CONFIG, data.catalogue.descriptors)
    config = TrainConfig(epochs=1, lr_schedule="plateau", show_progress=False)
    with pytest.raises(ValueError, match="validation"):
        train(model, data, config, device=torch.device("cpu"), validate=False)
    with pytest.raises(ValueError, match="under DP"):
        train(model, data, config, privacy=PrivacyConfig(target_epsilon=8.0, target_delta=1e-5),
              device=torch.device("cpu"))
