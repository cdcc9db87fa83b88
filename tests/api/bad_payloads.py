"""A corpus of malformed wire payloads, built by mutating valid ones (``client_sdk.wire``): every case
is ``(name, bytes)``. Used by ``tests/api/test_bad_input.py`` for the step routes and the file upload."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator

import numpy as np


def raw(entries: dict, data: bytes = b"") -> bytes:
    """A safetensors-shaped payload with ``entries`` as its JSON header, written by hand."""
    head = json.dumps(entries).encode()
    return struct.pack("<Q", len(head)) + head + data


def split(payload: bytes) -> tuple[int, dict, bytes]:
    """(header length, header, data) of a valid payload."""
    (n,) = struct.unpack("<Q", payload[:8])
    return n, json.loads(payload[8 : 8 + n]), payload[8 + n :]


def structural(valid: bytes) -> Iterator[tuple[str, bytes]]:
    """Malformed variants of the valid payload ``valid`` that no parser may accept."""
    n, head, data = split(valid)
    meta = head["__metadata__"]
    names = [k for k in head if k != "__metadata__"]
    first = names[0]
    for label, cut in (("0", 0), ("7", 7), ("8", 8), ("header-cut", 8 + n // 2), ("data-cut", len(valid) - 1)):
        yield f"truncated-{label}", valid[:cut]
    for protocol in range(2, 6):
        yield f"pickle-p{protocol}", pickle.dumps({"hidden": np.zeros((2, 5, 384), np.float32)}, protocol=protocol)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:  # the layout of torch.save
        z.writestr("archive/data.pkl", pickle.dumps({"hidden": [0.0]}))
        z.writestr("archive/version", "3\n")
    yield "zip-torch-save", archive.getvalue()
    deep = b"[" * 10_000 + b"]" * 10_000
    yield "header-nested-10000", struct.pack("<Q", len(deep)) + deep + data
    deep_obj = ('{"__metadata__": ' + json.dumps(meta)[:-1] + ', "x": ' + "[" * 10_000 + "]" * 10_000 + "}}").encode()
    yield "metadata-nested-10000", struct.pack("<Q", len(deep_obj)) + deep_obj + data
    big = json.dumps(head).replace(f'"{first}": {{', f'"{first}": {{"big": {"9" * 10_000}, ', 1).encode()
    yield "header-10000-digit-int", struct.pack("<Q", len(big)) + big + data
    start, end = head[first]["data_offsets"]
    text = json.dumps(head)
    huge = text.replace(json.dumps({"data_offsets": [start, end]})[1:-1], f'"data_offsets": [0, {"9" * 10_000}]', 1)
    yield "offset-10000-digit-int", struct.pack("<Q", len(huge)) + huge.encode() + data
    dup_text = json.dumps(head)
    entry = json.dumps({first: head[first]})[1:-1]
    dup = (dup_text[:-1] + ", " + entry + "}").encode()  # the same tensor name twice
    yield "duplicate-tensor-name", struct.pack("<Q", len(dup)) + dup + data
    if len(names) > 1:
        second = names[1]
        overlap = dict(head)
        overlap[second] = {**head[second], "data_offsets": head[first]["data_offsets"]}
        yield "overlapping-offsets", raw(overlap, data)
    out_of_range = dict(head)
    out_of_range[first] = {**head[first], "data_offsets": [start + len(data), end + len(data)]}
    yield "out-of-range-offsets", raw(out_of_range, data)
    backwards = dict(head)
    backwards[first] = {**head[first], "data_offsets": [end, start]}
    yield "reversed-offsets", raw(backwards, data)
    negative = dict(head)
    negative[first] = {**head[first], "data_offsets": [-8, end]}
    yield "negative-offset", raw(negative, data)
    yield "header-length-past-body", struct.pack("<Q", n + 1000) + valid[8:]
    yield "header-length-2**64-1", struct.pack("<Q", 2**64 - 1) + valid[8:]
    bad_dtype = dict(head)
    bad_dtype[first] = {**head[first], "dtype": "OBJECT"}
    yield "unknown-dtype", raw(bad_dtype, data)
    bad_shape = dict(head)
    bad_shape[first] = {**head[first], "shape": [-1, 5, 384]}
    yield "negative-dimension", raw(bad_shape, data)
    string_shape = dict(head)
    string_shape[first] = {**head[first], "shape": "2,5,384"}
    yield "shape-not-a-list", raw(string_shape, data)
    yield "header-is-a-list", struct.pack("<Q", 2) + b"[]" + data
    yield "header-not-utf8", struct.pack("<Q", 4) + b"\xff\xfe{}" + data
    no_meta = {k: v for k, v in head.items() if k != "__metadata__"}
    yield "no-metadata", raw(no_meta, data)
    yield "metadata-not-an-object", raw({**head, "__metadata__": [meta]}, data)


def tensors(make: Callable[..., bytes]) -> Iterator[tuple[str, bytes]]:
    """Valid wire framing with bad tensor contents or shapes: ``make(**tensors)`` encodes them."""
    h = np.zeros((2, 5, 384), np.float32)
    for label, value in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
        bad = h.copy()
        bad[0, 0, 0] = value
        yield f"hidden-{label}", make(hidden=bad)
    yield "hidden-int32", make(hidden=h.astype(np.int32))
    yield "hidden-bool", make(hidden=h.astype(bool))
    yield "hidden-2d", make(hidden=h[:, 0, :])
    yield "hidden-4d", make(hidden=h[None])
    yield "hidden-wrong-width", make(hidden=h[:, :, :100])
    yield "hidden-empty", make(hidden=np.zeros((0, 5, 384), np.float32))
    yield "mask-wrong-shape", make(attention_mask=np.ones((2, 4), np.uint8))
    yield "mask-float", make(attention_mask=np.ones((2, 5), np.float32))
