"""A deployed merchant's own customers: its event files, cleaned and turned into training sequences once."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from shared_model.features import SequenceData, build_sequences
from shared_model.loaders import EventLog, load_events
from shared_model.run_config import RunConfig


@dataclass(frozen=True)
class MerchantData:
    name: str
    sequences: SequenceData
    log: EventLog | None = None  # the merchant's cleaned events (profiles and serving use them)


def load_merchant(path: str, fmt: str, run: RunConfig, *, name: str) -> MerchantData:
    return _load(path, fmt, name, run.max_len, run.model_config().hash_spec)


@functools.lru_cache(maxsize=2)
def _load(path, fmt, name, max_len, spec) -> MerchantData:
    # rejected rows go beside the data, where the merchant can read why
    source = Path(path)
    quarantine = source.with_suffix(".quarantine.csv") if source.is_file() else source / "quarantine.csv"
    log = load_events(path, fmt, quarantine_path=quarantine)
    return MerchantData(name, build_sequences(log.events, log.users, spec, max_len=max_len, titles=log.item_titles), log)
