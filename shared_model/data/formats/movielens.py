"""MovieLens 100K and latest-small: ratings as reviews, the first genre as category."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shared_model.data.eventlog import Parsed, canonical
from shared_model.data.schema import UNKNOWN_CATEGORY, Behavior, empty_users
from shared_model.data.validation import DataFileError, FileSummary, Quarantine, RowChecker, read_delimited


def load(path: Path, quarantine: Quarantine) -> Parsed:
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
    return canonical(
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


def _load_movielens_100k(path: Path, quarantine: Quarantine) -> Parsed:
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
    return Parsed(chunks, [summary], users, [item_summary, user_summary])


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


def _load_movielens_latest(path: Path, quarantine: Quarantine) -> Parsed:
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
    return Parsed(chunks, [summary], empty_users(), [movie_summary])
