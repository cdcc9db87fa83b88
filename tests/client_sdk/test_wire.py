"""Wire codec: round trips and every way a payload can be bad."""

import json
import pickle
import struct

import numpy as np
import pytest
import safetensors.torch
import torch

from client_sdk import protocol, wire


def _header(**kw):
    base = dict(job_id="ftjob-abc", step=3, kind="step", extra={"loss": "0.5"})
    base.update(kw)
    return wire.WireHeader(**base)


def _raw(entries: dict, data: bytes = b"") -> bytes:
    head = json.dumps(entries).encode()
    return struct.pack("<Q", len(head)) + head + data


META = {"schema": "privtune.wire", "schema_version": "1", "job_id": "j", "step": "1", "kind": "step"}


@pytest.mark.parametrize("float_dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_torch(float_dtype):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.uint8)
    data = wire.encode({"hidden": hidden, "attention_mask": mask}, _header(), float_dtype=float_dtype)
    header, tensors = wire.decode(data)
    assert header == _header()
    assert tensors["attention_mask"].dtype == torch.uint8
    assert torch.equal(tensors["attention_mask"], mask)
    tol = {"float32": 0, "float16": 1e-2, "bfloat16": 5e-2}[float_dtype]
    assert torch.allclose(tensors["hidden"], hidden, atol=tol * 4, rtol=tol)
    # Plain safetensors: the reference reader opens it too.
    assert set(safetensors.torch.load(data)) == {"hidden", "attention_mask"}


def test_round_trip_numpy_and_wire_size():
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    data = wire.encode({"hidden": arr}, _header())
    header, infos = wire.inspect(data)
    assert infos["hidden"].dtype == "F16" and infos["hidden"].shape == (2, 3, 4)
    assert len(data) - arr.size * 2 < 400  # header overhead is small
    _, tensors = wire.decode(data)
    assert np.array_equal(tensors["hidden"].numpy(), arr)


def test_inspect_needs_no_torch():
    import subprocess
    import sys

    code = "import client_sdk.wire, client_sdk.protocol, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_truncated_bytes_rejected():
    data = wire.encode({"hidden": torch.ones(2, 3)}, _header())
    for cut in (0, 4, 12, len(data) - 1):
        with pytest.raises(wire.TruncatedPayload):
            wire.inspect(data[:cut])


def test_pickle_and_torch_save_rejected():
    with pytest.raises(wire.NotSafetensors, match="pickle"):
        wire.inspect(pickle.dumps({"hidden": [1.0, 2.0]}))
    import io

    buf = io.BytesIO()
    torch.save({"hidden": torch.ones(2)}, buf)
    with pytest.raises(wire.NotSafetensors, match="zip"):
        wire.inspect(buf.getvalue())


def test_huge_declared_shape_rejected_before_reading():
    entries = {"__metadata__": META, "hidden": {"dtype": "F16", "shape": [10**9, 10**9, 384], "data_offsets": [0, 8]}}
    with pytest.raises(wire.SizeLimitExceeded, match="declares"):
        wire.inspect(_raw(entries, b"\0" * 8))


def test_offsets_not_matching_shape_rejected():
    entries = {"__metadata__": META, "hidden": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 4]}}
    with pytest.raises(wire.ShapeRejected):
        wire.inspect(_raw(entries, b"\0" * 4))


def test_gap_and_trailing_bytes_rejected():
    entries = {"__metadata__": META, "a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}
    with pytest.raises(wire.NotSafetensors, match="gap"):
        wire.inspect(_raw(entries, b"\0" * 4))
    entries = {"__metadata__": META, "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}
    with pytest.raises(wire.NotSafetensors, match="trailing"):
        wire.inspect(_raw(entries, b"\0" * 3))


@pytest.mark.parametrize("dtype, error", [("F64", wire.DtypeRejected), ("X99", wire.DtypeRejected)])
def test_wrong_dtype_rejected(dtype, error):
    entries = {"__metadata__": META, "hidden": {"dtype": dtype, "shape": [1], "data_offsets": [0, 8]}}
    with pytest.raises(error):
        wire.inspect(_raw(entries, b"\0" * 8))


def test_metadata_required_and_versioned():
    with pytest.raises(wire.SchemaError, match="__metadata__"):
        wire.inspect(_raw({}))
    with pytest.raises(wire.SchemaError, match="schema version"):
        wire.inspect(_raw({"__metadata__": {**META, "schema_version": "9"}}))
    with pytest.raises(wire.SchemaError, match="kind"):
        wire.inspect(_raw({"__metadata__": {**META, "kind": "exec"}}))
    with pytest.raises(wire.SchemaError, match="job_id"):
        wire.inspect(_raw({"__metadata__": {k: v for k, v in META.items() if k != "job_id"}}))


def test_size_limits():
    limits = wire.WireLimits(max_payload_bytes=1024)
    with pytest.raises(wire.SizeLimitExceeded, match="payload is"):
        wire.inspect(wire.encode({"hidden": torch.ones(1024)}, _header()), limits)
    many = {f"t{i}": torch.ones(1) for i in range(17)}
    with pytest.raises(wire.SizeLimitExceeded, match="tensors"):
        wire.inspect(wire.encode(many, _header()))


def test_non_finite_rejected_by_decode():
    bad = torch.ones(2, 3)
    bad[1, 2] = float("nan")
    data = wire.encode({"hidden": bad}, _header(), float_dtype="float32")
    wire.inspect(data)  # the header is fine
    with pytest.raises(wire.NonFiniteTensor):
        wire.decode(data)
    inf = wire.encode({"hidden": torch.full((2,), 1e6)}, _header())  # overflows float16 to inf
    with pytest.raises(wire.NonFiniteTensor):
        wire.decode(inf)


def test_step_specs_check_names_dtypes_and_shapes():
    shape = protocol.StepShape(hidden_size=8, task="classification", num_labels=2, max_batch_size=4, max_tokens=16)
    good = wire.encode(
        {"hidden": torch.ones(2, 5, 8), "attention_mask": torch.ones(2, 5, dtype=torch.int64)}, _header()
    )
    _, infos = wire.inspect(good)
    wire.check_specs(infos, shape.activation_specs())
    shape.check_sizes(infos["hidden"].shape, infos["attention_mask"].shape)  # fits: no error

    wrong_d = wire.encode({"hidden": torch.ones(2, 5, 7), "attention_mask": torch.ones(2, 5)}, _header())
    with pytest.raises(wire.ShapeRejected, match="hidden"):
        wire.check_specs(wire.inspect(wrong_d)[1], shape.activation_specs())
    missing = wire.encode({"hidden": torch.ones(2, 5, 8)}, _header())
    with pytest.raises(wire.ShapeRejected, match="lacks"):
        wire.check_specs(wire.inspect(missing)[1], shape.activation_specs())
    with pytest.raises(wire.ShapeRejected, match="batch size") as caught:
        shape.check_sizes((9, 5, 8), (9, 5))
    assert caught.value.param == "hidden"
    with pytest.raises(wire.ShapeRejected) as caught:
        shape.check_sizes((2, 5, 8), (2, 4))
    assert caught.value.param == "attention_mask"


def test_a_header_length_that_starts_like_a_pickle_marker_is_still_safetensors():
    """A 640-byte header is the length bytes 80 02 ..., the first two bytes of a pickle: not a pickle."""
    import torch

    from client_sdk import wire

    for pad in range(0, 1400):  # some header length hits 0x80 0x02..0x05 in its first two bytes
        header = wire.WireHeader("ftjob-x", 1, "step", extra={"note": "y" * pad})
        payload = wire.encode({"hidden": torch.zeros(1, 1, 4)}, header)
        if payload[0] == 0x80 and 2 <= payload[1] <= 5:
            break
    else:
        raise AssertionError("no header length with a pickle-like prefix was produced")
    assert wire.inspect(payload)[0].job_id == header.job_id
    assert wire.decode(payload)[0].job_id == header.job_id


def _raw_text(header: str, data: bytes = b"") -> bytes:
    head = header.encode()
    return struct.pack("<Q", len(head)) + head + data


NESTED = "[" * 5000 + "]" * 5000  # deeper than the interpreter's recursion limit


def _with_meta(rest: str) -> str:
    """A header text: the valid metadata, then ``rest`` (raw JSON members)."""
    return '{"__metadata__": ' + json.dumps(META) + ", " + rest + "}"


def _entry(shape: str, offsets: str = "[0, 4]") -> str:
    return _with_meta('"t": {"dtype": "F32", "shape": ' + shape + ', "data_offsets": ' + offsets + "}")


HOSTILE_HEADERS = {
    "nested header": NESTED,
    "nested tensor entry": _entry(NESTED),
    "nested just past the limit": _with_meta('"x": ' + "[" * 8 + "]" * 8),
    "huge integer offset": _entry("[1]", "[0, " + "9" * 5000 + "]"),
    "huge integer shape": _entry("[" + "1" * 25 + "]"),
    "NaN": _with_meta('"t": NaN'),
}


@pytest.mark.parametrize("header", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS.keys())
def test_nested_or_huge_integer_headers_are_wire_errors(header):
    """Every parser escape (RecursionError, Python's integer digit limit, NaN) is a 400-class WireError."""
    from service.errors import wire_status

    with pytest.raises(wire.NotSafetensors) as err:
        wire.inspect(_raw_text(header, b"\0" * 4))
    assert wire_status(err.value) == 400


@pytest.mark.parametrize(
    "meta",
    [
        {**META, "step": "9" * 5000},
        {**META, "q8": "[" * 5000 + "]" * 5000},
        {**META, "q8": '{"t": %s}' % ("1" * 5000)},
        {**META, "q8": '{"t": {"a": 1}}'},
    ],
    ids=["huge step", "nested q8", "huge q8 block", "q8 nested object"],
)
def test_hostile_metadata_values_are_schema_errors(meta):
    with pytest.raises(wire.SchemaError):
        wire.inspect(_raw({"__metadata__": meta}))


def test_strings_with_brackets_do_not_count_as_nesting():
    """A metadata value may hold brackets (the q8 key holds JSON text): only structure counts."""
    tensors = {"hidden": torch.ones(2, 64)}
    payload = wire.encode(tensors, _header(extra={"note": '[[[[[[[[[[[[{{{{{{{{\\"]'}), float_dtype="q8")
    header, infos = wire.inspect(payload)
    assert header.extra["note"].startswith("[[[[") and infos["hidden"].dtype == "Q8"


def test_load_json_bounds():
    assert wire.load_json(b'{"a": [1, -20, 1.5]}') == {"a": [1, -20, 1.5]}
    with pytest.raises(wire.SchemaError, match="deeper than 2"):
        wire.load_json("[[[1]]]", error=wire.SchemaError, max_depth=2)
    with pytest.raises(wire.NotSafetensors, match="UTF-8"):
        wire.load_json(b"\xff")
