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

    assert again is first  # a long-running process (the round worker) keeps it in memory: not even the file is read
    merchant_data._WARM.clear()
    from_disk = merchant_data.load_merchant(str(events), "events", run, name="a", cache_dir=tmp_path / "state")
    assert from_disk is not first and list(from_disk.sequences.train.user_ids) == list(first.sequences.train.user_ids)

    stat = events.stat()
    os.utime(events, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the merchant's export changed
    with pytest.raises(AssertionError, match="read again"):
        merchant_data.load_merchant(str(events), "events", run, name="a", cache_dir=tmp_path / "state")


class _Payload:
    """Unpickling this runs code: what a planted file would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.write_text, ("code ran",))


def test_a_planted_cache_file_is_data_never_code(tmp_path):
    import torch

    shops = write(generate(SyntheticConfig(merchants=1, users_per_merchant=40, items_per_merchant=200, seed=5)),
                  tmp_path / "shops")
    state = tmp_path / "state"
    state.mkdir()
    marker = tmp_path / "ran"
    torch.save({"key": "anything", "sequences": _Payload(marker)}, state / "data-cache.pt")
    data = merchant_data.load_merchant(str(shops / "merchant-0" / "events.csv"), "events", tiny_run(tmp_path),
                                       name="a", cache_dir=state)
    assert len(data.sequences.train) > 0 and not marker.exists()  # refused unread, rebuilt from the files
