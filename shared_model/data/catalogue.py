"""A merchant's catalogue file: items no event mentions, their stock, with bad rows quarantined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shared_model.data.validation import DataFileError, FileSummary, Quarantine, RowChecker

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
