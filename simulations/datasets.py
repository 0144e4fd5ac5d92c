"""What a centralized baseline trains on: every simulated merchant's customers in one data set."""

from __future__ import annotations

import functools

from shared_model.data.synthetic import SyntheticConfig
from shared_model.features import SequenceData, build_sequences
from shared_model.merchant_data import simulation_log
from shared_model.run_config import RunConfig


def union(run: RunConfig, num_merchants: int) -> SequenceData:
    """All merchants' customers in one data set: what a centralized model would train on."""
    shops = num_merchants if run.partitioning == "natural" else SyntheticConfig().merchants
    return _union(run.data, run.data_format, run.seed, shops, run.synthetic_users, run.max_len,
                  run.model_config().hash_spec)


@functools.lru_cache(maxsize=1)
def _union(data, fmt, seed, shops, users, max_len, spec) -> SequenceData:
    log = simulation_log(data, fmt, seed, shops, users)
    return build_sequences(log.events, log.users, spec, max_len=max_len, titles=log.item_titles)
