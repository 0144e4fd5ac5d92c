"""A deployed merchant's own customers: its event files, cleaned and turned into training sequences once."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from shared_model.features import SequenceData, build_sequences
from shared_model.loaders import EventLog, load_events
from shared_model.run_config import RunConfig


@dataclass(frozen=True)
class MerchantData:
    name: str
    sequences: SequenceData
    log: EventLog | None = None  # the merchant's cleaned events (profiles and serving use them)


def load_merchant(path: str, fmt: str, run: RunConfig, *, name: str, cache_dir: str | Path | None = None) -> MerchantData:
    """The merchant's data; with `cache_dir` (its state folder) the cleaned sequences are kept on disk and
    reused while the data files are unchanged: in a deployment every message runs in a fresh process."""
    spec = run.model_config().hash_spec
    if cache_dir is None:
        return _load(path, fmt, name, run.max_len, spec)
    cache = Path(cache_dir) / "data-cache.pt"
    key = _fingerprint(path, fmt, name, run.max_len, spec)
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=False)
            if saved.get("key") == key:
                return saved["data"]
        except Exception:  # a torn or foreign file: rebuild it
            pass
    data = _load(path, fmt, name, run.max_len, spec)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
    torch.save({"key": key, "data": data}, tmp)
    os.replace(tmp, cache)
    return data


def _fingerprint(path, fmt, name, max_len, spec) -> str:
    """Changes when any data file (size, modification time), the format or the feature settings change."""
    source = Path(path)
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file()
                                                     and not p.name.endswith(".quarantine.csv")
                                                     and p.name != "quarantine.csv")
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps([stats, fmt, name, max_len, repr(spec)]).encode()).hexdigest()


@functools.lru_cache(maxsize=2)
def _load(path, fmt, name, max_len, spec) -> MerchantData:
    # rejected rows go beside the data, where the merchant can read why
    source = Path(path)
    quarantine = source.with_suffix(".quarantine.csv") if source.is_file() else source / "quarantine.csv"
    log = load_events(path, fmt, quarantine_path=quarantine)
    return MerchantData(name, build_sequences(log.events, log.users, spec, max_len=max_len, titles=log.item_titles), log)
