"""The q8 wire encoding: int8 codes plus one float16 scale per 64 values along the last dimension."""

import json
import math
import struct

import numpy as np
import pytest
import safetensors.torch
import torch

from client_sdk import privatized_file, protocol, wire
from service.errors import wire_status

SUFFIX = wire.Q8_SCALE_SUFFIX


def _header(**kw):
    base = dict(job_id="ftjob-abc", step=3, kind="step", extra={"loss": "0.5"})
    base.update(kw)
    return wire.WireHeader(**base)


def _entries(data: bytes) -> tuple[dict, bytes]:
    """A payload's JSON header and data buffer (to tamper with)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _pack(entries: dict, buffer: bytes) -> bytes:
    head = json.dumps(entries).encode()
    return struct.pack("<Q", len(head)) + head + buffer


def _block_bound(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """absmax / 254 of each value's block, shaped like ``x`` (*lead, d)."""
    d = x.shape[-1]
    nb = -(-d // block)
    padded = torch.nn.functional.pad(x.double(), (0, nb * block - d)).reshape(*x.shape[:-1], nb, block)
    bound = padded.abs().amax(-1) / 254  # (*lead, nb)
    return bound.repeat_interleave(block, -1)[..., :d]


@pytest.mark.parametrize("shape", [(2, 5, 384), (3, 7, 576), (2, 3, 100), (4, 1), (130,), (2, 0, 64), (3, 0)])
def test_round_trip_error_within_block_absmax_over_254(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g) * torch.logspace(-3, 2, shape[-1]) if shape[-1] else torch.randn(*shape)
    _, out = wire.decode(wire.encode({"hidden": x}, _header(), float_dtype="q8"))
    y = out["hidden"]
    assert y.dtype == torch.float32 and y.shape == x.shape
    err = (y.double() - x.double()).abs()
    assert bool((err <= _block_bound(x) * (1 + 1e-6)).all())  # 1e-6: the float32 arithmetic itself


def test_encoding_is_deterministic_and_round_to_nearest():
    x = torch.tensor([[127.0, 63.4, 63.6, -0.49, -0.51, 0.0] + [0.0] * 58])  # absmax 127: scale exactly 1
    data = wire.encode({"hidden": x}, _header(), float_dtype="q8")
    assert data == wire.encode({"hidden": x.clone()}, _header(), float_dtype="q8")
    _, out = wire.decode(data)
    assert out["hidden"][0, :6].tolist() == [127.0, 63.0, 64.0, -0.0, -1.0, 0.0]


def test_bytes_per_tensor_about_half_of_float16():
    x = torch.randn(32, 64, 576, generator=torch.Generator().manual_seed(0))
    q8 = wire.encode({"hidden": x}, _header(), float_dtype="q8")
    f16 = wire.encode({"hidden": x}, _header(), float_dtype="float16")
    _, infos = wire.inspect(q8)
    assert infos["hidden"].nbytes == x.numel() + x.numel() // 64 * 2  # int8 codes + one F16 per 64 values
    assert len(q8) / len(f16) <= 0.55


def test_inspect_reports_logical_shape_and_dtype():
    hidden = torch.randn(2, 5, 100)
    mask = torch.ones(2, 5, dtype=torch.uint8)
    data = wire.encode({"hidden": hidden, "attention_mask": mask}, _header(), float_dtype="q8")
    header, infos = wire.inspect(data)
    assert header == _header()  # the q8 metadata is not part of extra
    assert set(infos) == {"hidden", "attention_mask"}
    info = infos["hidden"]
    assert (info.dtype, info.shape, info.numel, info.block) == ("Q8", (2, 5, 100), 1000, 64)
    assert info.scales.shape == (2, 5, 2) and info.nbytes == 1000 + 2 * 5 * 2 * 2
    assert infos["attention_mask"].dtype == "U8"
    assert "Q8" in wire.FLOAT_DTYPES and "Q8" in protocol.WIRE_FLOAT_DTYPES
    # Plain safetensors: the reference reader sees the two entries.
    stored = safetensors.torch.load(data)
    assert stored["hidden"].dtype == torch.int8 and stored["hidden" + SUFFIX].dtype == torch.float16


def test_non_float_tensors_untouched_and_scalars_as_float16():
    mask = torch.tensor([[1, 1, 0]], dtype=torch.uint8)
    ids = torch.tensor([[5, 6, 7]], dtype=torch.int64)
    flags = torch.tensor([True, False])
    data = wire.encode(
        {"attention_mask": mask, "ids": ids, "flags": flags, "t": torch.tensor(0.5)}, _header(), float_dtype="q8"
    )
    _, infos = wire.inspect(data)
    assert {n: i.dtype for n, i in infos.items()} == {"attention_mask": "U8", "ids": "I64", "flags": "BOOL", "t": "F16"}
    _, out = wire.decode(data)
    assert (
        torch.equal(out["attention_mask"], mask) and torch.equal(out["ids"], ids) and torch.equal(out["flags"], flags)
    )
    assert float(out["t"]) == 0.5
    assert wire.encode({"attention_mask": mask}, _header(), float_dtype="q8") == wire.encode(
        {"attention_mask": mask}, _header()
    )


def test_numpy_bfloat16_and_float64_inputs():
    arr = np.linspace(-3, 3, 2 * 3 * 70, dtype=np.float64).reshape(2, 3, 70)
    for x in (arr, torch.from_numpy(arr).bfloat16(), torch.from_numpy(arr)):
        _, out = wire.decode(wire.encode({"hidden": x}, _header(), float_dtype="q8"))
        ref = torch.as_tensor(x).float() if isinstance(x, torch.Tensor) else torch.from_numpy(arr).float()
        assert bool(((out["hidden"].double() - ref.double()).abs() <= _block_bound(ref) * (1 + 1e-6)).all())


def test_zero_and_constant_blocks():
    x = torch.zeros(2, 3, 130)
    x[1, 2, :64] = -2.5  # a constant block
    x[1, 2, 64:] = 1e-9  # below float16: decodes to 0 (as float16 would)
    _, out = wire.decode(wire.encode({"hidden": x}, _header(), float_dtype="q8"))
    y = out["hidden"]
    assert bool(torch.isfinite(y).all())
    assert bool((y[0] == 0).all()) and bool((y[1, 2, :64] == -2.5).all())
    assert float(y[1, 2, 64:].abs().max()) <= 1e-9


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 7e4])
def test_non_finite_or_out_of_range_input_rejected_by_encode(bad):
    x = torch.ones(2, 3, 64)
    x[1, 2, 5] = bad
    with pytest.raises(wire.NonFiniteTensor) as caught:
        wire.encode({"attention_mask": torch.ones(2, 3), "hidden": x}, _header(), float_dtype="q8")
    assert caught.value.param == "hidden"


def test_check_request_accepts_a_q8_step():
    shape = protocol.StepShape(hidden_size=576, task="generation", num_labels=None, max_batch_size=4, max_tokens=16)
    tensors = {
        protocol.HIDDEN: torch.randn(2, 5, 576),
        protocol.ATTENTION_MASK: torch.ones(2, 5, dtype=torch.int64),
        protocol.GRAD_OUTPUT: torch.randn(2, 5, 576) * 1e-4,
    }
    header, infos = wire.inspect(wire.encode(tensors, _header(extra={}), float_dtype="q8"))
    request = protocol.check_request(header, infos, shape, "ftjob-abc")
    assert (request.kind, request.has_gradient) == ("step", True)
    wrong = wire.encode({**tensors, protocol.HIDDEN: torch.randn(2, 5, 575)}, _header(extra={}), float_dtype="q8")
    with pytest.raises(wire.ShapeRejected) as caught:
        protocol.check_request(*wire.inspect(wrong), shape, "ftjob-abc")
    assert caught.value.param == protocol.HIDDEN


def test_upload_check_accepts_a_q8_hidden():
    manifest = privatized_file.Manifest("bert-tiny", 2, 2, ("a", "b"), "none", {})
    tensors = {"hidden": torch.randn(3, 4, 8), "labels": torch.tensor([0, 1, 1])}
    data = wire.encode(
        tensors, wire.WireHeader("upload", 0, privatized_file.KIND, extra=manifest.to_metadata()), float_dtype="q8"
    )
    assert privatized_file.check(*wire.inspect(data))[1:] == (3, 4, 8)


def test_size_limits_apply_to_stored_bytes():
    x = torch.randn(4, 1024)  # 4096 code bytes + 128 scale bytes
    data = wire.encode({"hidden": x}, _header(), float_dtype="q8")
    wire.inspect(data, wire.WireLimits(max_payload_bytes=len(data)))  # fits: stored bytes, not 4 bytes per value
    with pytest.raises(wire.SizeLimitExceeded):
        wire.inspect(data, wire.WireLimits(max_payload_bytes=len(data) - 1))
    with pytest.raises(wire.SizeLimitExceeded, match="tensors"):  # two entries per q8 tensor
        wire.inspect(wire.encode({f"t{i}": torch.ones(2) for i in range(9)}, _header(), float_dtype="q8"))
    with pytest.raises(wire.DtypeRejected) as caught:  # a receiver that does not allow Q8
        wire.inspect(data, wire.WireLimits(allowed_dtypes=frozenset({"F16", "I64"})))
    assert caught.value.param == "hidden"


def _q8_payload() -> bytes:
    x = torch.randn(2, 3, 100, generator=torch.Generator().manual_seed(2))
    return wire.encode(
        {"hidden": x, "attention_mask": torch.ones(2, 3, dtype=torch.uint8)}, _header(), float_dtype="q8"
    )


def _retile(entries: dict, buffer: bytes, name: str, shape: list, dtype: str | None = None) -> bytes:
    """Give entry ``name`` a new shape (and dtype), resize its bytes and move the later entries."""
    sizes = {"I8": 1, "U8": 1, "F16": 2, "F32": 4}
    order = sorted((k for k in entries if k != "__metadata__"), key=lambda k: entries[k]["data_offsets"][0])
    out, offset = b"", 0
    for key in order:
        entry = entries[key]
        raw = buffer[entry["data_offsets"][0] : entry["data_offsets"][1]]
        if key == name:
            entry["dtype"] = dtype or entry["dtype"]
            raw = (raw * 4)[: math.prod(shape) * sizes[entry["dtype"]]]
            entry["shape"] = shape
        entry["data_offsets"] = [offset, offset + len(raw)]
        out, offset = out + raw, offset + len(raw)
    return _pack(entries, out)


def _tampered(change) -> bytes:
    entries, buffer = _entries(_q8_payload())
    return change(entries, buffer)


def _drop(entries, buffer, name):
    start, end = entries.pop(name)["data_offsets"]
    for entry in entries.values():
        if "data_offsets" in entry and entry["data_offsets"][0] >= end:
            entry["data_offsets"] = [o - (end - start) for o in entry["data_offsets"]]
    return _pack(entries, buffer[:start] + buffer[end:])


@pytest.mark.parametrize(
    ("change", "error", "param"),
    [
        # too few scales for the shape (a truncated scale entry, consistently declared)
        (lambda e, b: _retile(e, b, "hidden" + SUFFIX, [2, 3, 1]), wire.ShapeRejected, "hidden"),
        # scale bytes cut short (the scales last in the buffer)
        (lambda e, b: _drop(e, b, "attention_mask")[:-3], wire.TruncatedPayload, "hidden"),
        (lambda e, b: _retile(e, b, "hidden" + SUFFIX, [2, 3, 2], "F32"), wire.DtypeRejected, "hidden"),
        (lambda e, b: _drop(e, b, "hidden" + SUFFIX), wire.ShapeRejected, "hidden"),
        (lambda e, b: _drop(e, b, "hidden"), wire.ShapeRejected, "hidden"),
        # codes and scales of different leading shapes, or codes of the wrong size or dtype
        (lambda e, b: _retile(e, b, "hidden" + SUFFIX, [3, 2, 2]), wire.ShapeRejected, "hidden"),
        (lambda e, b: _retile(e, b, "hidden", [2, 3, 130]), wire.ShapeRejected, "hidden"),
        (lambda e, b: _retile(e, b, "hidden", [2, 3, 100], "U8"), wire.DtypeRejected, "hidden"),
        (lambda e, b: _retile(e, b, "hidden", [], None), wire.ShapeRejected, "hidden"),
        # a scale entry's byte range that does not match its shape
        (
            lambda e, b: _pack(
                {**e, "hidden" + SUFFIX: {**e["hidden" + SUFFIX], "shape": [2, 3, 3]}},
                b,
            ),
            wire.ShapeRejected,
            "hidden",
        ),
        # the metadata: not JSON, a bad block size, a reserved name
        (lambda e, b: _pack({**e, "__metadata__": {**e["__metadata__"], "q8": "{"}}, b), wire.SchemaError, "q8"),
        (
            lambda e, b: _pack({**e, "__metadata__": {**e["__metadata__"], "q8": '{"hidden": 0}'}}, b),
            wire.SchemaError,
            "hidden",
        ),
        # a reserved-suffix entry no q8 tensor owns
        (
            lambda e, b: _pack({**e, "__metadata__": {k: v for k, v in e["__metadata__"].items() if k != "q8"}}, b),
            wire.ShapeRejected,
            "hidden" + SUFFIX,
        ),
    ],
)
def test_malformed_q8_payloads_rejected_with_param(change, error, param):
    data = _tampered(change)
    with pytest.raises(error) as caught:
        wire.decode(data)
    assert caught.value.param == param
    assert wire_status(caught.value) in (400, 413, 422)


def test_non_finite_scales_rejected_by_decode():
    entries, buffer = _entries(_q8_payload())
    start, _ = entries["hidden" + SUFFIX]["data_offsets"]
    bad = buffer[:start] + np.float16("inf").tobytes() + buffer[start + 2 :]
    data = _pack(entries, bad)
    wire.inspect(data)  # the header is fine
    with pytest.raises(wire.NonFiniteTensor) as caught:
        wire.decode(data)
    assert caught.value.param == "hidden"
    _, out = wire.decode(data, check_finite=False)  # the caller's choice, as for other floats
    assert not bool(torch.isfinite(out["hidden"]).all())


def test_reserved_suffix_and_metadata_key():
    with pytest.raises(wire.ShapeRejected) as caught:
        wire.encode({"x" + SUFFIX: torch.ones(2, 2)}, _header())
    assert caught.value.param == "x" + SUFFIX
    with pytest.raises(wire.SchemaError, match="reserved"):
        _header(extra={"q8": "{}"})
    with pytest.raises(ValueError, match="float_dtype"):
        wire.encode({}, _header(), float_dtype="int8")
