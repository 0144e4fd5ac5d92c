"""A merchant's customers as training sequences: a deployed merchant's own files, or a simulated merchant's share."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from shared_model.data.eventlog import EventLog
from shared_model.data.loaders import load_events
from shared_model.data.partition import partition_users
from shared_model.data.synthetic import SyntheticConfig, generate, merge_merchants
from shared_model.features import SequenceData, build_sequences
from shared_model.files import atomic_torch_save
from shared_model.run_config import RunConfig


@dataclass(frozen=True)
class MerchantData:
    name: str
    sequences: SequenceData
    log: EventLog | None = None  # the merchant's cleaned events (profiles and serving use them)


def load_merchant(path: str, fmt: str, run: RunConfig, *, name: str, cache_dir: str | Path | None = None) -> MerchantData:
    """The merchant's data; with `cache_dir` (its state folder) the cleaned sequences are kept on disk and
    reused while the data files are unchanged: in a deployment every message runs in a fresh process. The cache
    holds tensors and strings only and is read back weights-only: a file planted there cannot run code."""
    spec = run.model_config().hash_spec
    if cache_dir is None:
        return _load(path, fmt, name, run.max_len, spec)
    cache = Path(cache_dir) / "data-cache.pt"
    key = _fingerprint(path, fmt, name, run.max_len, spec)
    if (str(cache), key) in _WARM:  # a long-running process (the round worker) read these files before
        return _WARM[(str(cache), key)]
    data = None
    if cache.is_file():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                data = MerchantData(name, SequenceData.from_state_dict(saved["sequences"]))
        except Exception:  # a torn, foreign or older file: rebuild it
            pass
    if data is None:
        data = _load(path, fmt, name, run.max_len, spec)
        atomic_torch_save(cache, {"key": key, "sequences": data.sequences.state_dict()})
    _WARM.clear()  # one merchant's data at a time
    _WARM[(str(cache), key)] = data
    return data


_WARM: dict[tuple[str, str], MerchantData] = {}  # (cache file, fingerprint) -> the data last loaded


def _fingerprint(path, fmt, name, max_len, spec) -> str:
    """Changes when any data file (size, modification time), the format or the feature settings change. The
    folder is walked without following links, so a link that loops back cannot hang it."""
    source = Path(path)
    if source.is_file():
        files = [source]
    else:
        files = sorted(Path(root) / f for root, _, names in os.walk(source, followlinks=False) for f in names
                       if not f.endswith(".quarantine.csv") and f != "quarantine.csv")
    stats = [(str(f), *_size_and_time(f)) for f in files]
    return hashlib.sha256(json.dumps([stats, fmt, name, max_len, repr(spec)]).encode()).hexdigest()


def _size_and_time(file: Path) -> tuple[int, int]:
    try:
        stat = file.stat()
    except OSError:  # a broken link: the loader will name it
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=2)
def _load(path, fmt, name, max_len, spec) -> MerchantData:
    # rejected rows go beside the data, where the merchant can read why
    source = Path(path)
    quarantine = source.with_suffix(".quarantine.csv") if source.is_file() else source / "quarantine.csv"
    log = load_events(path, fmt, quarantine_path=quarantine)
    return MerchantData(name, build_sequences(log.events, log.users, spec, max_len=max_len, titles=log.item_titles), log)


def simulated_merchants(run: RunConfig, num_merchants: int) -> tuple[MerchantData, ...]:
    """Every merchant of the simulation, built once per process (Ray actors keep them between rounds)."""
    return _build(run.data, run.data_format, run.partitioning, run.dirichlet_alpha, run.seed, num_merchants,
                  run.synthetic_users, run.max_len, run.model_config().hash_spec)


@functools.lru_cache(maxsize=2)
def _build(data, fmt, partitioning, alpha, seed, num_merchants, users, max_len, spec) -> tuple[MerchantData, ...]:
    if partitioning == "natural":
        if fmt != "synthetic":
            raise ValueError("partitioning 'natural' (one shop per merchant) needs the synthetic data; "
                             "split a real data set with partitioning 'iid' or 'dirichlet'")
        shops = _synthetic_shops(data, seed, num_merchants, users)
        out = []
        for shop in shops:
            log = merge_merchants([shop])
            out.append(MerchantData(shop.name, build_sequences(log.events, log.users, spec, max_len=max_len,
                                                               titles=log.item_titles), log))
        return tuple(out)
    # split by user: always the default number of synthetic shops, so the data does not grow with the merchants
    log = simulation_log(data, fmt, seed, SyntheticConfig().merchants, users)
    everything = build_sequences(log.events, log.users, spec, max_len=max_len, titles=log.item_titles)
    parts = partition_users(log.events, num_merchants, scheme=partitioning, alpha=alpha, seed=seed)
    return tuple(MerchantData(f"merchant-{i}", everything.for_users(members)) for i, members in enumerate(parts))


def _synthetic_shops(data, seed, num_merchants, users):
    if data not in ("synthetic", "builtin", ""):
        raise ValueError(f"partitioning 'natural' generates the synthetic shops; got data {data!r}")
    return generate(SyntheticConfig(merchants=num_merchants, users_per_merchant=users, seed=seed))


@functools.lru_cache(maxsize=1)
def simulation_log(data, fmt, seed, shops, users) -> EventLog:
    """The whole data set a simulation splits (or the built-in shops merged), loaded once per process."""
    if fmt == "synthetic" and data in ("synthetic", "builtin", ""):
        return merge_merchants(_synthetic_shops(data, seed, shops, users))
    return load_events(data, fmt)
