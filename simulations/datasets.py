"""Merchants for a simulation: the built-in synthetic shops, or one data set's users split across merchants."""

from __future__ import annotations

import functools

from client.merchant_data import MerchantData
from shared_model.features import SequenceData, build_sequences
from shared_model.loaders import EventLog, load_events
from shared_model.partition import partition_users
from shared_model.run_config import RunConfig
from shared_model.synthetic import SyntheticConfig, generate, merge_merchants


def simulated_merchants(run: RunConfig, num_merchants: int) -> tuple[MerchantData, ...]:
    """Every merchant of the simulation, built once per process (Ray actors keep them between rounds)."""
    return _build(run.data, run.data_format, run.partitioning, run.dirichlet_alpha, run.seed, num_merchants,
                  run.synthetic_users, run.max_len, run.model_config().hash_spec)


def union(run: RunConfig, num_merchants: int) -> SequenceData:
    """All merchants' customers in one data set: what a centralized model would train on."""
    shops = num_merchants if run.partitioning == "natural" else SyntheticConfig().merchants
    return _union(run.data, run.data_format, run.seed, shops, run.synthetic_users, run.max_len,
                  run.model_config().hash_spec)


@functools.lru_cache(maxsize=2)
def _build(data, fmt, partitioning, alpha, seed, num_merchants, users, max_len, spec) -> tuple[MerchantData, ...]:
    if partitioning == "natural":
        if fmt != "synthetic":
            raise ValueError("partitioning 'natural' (one shop per merchant) needs the synthetic data; "
                             "split a real data set with partitioning 'iid' or 'dirichlet'")
        shops = _synthetic(data, seed, num_merchants, users)
        out = []
        for shop in shops:
            log = merge_merchants([shop])
            out.append(MerchantData(shop.name, build_sequences(log.events, log.users, spec, max_len=max_len,
                                                               titles=log.item_titles), log))
        return tuple(out)
    # split by user: always the default number of synthetic shops, so the data does not grow with the merchants
    log = _log(data, fmt, seed, SyntheticConfig().merchants, users)
    everything = build_sequences(log.events, log.users, spec, max_len=max_len, titles=log.item_titles)
    parts = partition_users(log.events, num_merchants, scheme=partitioning, alpha=alpha, seed=seed)
    return tuple(MerchantData(f"merchant-{i}", everything.for_users(members)) for i, members in enumerate(parts))


@functools.lru_cache(maxsize=1)
def _union(data, fmt, seed, shops, users, max_len, spec) -> SequenceData:
    log = _log(data, fmt, seed, shops, users)
    return build_sequences(log.events, log.users, spec, max_len=max_len, titles=log.item_titles)


def _synthetic(data, seed, num_merchants, users):
    if data not in ("synthetic", "builtin", ""):
        raise ValueError(f"partitioning 'natural' generates the synthetic shops; got data {data!r}")
    return generate(SyntheticConfig(merchants=num_merchants, users_per_merchant=users, seed=seed))


@functools.lru_cache(maxsize=1)
def _log(data, fmt, seed, shops, users) -> EventLog:
    if fmt == "synthetic" and data in ("synthetic", "builtin", ""):
        return merge_merchants(_synthetic(data, seed, shops, users))
    return load_events(data, fmt)
