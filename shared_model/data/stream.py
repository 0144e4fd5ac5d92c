"""Events that arrive one by one (the merchant service's IngestEvents), checked with the file rules."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shared_model.data.eventlog import canonical
from shared_model.data.schema import BEHAVIOR_ALIASES, EVENT_COLUMNS
from shared_model.data.validation import FileSummary, Quarantine, RowChecker


def validate_records(records: list[dict], *, source: str = "stream", first_row: int = 1):
    """Check events that arrive one by one (e.g. over the merchant service) with the same rules as file rows.

    Returns (accepted events in schema columns, quarantined rows with reasons, summary); every record is in
    exactly one of the two, so received = accepted + quarantined."""
    frame = pd.DataFrame([{c: "" if r.get(c) is None else str(r.get(c)) for c in EVENT_COLUMNS} for r in records],
                         columns=list(EVENT_COLUMNS))
    frame["row"] = np.arange(first_row, first_row + len(frame))
    summary = FileSummary(source)
    summary.rows_read = len(frame)
    quarantine = Quarantine(None)
    check = RowChecker(frame, file=source, raw_columns=list(EVENT_COLUMNS))
    accepted = canonical(
        check,
        file_index=0,
        user_id=check.identifier("user_id"),
        item_id=check.identifier("item_id"),
        category_id=check.identifier("category_id"),
        behavior=check.mapped("behavior", BEHAVIOR_ALIASES, what="behaviour"),
        timestamp=check.timestamp("timestamp"),
        price=check.optional_float("price"),
        brand=frame["brand"].fillna("").astype(str).str.strip().to_numpy(dtype=object),
        quarantine=quarantine,
        summary=summary,
    )
    summary.rows_accepted = len(accepted)
    accepted = accepted[list(EVENT_COLUMNS)].astype({"behavior": "int8", "timestamp": "int64", "price": "float64"})
    return accepted.reset_index(drop=True), quarantine.records(), summary
