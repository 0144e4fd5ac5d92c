"""A message's arrays packed into one flat array per record: a model crosses Flower's transport as one object."""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

PACKED = "fedprofile.packed"  # the one array of a packed ArrayRecord: its arrays' bytes, one after another
LAYOUT = "fedprofile.layout."  # + the record's name: a ConfigRecord of the arrays' names, dtypes and shapes
DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                    "uint64", "bool"})  # uint64: the secure sum's masked vectors


class PackingError(ValueError):
    """A packed record that does not unpack: the text says which record and why."""


def pack(content: RecordDict, memo: dict | None = None) -> None:
    """Replace each ArrayRecord of `content` by one uint8 array of its arrays' bytes, with its layout beside it.
    Flower 1.42 moves every array as a request of its own; a model of dozens of tensors took seconds a message.
    The records themselves are left as they were (a strategy may keep them); `memo` packs a record shared by many
    messages once."""
    memo = {} if memo is None else memo
    for name, record in list(content.array_records.items()):
        if not list(record.keys()) or list(record.keys()) == [PACKED]:
            continue
        if id(record) not in memo:
            arrays = {key: record[key].numpy() for key in record.keys()}
            flat = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays.values()])
            memo[id(record)] = (record, ArrayRecord({PACKED: Array(flat)}), ConfigRecord({
                "names": list(arrays), "dtypes": [str(a.dtype) for a in arrays.values()],
                "ndims": [a.ndim for a in arrays.values()], "dims": [int(d) for a in arrays.values() for d in a.shape]}))
        _, packed, layout = memo[id(record)]  # the record is held in the memo: its id cannot be reused meanwhile
        content[name] = packed
        content[LAYOUT + name] = layout


def unpack(content: RecordDict) -> bool:
    """Undo `pack` in place; returns whether anything was packed. Every layout is checked against the bytes it
    describes (known dtypes, non-negative shapes, sizes that add up exactly) before any array is made."""
    layouts = [key for key in content.config_records if key.startswith(LAYOUT)]
    for key in layouts:
        name = key[len(LAYOUT):]
        record = content.array_records.get(name)
        if record is None or list(record.keys()) != [PACKED]:
            raise PackingError(f"record {name!r} has a layout but is not one packed array")
        content[name] = ArrayRecord(_arrays(name, record[PACKED].numpy(), content.config_records[key]))
        del content[key]
    stray = [n for n, r in content.array_records.items() if PACKED in r.keys()]
    if stray:
        raise PackingError(f"record {stray[0]!r} is packed but has no layout")
    return bool(layouts)


def _arrays(name: str, raw: np.ndarray, layout: ConfigRecord) -> dict[str, Array]:
    try:
        names, dtypes = [str(n) for n in layout["names"]], [str(d) for d in layout["dtypes"]]
        ndims, dims = [int(n) for n in layout["ndims"]], [int(d) for d in layout["dims"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise PackingError(f"record {name!r}: unreadable layout ({exc})") from None
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise PackingError(f"record {name!r}: the packed array must be flat bytes, got {raw.dtype} {raw.shape}")
    if not (len(names) == len(dtypes) == len(ndims)) or len(set(names)) != len(names):
        raise PackingError(f"record {name!r}: names, dtypes and shapes do not line up")
    if any(n < 0 for n in ndims) or sum(ndims) != len(dims) or any(d < 0 for d in dims):
        raise PackingError(f"record {name!r}: shapes are not valid")
    unknown = sorted(set(dtypes) - DTYPES)
    if unknown:
        raise PackingError(f"record {name!r}: dtype {unknown[0]!r} is not allowed")
    out, offset, at = {}, 0, 0
    for key, dtype, ndim in zip(names, dtypes, ndims):
        shape = tuple(dims[at:at + ndim])
        at += ndim
        size = math.prod(shape) * np.dtype(dtype).itemsize
        if offset + size > raw.size:
            raise PackingError(f"record {name!r}: the layout describes more bytes than arrived")
        out[key] = Array(raw[offset:offset + size].view(dtype).reshape(shape).copy())
        offset += size
    if offset != raw.size:
        raise PackingError(f"record {name!r}: {raw.size - offset} bytes are not described by the layout")
    return out
