"""Malformed weight files: every one is refused with ModelFileError naming the file.

Each case is built byte by byte here (not with snrt's writer), so a reader that trusts a field it
should check fails its case; the fuzz tests in test_weights_fuzz.py look for the cases not listed.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile

import numpy as np
import pytest

from snrt.errors import ModelFileError
from snrt.weights_io import read_state_dict


def st_bytes(header, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length, JSON header, data."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


def f32(name="w", shape=(4,), offsets=(0, 16)):
    return {name: {"dtype": "F32", "shape": list(shape), "data_offsets": list(offsets)}}


DATA16 = np.arange(4, dtype="<f4").tobytes()

SAFETENSORS_CASES = {
    "too short": b"\x01\x02\x03",
    "header length past the end": st_bytes(f32(), DATA16, length=10_000),
    "header length 2**63": st_bytes(f32(), DATA16, length=1 << 63),
    "header not utf-8": st_bytes(b"\xff\xfe{}", DATA16),
    "header not json": st_bytes(b"{'w': 1}", DATA16),
    "header NaN constant": st_bytes(b'{"w": NaN}', DATA16),
    "header a list": st_bytes([1, 2], DATA16),
    "header nested 50k deep": st_bytes(b"[" * 50_000, DATA16),
    "duplicate tensor name": st_bytes(
        b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
        b'"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', DATA16),
    "metadata a list": st_bytes({"__metadata__": [1], **f32()}, DATA16),
    "metadata values not strings": st_bytes({"__metadata__": {"a": 1}, **f32()}, DATA16),
    "entry a number": st_bytes({"w": 3}, DATA16),
    "entry without dtype": st_bytes({"w": {"shape": [4], "data_offsets": [0, 16]}}, DATA16),
    "dtype unknown": st_bytes({"w": {"dtype": "F8_E4M3", "shape": [16],
                                     "data_offsets": [0, 16]}}, DATA16),
    "dtype a number": st_bytes({"w": {"dtype": 5, "shape": [4], "data_offsets": [0, 16]}},
                               DATA16),
    "offsets strings": st_bytes(f32(offsets=("0", "16")), DATA16),
    "offsets floats": st_bytes(f32(offsets=(0.0, 16.0)), DATA16),
    "offsets booleans": st_bytes(f32(shape=(), offsets=(False, True)), DATA16),
    "offsets three": st_bytes(f32(offsets=(0, 8, 16)), DATA16),
    "offsets reversed": st_bytes(f32(offsets=(16, 0)), DATA16),
    "offsets negative": st_bytes(f32(offsets=(-16, 0)), DATA16),
    "offsets out of range": st_bytes(f32(shape=(250,), offsets=(0, 1000)), DATA16),
    "shape negative": st_bytes(f32(shape=(-2, -2)), DATA16),
    "shape a string": st_bytes(f32(shape="4"), DATA16),
    "shape floats": st_bytes(f32(shape=(2.0, 2.0)), DATA16),
    "shape that overflows int64 to 0": st_bytes(f32(shape=(1 << 32, 1 << 32), offsets=(0, 0)),
                                                b""),
    "shape huge (no allocation)": st_bytes(f32(shape=(1 << 40,), offsets=(0, 1 << 42)), DATA16),
    "size mismatch": st_bytes(f32(shape=(4,), offsets=(0, 8)), DATA16),
    "dtype and size disagree": st_bytes({"w": {"dtype": "F64", "shape": [4],
                                               "data_offsets": [0, 16]}}, DATA16),
    "overlapping tensors": st_bytes({**f32("a"), **f32("b")}, DATA16),
    "overlap by one element": st_bytes({**f32("a", (3,), (0, 12)), **f32("b", (3,), (8, 20))},
                                       DATA16 + DATA16[:4]),
    "gap between tensors": st_bytes({**f32("a", (1,), (0, 4)), **f32("b", (2,), (8, 16))},
                                    DATA16),
    "bytes after the last tensor": st_bytes(f32(), DATA16 + b"\0" * 8),
    "truncated data": st_bytes(f32(), DATA16[:10]),
    "bool bytes not 0/1": st_bytes({"m": {"dtype": "BOOL", "shape": [2],
                                          "data_offsets": [0, 2]}}, b"\x01\x07"),
}


def npy_bytes(header: str, data: bytes, version: int = 1) -> bytes:
    h = header.encode("latin1")
    lb = struct.pack("<H" if version == 1 else "<I", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + lb + h + data


def zip_bytes(members: dict[str, bytes], method=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _good_npz(compressed=False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, w=np.arange(64, dtype=np.float32))
    return buf.getvalue()


def _flip_middle(raw: bytes) -> bytes:
    b = bytearray(raw)
    mid = len(b) // 3
    b[mid:mid + 16] = bytes(x ^ 0x5A for x in b[mid:mid + 16])
    return bytes(b)


def _zip_bomb() -> bytes:
    # 64 MB of zeros deflates to ~64 kB: a claim far beyond the file's size
    hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (16777216,), }"
    return zip_bytes({"w.npy": npy_bytes(hdr, bytes(64 << 20))}, zipfile.ZIP_DEFLATED)


def _duplicate_member_zip() -> bytes:
    buf = io.BytesIO()
    member = npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", bytes(16))
    with zipfile.ZipFile(buf, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
        z.writestr("w.npy", member)
        z.writestr("w.npy", member)
    return buf.getvalue()


NPZ_CASES = {
    "garbage": b"this is not a zip file at all" * 10,
    "empty": b"",
    "truncated zip": _good_npz()[:200],
    "corrupt deflate stream": _flip_middle(_good_npz(compressed=True)),
    "member not .npy": zip_bytes({"w.txt": b"hello"}),
    "npy bad magic": zip_bytes({"w.npy": b"NOTNUMPY" + bytes(64)}),
    "npy header not a literal": zip_bytes({"w.npy": npy_bytes("{'descr': <f4}", bytes(16))}),
    "npy header deep nesting": zip_bytes({"w.npy": npy_bytes("(" * 5000, b"")}),
    "npy header a list": zip_bytes({"w.npy": npy_bytes("[1, 2]", b"")}),
    "npy object dtype": zip_bytes({"w.npy": npy_bytes(
        "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", bytes(8))}),
    "npy record dtype": zip_bytes({"w.npy": npy_bytes(
        "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", bytes(4))}),
    "npy negative shape": zip_bytes({"w.npy": npy_bytes(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4), }", bytes(16))}),
    "npy shape claims more than the data": zip_bytes({"w.npy": npy_bytes(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }", bytes(16))}),
    "npy data longer than the shape": zip_bytes({"w.npy": npy_bytes(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", bytes(16))}),
    "npy fortran_order not bool": zip_bytes({"w.npy": npy_bytes(
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (4,), }", bytes(16))}),
    "npz duplicate array": _duplicate_member_zip(),
    "zip bomb": _zip_bomb(),
}


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_malformed_safetensors_raise_model_file_error(tmp_path, case):
    p = tmp_path / "weights.safetensors"
    p.write_bytes(SAFETENSORS_CASES[case])
    with pytest.raises(ModelFileError, match="weights.safetensors"):
        read_state_dict(p)


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_malformed_npz_raise_model_file_error(tmp_path, case):
    p = tmp_path / "weights.npz"
    p.write_bytes(NPZ_CASES[case])
    with pytest.raises(ModelFileError, match="weights.npz"):
        read_state_dict(p)


def test_error_messages_say_what_is_wrong(tmp_path):
    """The message names the tensor and the rule it breaks, not just 'corrupt'."""
    p = tmp_path / "m.safetensors"
    expect = {
        "overlapping tensors": "overlap", "gap between tensors": "contiguous",
        "offsets strings": "data_offsets", "shape negative": "shape",
        "metadata a list": "__metadata__", "header nested 50k deep": "nested",
        "dtype unknown": "F8_E4M3", "truncated data": "truncated",
        "duplicate tensor name": "twice",
    }
    for case, words in expect.items():
        p.write_bytes(SAFETENSORS_CASES[case])
        with pytest.raises(ModelFileError, match=words):
            read_state_dict(p)


def test_well_formed_files_still_read(tmp_path):
    """The checks refuse nothing the formats allow: zero-size tensors, 0-d tensors, every dtype,
    big-endian and Fortran-order .npy arrays, compressed .npz."""
    from safetensors.numpy import save_file

    sd = {"empty": np.zeros((0, 3), np.float32), "scalar": np.array(2.5, np.float32),
          "i8": np.arange(-3, 3, dtype=np.int8), "b": np.array([True, False]),
          "f16": np.linspace(0, 1, 5).astype(np.float16), "u8": np.arange(5, dtype=np.uint8)}
    save_file(sd, str(tmp_path / "ok.safetensors"))
    got, _ = read_state_dict(tmp_path / "ok.safetensors")
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v)
    arrays = {"be": np.arange(6, dtype=">f4").reshape(2, 3),
              "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
              "mask": np.array([True, False, True])}
    np.savez_compressed(tmp_path / "ok.npz", **arrays)
    got, _ = read_state_dict(tmp_path / "ok.npz")
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype.isnative
