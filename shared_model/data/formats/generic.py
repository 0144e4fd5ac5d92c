"""Any CSV or Parquet event log whose columns name (or are mapped to) the schema's fields."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from shared_model.data.eventlog import Parsed, canonical
from shared_model.data.schema import BEHAVIOR_ALIASES, REQUIRED_COLUMNS, empty_users
from shared_model.data.validation import (
    MAX_HEADER_BYTES,
    DataFileError,
    FileSummary,
    Quarantine,
    RowChecker,
    check_readable,
    read_delimited,
)


def load(path: Path | list[Path], quarantine: Quarantine, column_map: dict[str, str]) -> Parsed:
    """Any CSV/Parquet log; `column_map` names the source column of each schema field (default: same name)."""
    if isinstance(path, list):
        files = [Path(p) for p in path]
    else:
        files = [path] if path.is_file() else sorted([*path.glob("*.csv"), *path.glob("*.parquet")])
    if not files:
        raise DataFileError(f"{path}: no .csv or .parquet files")
    chunks, summaries = [], []
    for index, file in enumerate(files):
        summary = FileSummary(str(file))
        summaries.append(summary)
        for frame, source_cols in _generic_frames(file, quarantine, summary, column_map):
            check = RowChecker(frame, file=str(file), raw_columns=source_cols)
            col = lambda name: column_map.get(name, name)  # noqa: E731
            has = lambda name: col(name) in frame.columns  # noqa: E731
            chunks.append(
                canonical(
                    check,
                    file_index=index,
                    user_id=check.identifier(col("user_id"), field_name="user_id"),
                    item_id=check.identifier(col("item_id"), field_name="item_id"),
                    category_id=check.identifier(col("category_id"), field_name="category_id"),
                    behavior=check.mapped(col("behavior"), BEHAVIOR_ALIASES, field_name="behavior", what="behaviour"),
                    timestamp=check.timestamp(col("timestamp"), field_name="timestamp"),
                    price=check.optional_float(col("price"), field_name="price") if has("price") else None,
                    brand=frame[col("brand")].fillna("").astype(str).str.strip().to_numpy(dtype=object)
                    if has("brand")
                    else None,
                    quarantine=quarantine,
                    summary=summary,
                )
            )
    return Parsed(chunks, summaries, empty_users(), [])


def _generic_frames(file: Path, quarantine: Quarantine, summary: FileSummary, column_map: dict[str, str]):
    if file.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(file)
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise DataFileError(f"{file}: not a readable Parquet file ({exc})") from exc
        frame = table.to_pandas().astype(str).replace({"None": "", "nan": ""})
        source_cols = list(frame.columns)
        _require_columns(file, source_cols, column_map)
        frame["row"] = np.arange(1, len(frame) + 1)
        summary.rows_read += len(frame)
        yield frame, source_cols
        return
    check_readable(file)
    with file.open("r", encoding="utf-8", errors="replace", newline="") as handle:
        line = handle.readline(MAX_HEADER_BYTES + 1)
    if len(line) > MAX_HEADER_BYTES:
        raise DataFileError(f"{file}: line 1: longer than {MAX_HEADER_BYTES:,} characters, not a header naming the "
                            "columns; is this the right file?")
    try:
        header = next(csv.reader([line]), None)
    except csv.Error as exc:
        raise DataFileError(f"{file}: line 1: unreadable header ({exc})") from None
    if not header:
        raise DataFileError(f"{file}: is empty, expected a header line naming the columns")
    header = [h.strip().lstrip("\ufeff") for h in header]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise DataFileError(f"{file}: line 1: column {twice[0]!r} appears more than once in the header")
    _require_columns(file, header, column_map)
    for frame in read_delimited(file, columns=header, header=header, quarantine=quarantine, summary=summary):
        yield frame, header


def _require_columns(file: Path, present: Iterable[str], column_map: dict[str, str]) -> None:
    missing = [f"{name} (column {column_map.get(name, name)!r})" for name in REQUIRED_COLUMNS
               if column_map.get(name, name) not in present]
    if missing:
        raise DataFileError(
            f"{file}: required fields missing: {', '.join(missing)}; the file has columns {list(present)}. "
            "Map them with --columns field=column,..."
        )
