"""Every real data set loads with balanced row accounting; broken rows are quarantined with reasons."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from shared_model.data.loaders import load_events, parse_column_map
from shared_model.data.schema import EVENT_COLUMNS, Behavior
from shared_model.data.validation import DataFileError

REAL = [
    ("taobao-userbehavior", "taobao", 94_475, 929),
    ("amazon-beauty", "amazon", 198_502, 22_363),
    ("movielens-100k", "movielens", 100_000, 943),
    ("movielens-latest-small", "movielens", 100_836, 610),
    ("jdata2016", "jdata", 89_997, None),
]


def _balanced(summary) -> None:
    assert summary.rows_read == summary.rows_accepted + summary.duplicates + summary.rows_quarantined
    assert summary.is_balanced()


@pytest.mark.realdata
@pytest.mark.parametrize("folder,fmt,rows,users", REAL)
def test_real_data_sets_load_and_balance(real_data, tmp_path, folder, fmt, rows, users):
    log = load_events(real_data / folder, fmt, quarantine_path=tmp_path / "q.csv")
    _balanced(log.summary)
    assert log.summary.rows_read == rows
    if users is not None:
        assert log.summary.users == users
    assert list(log.events.columns) == list(EVENT_COLUMNS)
    assert log.events["behavior"].isin([int(b) for b in Behavior]).all()
    quarantined = pd.read_csv(tmp_path / "q.csv")
    assert len(quarantined) == log.summary.rows_quarantined


@pytest.mark.realdata
def test_amazon_keeps_published_sequence_order_and_metadata(real_data):
    log = load_events(real_data / "amazon-beauty", "amazon")
    first_user = log.events[log.events["user_id"] == "1"]["item_id"].tolist()
    assert first_user == ["1", "2", "3", "4", "5"]  # Beauty.txt line 1
    assert (log.events["category_id"] != "unknown").mean() > 0.99
    assert log.events["price"].notna().mean() > 0.9


@pytest.mark.realdata
def test_jdata_gbk_user_file_and_cart_removals(real_data):
    log = load_events(real_data / "jdata2016", "jdata")
    users = log.users
    assert len(users) == 29_999
    assert set(users["gender"].unique()) <= {"M", "F", ""}
    assert users["age"].notna().sum() > 20_000  # Chinese age bands decoded from GBK
    reasons = {r for f in log.summary.event_files for r in f.reasons}
    assert any("removed from cart" in r for r in reasons)
    assert log.summary.duplicates > 0  # the extract repeats identical click rows


@pytest.mark.realdata
def test_movielens_100k_user_attributes(real_data):
    log = load_events(real_data / "movielens-100k", "movielens")
    assert len(log.users) == 943
    assert set(log.users["gender"]) == {"M", "F"}
    assert log.events["category_id"].nunique() > 10


BROKEN = (
    "user_id,item_id,category_id,behavior,timestamp,price,brand\n"
    "1,10,5,view,1511544070,9.5,acme\n"  # line 2 ok
    "1,10,5,view,1511544070,9.5,acme\n"  # line 3 exact duplicate
    ",11,5,view,1511544071,,\n"  # line 4 missing user
    "2,12,5,teleport,1511544072,,\n"  # line 5 unknown behaviour
    "2,13,5,buy,yesterday,,\n"  # line 6 unparsable timestamp
    "2,14,5,cart,99,,\n"  # line 7 impossible timestamp
    "2,15,5,fav,4102444800,,\n"  # line 8 year 2100
    "3,16,5,view,1511544073,-4,\n"  # line 9 negative price
    "3,17,5,view\n"  # line 10 too few fields
    "\n"  # line 11 empty
    "3,18,5,purchase,2017-11-26 10:00:00,12,\n"  # line 12 ok (date string)
)


def test_broken_rows_lose_nothing_and_say_why(tmp_path):
    source = tmp_path / "events.csv"
    source.write_bytes(BROKEN.encode() + b"4,19,5,view,1511544074,1.0,caf\xe9\n")  # line 13 bad UTF-8
    log = load_events(source, "events", quarantine_path=tmp_path / "q.csv")
    s = log.summary
    _balanced(s)
    assert (s.rows_read, s.rows_accepted, s.duplicates, s.rows_quarantined) == (12, 2, 1, 9)
    q = pd.read_csv(tmp_path / "q.csv").set_index("row")
    assert q.loc[4, "field"] == "user_id" and q.loc[4, "reason"] == "missing value"
    assert "unknown behaviour" in q.loc[5, "reason"]
    assert "not a timestamp" in q.loc[6, "reason"]
    assert "impossible timestamp" in q.loc[7, "reason"] and "impossible timestamp" in q.loc[8, "reason"]
    assert q.loc[9, "field"] == "price"
    assert "expected 7 fields, found 4" in q.loc[10, "reason"]
    assert q.loc[11, "reason"] == "empty row"
    assert "not valid utf-8" in q.loc[13, "reason"]
    assert (q["file"] == str(source)).all()


def test_column_mapping_and_parquet(tmp_path):
    frame = pd.DataFrame({"uid": ["a", "a", "b"], "sku": ["x", "y", "x"], "cat": ["1", "1", "2"],
                          "act": ["pv", "buy", "cart"], "ts": [1511544070, 1511544071, 1511544072]})
    frame.to_parquet(tmp_path / "log.parquet")
    mapping = parse_column_map("user_id=uid,item_id=sku,category_id=cat,behavior=act,timestamp=ts")
    log = load_events(tmp_path / "log.parquet", "events", column_map=mapping)
    assert log.summary.rows_accepted == 3
    assert log.events["behavior"].tolist() == [Behavior.VIEW, Behavior.PURCHASE, Behavior.CART]
    with pytest.raises(ValueError, match="unknown schema field"):
        parse_column_map("shoe_size=x")


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(DataFileError, match="not found"):
        load_events(tmp_path / "missing.csv", "taobao")
    zipped = tmp_path / "log.csv"
    zipped.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataFileError, match=f"{zipped}.*compressed"):
        load_events(zipped, "taobao")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(DataFileError, match=f"{wrong}.*required fields missing"):
        load_events(wrong, "events")
    amazon = tmp_path / "amazon"
    amazon.mkdir()
    with pytest.raises(DataFileError, match="_with_time.tsv"):
        load_events(amazon, "amazon")


def test_catalogue_file_rows_are_checked_and_counted(tmp_path):
    from shared_model.data.catalogue import load_catalogue

    path = tmp_path / "items.csv"
    path.write_text("item_id,category_id,price,in_stock\ni1,c1,9.5,true\n,c1,3,true\ni3,c2,cheap,yes\ni4,c2,4,maybe\ni5,c3,,0\n")
    quarantine = tmp_path / "q.csv"
    items = load_catalogue(path, quarantine_path=quarantine)
    assert list(items["item_id"]) == ["i1", "i5"] and list(items["in_stock"]) == [True, False]
    rejected = pd.read_csv(quarantine)
    assert list(rejected["row"]) == [3, 4, 5]
    assert list(rejected["field"]) == ["item_id", "price", "in_stock"]


HEADER = "user_id,item_id,category_id,behavior,timestamp\n"
ROWS = "".join(f"u{i},i{i},c1,view,1511600000\n" for i in range(50))


def _gzip_half(path):
    import gzip

    data = gzip.compress((HEADER + ROWS).encode())
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("a" * 2_000_000 + "\n" + ROWS), "line 1: longer than 1,048,576 characters"),
    (lambda p: p.write_text("user_id,item_id,item_id,category_id,behavior,timestamp\nu,i,j,c,view,1511600000\n"),
     "line 1: column 'item_id' appears more than once"),
    (_gzip_half, "is compressed"),
    (lambda p: p.write_bytes((HEADER + ROWS).encode("utf-16")), "is UTF-16"),
    (lambda p: p.write_text(HEADER + ROWS[:30] + 'u9,"i9,c1,view,1511600000\n' + ROWS),
     "line 3: a quote opens a field that runs on to line 53"),
    (lambda p: p.symlink_to(p), "is a broken or looping symbolic link"),
], ids=["long-header", "duplicate-column", "truncated-gzip", "utf16", "stray-quote", "symlink-loop"])
def test_odd_files_get_one_line_naming_the_file_and_line(tmp_path, make, message):
    """Before: tracebacks (long header, duplicate column, link loop), a misleading "required fields missing"
    (gzip, UTF-16), and 2,860 lines folded silently into one quarantined row (stray quote)."""
    path = tmp_path / "events.csv"
    make(path)
    with pytest.raises(DataFileError, match=re.escape(message)) as error:
        load_events(path, "events")
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_a_nul_byte_is_quarantined_with_its_line(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(HEADER + "u1,i\x001,c1,view,1511600000\n" + ROWS)
    log = load_events(path, "events", quarantine_path=tmp_path / "q.csv")
    s = log.summary
    assert (s.rows_read, s.rows_accepted, s.rows_quarantined) == (51, 50, 1) and s.is_balanced()
    rejected = pd.read_csv(tmp_path / "q.csv")
    assert rejected["row"].tolist() == [2] and rejected["reason"].tolist() == ["NUL byte in a field"]
    assert rejected["raw"].tolist() == ["u1,i\\x001,c1,view,1511600000"]


def test_s3rec_item_attributes_give_category_and_brand_when_the_item_file_is_absent(tmp_path):
    """An S3-Rec release without RecBole's `.item` file: `*_item2attributes.json` (brand first when kept, then
    categories top to leaf) becomes each item's leaf category and brand; a broken entry is quarantined and
    counted; the summary says which item metadata the data had."""
    folder = tmp_path / "toys"
    folder.mkdir()
    rows = ["user_id\titem_id\ttimestamp\treviewerID\tasin"]
    rows += [f"{u}\t{i}\t{1_400_000_000 + 86_400 * n}\tR{u}\tA{i}" for u, items in (("1", "123"), ("2", "3412"))
             for n, i in enumerate(items)]
    (folder / "Toys_with_time.tsv").write_text("\n".join(rows) + "\n")
    # attribute 9 is a brand (only ever first); 1 is a top category, first only where the brand was dropped
    (folder / "Toys_item2attributes.json").write_text(
        '{"1": [9, 1, 2], "2": [1, 3], "3": [9, 1, 3], "4": "oops"}')
    (folder / "Toys_attrid2name.json").write_text('{"1": "Games", "2": "Puzzles", "3": "Dice", "9": "Acme"}')
    log = load_events(folder, "amazon")
    items = log.events.drop_duplicates("item_id").set_index("item_id")
    assert items.loc["1", "category_id"] == "Puzzles" and items.loc["1", "brand"] == "Acme"
    assert items.loc["2", "category_id"] == "Dice" and items.loc["2", "brand"] == ""
    assert items.loc["4", "category_id"] == "unknown"  # its entry was quarantined
    side = log.summary.side_files[0]
    assert (side.rows_read, side.rows_accepted, side.rows_quarantined) == (4, 3, 1)
    assert log.summary.is_balanced()
    assert log.summary.item_metadata == {"category": 0.75, "brand": 0.5, "price": 0.0, "title": 0.0}
    assert log.summary.metadata_line() == "item metadata: category 75%, brand 50%, price 0%, title 0% of items"
