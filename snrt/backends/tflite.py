"""The TFLite backend: run a bundle's `.tflite` exports (fp32, fp16, dynamic-range int8) with
LiteRT, no TensorFlow needed.

    runner = TFLiteRunner("deit.snrt/tflite/int8/v000_ti.tflite", threads=1)
    logits = runner.run(batch)          # float32 [B, C, H, W] -> float32 [B, classes]
    runner.close()

    backend = create_backend("tflite", bundle, threads=1, precision="int8")  # snrt.backends
    executor = backend.load(variant)    # a TFLiteRunner for that variant's file

Engine: `ai_edge_litert.interpreter` (pip install 'snrt[litert]'), falling back to the older
`tflite_runtime.interpreter`. tflite-runtime 2.14 (its last release) cannot run under numpy 2
(it imports, then fails in `Interpreter()` with "_ARRAY_API not found") and rejects the int8
files current converters write ("Didn't find op for builtin opcode 'FULLY_CONNECTED' version
'12'"); both are detected and reported with what to install. Before any engine sees a file, its
flatbuffer header and operator table are read here: a truncated or corrupt file raises
`ModelFileError`, and so does a file that needs Select-TF ("Flex") or other custom ops, which no
LiteRT build without TensorFlow can run.

Layout: snrt's exporter writes NCHW-input files (the same interface as the ONNX graphs; the
transpose to NHWC is the first op inside the file, ~0.1 ms); NHWC-input files (e.g. onnx2tf's)
are accepted too and transposed here. The layout comes from the caller (the bundle manifest
records it) or from the input shape when that is unambiguous.

Batches: snrt's files have a static batch of 1 and `run()` loops over the batch. Measured on
this 2-vCPU machine (DeiT-Ti, 1 thread, CPU time): a batch of 8 through a dynamic-batch file
resized to 8 took 258-270 ms vs 260 ms for 8 single invokes, so batching buys nothing at one
thread, while a static shape keeps the whole graph in one XNNPACK partition and the smallest
arena. Files with a dynamic batch dimension are resized to the batch instead (a switch of batch
size re-plans XNNPACK, ~1 ms).

Threads: one interpreter must never be invoked by two threads at once (its input and output
tensors are shared state). Each runner holds a lock around set-input/invoke/get-output, so
concurrent `run()` calls on one runner are safe and serialised; use one runner per thread for
parallel inference of the same variant (each costs the memory below).

Memory (measured with `python -m benchmarks.tflite_bench --memory`, ai-edge-litert 2.3 +
XNNPACK, DeiT-Ti/S/B at 224 px): TFLite files cannot share weights across variants the way the
ONNX pieces do, and XNNPACK repacks weights into its own buffers, so each loaded variant costs
RSS of about (file mapped + packed copy + arena):
  fp32: 2.0x its file (DeiT-Ti 23 MB -> +63 MB, DeiT-S 88 -> +181, DeiT-B 346 -> +699 MB),
  fp16: 3.1x its file (float16 weights are unpacked to float32: DeiT-B 173 MB -> +539 MB),
  int8: 2.1x its file (weights stay int8: DeiT-B 88 MB -> +185 MB).
N ready variants cost N times that (five DeiT variants: 1.57 GB fp32, 1.21 GB fp16, 0.44 GB
int8). The mapped part is clean page cache the OS can drop, but the packed copy is not. So the
runtime should load TFLite variants lazily (`Runtime(lazy=True)`), keep only the few the
controller may switch to, and prefer int8 when memory is tight.
"""

from __future__ import annotations

import importlib
import logging
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError, InputError, MissingExtraError, ModelFileError, SnrtError

log = logging.getLogger(__name__)

ENGINES = ("ai_edge_litert", "tflite_runtime")
LAYOUTS = ("NCHW", "NHWC")
_CUSTOM = 32  # BuiltinOperator.CUSTOM in the TFLite schema
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127


# ----------------------------------------------------------------------------- file checks

@dataclass(frozen=True)
class OpCode:
    """One entry of a TFLite model's operator table."""

    builtin_code: int
    custom_code: str | None
    version: int

    @property
    def is_custom(self) -> bool:
        return self.builtin_code == _CUSTOM

    @property
    def is_flex(self) -> bool:
        return self.is_custom and (self.custom_code or "").startswith("Flex")

    @property
    def name(self) -> str:
        if self.is_custom:
            return f"CUSTOM:{self.custom_code}"
        return _builtin_names().get(self.builtin_code, f"BUILTIN_{self.builtin_code}")


@dataclass(frozen=True)
class TFLiteFileInfo:
    """What the flatbuffer of a `.tflite` file says, read without any TFLite engine."""

    schema_version: int
    opcodes: tuple[OpCode, ...]
    metadata: dict[str, bytes]  # metadata entries small enough to read (name -> bytes)

    @property
    def custom_ops(self) -> list[str]:
        return sorted({o.custom_code or "?" for o in self.opcodes if o.is_custom})

    @property
    def flex_ops(self) -> list[str]:
        return sorted({o.custom_code or "?" for o in self.opcodes if o.is_flex})

    @property
    def builtin_only(self) -> bool:
        return not any(o.is_custom for o in self.opcodes)

    @property
    def op_names(self) -> list[str]:
        return sorted({o.name for o in self.opcodes})


class _FlatBuffer:
    """Bounds-checked reads of the few TFLite flatbuffer fields snrt needs."""

    def __init__(self, buf, where: str):
        self.buf, self.where = buf, where

    def _bad(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.where}: not a valid TFLite model ({what}); the file is "
                              "truncated or corrupt: re-export it")

    def u32(self, pos: int) -> int:
        if pos < 0 or pos + 4 > len(self.buf):
            raise self._bad(f"offset {pos} past the end of {len(self.buf)} bytes")
        return struct.unpack_from("<I", self.buf, pos)[0]

    def i32(self, pos: int) -> int:
        return struct.unpack_from("<i", self.buf, self._check(pos, 4))[0]

    def u16(self, pos: int) -> int:
        return struct.unpack_from("<H", self.buf, self._check(pos, 2))[0]

    def i8(self, pos: int) -> int:
        return struct.unpack_from("<b", self.buf, self._check(pos, 1))[0]

    def _check(self, pos: int, n: int) -> int:
        if pos < 0 or pos + n > len(self.buf):
            raise self._bad(f"offset {pos} past the end of {len(self.buf)} bytes")
        return pos

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field `index` of the table at `table`, or None if absent."""
        vtable = table - self.i32(table)
        vt_size = self.u16(vtable)
        slot = 4 + 2 * index
        if slot + 2 > vt_size:
            return None
        off = self.u16(vtable + slot)
        return table + off if off else None

    def ref(self, pos: int) -> int:
        return pos + self.u32(pos)

    def vector(self, pos: int) -> tuple[int, int]:
        """(position of the first element, length) of the vector referenced at `pos`."""
        start = self.ref(pos)
        n = self.u32(start)
        if start + 4 + 4 * n > len(self.buf):
            raise self._bad(f"vector of {n} entries runs past the end")
        return start + 4, n

    def string(self, pos: int) -> str:
        start = self.ref(pos)
        n = self.u32(start)
        raw = bytes(self.buf[self._check(start + 4, n):start + 4 + n])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._bad("a string that is not UTF-8") from None


def read_tflite_info(source: str | os.PathLike | bytes, *, max_metadata_bytes: int = 1 << 20
                     ) -> TFLiteFileInfo:
    """Read a `.tflite` file's schema version, operator table and metadata entries.

    Raises ModelFileError for a missing, truncated or corrupt file. Needs no TFLite engine."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse(bytes(source), "TFLite model", max_metadata_bytes)
    p = Path(source)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such TFLite file")
    if p.stat().st_size < 16:
        raise ModelFileError(f"{p}: not a valid TFLite model ({p.stat().st_size} bytes); the "
                             "file is truncated or corrupt: re-export it")
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _parse(mm, str(p), max_metadata_bytes)


def _parse(buf, where: str, max_metadata_bytes: int) -> TFLiteFileInfo:
    fb = _FlatBuffer(buf, where)
    if len(buf) < 16 or bytes(buf[4:8]) != b"TFL3":
        raise fb._bad("no 'TFL3' file identifier")
    model = fb.ref(0)
    pos = fb.field(model, 0)
    version = fb.u32(pos) if pos is not None else 0
    opcodes = []
    pos = fb.field(model, 1)
    if pos is None:
        raise fb._bad("no operator table")
    first, n = fb.vector(pos)
    for i in range(n):
        t = fb.ref(first + 4 * i)
        p_dep, p_custom = fb.field(t, 0), fb.field(t, 1)
        p_ver, p_code = fb.field(t, 2), fb.field(t, 3)
        dep = fb.i8(p_dep) if p_dep is not None else 0
        code = fb.i32(p_code) if p_code is not None else 0
        # schema >= 3a: builtin_code holds the real code; older files only the deprecated one
        code = max(code, dep) if dep != _PLACEHOLDER_FOR_GREATER_OP_CODES else code
        opcodes.append(OpCode(code, fb.string(p_custom) if p_custom is not None else None,
                              fb.i32(p_ver) if p_ver is not None else 1))
    metadata: dict[str, bytes] = {}
    p_meta, p_bufs = fb.field(model, 6), fb.field(model, 4)
    if p_meta is not None and p_bufs is not None:
        bfirst, nbufs = fb.vector(p_bufs)
        mfirst, nmeta = fb.vector(p_meta)
        for i in range(nmeta):
            t = fb.ref(mfirst + 4 * i)
            p_name, p_buf = fb.field(t, 0), fb.field(t, 1)
            if p_name is None or p_buf is None:
                continue
            bi = fb.u32(p_buf)
            if bi >= nbufs:
                raise fb._bad(f"metadata buffer {bi} of {nbufs}")
            bt = fb.ref(bfirst + 4 * bi)
            p_data = fb.field(bt, 0)
            if p_data is None:  # data stored outside the flatbuffer (offset/size): not needed
                continue
            dstart, dn = fb.ref(p_data), fb.u32(fb.ref(p_data))
            if dn <= max_metadata_bytes:
                fb._check(dstart + 4, dn)
                metadata[fb.string(p_name)] = bytes(buf[dstart + 4:dstart + 4 + dn])
    return TFLiteFileInfo(version, tuple(opcodes), metadata)


def _builtin_names() -> dict[int, str]:
    global _NAMES
    if _NAMES is None:
        _NAMES = {}
        try:
            schema = importlib.import_module("ai_edge_litert.schema_py_generated")
            _NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items()
                      if not k.startswith("_") and isinstance(v, int)}
        except ImportError:
            pass
    return _NAMES


_NAMES: dict[int, str] | None = None


# ----------------------------------------------------------------------------- engines

@dataclass(frozen=True)
class Engine:
    """A TFLite interpreter implementation that imported here."""

    name: str  # "ai_edge_litert" | "tflite_runtime"
    version: str
    interpreter_cls: type


def load_engine(prefer: str | None = None) -> Engine:
    """The first TFLite engine that works here: ai-edge-litert, then tflite-runtime.

    prefer: force one of ENGINES. Raises MissingExtraError naming what to install."""
    if prefer is not None and prefer not in ENGINES:
        raise SnrtError(f"unknown TFLite engine '{prefer}'; known: {list(ENGINES)}")
    tried = []
    for name in ([prefer] if prefer else ENGINES):
        try:
            mod = importlib.import_module(f"{name}.interpreter")
        except ImportError as e:
            tried.append(f"{name}: {e}")
            continue
        version = _dist_version(name)
        if name == "tflite_runtime" and int(np.__version__.split(".")[0]) >= 2:
            # imports fine, then fails inside Interpreter() with "_ARRAY_API not found"
            tried.append(f"tflite_runtime {version}: built for numpy<2, numpy is "
                         f"{np.__version__}")
            continue
        return Engine(name, version, mod.Interpreter)
    log.debug("no usable TFLite engine: %s", "; ".join(tried))
    numpy2 = any("numpy<2" in t for t in tried)
    feature = ("the TFLite backend (tflite-runtime is installed but needs numpy<2)" if numpy2
               else "the TFLite backend")
    raise MissingExtraError(feature, "ai-edge-litert", "litert")


def _dist_version(module: str) -> str:
    from importlib import metadata

    for dist in (module.replace("_", "-"), module):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


# ----------------------------------------------------------------------------- runner

class TFLiteRunner:
    """Runs one `.tflite` file: float32 [B, C, H, W] in, float32 [B, classes] out."""

    def __init__(self, path: str | os.PathLike, threads: int = 1, *, layout: str | None = None,
                 engine: str | None = None, warmup: int = 0):
        """
        path: the `.tflite` file (memory-mapped by the engine, not copied).
        threads: interpreter threads (XNNPACK's pool).
        layout: "NCHW" or "NHWC" input layout of the file (the bundle manifest records it);
            default: inferred from the input shape when unambiguous.
        engine: force "ai_edge_litert" or "tflite_runtime" (default: the first that works).
        warmup: invocations on zeros at load (a fresh interpreter page-faults its arena).
        """
        self.path = Path(path)
        self.threads = max(1, int(threads))
        info = read_tflite_info(self.path)  # ModelFileError if missing/corrupt
        if info.flex_ops:
            raise ModelFileError(
                f"{self.path}: uses Select-TF (Flex) ops {info.flex_ops}, which need the "
                "TensorFlow Flex delegate; snrt runs builtin-op TFLite files only: re-export "
                "with snrt's TFLite exporter (builtin ops only)")
        if info.custom_ops:
            raise ModelFileError(f"{self.path}: uses custom ops {info.custom_ops} that no "
                                 "stock LiteRT build provides; export with builtin ops only")
        self.file_info = info
        self.engine = load_engine(engine)
        self._interp = self._open()
        inp = self._interp.get_input_details()
        out = self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ModelFileError(f"{self.path}: {len(inp)} inputs and {len(out)} outputs; "
                                 "expected one image input and one logits output")
        self._in, self._out = inp[0], out[0]
        if self._in["dtype"] != np.float32 or self._out["dtype"] != np.float32:
            raise ModelFileError(f"{self.path}: input/output types {self._in['dtype']}/"
                                 f"{self._out['dtype']}; expected float32 (fully integer "
                                 "models are not supported)")
        shape = [int(d) for d in self._in["shape"]]
        signature = [int(d) for d in self._in.get("shape_signature", shape)]
        if len(shape) != 4:
            raise ModelFileError(f"{self.path}: input of shape {shape}; expected an image "
                                 "batch [B, C, H, W] or [B, H, W, C]")
        self.layout = layout or _infer_layout(shape, self.path)
        if self.layout not in LAYOUTS:
            raise SnrtError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        chw = shape[1:] if self.layout == "NCHW" else [shape[3], shape[1], shape[2]]
        self.input_shape: tuple[int, int, int] = tuple(chw)  # (C, H, W) run() expects
        self.num_classes = int(self._out["shape"][-1])
        self.dynamic_batch = signature[0] == -1
        self._batch = shape[0]
        if not self.dynamic_batch and self._batch != 1:
            raise ModelFileError(f"{self.path}: static batch {self._batch}; expected 1 or "
                                 "a dynamic batch dimension")
        self._lock = threading.Lock()
        for _ in range(max(0, warmup)):
            self.run(np.zeros((1, *self.input_shape), np.float32))

    def _open(self):
        kw = {"model_path": str(self.path), "num_threads": self.threads}
        try:
            interp = self.engine.interpreter_cls(**kw)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            msg = str(e)
            if "Didn't find op for builtin opcode" in msg or "Op builtin_code out of range" \
                    in msg:
                raise ModelFileError(
                    f"{self.path}: {self.engine.name} {self.engine.version} does not support "
                    f"an op version in this file ({msg.strip().splitlines()[0][:160]}); "
                    "tflite-runtime 2.14 rejects current int8 files: install ai-edge-litert "
                    "(pip install 'snrt[litert]')") from None
            if "_ARRAY_API" in msg or "numpy" in msg.lower():
                raise MissingExtraError(
                    f"the TFLite backend ({self.engine.name} {self.engine.version} fails "
                    f"with numpy {np.__version__})", "ai-edge-litert", "litert") from None
            raise ModelFileError(f"{self.path}: {self.engine.name} cannot load it "
                                 f"({msg.strip()[:200]}); re-export it") from None
        return interp

    # -- running -----------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [B, C, H, W] -> logits float32 [B, classes]. Thread-safe (serialised)."""
        x = self._check(batch)
        if self.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        with self._lock:
            interp = self._interp
            if interp is None:
                raise SnrtError(f"TFLiteRunner for {self.path.name} is closed")
            if self.dynamic_batch:
                if len(x) != self._batch:
                    interp.resize_tensor_input(self._in["index"], list(x.shape))
                    interp.allocate_tensors()
                    self._batch = len(x)
                interp.set_tensor(self._in["index"], x)
                interp.invoke()
                return interp.get_tensor(self._out["index"])
            out = np.empty((len(x), self.num_classes), np.float32)
            for i in range(len(x)):
                interp.set_tensor(self._in["index"], x[i:i + 1])
                interp.invoke()
                out[i] = interp.get_tensor(self._out["index"])[0]
            return out

    def _check(self, batch) -> np.ndarray:
        if not isinstance(batch, np.ndarray) or batch.ndim != 4:
            raise InputError(f"TFLiteRunner.run needs a float32 array [B, C, H, W] with "
                             f"(C, H, W) = {self.input_shape}; got "
                             f"{getattr(batch, 'shape', type(batch).__name__)}")
        if tuple(batch.shape[1:]) != self.input_shape:
            raise InputError(f"input of shape {tuple(batch.shape)}; {self.path.name} takes "
                             f"[B, {', '.join(map(str, self.input_shape))}] (NCHW)")
        if not len(batch):
            raise InputError("empty batch")
        if batch.dtype.kind != "f":
            raise InputError(f"input dtype {batch.dtype}; give preprocessed float32 values")
        return np.ascontiguousarray(batch, dtype=np.float32)

    def close(self) -> None:
        """Release the interpreter (its arena and packed weights). Idempotent."""
        with self._lock:
            self._interp = None

    @property
    def closed(self) -> bool:
        return self._interp is None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"TFLiteRunner({str(self.path)!r}, threads={self.threads}, layout={self.layout}"
                f", engine={self.engine.name} {self.engine.version})")


def _infer_layout(shape: list[int], path: Path) -> str:
    nchw = shape[1] in (1, 3, 4) and shape[2] == shape[3]
    nhwc = shape[3] in (1, 3, 4) and shape[1] == shape[2]
    if nchw != nhwc:
        return "NCHW" if nchw else "NHWC"
    raise ModelFileError(f"{path}: cannot tell the input layout from shape {shape}; pass "
                         "layout='NCHW' or 'NHWC'")


# ----------------------------------------------------------------------------- backend

class TFLiteBackend:
    """The snrt backend API (load / unload / close / info) over a bundle's TFLite exports.

    Each variant is its own interpreter over its own file (no weight sharing; see the module
    docstring for the memory this costs), so prefer `Runtime(lazy=True)` or a small ready set.
    """

    name = "tflite"

    def __init__(self, bundle, *, threads: int = 1, precision: str = "fp32",
                 variants=None, engine: str | None = None, warmup: int = 2):
        self.bundle = bundle
        self.threads = max(1, int(threads))
        self.precision = precision
        self.warmup = warmup
        self.engine = load_engine(engine)
        self._engine_pref = engine
        self._runners: dict[str, TFLiteRunner] = {}
        self._lock = threading.Lock()
        exported = {p for v in bundle.variants for p in v.exports.get("tflite", {})}
        if precision not in exported:
            raise BundleError(
                f"{bundle.path}: no TFLite {precision} files (exported: "
                f"{sorted(exported) or 'none'}); export them with exporters.tflite_export")
        missing = [v.id for v in (variants or []) if precision not in
                   v.exports.get("tflite", {})]
        if missing:
            raise BundleError(f"{bundle.path}: variants {missing[:5]} have no TFLite "
                              f"{precision} file; export them or leave them out")

    def info(self) -> dict:
        return {"backend": self.name, "engine": self.engine.name,
                "version": self.engine.version, "precision": self.precision,
                "threads": self.threads, "interpreters": len(self._runners)}

    def load(self, variant, precision: str | None = None) -> TFLiteRunner:
        """The interpreter of `variant`'s TFLite file in `precision` (default: the backend's),
        opened and warmed on first use; one per (variant, precision)."""
        prec = precision or self.precision
        key = variant.id if prec == self.precision else f"{variant.id}|{prec}"
        with self._lock:
            if key in self._runners:
                return self._runners[key]
            rec = variant.exports.get("tflite", {}).get(prec)
            if rec is None:
                raise BundleError(
                    f"variant '{variant.id}' has no TFLite {prec} file in the bundle; export "
                    f"it first: snrt-export tflite {self.bundle.path} --precisions {prec} "
                    f"--variants '{variant.id}'")
            runner = TFLiteRunner(self.bundle.file(rec["file"]), self.threads,
                                  layout=rec.get("layout"), engine=self._engine_pref,
                                  warmup=self.warmup)
            self._runners[key] = runner
            return runner

    def task_variants(self, task) -> list[str]:
        """The variants `task` (a snrt.manifest.TaskInfo) runs on here: those exported with it
        as TFLite at this precision (snrt-export tflite --task)."""
        return [vid for vid in task.variants
                if self.precision in task.exports.get(vid, {}).get("tflite", {})]

    def load_task(self, variant, task) -> TFLiteRunner:
        """The interpreter of `variant` with `task`: its own file (a TFLite file shares
        nothing, so each (variant, task) pair is one more interpreter)."""
        key = f"{variant.id}@{task.name}"
        with self._lock:
            if key in self._runners:
                return self._runners[key]
            rec = task.exports.get(variant.id, {}).get("tflite", {}).get(self.precision)
            if rec is None:
                raise BundleError(
                    f"task '{task.name}' has no TFLite {self.precision} file for variant "
                    f"'{variant.id}' (exported: {self.task_variants(task) or 'none'}); export "
                    f"it: snrt-export tflite BUNDLE --task {task.name} --variants {variant.id} "
                    f"--precisions {self.precision}")
            runner = TFLiteRunner(self.bundle.file(rec["file"]), self.threads,
                                  layout=rec.get("layout"), engine=self._engine_pref,
                                  warmup=self.warmup)
            self._runners[key] = runner
            return runner

    def unload(self, variant) -> None:
        """Forget a variant. A call in flight keeps its reference and finishes; the
        interpreter's memory is freed when the last reference goes."""
        with self._lock:
            self._runners.pop(variant.id, None)

    def close(self) -> None:
        with self._lock:
            self._runners.clear()
