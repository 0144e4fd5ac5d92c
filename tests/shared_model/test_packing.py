"""A model's arrays cross the transport as one flat array and come back exactly; a bad layout is refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from shared_model.packing import LAYOUT, PACKED, PackingError, pack, unpack


def _content():
    rng = np.random.default_rng(0)
    arrays = {"embed.weight": rng.normal(size=(7, 3)).astype(np.float32), "step": np.array(5, dtype=np.int64),
              "mask": np.array([True, False]), "empty": np.zeros((0, 4), np.float16)}
    return arrays, RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                               "config": ConfigRecord({"server-round": 3})})


def test_a_packed_record_is_one_array_and_unpacks_exactly():
    arrays, content = _content()
    pack(content)
    assert list(content.array_records["arrays"].keys()) == [PACKED]
    assert unpack(content) is True
    back = content.array_records["arrays"]
    assert list(back.keys()) == list(arrays)  # names and their order
    for key, value in arrays.items():
        got = back[key].numpy()
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value)
    assert list(content.config_records) == ["config"]  # the layout is gone again
    assert unpack(content) is False  # nothing packed: left as it is


@pytest.mark.parametrize("change, match", [
    (lambda c: c[LAYOUT + "arrays"].__setitem__("dtypes", ["object", "int64", "bool", "float16"]), "not allowed"),
    (lambda c: c[LAYOUT + "arrays"].__setitem__("dims", [7, 4, 2, 0, 4]), "more bytes|not described"),
    (lambda c: c[LAYOUT + "arrays"].__setitem__("dims", [7, -3, 2, 0, 4]), "not valid"),
    (lambda c: c[LAYOUT + "arrays"].__setitem__("names", ["a", "a", "b", "c"]), "line up"),
    (lambda c: c.__delitem__(LAYOUT + "arrays"), "no layout"),
    (lambda c: c.__setitem__("arrays", ArrayRecord({PACKED: Array(np.zeros(3, np.float32))})), "flat bytes"),
])
def test_a_layout_that_does_not_fit_its_bytes_is_refused(change, match):
    _, content = _content()
    pack(content)
    change(content)
    with pytest.raises(PackingError, match=match):
        unpack(content)


def test_a_record_shared_by_many_messages_is_packed_once_and_left_as_it_was():
    arrays, first = _content()
    shared = first.array_records["arrays"]
    second = RecordDict({"arrays": shared})
    memo = {}
    pack(first, memo)
    pack(second, memo)
    assert first.array_records["arrays"] is second.array_records["arrays"]  # one flat copy for both
    assert list(shared.keys()) == list(arrays)  # a strategy keeping the record still has its arrays
    unpack(second)
    assert np.array_equal(second.array_records["arrays"]["embed.weight"].numpy(), arrays["embed.weight"])
