"""Reading raw rows, checking fields, and the quarantine that keeps every rejected row with its reason."""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared_model.data.schema import FUTURE_SLACK_SECONDS, MIN_TIMESTAMP

CHUNK_ROWS = 50_000  # rows parsed at once: bounds the memory of raw text per chunk


class DataFileError(Exception):
    """A file that cannot be read at all; the message names the file and what is wrong."""


@dataclass
class FileSummary:
    """Row accounting for one input file: read = accepted + duplicates + quarantined."""

    path: str
    rows_read: int = 0
    rows_accepted: int = 0
    duplicates: int = 0
    rows_quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "rows_read": self.rows_read,
            "rows_accepted": self.rows_accepted,
            "duplicates": self.duplicates,
            "rows_quarantined": self.rows_quarantined,
            "reasons": dict(self.reasons.most_common()),
        }


@dataclass
class ValidationSummary:
    """Totals over a data set's event files plus side files (user attributes, item metadata)."""

    event_files: list[FileSummary]
    side_files: list[FileSummary]
    quarantine_path: str | None
    users: int = 0
    items: int = 0
    item_metadata: dict = field(default_factory=dict)  # share of items with a category, brand, price, title

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.event_files)

    @property
    def rows_accepted(self) -> int:
        return sum(f.rows_accepted for f in self.event_files)

    @property
    def duplicates(self) -> int:
        return sum(f.duplicates for f in self.event_files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.event_files)

    def metadata_line(self) -> str:
        """"item metadata: category 100%, brand 83%, price 97%, title 0% of items" (none: every share 0)."""
        if not any(self.item_metadata.values()):
            return "item metadata: none (item ids only)"
        return "item metadata: " + ", ".join(f"{k} {v:.0%}" for k, v in self.item_metadata.items()) + " of items"

    def is_balanced(self) -> bool:
        """True when no row is unaccounted for, in every file."""
        return all(
            f.rows_read == f.rows_accepted + f.duplicates + f.rows_quarantined
            for f in self.event_files + self.side_files
        )

    def as_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "rows_accepted": self.rows_accepted,
            "duplicates": self.duplicates,
            "rows_quarantined": self.rows_quarantined,
            "quarantine_path": self.quarantine_path,
            "users": self.users,
            "items": self.items,
            "item_metadata": self.item_metadata,
            "balanced": self.is_balanced(),
            "files": [f.as_dict() for f in self.event_files],
            "side_files": [f.as_dict() for f in self.side_files],
        }


class Quarantine:
    """Collects rejected rows (file, row, field, reason, raw text) and writes them to one CSV file."""

    COLUMNS = ["file", "row", "field", "reason", "raw"]

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._frames: list[pd.DataFrame] = []

    def add(self, file: str, rows, field_name: str, reasons, raw) -> None:
        rows = np.asarray(rows)
        if len(rows) == 0:
            return
        self._frames.append(
            pd.DataFrame(
                {
                    "file": file,
                    "row": rows,
                    "field": field_name,
                    "reason": reasons if not isinstance(reasons, str) else [reasons] * len(rows),
                    "raw": raw,
                }
            )
        )

    def records(self) -> pd.DataFrame:
        if not self._frames:
            return pd.DataFrame(columns=self.COLUMNS)
        return pd.concat(self._frames, ignore_index=True)

    def write(self) -> str | None:
        """Write the quarantine file (always, so a clean load leaves an empty file with a header)."""
        if self.path is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        records = self.records()
        records.to_csv(self.path, index=False)
        return str(self.path)


MAX_HEADER_BYTES = 1 << 20  # a header line longer than this is not a header


def check_exists(path: Path, *, what: str = "file") -> None:
    """Refuse, naming it, a path that is not there or a link that leads nowhere (or round in a loop)."""
    if path.is_symlink() and not path.exists():
        raise DataFileError(f"{path}: is a broken or looping symbolic link")
    if not path.exists():
        raise DataFileError(f"{path}: {what} not found")


def check_readable(path: Path) -> None:
    """Refuse, with one line naming the file, what is not a plain text file this reader can take."""
    check_exists(path)
    if path.is_dir():
        raise DataFileError(f"{path}: is a directory, expected a file")
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise DataFileError(f"{path}: cannot be read ({exc.strerror})") from None
    if head[:2] == b"\x1f\x8b" or head == b"PK\x03\x04":
        raise DataFileError(f"{path}: is compressed (gzip/zip); decompress it first")
    if head.startswith(b"PAR1"):
        raise DataFileError(f"{path}: is a Parquet file; use a .parquet name or the `events` format")
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataFileError(f"{path}: is UTF-16 (or UTF-32) text; save it as UTF-8")


def read_delimited(
    path: str | Path,
    *,
    columns: list[str],
    delimiter: str = ",",
    header: bool | list[str] = False,
    encoding: str = "utf-8",
    quarantine: Quarantine,
    summary: FileSummary,
) -> Iterator[pd.DataFrame]:
    """Yield chunks of raw string fields named by `columns`, with the 1-based file line in column `row`.

    Rows with the wrong number of fields, empty rows and rows that are not valid `encoding` go to the
    quarantine here; everything else is left for field checks. `header=True` requires the first line
    to name exactly `columns`; a list gives the header names and maps them to `columns` in order.
    """
    path = Path(path)
    check_readable(path)
    name = str(path)
    n = len(columns)
    with path.open("r", encoding=encoding, errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        if header:
            try:
                first = next(reader)
            except StopIteration:
                raise DataFileError(f"{path}: is empty, expected a header line") from None
            except csv.Error as exc:
                raise DataFileError(f"{path}: line 1: unreadable header ({exc})") from None
            expected = header if isinstance(header, list) else columns
            got = [c.strip().lstrip("\ufeff") for c in first]
            if got != list(expected):
                raise DataFileError(
                    f"{path}: header {got} does not match the expected columns {list(expected)}"
                )
        rows: list[list[str]] = []
        lines: list[int] = []

        def set_aside(reason: str, raw: str, label: str | None = None) -> None:
            quarantine.add(name, [reader.line_num], "*", reason, [raw])
            summary.rows_quarantined += 1
            summary.reasons[label or reason] += 1

        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                summary.rows_read += 1
                set_aside(f"malformed CSV ({exc})", "", "malformed CSV")
                continue
            summary.rows_read += 1
            if reader.line_num > start and len(record) != n:  # a stray quote swallowed the lines after it
                raise DataFileError(f"{path}: line {start}: a quote opens a field that runs on to line "
                                    f"{reader.line_num} ({reader.line_num - start + 1} lines read as one row); "
                                    "remove the stray quote or quote the field in full")
            if len(record) != n:
                if not record or record == [""]:
                    set_aside("empty row", delimiter.join(record))
                else:
                    set_aside(f"expected {n} fields, found {len(record)}", delimiter.join(record),
                              "wrong number of fields")
                continue
            if any("\x00" in field for field in record):
                set_aside("NUL byte in a field", delimiter.join(record).replace("\x00", "\\x00"))
                continue
            try:  # undecodable bytes were read as lone surrogates, which refuse to encode
                delimiter.join(record).encode("utf-8")
            except UnicodeEncodeError:
                set_aside(f"not valid {encoding} text",
                          delimiter.join(record).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
                continue
            rows.append(record)
            lines.append(reader.line_num)
            if len(rows) >= CHUNK_ROWS:
                yield _chunk(rows, lines, columns)
                rows, lines = [], []
        if rows:
            yield _chunk(rows, lines, columns)


def _chunk(rows, lines, columns) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    frame["row"] = np.asarray(lines, dtype=np.int64)
    return frame


class RowChecker:
    """Field-by-field checks over a chunk of raw rows; each row keeps the first reason it failed."""

    def __init__(self, frame: pd.DataFrame, *, file: str, raw_columns: list[str], delimiter: str = ","):
        self.frame = frame
        self.file = file
        self.raw_columns = raw_columns
        self.delimiter = delimiter
        self.bad = pd.Series(False, index=frame.index)
        self._rejections: list[tuple[pd.Series, str, str | pd.Series]] = []

    def reject(self, mask: pd.Series, field_name: str, reason: str | pd.Series) -> None:
        mask = mask.fillna(True).astype(bool) & ~self.bad
        if mask.any():
            self._rejections.append((mask, field_name, reason))
            self.bad |= mask

    def required_text(self, column: str, *, field_name: str | None = None) -> pd.Series:
        values = self.frame[column].astype(str).str.strip()
        self.reject(values.eq(""), field_name or column, "missing value")
        return values

    def identifier(self, column: str, *, field_name: str | None = None) -> pd.Series:
        """An id kept as text; '123.0' (ids written as floats) becomes '123'."""
        values = self.required_text(column, field_name=field_name)
        return values.str.replace(r"^(-?\d+)\.0+$", r"\1", regex=True)

    def integer(self, column: str, *, field_name: str | None = None) -> pd.Series:
        text = self.frame[column].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce")
        not_int = values.isna() | (values.notna() & (values != np.floor(values.fillna(0))))
        self.reject(text.eq(""), field_name or column, "missing value")
        self.reject(not_int, field_name or column, "not an integer: " + text)
        return values.fillna(0).astype(np.int64)

    def optional_float(self, column: str, *, minimum: float = 0.0, field_name: str | None = None) -> pd.Series:
        text = self.frame[column].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce")
        self.reject(text.ne("") & values.isna(), field_name or column, "not a number: " + text)
        self.reject(values < minimum, field_name or column, f"below {minimum}: " + text)
        return values.astype(np.float64)

    def timestamp(self, column: str, *, field_name: str | None = None) -> pd.Series:
        """Unix seconds, or a date/time string read as UTC; impossible times are rejected."""
        name = field_name or column
        text = self.frame[column].astype(str).str.strip()
        self.reject(text.eq(""), name, "missing value")
        numeric = pd.to_numeric(text, errors="coerce")
        seconds = numeric.copy()
        as_text = numeric.isna() & text.ne("")
        if as_text.any():
            parsed = pd.to_datetime(text[as_text], errors="coerce", utc=True, format="mixed")
            seconds[as_text] = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        self.reject(seconds.isna(), name, "not a timestamp: " + text)
        latest = time.time() + FUTURE_SLACK_SECONDS
        self.reject((seconds < MIN_TIMESTAMP) | (seconds > latest), name, "impossible timestamp: " + text)
        return seconds.fillna(0).astype(np.int64)

    def mapped(self, column: str, mapping: dict, *, field_name: str | None = None, what: str = "value") -> pd.Series:
        text = self.frame[column].astype(str).str.strip()
        values = text.str.lower().map(mapping)
        self.reject(values.isna(), field_name or column, f"unknown {what}: " + text)
        return values

    def finish(self, quarantine: Quarantine, summary: FileSummary) -> pd.Series:
        """Send rejected rows to the quarantine; returns the mask of rows that passed."""
        for mask, field_name, reason in self._rejections:
            reasons = reason[mask] if isinstance(reason, pd.Series) else reason
            raw = self.frame.loc[mask, self.raw_columns].astype(str).agg(self.delimiter.join, axis=1)
            quarantine.add(self.file, self.frame.loc[mask, "row"], field_name, reasons, raw)
            count = int(mask.sum())
            summary.rows_quarantined += count
            label = reason if isinstance(reason, str) else _reason_label(reasons)
            summary.reasons[f"{field_name}: {label}"] += count
        return ~self.bad


def _reason_label(reasons: pd.Series) -> str:
    first = str(reasons.iloc[0])
    return first.split(":")[0] if ":" in first else first
