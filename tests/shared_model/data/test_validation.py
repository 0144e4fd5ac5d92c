"""Reading raw rows and checking fields on their own: every rejected row is kept with its line and reason."""

from __future__ import annotations

import pandas as pd
import pytest

from shared_model.data.validation import (
    DataFileError,
    FileSummary,
    Quarantine,
    RowChecker,
    ValidationSummary,
    read_delimited,
)


def _read(path, **kwargs):
    quarantine, summary = Quarantine(None), FileSummary(str(path))
    frames = list(read_delimited(path, quarantine=quarantine, summary=summary, **kwargs))
    return (pd.concat(frames) if frames else pd.DataFrame()), quarantine.records(), summary


def test_rows_of_the_wrong_shape_empty_or_undecodable_are_quarantined_by_line(tmp_path):
    file = tmp_path / "log.csv"
    file.write_bytes(b"u1,i1,view\nu2,i2\n\nu3,\xff\xfe,view\nu4,i4,cart\n")
    frame, rejected, summary = _read(file, columns=["user", "item", "behavior"])
    assert frame["user"].tolist() == ["u1", "u4"]
    assert frame["row"].tolist() == [1, 5]
    assert rejected["row"].tolist() == [2, 3, 4]
    assert rejected["reason"].tolist() == ["expected 3 fields, found 2", "empty row", "not valid utf-8 text"]
    assert rejected["raw"].iloc[2] == "u3,\\xff\\xfe,view"  # the bytes are kept, readably
    assert summary.rows_read == 5 and summary.rows_quarantined == 3


def test_headers_are_checked_and_mapped(tmp_path):
    file = tmp_path / "log.csv"
    file.write_text("uid,sku\nu1,i1\n")
    frame, _, _ = _read(file, columns=["user", "item"], header=["uid", "sku"])
    assert frame[["user", "item"]].values.tolist() == [["u1", "i1"]]
    with pytest.raises(DataFileError, match="log.csv: header \\['uid', 'sku'\\] does not match"):
        _read(file, columns=["user", "item"], header=True)


@pytest.mark.parametrize("content, message", [
    (b"\x1f\x8b\x08\x00rest", "is compressed"),
    (b"PAR1....", "is a Parquet file"),
])
def test_files_that_are_not_text_are_named_and_refused(tmp_path, content, message):
    file = tmp_path / "log.csv"
    file.write_bytes(content)
    with pytest.raises(DataFileError, match=f"log.csv: {message}"):
        _read(file, columns=["a"])
    with pytest.raises(DataFileError, match="is a directory"):
        _read(tmp_path, columns=["a"])


def test_each_row_keeps_the_first_reason_it_failed():
    frame = pd.DataFrame({"id": ["7.0", "", "x", "9"], "ts": ["1600000000", "1600000000", "", "12"],
                          "price": ["1.5", "-2", "abc", ""], "row": [1, 2, 3, 4]})
    check = RowChecker(frame, file="f.csv", raw_columns=["id", "ts", "price"])
    ids = check.identifier("id")
    check.timestamp("ts")
    check.optional_float("price")
    quarantine, summary = Quarantine(None), FileSummary("f.csv", rows_read=4)
    ok = check.finish(quarantine, summary)
    assert ids.iloc[0] == "7"  # an id written as a float
    assert ok.tolist() == [True, False, False, False]
    rejected = quarantine.records().set_index("row")
    assert rejected.loc[2, "field"] == "id" and rejected.loc[2, "reason"] == "missing value"
    assert rejected.loc[3, "field"] == "ts"
    assert rejected.loc[4, "reason"].startswith("impossible timestamp")
    assert rejected.loc[4, "raw"] == "9,12,"
    assert summary.rows_quarantined == 3 and sum(summary.reasons.values()) == 3


def test_the_quarantine_file_is_written_even_when_empty_and_totals_balance(tmp_path):
    path = tmp_path / "q" / "quarantine.csv"
    assert Quarantine(path).write() == str(path)
    assert path.read_text().strip() == "file,row,field,reason,raw"
    good = FileSummary("a", rows_read=5, rows_accepted=3, duplicates=1, rows_quarantined=1)
    bad = FileSummary("b", rows_read=5, rows_accepted=3)
    assert ValidationSummary([good], [], None).is_balanced()
    assert not ValidationSummary([good], [bad], None).is_balanced()
