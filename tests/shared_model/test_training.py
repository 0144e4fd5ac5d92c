"""Training learns, checkpoints round-trip, and DP training runs end to end on the synthetic merchants."""

from __future__ import annotations

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
