"""Read and write state dicts (name -> numpy array) from weight files, treating them as untrusted.

Formats: `.safetensors` (parsed here with numpy, validated), `.npz` (zip of numeric `.npy`
arrays, parsed here, no pickles), `.pth`/`.pt`/`.bin` (only through
`torch.load(weights_only=True)`, which needs the `torch` extra). Nothing here unpickles
arbitrary objects. A malformed file raises ModelFileError naming the file and what is wrong;
memory stays bounded by the file's size whatever its header claims.
"""

from __future__ import annotations

import ast
import json
import lzma
import math
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import MissingExtraError, ModelFileError
from .fileio import atomic_open

StateDict = dict[str, np.ndarray]

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": None,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items() if v is not None}
_MAX_HEADER_BYTES = 100 << 20


def read_state_dict(path: str | os.PathLike) -> tuple[StateDict, dict[str, str]]:
    """Return (tensors, metadata) from a weights file; floats are converted to float32."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        sd, meta = read_safetensors(path)
    elif suffix == ".npz":
        sd, meta = _read_npz(path), {}
    elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
        sd, meta = _read_torch(path), {}
    else:
        raise ModelFileError(
            f"{path}: unknown weights format '{suffix}'; use .safetensors, .npz or .pth"
        )
    return {k: _as_float32(k, v, path) for k, v in sd.items()}, meta


def _as_float32(name: str, a: np.ndarray, path: Path) -> np.ndarray:
    if a.dtype.kind == "f":
        with np.errstate(over="ignore"):  # float64 beyond float32's range: refused below
            out = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ModelFileError(f"{path}: tensor '{name}' holds NaN or infinite values")
        return out
    return np.ascontiguousarray(a)


def read_safetensors(path: str | os.PathLike) -> tuple[StateDict, dict[str, str]]:
    """Read a safetensors file, checking its header against the format's rules.

    Every tensor must have a known dtype, a shape of non-negative ints and `data_offsets`
    `[begin, end]` whose length matches; together the tensors must cover the data section
    exactly, in order, without overlaps or gaps (as the safetensors library requires). Nothing is
    allocated before the header has been checked against the file's size, so memory stays
    bounded by the file (bfloat16 is widened to float32: at most twice). Any violation raises
    ModelFileError naming the file and the tensor.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        f = open(path, "rb")  # closed by the with below
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror})") from None
    with f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path}: truncated safetensors file ({size} bytes: no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ModelFileError(
                f"{path}: safetensors header length {n} runs past the end of the {size}-byte "
                "file (truncated, or not a safetensors file)")
        if n > _MAX_HEADER_BYTES:
            raise ModelFileError(f"{path}: safetensors header of {n} bytes is larger than the "
                                 f"{_MAX_HEADER_BYTES >> 20} MB snrt accepts")
        header = _parse_json_header(f.read(n), path)
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"{path}: safetensors '__metadata__' must be an object of "
                             f"strings, got {_describe(meta)}")
    data_start, data_len = 8 + n, size - 8 - n
    entries = [_tensor_entry(name, info, data_len, path) for name, info in header.items()]
    _check_layout(entries, data_len, path)
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,)) \
        if data_len else np.zeros(0, np.uint8)
    out: StateDict = {}
    for name, dtype, shape, b, e in entries:
        chunk = raw[b:e]
        if dtype is None:  # bfloat16 -> float32: the high half of a float32
            bits = chunk.view("<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32).reshape(shape)
        else:
            arr = np.array(chunk.view(np.dtype(dtype).newbyteorder("<")).reshape(shape))
            if dtype is np.bool_ and arr.view(np.uint8).max(initial=0) > 1:
                raise ModelFileError(f"{path}: BOOL tensor '{name}' holds bytes other than 0/1")
        out[name] = arr.astype(arr.dtype.newbyteorder("="), copy=False)  # a copy, not the map
    del raw
    return out, dict(meta)


def _parse_json_header(blob: bytes, path: Path) -> dict:
    def no_duplicates(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise ModelFileError(f"{path}: safetensors header names '{k}' twice")
            d[k] = v
        return d

    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=no_duplicates,
                            parse_constant=no_constant)
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{path}: corrupt safetensors header (not UTF-8: {e})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: corrupt safetensors header (JSON nested too deeply)") \
            from None
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise ModelFileError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header (a JSON {_describe(header)}, "
                             "not an object)")
    return header


def _describe(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(v), type(v).__name__)


def _is_uint(v) -> bool:
    return type(v) is int and v >= 0  # bool is an int subclass: refused on purpose


def _tensor_entry(name: str, info, data_len: int, path: Path):
    where = f"{path}: safetensors tensor '{name}'"
    if not isinstance(info, dict):
        raise ModelFileError(f"{where}: entry is a {_describe(info)}, expected an object with "
                             "dtype, shape and data_offsets")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise ModelFileError(f"{where}: entry lacks {missing}")
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in _ST_DTYPES:
        raise ModelFileError(f"{where}: dtype {dtype_name!r} is not one snrt reads "
                             f"({', '.join(_ST_DTYPES)})")
    if not isinstance(shape, list) or not all(_is_uint(s) for s in shape):
        raise ModelFileError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_uint(o) for o in offsets)):
        raise ModelFileError(f"{where}: data_offsets {offsets!r} is not [begin, end] as "
                             "non-negative integers")
    b, e = offsets
    dtype = _ST_DTYPES[dtype_name]
    itemsize = 2 if dtype is None else np.dtype(dtype).itemsize
    nbytes = math.prod(shape) * itemsize  # Python ints: a huge shape cannot wrap around
    if e < b:
        raise ModelFileError(f"{where}: data_offsets [{b}, {e}] end before they begin")
    if e - b != nbytes:
        raise ModelFileError(f"{where}: {dtype_name} {shape} needs {nbytes} bytes but "
                             f"data_offsets [{b}, {e}] hold {e - b}")
    if e > data_len:
        raise ModelFileError(f"{where}: data_offsets [{b}, {e}] run past the {data_len} data "
                             "bytes in the file (truncated or corrupt file)")
    return name, dtype, tuple(shape), b, e


def _check_layout(entries: list, data_len: int, path: Path) -> None:
    """The tensors must tile the data section: sorted by offset, each starts where the previous
    one ended, and the last ends at the end of the file."""
    pos, prev = 0, None
    for name, _, _, b, e in sorted(entries, key=lambda t: (t[3], t[4])):
        if b < pos:
            raise ModelFileError(f"{path}: safetensors tensors '{prev}' and '{name}' overlap "
                                 f"(bytes {b}..{pos})")
        if b > pos:
            raise ModelFileError(f"{path}: {b - pos} bytes before safetensors tensor '{name}' "
                                 "belong to no tensor (data_offsets are not contiguous)")
        pos, prev = e, name
    if pos != data_len:
        raise ModelFileError(f"{path}: {data_len - pos} bytes after the last safetensors tensor "
                             "belong to no tensor (corrupt file or wrong header)")


def write_safetensors(path: str | os.PathLike, tensors: StateDict,
                      metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` as a safetensors file, atomically."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        if a.dtype not in _ST_NAMES:
            raise ValueError(f"cannot store dtype {a.dtype} of '{name}' in safetensors")
        header[name] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a.astype(a.dtype.newbyteorder("<"), copy=False))
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * ((-len(blob)) % 8)
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            f.write(a.tobytes())


def _read_npz(path: Path) -> StateDict:
    """Read an .npz archive of plain numeric .npy arrays, without numpy's pickle-capable loader.

    Each member's .npy header is parsed here (numeric dtypes only, never objects) and checked
    against the size the zip directory records before any data is read, and the archive may
    not claim more than `_NPZ_MAX_RATIO` times its own size once decompressed (a zip bomb would
    otherwise allocate whatever it claims).
    """
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            claimed = sum(i.file_size for i in infos)
            limit = _NPZ_MAX_RATIO * path.stat().st_size + (1 << 20)
            if claimed > limit:
                raise ModelFileError(
                    f"{path}: .npz claims {claimed} bytes once decompressed, more than "
                    f"{_NPZ_MAX_RATIO}x the file; refused (save with np.savez or as .safetensors)")
            out: StateDict = {}
            for info in infos:
                name = info.filename[:-4] if info.filename.endswith(".npy") else None
                if not name:
                    raise ModelFileError(f"{path}: .npz member '{info.filename}' is not an .npy "
                                         "array")
                if name in out:
                    raise ModelFileError(f"{path}: .npz holds array '{name}' twice")
                with z.open(info) as f:
                    out[name] = _read_npy(f, info.file_size, f"{path}: .npz array '{name}'")
            return out
    except ModelFileError:
        raise
    except _NPZ_ERRORS as e:
        raise ModelFileError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") \
            from None


_NPZ_MAX_RATIO = 256
# what zipfile and its decompressors raise on damaged archives
_NPZ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError,
               OSError, NotImplementedError, RuntimeError, ValueError, struct.error,
               UnicodeDecodeError)
_NPY_DESCR = re.compile(r"[<>|=]?(?:[fiu][1248]|b1)")


def _read_npy(f, member_size: int, where: str) -> np.ndarray:
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3):
        raise ModelFileError(f"{where}: not an .npy array (bad magic)")
    len_bytes = 2 if magic[6] == 1 else 4
    raw_len = f.read(len_bytes)
    if len(raw_len) < len_bytes:
        raise ModelFileError(f"{where}: truncated .npy header")
    hlen = int.from_bytes(raw_len, "little")
    if hlen > 10000:  # numpy's own limit for headers it parses
        raise ModelFileError(f"{where}: .npy header of {hlen} bytes is too large")
    text = f.read(hlen)
    if len(text) < hlen:
        raise ModelFileError(f"{where}: truncated .npy header")
    try:
        d = ast.literal_eval(text.decode("utf-8" if magic[6] == 3 else "latin1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError,
            UnicodeDecodeError):
        raise ModelFileError(f"{where}: .npy header is not a Python literal") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ModelFileError(f"{where}: .npy header must hold exactly descr, fortran_order and "
                             "shape")
    descr, fortran, shape = d["descr"], d["fortran_order"], d["shape"]
    if not isinstance(descr, str) or not _NPY_DESCR.fullmatch(descr):
        raise ModelFileError(f"{where}: dtype {descr!r} is not a numeric tensor dtype (objects "
                             "and records are refused: snrt never unpickles .npz contents)")
    if not isinstance(shape, tuple) or not all(type(s) is int and s >= 0 for s in shape):
        raise ModelFileError(f"{where}: shape {shape!r} is not a tuple of non-negative ints")
    if not isinstance(fortran, bool):
        raise ModelFileError(f"{where}: fortran_order {fortran!r} is not a boolean")
    dtype = np.dtype(descr)
    nbytes = math.prod(shape) * dtype.itemsize
    if member_size != 8 + len_bytes + hlen + nbytes:
        raise ModelFileError(f"{where}: {descr} {shape} needs {nbytes} data bytes, the archive "
                             f"records {member_size - 8 - len_bytes - hlen}")
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ModelFileError(f"{where}: truncated data ({len(data)} of {nbytes} bytes)")
    arr = np.frombuffer(data, dtype=dtype)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    if dtype.kind == "b" and arr.view(np.uint8).max(initial=0) > 1:
        raise ModelFileError(f"{where}: boolean array holds bytes other than 0/1")
    return np.ascontiguousarray(arr, dtype=dtype.newbyteorder("="))


def _read_torch(path: Path) -> StateDict:
    try:
        import torch
    except ImportError:
        raise MissingExtraError(f"reading {path.suffix} checkpoints", "torch", "torch") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types (unpickling refused, zip)
        raise ModelFileError(
            f"{path}: cannot be read with torch.load(weights_only=True): {e}. "
            "snrt does not unpickle arbitrary objects; convert the checkpoint to .safetensors"
        ) from None
    flat = _flatten_torch(obj, path)
    out = {}
    for k, v in flat.items():
        try:
            out[k] = v.detach().float().numpy() if v.is_floating_point() else v.numpy()
        except (RuntimeError, TypeError) as e:  # quantized, sparse, meta tensors...
            raise ModelFileError(f"{path}: tensor '{k}' cannot be read as an array ({e})") \
                from None
    return out


def _flatten_torch(obj, path: Path, prefix: str = "", depth: int = 0) -> dict:
    import torch

    if depth > 32:
        raise ModelFileError(f"{path}: checkpoint dictionaries nested more than 32 deep")
    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, torch.Tensor)):
                out.update(_flatten_torch(v, path, f"{prefix}{k}.", depth + 1))
    return out


def unwrap_checkpoint(sd: StateDict) -> StateDict:
    """Strip the container prefixes training scripts add ('model.', 'state_dict.', 'module.')."""
    for wrapper in ("model.", "state_dict.", "model_ema.", "module."):
        keys = [k for k in sd if k.startswith(wrapper)]
        if keys and len(keys) == len(sd):
            return unwrap_checkpoint({k[len(wrapper):]: v for k, v in sd.items()})
        if keys and wrapper in ("model.", "state_dict."):
            # DeiT checkpoints: {'model': sd, 'optimizer': ..., 'epoch': ...}
            return unwrap_checkpoint({k[len(wrapper):]: sd[k] for k in keys})
    return sd
