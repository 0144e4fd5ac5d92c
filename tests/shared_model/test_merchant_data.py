"""A deployed merchant's data is cleaned once and reused from its state folder until the files change."""

from __future__ import annotations

import os

import pytest

import shared_model.merchant_data as merchant_data
from shared_model.data.synthetic import SyntheticConfig, generate, write
from tests.conftest import tiny_run


def test_sequences_are_cached_until_the_data_changes(tmp_path, monkeypatch):
    shops = write(generate(SyntheticConfig(merchants=1, users_per_merchant=40, items_per_merchant=200, seed=5)),
                  tmp_path / "shops")
    events = shops / "merchant-0" / "events.csv"
    run = tiny_run(tmp_path)
    first = merchant_data.load_merchant(str(events), "events", run, name="a", cache_dir=tmp_path / "state")
    assert (tmp_path / "state" / "data-cache.pt").is_file()

    def no_reload(*args):
        raise AssertionError("the data was read again although nothing changed")

    monkeypatch.setattr(merchant_data, "_load", no_reload)
    again = merchant_data.load_merchant(str(events), "events", run, name="a", cache_dir=tmp_path / "state")
    assert list(again.sequences.train.user_ids) == list(first.sequences.train.user_ids)
    assert again.sequences.catalogue.num_items == first.sequences.catalogue.num_items

    stat = events.stat()
    os.utime(events, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the merchant's export changed
    with pytest.raises(AssertionError, match="read again"):
        merchant_data.load_merchant(str(events), "events", run, name="a", cache_dir=tmp_path / "state")
