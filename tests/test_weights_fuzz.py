"""Property-based fuzzing of the weight-file readers (hypothesis).

Property: whatever the bytes, `read_state_dict` returns numpy arrays or raises ModelFileError
naming the file: never another exception, never a hang (pytest-timeout), never more memory than
the file can back (bfloat16 widens to float32: at most 2x the file), and the arrays it returns
are the bytes the header points at. Files are generated structurally (valid layouts, then
mutated field by field and byte by byte) so that both the accepted and the refused paths run.
Each test is bounded to a few seconds; CI runs new random examples every time (no database).
"""

from __future__ import annotations

import io
import json
import math
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snrt.errors import ModelFileError
from snrt.weights_io import read_state_dict

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U8": 1, "BOOL": 1}
NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
      "I8": "i1", "U8": "u1", "BOOL": "?"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                               max_size=3),
    max_leaves=8)


def _read(data: bytes, suffix: str):
    """Write `data` to a temp file and read it; return (tensors or None, file size)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"fuzzed{suffix}"
        p.write_bytes(data)
        try:
            sd, _ = read_state_dict(p)
        except ModelFileError as e:
            assert "fuzzed" + suffix in str(e), f"error does not name the file: {e}"
            return None, len(data)
    for v in sd.values():
        assert isinstance(v, np.ndarray)
    assert sum(v.nbytes for v in sd.values()) <= 2 * len(data) + 64
    return sd, len(data)


@st.composite
def safetensors_layout(draw):
    """A valid safetensors header + data: tensors tiling the data section in order."""
    entries, pos = {}, 0
    for i in range(draw(st.integers(0, 4))):
        dt = draw(st.sampled_from(sorted(ITEMSIZE)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        n = math.prod(shape) * ITEMSIZE[dt]
        entries[f"t{i}"] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    data = bytearray(draw(st.binary(min_size=pos, max_size=pos)))
    for e in entries.values():  # mostly valid booleans, so the accepted path is exercised
        if e["dtype"] == "BOOL":
            b, end = e["data_offsets"]
            data[b:end] = bytes(x & 1 for x in data[b:end])
    header = dict(entries)
    if draw(st.booleans()):
        header["__metadata__"] = {"snrt.config": "{}"}
    return header, bytes(data)


FIELD_MUTATIONS = ["dtype", "shape", "data_offsets", "entry", "drop_field", "metadata",
                   "swap_offsets", "shift_offsets", "extra_entry"]


@given(layout=safetensors_layout(), mutations=st.lists(
    st.tuples(st.sampled_from(FIELD_MUTATIONS), st.integers(0, 7), json_values), max_size=3))
@FUZZ
@pytest.mark.timeout(120)
def test_safetensors_header_fuzz(layout, mutations):
    header, data = layout
    header = json.loads(json.dumps(header))
    names = [k for k in header if k != "__metadata__"]
    for kind, i, value in mutations:
        name = names[i % len(names)] if names else None
        if kind == "metadata":
            header["__metadata__"] = value
        elif kind == "extra_entry":
            header[f"x{i}"] = value
        elif name is None:
            continue
        elif kind == "entry":
            header[name] = value
        elif not isinstance(header[name], dict):
            continue
        elif kind == "drop_field":
            header[name].pop(["dtype", "shape", "data_offsets"][i % 3], None)
        elif kind == "swap_offsets" and isinstance(header[name].get("data_offsets"), list):
            header[name]["data_offsets"] = header[name]["data_offsets"][::-1]
        elif kind == "shift_offsets" and isinstance(header[name].get("data_offsets"), list):
            header[name]["data_offsets"] = [o + i - 3 if isinstance(o, int) else o
                                            for o in header[name]["data_offsets"]]
        else:
            header[name][kind] = value
    blob = json.dumps(header).encode()
    sd, _ = _read(struct.pack("<Q", len(blob)) + blob + data, ".safetensors")
    if sd is None:
        return
    # accepted: the arrays are exactly the bytes the header points at
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    assert set(sd) == set(entries)
    for k, e in entries.items():
        b, end = e["data_offsets"]
        chunk = data[b:end]
        if e["dtype"] == "BF16":
            want = (np.frombuffer(chunk, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            want = np.frombuffer(chunk, NP[e["dtype"]])
        want = want.reshape(e["shape"])
        if want.dtype.kind == "f":
            want = want.astype(np.float32)
        np.testing.assert_array_equal(sd[k], want)


@given(layout=safetensors_layout(), cut=st.integers(0, 1 << 16),
       length=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
       flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=4),
       tail=st.binary(max_size=16))
@FUZZ
@pytest.mark.timeout(120)
def test_safetensors_bytes_fuzz(layout, cut, length, flips, tail):
    """Byte-level damage: a lying length prefix, flipped bytes anywhere, truncation, junk."""
    header, data = layout
    blob = json.dumps(header).encode()
    raw = bytearray(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    for pos, x in flips:
        if raw:
            raw[pos % len(raw)] ^= x
    raw = raw[: len(raw) - cut % (len(raw) + 1)] if cut % 3 == 0 else raw + tail
    _read(bytes(raw), ".safetensors")


def _nested_brackets_header(depth: int) -> bytes:
    blob = b"[" * depth + b"]" * depth
    return struct.pack("<Q", len(blob)) + blob


@given(depth=st.integers(1, 200_000))
@settings(max_examples=25, deadline=None, database=None)
@pytest.mark.timeout(120)
def test_deeply_nested_headers_are_refused_not_crashed(depth):
    _read(_nested_brackets_header(depth), ".safetensors")


arrays = st.lists(
    st.tuples(st.sampled_from(["<f4", ">f4", "<f2", "<f8", "<i8", "|u1", "|b1", ">i2"]),
              st.lists(st.integers(0, 4), max_size=3), st.booleans()),
    max_size=3)


def _npz(specs, data_seed: int, compressed: bool) -> tuple[bytes, dict]:
    rng = np.random.default_rng(data_seed)
    out = {}
    for i, (dt, shape, fortran) in enumerate(specs):
        a = rng.integers(0, 2, shape).astype(dt) if dt == "|b1" else \
            (rng.standard_normal(shape) * 10).astype(dt)
        out[f"a{i}"] = np.asfortranarray(a) if fortran else a
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **out)
    return buf.getvalue(), out


@given(specs=arrays, seed=st.integers(0, 2**16), compressed=st.booleans(),
       flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=3),
       cut=st.integers(0, 1 << 12))
@FUZZ
@pytest.mark.timeout(120)
def test_npz_bytes_fuzz(specs, seed, compressed, flips, cut):
    raw, want = _npz(specs, seed, compressed)
    damaged = bytearray(raw)
    for pos, x in flips:
        damaged[pos % len(damaged)] ^= x
    if cut % 4 == 0:
        damaged = damaged[: len(damaged) - cut % (len(damaged) + 1)]
    sd, _ = _read(bytes(damaged), ".npz")
    if bytes(damaged) == raw:  # undamaged: read back exactly
        assert sd is not None and set(sd) == set(want)
        for k, a in want.items():
            np.testing.assert_array_equal(sd[k], a.astype(np.float32) if a.dtype.kind == "f"
                                          else a)


npy_header_values = st.fixed_dictionaries({
    "descr": st.one_of(st.sampled_from(["<f4", "|O", "<U3", ">i8", "|b1", "<c8", "V4"]),
                       json_values),
    "fortran_order": st.one_of(st.booleans(), json_values),
    "shape": st.one_of(st.tuples(st.integers(-2, 5), st.integers(-2, 1 << 40)),
                       st.lists(st.integers(0, 3), max_size=2).map(tuple), json_values),
})


@given(header=npy_header_values, data=st.binary(max_size=64), junk=st.booleans(),
       version=st.sampled_from([1, 2, 3, 9]))
@FUZZ
@pytest.mark.timeout(120)
def test_npy_header_fuzz(header, data, junk, version):
    """Hand-made .npy members with arbitrary header values (as numpy writes them: a repr)."""
    text = (repr(header)[:-1] + "!" if junk else repr(header)).encode("latin1", "replace")
    lb = struct.pack("<H" if version == 1 else "<I", len(text))
    member = b"\x93NUMPY" + bytes([version, 0]) + lb + text + data
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("w.npy", member)
    _read(buf.getvalue(), ".npz")
