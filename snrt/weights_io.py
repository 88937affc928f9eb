"""Read and write state dicts (name -> numpy array) from weight files, treating them as untrusted.

Formats: `.safetensors` (parsed here with numpy, validated), `.npz` (no pickles), `.pth`/`.pt`/
`.bin` (only through `torch.load(weights_only=True)`, which needs the `torch` extra).
Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import struct
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
        out = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ModelFileError(f"{path}: tensor '{name}' holds NaN or infinite values")
        return out
    return np.ascontiguousarray(a)


def read_safetensors(path: str | os.PathLike) -> tuple[StateDict, dict[str, str]]:
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER_BYTES, size - 8):
            raise ModelFileError(f"{path}: corrupt safetensors header length {n}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header (not an object)")
    meta = header.pop("__metadata__", None) or {}
    data_start, data_len = 8 + n, size - 8 - n
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,)) \
        if data_len else np.zeros(0, np.uint8)
    out: StateDict = {}
    for name, info in header.items():
        try:
            dtype_name, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
            dtype = _ST_DTYPES[dtype_name]
            shape = tuple(int(s) for s in shape)
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{path}: corrupt safetensors entry for '{name}'") from None
        itemsize = 2 if dtype is None else np.dtype(dtype).itemsize
        count = int(np.prod(shape, dtype=np.int64))
        if not (0 <= b <= e <= data_len) or e - b != count * itemsize:
            raise ModelFileError(
                f"{path}: tensor '{name}' points outside the file or has the wrong size "
                "(truncated or corrupt file)"
            )
        chunk = raw[b:e]
        if dtype is None:  # bfloat16 -> float32: the high half of a float32
            bits = chunk.view("<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32).reshape(shape)
        else:
            arr = chunk.view(np.dtype(dtype).newbyteorder("<")).reshape(shape)
        out[name] = np.array(arr)  # copy: do not keep the file mapped
    return out, {str(k): str(v) for k, v in meta.items()}


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
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickles: refused
        raise ModelFileError(f"{path}: {e}; snrt never unpickles .npz contents") from None
    except (OSError, EOFError, KeyError) as e:
        raise ModelFileError(f"{path}: not a readable .npz file ({e})") from None


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
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in flat.items()}


def _flatten_torch(obj, path: Path, prefix: str = "") -> dict:
    import torch

    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, torch.Tensor)):
                out.update(_flatten_torch(v, path, f"{prefix}{k}."))
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
