"""Taobao UserBehavior: headerless user,item,category,behaviour,time rows."""

from __future__ import annotations

from pathlib import Path

from shared_model.data.eventlog import Parsed, canonical, files_matching
from shared_model.data.schema import BEHAVIOR_ALIASES, empty_users
from shared_model.data.validation import FileSummary, Quarantine, RowChecker, read_delimited

TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior", "timestamp"]


def load(path: Path, quarantine: Quarantine) -> Parsed:
    chunks, summaries = [], []
    for index, file in enumerate(files_matching(path, "*.csv")):
        summary = FileSummary(str(file))
        summaries.append(summary)
        for frame in read_delimited(file, columns=TAOBAO_COLUMNS, quarantine=quarantine, summary=summary):
            check = RowChecker(frame, file=str(file), raw_columns=TAOBAO_COLUMNS)
            chunks.append(
                canonical(
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
    return Parsed(chunks, summaries, empty_users(), [])
