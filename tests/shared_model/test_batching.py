"""Batching on its own: length-grouped batches cover every user once, trimmed padding changes nothing."""

from __future__ import annotations

import torch

from shared_model.batching import length_chunks, length_grouped_batches, steps_for, trim_padding
from shared_model.features import build_sequences
from shared_model.loss import ProfileLoss
from shared_model.model import ProfileConfig, ProfileTransformer

CONFIG = ProfileConfig(max_len=30, d_model=32, n_heads=2, n_layers=1, profile_dim=32, item_buckets=2048,
                       category_buckets=256, brand_buckets=256, token_buckets=256, dropout=0.1)


def test_trimming_shared_padding_changes_neither_profiles_nor_loss(small_log):
    data = build_sequences(small_log.events, small_log.users, CONFIG.hash_spec, max_len=CONFIG.max_len)
    torch.manual_seed(0)
    model = ProfileTransformer(CONFIG, data.catalogue.descriptors).eval()
    short = torch.argsort(data.train.lengths)[:8]  # users far shorter than the window
    full = [t[short] for t in data.train.tensors()]
    trimmed = trim_padding(list(full), full[-3])
    assert trimmed[0].shape[1] == int(data.train.lengths[short].max()) < full[0].shape[1]
    negatives = torch.arange(1, 40)
    categories = torch.unique(data.catalogue.descriptors[1:, 2])
    loss = ProfileLoss(category_weight=0.5, purchase_weight=0.5, reduction="none")
    per_user = []
    for batch in (full, trimmed):
        *inputs, items, cats, purchase = batch
        with torch.no_grad():
            out = model(*inputs, items, negatives, cats, categories)
            per_user.append((out[0], loss(out, (items, cats, purchase, negatives, categories))))
    T = trimmed[0].shape[1]
    torch.testing.assert_close(per_user[0][0][:, :T], per_user[1][0])
    torch.testing.assert_close(per_user[0][1], per_user[1][1])


def test_length_grouped_batches_cover_every_user_once_with_less_padding():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.cat([torch.randint(1, 8, (900,), generator=generator), torch.full((100,), 50)])
    batches = length_grouped_batches(lengths, 32, seed=1, group=8)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000)) and all(len(b) <= 32 for b in batches)
    assert length_grouped_batches(lengths, 32, seed=2, group=8) != batches  # reshuffled each epoch
    padded = sum(32 * int(lengths[b].max()) for b in batches)
    random = sum(32 * int(lengths[torch.randperm(1000, generator=generator)[i:i + 32]].max()) for i in range(0, 1000, 32))
    assert padded < 0.5 * random


def test_a_fraction_of_an_epoch_rounds_down_but_takes_at_least_one_step():
    assert steps_for(2, 10) == 20
    assert steps_for(0.55, 10) == 5
    assert steps_for(0.01, 10) == 1


def test_length_chunks_cover_sorted_users_in_order_and_split_only_where_it_saves_positions():
    lengths = [2] * 60 + [5] * 30 + [50] * 6
    chunks = length_chunks(lengths, chunk_cost=300)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))  # consecutive, nothing lost or repeated
    padded = sum((end - start) * lengths[end - 1] for start, end in chunks)
    assert padded + 300 * len(chunks) < len(lengths) * 50 + 300  # cheaper than one chunk padded to 50
    assert length_chunks([7] * 10, chunk_cost=300) == [(0, 10)]  # one length: nothing to save
    assert length_chunks([3] * 10, max_users=4) == [(0, 3), (3, 6), (6, 10)]  # memory bound respected
    assert length_chunks([]) == []
