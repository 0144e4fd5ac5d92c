"""Loaders that turn each supported log format into the one event schema, with full row accounting."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared_model.schema import (
    BEHAVIOR_ALIASES,
    EVENT_COLUMNS,
    REQUIRED_COLUMNS,
    UNKNOWN_CATEGORY,
    Behavior,
    empty_events,
    empty_users,
)
from shared_model.validation import (
    DataFileError,
    FileSummary,
    Quarantine,
    RowChecker,
    ValidationSummary,
    read_delimited,
)

FORMATS = ("events", "taobao", "amazon", "movielens", "jdata", "synthetic")


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
        from shared_model.synthetic import load_synthetic

        return load_synthetic(path, quarantine_path=quarantine_path)
    if path is None:
        raise DataFileError(f"format {fmt!r} needs a data path")
    quarantine = Quarantine(quarantine_path)
    if isinstance(path, list):  # several event files of one data set (generic format)
        chunks, event_files, users, side_files = _load_generic(path, quarantine, column_map or {})
        return finalize(chunks, event_files, users, side_files, quarantine, source=",".join(map(str, path)))
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: file or folder not found")
    loader: Callable = {
        "events": lambda p, q: _load_generic(p, q, column_map or {}),
        "taobao": _load_taobao,
        "amazon": _load_amazon,
        "movielens": _load_movielens,
        "jdata": _load_jdata,
    }[fmt]
    chunks, event_files, users, side_files = loader(path, quarantine)
    return finalize(chunks, event_files, users, side_files, quarantine, source=str(path))


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
    )
    if not summary.is_balanced():  # a bug, not bad data: every row must be accounted for
        raise AssertionError(f"row accounting does not balance: {summary.as_dict()}")
    return EventLog(events=events, users=users, summary=summary, source=source, item_titles=titles)


def _canonical(
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


def _files(path: Path, pattern: str) -> list[Path]:
    files = [path] if path.is_file() else sorted(path.glob(pattern))
    if not files:
        raise DataFileError(f"{path}: no files matching {pattern!r}")
    return files


# ---------------------------------------------------------------- Taobao UserBehavior

TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior", "timestamp"]


def _load_taobao(path: Path, quarantine: Quarantine):
    chunks, summaries = [], []
    for index, file in enumerate(_files(path, "*.csv")):
        summary = FileSummary(str(file))
        summaries.append(summary)
        for frame in read_delimited(file, columns=TAOBAO_COLUMNS, quarantine=quarantine, summary=summary):
            check = RowChecker(frame, file=str(file), raw_columns=TAOBAO_COLUMNS)
            chunks.append(
                _canonical(
                    check,
                    file_index=index,
                    user_id=check.identifier("user_id"),
                    item_id=check.identifier("item_id"),
                    category_id=check.identifier("category_id"),
                    behavior=check.mapped("behavior", BEHAVIOR_ALIASES, what="behaviour"),
                    timestamp=check.timestamp("timestamp"),
                    quarantine=quarantine,
                    summary=summary,
                )
            )
    return chunks, summaries, empty_users(), []


# ---------------------------------------------------------------- Amazon (S3-Rec preprocessing)

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


def _amazon_file(path: Path, suffix: str) -> Path | None:
    found = sorted(path.glob(f"*{suffix}"))
    return found[0] if found else None


def _load_amazon(path: Path, quarantine: Quarantine):
    folder = path if path.is_dir() else path.parent
    tsv = path if path.is_file() else _amazon_file(folder, "_with_time.tsv")
    if tsv is None:
        raise DataFileError(f"{folder}: no '*_with_time.tsv' file (user_id item_id timestamp reviewerID asin)")
    side, meta = [], pd.DataFrame(columns=["category_id", "price", "brand", "title"])
    item_file = _amazon_file(folder, ".item")
    if item_file is not None:
        meta, item_summary = _amazon_item_metadata(item_file, quarantine)
        side.append(item_summary)
    summary = FileSummary(str(tsv))
    chunks = []
    for frame in read_delimited(
        tsv, columns=AMAZON_TSV_COLUMNS, delimiter="\t", header=True, quarantine=quarantine, summary=summary
    ):
        check = RowChecker(frame, file=str(tsv), raw_columns=AMAZON_TSV_COLUMNS, delimiter="\t")
        asin = check.required_text("asin")
        item_meta = meta.reindex(asin.to_numpy())
        chunks.append(
            _canonical(
                check,
                file_index=0,
                user_id=check.identifier("user_id"),
                item_id=check.identifier("item_id"),
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
    return chunks, [summary], empty_users(), side


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


# ---------------------------------------------------------------- MovieLens 100K and latest-small


def _load_movielens(path: Path, quarantine: Quarantine):
    if (path / "u.data").exists():
        return _load_movielens_100k(path, quarantine)
    if (path / "ratings.csv").exists():
        return _load_movielens_latest(path, quarantine)
    raise DataFileError(f"{path}: neither u.data (MovieLens 100K) nor ratings.csv (MovieLens latest) found")


ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def _ratings_frame(check: RowChecker, *, file_index, item_genre: pd.DataFrame, quarantine, summary, rating_column):
    rating = check.optional_float(rating_column)
    check.reject(rating.isna(), rating_column, "missing value")
    check.reject(rating > 5, rating_column, "rating above 5")
    item_id = check.identifier("item_id")
    meta = item_genre.reindex(item_id.to_numpy())
    return _canonical(
        check,
        file_index=file_index,
        user_id=check.identifier("user_id"),
        item_id=item_id,
        category_id=meta["genre"].fillna(UNKNOWN_CATEGORY).to_numpy(),
        title=meta["title"].fillna("").to_numpy(dtype=object),
        behavior=np.full(len(check.frame), int(Behavior.REVIEW)),
        timestamp=check.timestamp("timestamp"),
        quarantine=quarantine,
        summary=summary,
    )


def _load_movielens_100k(path: Path, quarantine: Quarantine):
    item_cols = ["item_id", "title", "release", "video", "url", *ML100K_GENRES]
    item_summary = FileSummary(str(path / "u.item"))
    genres = []
    for frame in read_delimited(
        path / "u.item", columns=item_cols, delimiter="|", encoding="latin-1", quarantine=quarantine,
        summary=item_summary,
    ):
        flags = frame[ML100K_GENRES].eq("1").to_numpy()
        first = np.where(flags.any(axis=1), flags.argmax(axis=1), 0)
        genres.append(pd.DataFrame({"genre": np.asarray(ML100K_GENRES)[first], "title": frame["title"].to_numpy()},
                                   index=frame["item_id"].str.strip()))
    item_summary.rows_accepted = item_summary.rows_read - item_summary.rows_quarantined
    item_genre = pd.concat(genres) if genres else pd.DataFrame(columns=["genre", "title"])

    users, user_summary = _movielens_users(path / "u.user", quarantine)
    cols = ["user_id", "item_id", "rating", "timestamp"]
    summary = FileSummary(str(path / "u.data"))
    chunks = []
    for frame in read_delimited(path / "u.data", columns=cols, delimiter="\t", quarantine=quarantine, summary=summary):
        check = RowChecker(frame, file=summary.path, raw_columns=cols, delimiter="\t")
        chunks.append(
            _ratings_frame(check, file_index=0, item_genre=item_genre, quarantine=quarantine, summary=summary,
                           rating_column="rating")
        )
    return chunks, [summary], users, [item_summary, user_summary]


def _movielens_users(file: Path, quarantine: Quarantine) -> tuple[pd.DataFrame, FileSummary]:
    cols = ["user_id", "age", "gender", "occupation", "zip"]
    summary = FileSummary(str(file))
    frames = []
    for frame in read_delimited(file, columns=cols, delimiter="|", quarantine=quarantine, summary=summary):
        check = RowChecker(frame, file=str(file), raw_columns=cols, delimiter="|")
        user_id = check.identifier("user_id")
        age = check.optional_float("age")
        gender = check.mapped("gender", {"m": "M", "f": "F"}, what="gender")
        ok = check.finish(quarantine, summary)
        region = "US-" + frame["zip"].str.strip().str[:1]
        frames.append(pd.DataFrame({"user_id": user_id, "gender": gender, "age": age, "region": region})[ok])
    summary.rows_accepted = summary.rows_read - summary.rows_quarantined
    return (pd.concat(frames, ignore_index=True) if frames else empty_users()), summary


def _load_movielens_latest(path: Path, quarantine: Quarantine):
    movie_cols = ["item_id", "title", "genres"]
    movie_summary = FileSummary(str(path / "movies.csv"))
    genres = []
    for frame in read_delimited(
        path / "movies.csv", columns=movie_cols, header=["movieId", "title", "genres"], quarantine=quarantine,
        summary=movie_summary,
    ):
        first = frame["genres"].str.split("|").str[0].replace("(no genres listed)", UNKNOWN_CATEGORY)
        genres.append(pd.DataFrame({"genre": first.to_numpy(), "title": frame["title"].to_numpy()},
                                   index=frame["item_id"].str.strip()))
    movie_summary.rows_accepted = movie_summary.rows_read - movie_summary.rows_quarantined
    item_genre = pd.concat(genres) if genres else pd.DataFrame(columns=["genre", "title"])
    cols = ["user_id", "item_id", "rating", "timestamp"]
    summary = FileSummary(str(path / "ratings.csv"))
    chunks = []
    for frame in read_delimited(
        path / "ratings.csv", columns=cols, header=["userId", "movieId", "rating", "timestamp"],
        quarantine=quarantine, summary=summary,
    ):
        check = RowChecker(frame, file=summary.path, raw_columns=cols)
        chunks.append(
            _ratings_frame(check, file_index=0, item_genre=item_genre, quarantine=quarantine, summary=summary,
                           rating_column="rating")
        )
    return chunks, [summary], empty_users(), [movie_summary]


# ---------------------------------------------------------------- JData 2016 (JD.com)

JDATA_ACTION_COLUMNS = ["user_id", "sku_id", "time", "model_id", "type", "cate", "brand"]
# type 3 (removed from cart) has no behaviour in the schema: such rows are quarantined with that reason.
JDATA_TYPES = {"1": Behavior.VIEW, "2": Behavior.CART, "4": Behavior.PURCHASE, "5": Behavior.FAV, "6": Behavior.VIEW}
JDATA_AGE_BANDS = {  # band label (GBK in the file) -> midpoint in years
    "15岁以下": 13.0, "16-25岁": 20.5, "26-35岁": 30.5, "36-45岁": 40.5, "46-55岁": 50.5, "56岁以上": 60.0,
}  # fmt: skip
JDATA_SEX = {"0": "M", "1": "F", "2": ""}


def _load_jdata(path: Path, quarantine: Quarantine):
    chunks, summaries = [], []
    for index, file in enumerate(_files(path, "JData_Action_*.csv")):
        summary = FileSummary(str(file))
        summaries.append(summary)
        for frame in read_delimited(
            file, columns=JDATA_ACTION_COLUMNS, header=True, quarantine=quarantine, summary=summary
        ):
            check = RowChecker(frame, file=str(file), raw_columns=JDATA_ACTION_COLUMNS)
            type_text = frame["type"].str.strip()
            check.reject(type_text.eq("3"), "type", "type 3 (removed from cart) has no behaviour in the event schema")
            chunks.append(
                _canonical(
                    check,
                    file_index=index,
                    user_id=check.identifier("user_id"),
                    item_id=check.identifier("sku_id", field_name="sku_id"),
                    category_id=check.identifier("cate"),
                    behavior=check.mapped("type", JDATA_TYPES, what="action type"),
                    timestamp=check.timestamp("time"),
                    brand=check.identifier("brand"),
                    quarantine=quarantine,
                    summary=summary,
                )
            )
    users, side = empty_users(), []
    user_file = (path if path.is_dir() else path.parent) / "JData_User.csv"
    if user_file.exists():
        users, user_summary = _jdata_users(user_file, quarantine)
        side.append(user_summary)
    return chunks, summaries, users, side


def _jdata_users(file: Path, quarantine: Quarantine) -> tuple[pd.DataFrame, FileSummary]:
    cols = ["user_id", "age", "sex", "user_lv_cd", "user_reg_tm"]
    summary = FileSummary(str(file))
    frames = []
    for frame in read_delimited(file, columns=cols, header=True, encoding="gbk", quarantine=quarantine, summary=summary):
        check = RowChecker(frame, file=str(file), raw_columns=cols)
        user_id = check.identifier("user_id")
        age_text = frame["age"].str.strip()
        known_band = age_text.isin(list(JDATA_AGE_BANDS)) | age_text.isin(["-1", ""])
        check.reject(~known_band, "age", "unknown age band: " + age_text)
        gender = check.mapped("sex", JDATA_SEX, what="sex code")
        ok = check.finish(quarantine, summary)
        frames.append(
            pd.DataFrame(
                {"user_id": user_id, "gender": gender, "age": age_text.map(JDATA_AGE_BANDS), "region": ""}
            )[ok]
        )
    summary.rows_accepted = summary.rows_read - summary.rows_quarantined
    return (pd.concat(frames, ignore_index=True) if frames else empty_users()), summary


# ---------------------------------------------------------------- generic event logs (CSV or Parquet)


def _load_generic(path: Path | list[Path], quarantine: Quarantine, column_map: dict[str, str]):
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
                _canonical(
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
    return chunks, summaries, empty_users(), []


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
    with file.open("r", encoding="utf-8", errors="replace", newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise DataFileError(f"{file}: is empty, expected a header line naming the columns")
    header = [h.strip().lstrip("\ufeff") for h in header]
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
    accepted = _canonical(
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


CATALOGUE_COLUMNS = ("item_id", "category_id", "brand", "price", "title", "in_stock")
_STOCK = {"1": True, "true": True, "yes": True, "y": True, "0": False, "false": False, "no": False, "n": False}


def load_catalogue(path: str | Path, *, quarantine_path: str | Path | None = None) -> pd.DataFrame:
    """A merchant's catalogue CSV: `item_id` (required), `category_id`, `brand`, `price`, `title`, `in_stock`
    (true/false, 1/0, yes/no; default true). Items the events never mention still get recommended. Bad rows
    go to the quarantine with row and reason; a file without `item_id` fails naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: catalogue file not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "item_id" not in frame.columns:
        raise DataFileError(f"{path}: no item_id column (found {', '.join(frame.columns)})")
    for column in CATALOGUE_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    raw = [c for c in frame.columns]
    frame["row"] = np.arange(2, len(frame) + 2)  # file line numbers (line 1 is the header)
    summary = FileSummary(str(path))
    summary.rows_read = len(frame)
    check = RowChecker(frame, file=str(path), raw_columns=raw)
    item_id = check.identifier("item_id")
    price = check.optional_float("price")
    stock_text = frame["in_stock"].astype(str).str.strip().str.lower()
    check.reject(stock_text.ne("") & ~stock_text.isin(list(_STOCK)), "in_stock", "not true/false: " + stock_text)
    quarantine = Quarantine(quarantine_path)
    ok = check.finish(quarantine, summary)
    quarantine.write()
    out = pd.DataFrame({
        "item_id": item_id, "category_id": frame["category_id"].str.strip(), "brand": frame["brand"].str.strip(),
        "price": price, "title": frame["title"], "in_stock": stock_text.map(_STOCK).fillna(True).astype(bool),
    })[ok]
    return out.drop_duplicates("item_id", keep="last").reset_index(drop=True)
