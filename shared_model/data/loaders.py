"""One entry point that loads any supported format into the one event schema, with full row accounting."""

from __future__ import annotations

from pathlib import Path

from shared_model.data.eventlog import EventLog, finalize
from shared_model.data.formats import amazon, generic, jdata, movielens, synthetic, taobao
from shared_model.data.schema import EVENT_COLUMNS
from shared_model.data.validation import DataFileError, Quarantine, check_exists

FORMATS = ("events", "taobao", "amazon", "movielens", "jdata", "synthetic")
_READERS = {"taobao": taobao.load, "amazon": amazon.load, "movielens": movielens.load, "jdata": jdata.load}


def load_events(
    path: str | Path | list[Path] | None,
    fmt: str,
    *,
    quarantine_path: str | Path | None = None,
    column_map: dict[str, str] | None = None,
) -> EventLog:
    """Load a data set of format `fmt` from `path` (a file or the data set's folder)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "synthetic":
        return synthetic.load(path, quarantine_path=quarantine_path)
    if path is None:
        raise DataFileError(f"format {fmt!r} needs a data path")
    quarantine = Quarantine(quarantine_path)
    if isinstance(path, list):  # several event files of one data set (generic format)
        parsed = generic.load(path, quarantine, column_map or {})
        return finalize(*parsed, quarantine, source=",".join(map(str, path)))
    path = Path(path)
    check_exists(path, what="file or folder")
    parsed = generic.load(path, quarantine, column_map or {}) if fmt == "events" else _READERS[fmt](path, quarantine)
    return finalize(*parsed, quarantine, source=str(path))


def parse_column_map(spec: str | None) -> dict[str, str]:
    """'user_id=uid,item_id=sku' -> {'user_id': 'uid', 'item_id': 'sku'}, refusing unknown fields."""
    if not spec:
        return {}
    mapping = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ValueError(f"column mapping {part!r} should look like field=column")
        name, column = (s.strip() for s in part.split("=", 1))
        if name not in EVENT_COLUMNS:
            raise ValueError(f"unknown schema field {name!r} in column mapping; fields are {', '.join(EVENT_COLUMNS)}")
        mapping[name] = column
    return mapping
