"""Amazon reviews as S3-Rec preprocessed them: the time-stamped TSV, the item metadata (the RecBole item file, or
S3-Rec's item2attributes), Beauty.txt."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from shared_model.data.eventlog import Parsed, canonical
from shared_model.data.schema import UNKNOWN_CATEGORY, Behavior, empty_users
from shared_model.data.validation import DataFileError, FileSummary, Quarantine, RowChecker, read_delimited

AMAZON_TSV_COLUMNS = ["user_id", "item_id", "timestamp", "reviewerID", "asin"]
AMAZON_ITEM_COLUMNS = ["asin", "title", "sales_type", "sales_rank", "categories", "price", "brand"]
AMAZON_ITEM_HEADER = [
    "item_id:token",
    "title:token",
    "sales_type:token",
    "sales_rank:float",
    "categories:token_seq",
    "price:float",
    "brand:token",
]


def _amazon_file(path: Path, suffix: str, containing: str = "") -> Path | None:
    found = sorted(p for p in path.glob(f"*{suffix}") if containing in p.name)
    return found[0] if found else None


def load(path: Path, quarantine: Quarantine) -> Parsed:
    folder = path if path.is_dir() else path.parent
    tsv = path if path.is_file() else _amazon_file(folder, "_with_time.tsv")
    if tsv is None:
        raise DataFileError(f"{folder}: no '*_with_time.tsv' file (user_id item_id timestamp reviewerID asin)")
    side, meta = [], pd.DataFrame(columns=["category_id", "price", "brand", "title"])
    by_item_id = False  # the RecBole file is keyed by ASIN, S3-Rec's attributes by the item ids of the TSV
    item_file = _amazon_file(folder, ".item")
    attributes = _amazon_file(folder, "_item2attributes.json")
    if item_file is not None:
        meta, item_summary = _amazon_item_metadata(item_file, quarantine)
        side.append(item_summary)
    elif attributes is not None:
        meta, item_summary = _s3rec_attributes(attributes, quarantine, _amazon_file(folder, ".json", "attrid2name"))
        side.append(item_summary)
        by_item_id = True
    summary = FileSummary(str(tsv))
    chunks = []
    for frame in read_delimited(
        tsv, columns=AMAZON_TSV_COLUMNS, delimiter="\t", header=True, quarantine=quarantine, summary=summary
    ):
        check = RowChecker(frame, file=str(tsv), raw_columns=AMAZON_TSV_COLUMNS, delimiter="\t")
        asin = check.required_text("asin")
        item_id = check.identifier("item_id")
        item_meta = meta.reindex(np.asarray(item_id if by_item_id else asin, dtype=object))
        chunks.append(
            canonical(
                check,
                file_index=0,
                user_id=check.identifier("user_id"),
                item_id=item_id,
                category_id=item_meta["category_id"].fillna(UNKNOWN_CATEGORY).to_numpy(),
                behavior=np.full(len(frame), int(Behavior.REVIEW)),
                timestamp=check.timestamp("timestamp"),
                price=item_meta["price"].to_numpy(dtype=np.float64),
                brand=item_meta["brand"].fillna("").to_numpy(dtype=object),
                title=item_meta["title"].fillna("").to_numpy(dtype=object),
                quarantine=quarantine,
                summary=summary,
            )
        )
    sequences = _amazon_file(folder, ".txt")
    if sequences is not None and chunks:
        _check_against_sequence_file(pd.concat(chunks), sequences)
    return Parsed(chunks, [summary], empty_users(), side)


def _amazon_item_metadata(file: Path, quarantine: Quarantine) -> tuple[pd.DataFrame, FileSummary]:
    summary = FileSummary(str(file))
    frames = []
    for frame in read_delimited(
        file,
        columns=AMAZON_ITEM_COLUMNS,
        delimiter="\t",
        header=AMAZON_ITEM_HEADER,
        quarantine=quarantine,
        summary=summary,
    ):
        check = RowChecker(frame, file=str(file), raw_columns=AMAZON_ITEM_COLUMNS, delimiter="\t")
        asin = check.required_text("asin")
        price = check.optional_float("price")
        ok = check.finish(quarantine, summary)
        # categories look like "'Beauty', 'Makeup', 'Face', 'Concealers & Neutralizers'": keep the leaf
        leaf = frame["categories"].str.rsplit("', '", n=1).str[-1].str.strip("' ")
        leaf = leaf.where(leaf.fillna("").ne(""), UNKNOWN_CATEGORY)
        frames.append(
            pd.DataFrame({"asin": asin, "category_id": leaf, "price": price, "brand": frame["brand"].str.strip(),
                          "title": frame["title"].str.strip()})[ok]
        )
    meta = pd.concat(frames).drop_duplicates("asin").set_index("asin")
    summary.rows_accepted = summary.rows_read - summary.rows_quarantined
    return meta, summary


def _s3rec_attributes(file: Path, quarantine: Quarantine, names_file: Path | None) -> tuple[pd.DataFrame, FileSummary]:
    """S3-Rec's `*_item2attributes.json` (item id -> attribute ids: the brand, when frequent enough, then the
    categories from top to leaf) as each item's category (its leaf) and brand. An attribute is a brand when it
    only ever comes first; `*attrid2name*.json`, when present, names them."""
    summary = FileSummary(str(file))
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFileError(f"{file}: not a JSON object of item id -> attribute ids ({exc})") from exc
    if not isinstance(raw, dict):
        raise DataFileError(f"{file}: not a JSON object of item id -> attribute ids")
    names = {}
    if names_file is not None:
        try:
            names = {str(k): str(v) for k, v in json.loads(names_file.read_text()).items()}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            names = {}  # names are a nicety: ids serve as tokens without them
    items, bad = {}, []
    for row, (item, attrs) in enumerate(raw.items(), start=1):
        summary.rows_read += 1
        if not (isinstance(attrs, list) and attrs and all(isinstance(a, int) and not isinstance(a, bool)
                                                          for a in attrs)):
            bad.append((row, str(item)[:64], "attribute ids must be a non-empty list of integers"))
            continue
        items[str(item)] = [str(a) for a in attrs]
    for row, item, reason in bad:
        quarantine.add(str(file), [row], "attributes", reason, [item])
        summary.rows_quarantined += 1
        summary.reasons[f"attributes: {reason}"] += 1
    later = Counter(a for attrs in items.values() for a in attrs[1:])
    brands = {attrs[0] for attrs in items.values() if len(attrs) > 1} - set(later)
    token = lambda a: names.get(a, f"attr-{a}")  # noqa: E731
    rows = []
    for item, attrs in items.items():
        brand = attrs[0] if attrs[0] in brands else None
        categories = [a for a in attrs if a != brand]
        rows.append((item, token(categories[-1]) if categories else UNKNOWN_CATEGORY, np.nan,
                     token(brand) if brand else "", ""))
    summary.rows_accepted = len(rows)
    meta = pd.DataFrame(rows, columns=["item_id", "category_id", "price", "brand", "title"]).set_index("item_id")
    return meta, summary


def _check_against_sequence_file(events: pd.DataFrame, sequences: Path) -> None:
    """The published protocol follows the order in Beauty.txt; refuse a time file that disagrees with it."""
    expected: dict[str, list[str]] = {}
    with sequences.open() as handle:
        for line in handle:
            parts = line.split()
            if parts:
                expected[parts[0]] = parts[1:]
    ordered = events.sort_values(["user_id", "timestamp", "_row"], kind="stable")
    got = ordered.groupby("user_id", sort=False)["item_id"].agg(list).to_dict()
    mismatched = [u for u, items in got.items() if expected.get(u) != items]
    if mismatched:
        raise DataFileError(
            f"{sequences}: item order of {len(mismatched)} users differs from the time-stamped file "
            f"(first: user {mismatched[0]}); the two files must describe the same sequences"
        )
