"""JData 2016 (JD.com): action files and the GBK-encoded user file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shared_model.data.eventlog import Parsed, canonical, files_matching
from shared_model.data.schema import Behavior, empty_users
from shared_model.data.validation import FileSummary, Quarantine, RowChecker, read_delimited

JDATA_ACTION_COLUMNS = ["user_id", "sku_id", "time", "model_id", "type", "cate", "brand"]
# type 3 (removed from cart) has no behaviour in the schema: such rows are quarantined with that reason.
JDATA_TYPES = {"1": Behavior.VIEW, "2": Behavior.CART, "4": Behavior.PURCHASE, "5": Behavior.FAV, "6": Behavior.VIEW}
JDATA_AGE_BANDS = {  # band label (GBK in the file) -> midpoint in years
    "15岁以下": 13.0, "16-25岁": 20.5, "26-35岁": 30.5, "36-45岁": 40.5, "46-55岁": 50.5, "56岁以上": 60.0,
}  # fmt: skip
JDATA_SEX = {"0": "M", "1": "F", "2": ""}


def load(path: Path, quarantine: Quarantine) -> Parsed:
    chunks, summaries = [], []
    for index, file in enumerate(files_matching(path, "JData_Action_*.csv")):
        summary = FileSummary(str(file))
        summaries.append(summary)
        for frame in read_delimited(
            file, columns=JDATA_ACTION_COLUMNS, header=True, quarantine=quarantine, summary=summary
        ):
            check = RowChecker(frame, file=str(file), raw_columns=JDATA_ACTION_COLUMNS)
            type_text = frame["type"].str.strip()
            check.reject(type_text.eq("3"), "type", "type 3 (removed from cart) has no behaviour in the event schema")
            chunks.append(
                canonical(
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
    return Parsed(chunks, summaries, users, side)


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
