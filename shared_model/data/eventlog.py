"""The cleaned event log every format becomes, and the steps all formats share: canonical rows, finalising."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from shared_model.data.schema import EVENT_COLUMNS, UNKNOWN_CATEGORY, empty_events
from shared_model.data.validation import DataFileError, FileSummary, Quarantine, RowChecker, ValidationSummary


class Parsed(NamedTuple):
    """What a format's reader returns: schema rows in chunks, the event files' and side files' accounting."""

    chunks: list[pd.DataFrame]
    event_files: list[FileSummary]
    users: pd.DataFrame
    side_files: list[FileSummary]


@dataclass
class EventLog:
    """A merchant's cleaned events (sorted by user, then time, then file order) and user attributes."""

    events: pd.DataFrame
    users: pd.DataFrame
    summary: ValidationSummary
    source: str
    truth: dict | None = field(default=None, repr=False)
    item_titles: pd.Series | None = field(default=None, repr=False)  # item_id -> title (public catalogue text)
    items: pd.DataFrame | None = field(default=None, repr=False)  # the merchant's catalogue (load_catalogue)

    @property
    def num_users(self) -> int:
        return int(self.events["user_id"].nunique())

    @property
    def num_items(self) -> int:
        return int(self.events["item_id"].nunique())


def finalize(
    chunks: list[pd.DataFrame],
    event_files: list[FileSummary],
    users: pd.DataFrame,
    side_files: list[FileSummary],
    quarantine: Quarantine,
    *,
    source: str,
) -> EventLog:
    """Drop exact duplicates (counted per file), order events, write the quarantine, total up."""
    events = pd.concat(chunks, ignore_index=True) if chunks else empty_events().assign(_file=0, _row=0, _raw=0)
    chunks.clear()  # the chunks are now copied into `events`: let their memory go before the next copies
    events["brand"] = events["brand"].fillna("").astype(str)
    dup = events.duplicated(subset=["_raw"], keep="first")
    for index, summary in enumerate(event_files):
        in_file = events["_file"].to_numpy() == index
        summary.duplicates = int(dup.to_numpy()[in_file].sum())
        summary.rows_accepted = int(in_file.sum()) - summary.duplicates
    events = events.loc[~dup]
    titles = None
    if "_title" in events.columns:
        named = events[events["_title"].fillna("").astype(str) != ""]
        titles = named.groupby("item_id")["_title"].last() if len(named) else None
    events = events.sort_values(["user_id", "timestamp", "_file", "_row"], kind="stable").reset_index(drop=True)
    events = events[list(EVENT_COLUMNS)].astype({"behavior": "int8", "timestamp": "int64", "price": "float64"})
    summary = ValidationSummary(
        event_files=event_files,
        side_files=side_files,
        quarantine_path=quarantine.write(),
        users=int(events["user_id"].nunique()),
        items=int(events["item_id"].nunique()),
        item_metadata=item_metadata(events, titles),
    )
    if not summary.is_balanced():  # a bug, not bad data: every row must be accounted for
        raise AssertionError(f"row accounting does not balance: {summary.as_dict()}")
    return EventLog(events=events, users=users, summary=summary, source=source, item_titles=titles)


def item_metadata(events: pd.DataFrame, titles: pd.Series | None) -> dict[str, float]:
    """The share of the log's items that have each kind of metadata (a category, a brand, a price, a title)."""
    if len(events) == 0:
        return {"category": 0.0, "brand": 0.0, "price": 0.0, "title": 0.0}
    known = pd.DataFrame({"item_id": events["item_id"], "category": events["category_id"] != UNKNOWN_CATEGORY,
                          "brand": events["brand"] != "", "price": events["price"].notna()})
    shares = known.groupby("item_id")[["category", "brand", "price"]].any().mean()
    items = events["item_id"].nunique()
    return {**{k: round(float(v), 4) for k, v in shares.items()},
            "title": round(len(titles) / items, 4) if titles is not None else 0.0}


def canonical(
    checker: RowChecker,
    *,
    file_index: int,
    user_id,
    item_id,
    category_id,
    behavior,
    timestamp,
    price=None,
    brand=None,
    title=None,
    quarantine: Quarantine,
    summary: FileSummary,
) -> pd.DataFrame:
    """A chunk's checked fields as schema rows (with file, line and a hash of the raw fields for duplicates);
    rows a check rejected go to the quarantine here and are left out."""
    ok = checker.finish(quarantine, summary)
    n = len(checker.frame)
    out = pd.DataFrame(
        {
            "user_id": user_id,
            "item_id": item_id,
            "category_id": category_id,
            "behavior": behavior,
            "timestamp": timestamp,
            "price": price if price is not None else np.full(n, np.nan),
            "brand": brand if brand is not None else np.full(n, "", dtype=object),
            "_file": file_index,
            "_row": checker.frame["row"].to_numpy(),
            # exact duplicates are judged on the raw fields: two source codes may map to one behaviour
            "_raw": pd.util.hash_pandas_object(checker.frame[checker.raw_columns], index=False).to_numpy(),
        },
        index=checker.frame.index,
    )
    if title is not None:
        out["_title"] = title
    out = out.loc[ok]
    out["behavior"] = out["behavior"].astype(np.int8)
    return out


def files_matching(path: Path, pattern: str) -> list[Path]:
    """`path` itself when it is a file, else the files in it that match `pattern`, refusing none."""
    files = [path] if path.is_file() else sorted(path.glob(pattern))
    if not files:
        raise DataFileError(f"{path}: no files matching {pattern!r}")
    return files
