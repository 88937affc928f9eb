"""TFLite export of a bundle's variants: fp32, fp16 and dynamic-range int8, builtin ops only,
each file verified against the bundle's ONNX graph in the runtime that will serve it.

    from exporters.tflite_export import export_tflite
    report = export_tflite("deit.snrt", precisions=("fp32", "int8"), variants=["ti", 5])
    report.ok, report.refused, print(report.table())

Needs the `tflite` extra (tensorflow-cpu for the converter, ai-edge-litert to verify).

How (chosen by measurement, see shared/notes/tflite-on-this-machine.md and the report of issue
5): each variant's route is rebuilt in TensorFlow ops straight from the bundle's numpy weights
(`Bundle.load_family()`), op for op like `exporters/onnx_graph.py` (pre-norm blocks, exact erf
GELU, linear stitching layer, stitched routes skip the final LayerNorm), saved as a SavedModel
(weights as variables: captured constants made the converter need 30x the model in memory) and
converted with `tf.lite.TFLiteConverter` restricted to TFLITE_BUILTINS. Per file that took 8-14 s
for DeiT-Ti/S and 20-42 s for DeiT-B on this (shared, loaded) 2-vCPU machine, at most 6.1 GB of
memory (DeiT-B), and matched onnxruntime to ~2e-6 relative in fp32; onnx2tf from the ONNX graphs
needed pinned old versions, extra flags to avoid Flex ops and 13-18 min / 20 GB for ViT-B.
Graph choices that matter for XNNPACK (LiteRT's CPU delegate), all measured:
- attention splits q/k/v with a 3-D SPLIT and 4-D reshapes/transposes: indexing the 5-D qkv
  tensor (timm's way) produced 5-D STRIDED_SLICEs that XNNPACK does not take, cutting the graph
  into 14 partitions and costing ~20-25% latency;
- the class token is read as `x[:, :1]` + reshape (a shrinking strided slice stayed outside the
  delegate);
- static batch 1 (the runner loops over a batch; batching gained nothing at 1 thread) and NCHW
  input like the ONNX graphs (the transpose to NHWC is the file's first op).
fp16 stores float16 weights that are dequantized at load (halves the file, not the memory or the
latency); int8 is dynamic-range quantization (int8 weights, per-channel; float activations,
quantized on the fly), no calibration data needed.

Verification: every converted file is loaded with `snrt.backends.tflite.TFLiteRunner` (the
run-time path, ai-edge-litert first) and its logits compared with onnxruntime on the variant's
ONNX graph, on images from a directory (through `snrt.preprocess`) or, when none are given,
seeded standard-normal inputs (recorded). A file is recorded only if it has builtin ops only
and max |Δlogit| <= atol + rtol * max |reference logit| (see `DEFAULT_TOLERANCES`); otherwise
it is refused, not written, and reported.

Elastic subnets (a subnets bundle): any member of the space may be chosen, listed or not;
exporters/subnet_tflite.py rebuilds it in TF ops from the bundle's weights.bin and verifies it
against its standalone ONNX graph (as `snrt-export subnets --standalone ID` writes it), through
the same converter, tolerances and records; a member not listed yet becomes listed. Without
`variants`, the listed subnets (refused when more than 20: choose with --variants).

Files: BUNDLE/tflite/<precision>/v<index>_<id>.tflite, written atomically (verified as a
temporary file next to the final name, then renamed), recorded in the manifest after each file
(`VariantInfo.exports["tflite"][precision]`, `manifest.exports["tflite"]`, `manifest.files`), so
an interrupted export resumes: a file already recorded with the same settings and a matching
sha256 is skipped.
"""

from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import importlib.util
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from snrt.backends.tflite import TFLiteRunner, load_engine, read_tflite_info
from snrt.bundle import Bundle, Manifest, VariantInfo, record_file, update_manifest
from snrt.errors import BundleError, InputError, MissingExtraError, ModelFileError, SnrtError
from snrt.fileio import atomic_write_bytes, sha256_file
from snrt.progress import Progress
from snrt.version import __version__

from .registry import get_format
from .tflite_graph import _convert, _TFRouteBuilder

log = logging.getLogger(__name__)

TFLITE_DIR = "tflite"
LAYOUT = "NCHW"
DEFAULT_N_INPUTS = 8


@dataclass(frozen=True)
class Tolerance:
    """A file passes when max |Δlogit| <= atol + rtol * max |reference logit| over the
    verification inputs (logit scales differ by orders of magnitude between trained and
    randomly initialised models, hence the relative part)."""

    atol: float
    rtol: float

    def allowed(self, ref_max_abs: float) -> float:
        return self.atol + self.rtol * ref_max_abs


# Justification, measured (tests/test_tflite.py, benchmarks/tflite_bench.py): worst max|Δ| /
# max|reference logit| over DeiT-Ti/S/B anchors and stitched routes (random weights, 224 px,
# 8 random-normal inputs) and the tiny test families; and what real export bugs cost (TF rebuild
# with the bug, same inputs):
#   fp32: measured <= 2.4e-6 (float reassociation). rtol 3e-5 (12x margin) still refuses a
#         tanh-approximated GELU (1.5-2e-4) or a LayerNorm without epsilon (~1e-3).
#   fp16: measured <= 8e-4 (float16 weights). rtol 5e-3 (6x margin).
#   int8: measured <= 4.2e-2 (per-channel int8 weights, dynamically quantized activations).
#         rtol 0.15 (3.5x margin) still refuses a route through the wrong stitching layer
#         (0.35) and outputs unrelated to the reference (~1).
# atol only matters for logits near zero (tiny scales), where rtol alone would be too strict.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-6, rtol=3e-5),
    "fp16": Tolerance(atol=1e-4, rtol=5e-3),
    "int8": Tolerance(atol=1e-3, rtol=0.15),
}

PRECISION_OPTIONS = {
    "fp32": "float32 weights and activations",
    "fp16": "float16 weights (Optimize.DEFAULT + supported_types=[float16]), dequantized to "
            "float32 at load; float32 activations",
    "int8": "dynamic-range quantization (Optimize.DEFAULT, no representative dataset): int8 "
            "weights per output channel, float32 activations quantized on the fly",
}


# ----------------------------------------------------------------------------- report

@dataclass
class TFLiteFileResult:
    """What happened to one (variant, precision)."""

    variant: str
    precision: str
    status: str  # "exported" | "skipped" (already recorded) | "refused" | "failed"
    file: str | None = None
    bytes: int | None = None
    max_abs_diff: float | None = None
    allowed_abs_diff: float | None = None
    top1_agreement: float | None = None
    convert_s: float | None = None
    reason: str = ""


@dataclass
class TFLiteExportReport:
    bundle: Path
    inputs: dict
    results: list[TFLiteFileResult] = field(default_factory=list)
    seconds: float = 0.0

    def _with(self, status: str) -> list[TFLiteFileResult]:
        return [r for r in self.results if r.status == status]

    @property
    def exported(self) -> list[TFLiteFileResult]:
        return self._with("exported")

    @property
    def skipped(self) -> list[TFLiteFileResult]:
        return self._with("skipped")

    @property
    def refused(self) -> list[TFLiteFileResult]:
        return self._with("refused")

    @property
    def failed(self) -> list[TFLiteFileResult]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when every requested file is in the bundle (exported now or before)."""
        return not self.refused and not self.failed

    def table(self) -> str:
        """A plain-text table of the results (for the CLI)."""
        head = (f"{'variant':16s} {'prec':5s} {'status':9s} {'MB':>7s} {'max|Δ|':>9s} "
                f"{'allowed':>9s} {'top1':>5s} {'conv s':>6s}  note")
        lines = [head, "-" * len(head)]
        for r in self.results:
            def f(v, fmt):
                return format(v, fmt) if v is not None else "-"
            lines.append(
                f"{r.variant:16s} {r.precision:5s} {r.status:9s} "
                f"{f(r.bytes / 1e6 if r.bytes else None, '7.2f'):>7s} "
                f"{f(r.max_abs_diff, '9.2e'):>9s} {f(r.allowed_abs_diff, '9.2e'):>9s} "
                f"{f(r.top1_agreement, '5.2f'):>5s} {f(r.convert_s, '6.1f'):>6s}  {r.reason}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- TF graph

def _require_tensorflow():
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingExtraError("TFLite export", "tensorflow-cpu", "tflite") from None
    return tf


def _tensorflow_version() -> str:
    """TensorFlow's version without importing it (the import takes ~7 s)."""
    from importlib import metadata

    if importlib.util.find_spec("tensorflow") is None:
        raise MissingExtraError("TFLite export", "tensorflow-cpu", "tflite")
    for dist in ("tensorflow-cpu", "tensorflow", "tf-nightly"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


# ----------------------------------------------------------------------------- inputs

def _verification_inputs(bundle: Bundle, images, n_inputs: int, seed: int
                         ) -> tuple[np.ndarray, dict]:
    pre = bundle.preprocess
    shape = (len(pre.mean), pre.img_size, pre.img_size)
    if n_inputs < 1:
        raise InputError(f"n_inputs must be >= 1, got {n_inputs}")
    if images is None:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n_inputs, *shape)).astype(np.float32)
        return x, {"kind": "random_normal", "n": n_inputs, "seed": seed}
    from snrt.preprocess import load_image, preprocess_image

    from .cli import IMAGE_SUFFIXES

    if isinstance(images, (str, os.PathLike)):
        d = Path(images)
        if not d.is_dir():
            raise InputError(f"images: {d} is not a directory of images")
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        where = str(d)
    else:
        files, where = [Path(p) for p in images], "list"
    if not files:
        raise InputError(f"images: no image files in {where} "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    files = files[:n_inputs]
    x = np.stack([preprocess_image(load_image(f), pre) for f in files])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return x, {"kind": "images", "source": where, "n": len(files),
               "sha256": h.hexdigest()[:16]}


# ----------------------------------------------------------------------------- export

def _safe(s: str) -> str:
    return s.replace(">", "-").replace("@", "_").replace(":", "-")


def tflite_rel_path(variant: VariantInfo, precision: str) -> str:
    return f"{TFLITE_DIR}/{precision}/v{variant.index:03d}_{_safe(variant.id)}.tflite"


def _settings(tf_version: str, runner_engine: str, tolerances: dict[str, Tolerance],
              inputs: dict) -> dict:
    import onnxruntime as ort

    defining = {  # what a recorded file was checked against; changes invalidate records
        "options": {"supported_ops": ["TFLITE_BUILTINS"], "batch": 1, "layout": LAYOUT,
                    "precisions": PRECISION_OPTIONS},
        "tolerance": {p: asdict(t) for p, t in sorted(tolerances.items())},
        "inputs": inputs,
    }
    sid = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12]
    return {
        "converter": "tf.lite.TFLiteConverter.from_saved_model; each route rebuilt in TF ops "
                     "from the bundle weights and saved as a SavedModel "
                     "(exporters/tflite_export.py)",
        "versions": {"tensorflow": tf_version, "verify_engine": runner_engine,
                     "onnxruntime": ort.__version__, "snrt": __version__},
        **defining,
        "verification": "max|Δlogit| vs onnxruntime on graphs/v*.onnx (elastic subnets: "
                        "the subnet's standalone ONNX graph from weights.bin), run with "
                        "snrt.backends.tflite.TFLiteRunner (1 thread); passes when <= atol + "
                        "rtol * max|reference logit|",
        "settings_id": sid,
    }


def _reference(bundle: Bundle, variant: VariantInfo, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(bundle.graph_path(variant)), so,
                             providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])


def _already_done(bundle_path: Path, manifest: Manifest, v: VariantInfo, precision: str,
                  rel: str, settings_id: str) -> dict | None:
    rec = v.exports.get("tflite", {}).get(precision)
    info = manifest.files.get(rel)
    p = bundle_path / rel
    if not rec or rec.get("file") != rel or rec.get("settings_id") != settings_id or not info:
        return None
    if not p.is_file() or p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
        return None
    return rec


def export_tflite(bundle_path: str | os.PathLike, precisions: Sequence[str] = ("fp32", "fp16",
                                                                               "int8"),
                  variants: Iterable[str | int] | None = None,
                  images: str | os.PathLike | Iterable[str | os.PathLike] | None = None, *,
                  n_inputs: int = DEFAULT_N_INPUTS, seed: int = 0,
                  tolerances: dict[str, Tolerance] | None = None, force: bool = False,
                  progress: bool = True, task: str | None = None) -> TFLiteExportReport:
    """Export `variants` (ids or cfg_ids; default all) of a bundle as TFLite files. On a
    subnets bundle `variants` may name any member of the space (unlisted ones become listed);
    default: the listed subnets, SnrtError naming --variants when more than 20.

    precisions: any of "fp32", "fp16", "int8" (dynamic-range).
    images: a directory (searched recursively) or a list of image files to verify on, through
        the bundle's preprocessing; None: `n_inputs` seeded standard-normal inputs.
    tolerances: per-precision overrides of DEFAULT_TOLERANCES.
    force: re-export files even when already recorded with matching settings and hash.
    task: the name of one of the bundle's tasks: export `variants` (default: the task's own,
        refused when more than 20) with the task's tuners and head instead
        (exporters/task_tflite.py).
    Returns a report; files that fail verification are refused (not written, not recorded),
    and a stale record of the same variant/precision is removed. Raises MissingExtraError
    without tensorflow/ai-edge-litert, UnknownVariantError/InputError/SnrtError for bad
    arguments (checked before any work).
    """
    t_start = time.monotonic()
    fmt = get_format("tflite")
    precisions = list(dict.fromkeys(precisions))
    bad = [p for p in precisions if p not in fmt.precisions]
    if bad or not precisions:
        raise SnrtError(f"unknown TFLite precision(s) {bad or precisions}; known: "
                        f"{list(fmt.precisions)}")
    tols = dict(DEFAULT_TOLERANCES)
    for p, t in (tolerances or {}).items():
        if p not in fmt.precisions:
            raise SnrtError(f"tolerance for unknown precision '{p}'")
        tols[p] = t
    bundle = _open_for_export(Path(bundle_path))
    subnets = bundle.open_membership  # elastic subnets: any member of the space, listed or not
    if task is not None:
        from .task_tflite import choose_task_variants

        chosen = choose_task_variants(bundle, bundle.task(task), variants)  # checked first
        subnets = False
    elif subnets:
        from .subnet_tflite import choose_subnets, list_members

        ids = choose_subnets(bundle, variants)
    else:
        chosen = bundle.variants if variants is None else list(
            {bundle.variant(k).id: bundle.variant(k) for k in variants}.values())
    x, inputs = _verification_inputs(bundle, images, n_inputs, seed)
    tf_version = _tensorflow_version()  # MissingExtraError before any work if absent
    engine = load_engine()  # likewise without LiteRT
    if task is not None:
        from .task_tflite import export_task_tflite

        settings = _settings(tf_version, f"{engine.name} {engine.version}", tols, inputs)
        report = TFLiteExportReport(bundle.path, inputs)
        export_task_tflite(bundle, task, precisions, [v.id for v in chosen], x, inputs,
                           settings, tols, report, force=force, progress=progress)
        return _finish(report, t_start)
    if subnets:  # members not listed yet become listed: the manifest records files per variant
        if added := list_members(bundle, ids):
            log.info("listed %d more subnets for their TFLite files: %s", len(added), added)
            bundle = Bundle.open(bundle.path, verify="size")
        chosen = [bundle.variant(i) for i in ids]
    settings = _settings(tf_version, f"{engine.name} {engine.version}", tols, inputs)
    sid = settings["settings_id"]
    log.info("TFLite export of %d variants x %s from %s; verifying on %s", len(chosen),
             precisions, bundle.path, inputs)
    report = TFLiteExportReport(bundle.path, inputs)
    family = None  # Family (stitches) or SubnetTFLite, made on first need
    space = bundle.variant_space()
    total = len(chosen) * len(precisions)
    with Progress(total, "export tflite", enabled=progress) as bar:
        for v in chosen:
            todo = []
            for prec in precisions:
                rel = tflite_rel_path(v, prec)
                rec = None if force else _already_done(bundle.path, bundle.manifest, v, prec,
                                                       rel, sid)
                if rec is not None:
                    report.results.append(TFLiteFileResult(
                        v.id, prec, "skipped", rel, rec["bytes"], rec["max_abs_diff"],
                        rec.get("allowed_abs_diff"), rec["top1_agreement"],
                        reason="already recorded (same settings, sha256 matches)"))
                    bar.update(note=f"{v.id} {prec} skipped")
                else:
                    todo.append((prec, rel))
            if not todo:
                continue
            if family is None:
                tf = _require_tensorflow()
                if subnets:
                    from .subnet_tflite import SubnetTFLite

                    family = SubnetTFLite(bundle)
                else:
                    family = bundle.load_family()
            ref = family.reference(v.id, x) if subnets else _reference(bundle, v, x)
            with tempfile.TemporaryDirectory(prefix="snrt-tflite-") as work:
                saved = Path(work) / "saved_model"
                if subnets:
                    family.save(tf, v.id, saved)
                else:
                    _TFRouteBuilder(family, tf).save(
                        space.get(v.id).route.pieces(space.depth), saved)
                gc.collect()  # the variables are in the SavedModel now; free the TF copies
                for prec, rel in todo:
                    res = _export_one(tf, bundle.path, Slot(v.id), prec, rel, saved, x, ref,
                                      tols[prec], settings, inputs)
                    report.results.append(res)
                    bar.update(note=f"{v.id} {prec} {res.status}")
    return _finish(report, t_start)


def _finish(report: TFLiteExportReport, t_start: float) -> TFLiteExportReport:
    report.seconds = time.monotonic() - t_start
    for r in report.refused + report.failed:
        log.warning("TFLite %s %s %s: %s", r.variant, r.precision, r.status, r.reason)
    log.info("TFLite export: %d exported, %d skipped, %d refused, %d failed in %.1fs",
             len(report.exported), len(report.skipped), len(report.refused),
             len(report.failed), report.seconds)
    return report


@dataclass(frozen=True)
class Slot:
    """Where a TFLite file's record lives in the manifest: a variant's
    `exports["tflite"]`, or (with `task`) the task record's `exports[variant]["tflite"]`."""

    variant: str
    task: str | None = None

    @property
    def label(self) -> str:
        return self.variant if self.task is None else f"{self.variant}@{self.task}"

    def _owner(self, m: Manifest, create: bool) -> dict:
        if self.task is None:
            return next(v for v in m.variants if v.id == self.variant).exports
        t = next(t for t in m.tasks if t.name == self.task).exports
        return t.setdefault(self.variant, {}) if create else t.get(self.variant, {})

    def records(self, m: Manifest, *, create: bool = False) -> dict:
        """precision -> record (a new empty table with create, else possibly a throwaway)."""
        owner = self._owner(m, create)
        return owner.setdefault("tflite", {}) if create else owner.get("tflite", {})

    def prune(self, m: Manifest) -> None:
        """Drop the empty tables a removed record leaves."""
        owner = self._owner(m, False)
        if "tflite" in owner and not owner["tflite"]:
            del owner["tflite"]
        if self.task is not None and not owner:
            next(t for t in m.tasks if t.name == self.task).exports.pop(self.variant, None)


def _export_one(tf, bundle_path: Path, slot: Slot, prec: str, rel: str, saved: Path,
                x: np.ndarray, ref: np.ndarray, tol: Tolerance, settings: dict,
                inputs: dict) -> TFLiteFileResult:
    """Convert the SavedModel at `saved` to `prec`, verify it against `ref` and record it in
    `slot` (or refuse it, dropping a stale record)."""
    label = slot.label
    final = bundle_path / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        data = _convert(tf, saved, prec)
    except Exception as e:  # the converter raises many types (ConverterError, MLIR errors)
        log.debug("conversion of %s %s failed", label, prec, exc_info=True)
        return TFLiteFileResult(label, prec, "failed", reason=f"converter: {type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0][:200] if str(e) else ''}")
    convert_s = time.monotonic() - t0
    info = read_tflite_info(data)
    if not info.builtin_only:
        return TFLiteFileResult(label, prec, "refused", bytes=len(data), convert_s=convert_s,
                                reason=f"non-builtin ops {info.custom_ops}")
    tmp = final.with_name(f".{final.name}.{os.getpid()}.verify")
    try:
        atomic_write_bytes(tmp, data)
        try:
            with TFLiteRunner(tmp, threads=1, layout=LAYOUT) as runner:
                out = runner.run(x)
        except (ModelFileError, SnrtError) as e:
            return TFLiteFileResult(label, prec, "failed", bytes=len(data), convert_s=convert_s,
                                    reason=f"runtime: {e}")
        diff = float(np.abs(out - ref).max()) if np.isfinite(out).all() else math.inf
        top1 = float((out.argmax(1) == ref.argmax(1)).mean())
        allowed = tol.allowed(float(np.abs(ref).max()))
        res = TFLiteFileResult(label, prec, "exported", rel, len(data), diff, allowed, top1,
                               convert_s)
        if not diff <= allowed:
            res.status, res.file = "refused", None
            res.reason = (f"max|Δlogit| {diff:.3g} > allowed {allowed:.3g} (atol {tol.atol:g} + "
                          f"rtol {tol.rtol:g} x max|ref| {np.abs(ref).max():.3g})")
            if _drop_record(bundle_path, slot, prec, rel):
                final.unlink(missing_ok=True)
                log.warning("removed the earlier TFLite %s file of %s: it fails verification "
                            "now", prec, label)
            return res
        _drop_record(bundle_path, slot, prec, rel)  # the old file goes; keep manifest honest
        os.replace(tmp, final)
        os.chmod(final, 0o644)  # the temporary file was private (mkstemp); bundles are shared
    finally:
        if tmp.exists():
            tmp.unlink()
    record = {"file": rel, "bytes": len(data), "max_abs_diff": diff, "allowed_abs_diff": allowed,
              "top1_agreement": top1, "n_inputs": len(x), "layout": LAYOUT,
              "inputs": inputs["kind"], "settings_id": settings["settings_id"],
              "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    def mutate(manifest: Manifest, path: Path) -> None:
        slot.records(manifest, create=True)[prec] = record
        record_file(manifest, path, rel)
        _set_settings(manifest, settings)

    update_manifest(bundle_path, mutate)
    log.info("%s %s: %.2f MB, max|Δ| %.2e (allowed %.2e), top-1 %.2f, converted in %.1fs",
             label, prec, len(data) / 1e6, diff, allowed, top1, convert_s)
    return res


def _set_settings(manifest: Manifest, settings: dict) -> None:
    """manifest.exports["tflite"] = the settings of this run; settings of earlier runs stay
    under "earlier_settings" while some record still refers to them."""
    old = manifest.exports.get("tflite") or {}
    earlier = dict(old.get("earlier_settings", {}))
    if old.get("settings_id") and old["settings_id"] != settings["settings_id"]:
        earlier[old["settings_id"]] = {k: v for k, v in old.items() if k != "earlier_settings"}
    used = {r.get("settings_id") for v in manifest.variants
            for r in v.exports.get("tflite", {}).values()}
    used |= {r.get("settings_id") for t in manifest.tasks for e in t.exports.values()
             for r in e.get("tflite", {}).values()}
    earlier = {k: v for k, v in earlier.items() if k in used and k != settings["settings_id"]}
    manifest.exports["tflite"] = {**settings, **({"earlier_settings": earlier} if earlier else {})}


def _open_for_export(path: Path) -> Bundle:
    """Open a bundle whose ONNX side must be intact (sizes checked) while damaged or missing
    TFLite files only lose their records (so that they can be exported again)."""
    bundle = Bundle.open(path, verify=False)
    for rel, info in bundle.manifest.files.items():
        if rel.startswith(TFLITE_DIR + "/"):
            continue
        p = bundle.path / rel
        if not p.is_file() or p.stat().st_size != info["bytes"]:
            raise BundleError(f"{p}: missing or not the size the manifest says; the bundle's "
                              "ONNX graphs are the export's source: re-export the bundle")
    for v in bundle.variants:
        for prec, rec in list(v.exports.get("tflite", {}).items()):
            p, info = bundle.path / rec["file"], bundle.manifest.files.get(rec["file"])
            if not info or not p.is_file() or p.stat().st_size != info["bytes"]:
                log.warning("%s: TFLite %s file of %s is missing or damaged; dropping its "
                            "record", p, prec, v.id)
                _drop_record(bundle.path, Slot(v.id), prec, rec["file"])
    for t in bundle.manifest.tasks:
        for vid, e in t.exports.items():
            for prec, rec in list(e.get("tflite", {}).items()):
                p, info = bundle.path / rec["file"], bundle.manifest.files.get(rec["file"])
                if not info or not p.is_file() or p.stat().st_size != info["bytes"]:
                    log.warning("%s: TFLite %s file of %s@%s is missing or damaged; dropping "
                                "its record", p, prec, vid, t.name)
                    _drop_record(bundle.path, Slot(vid, t.name), prec, rec["file"])
    return Bundle.open(path, verify="size")


def _drop_record(bundle_path: Path, slot: Slot, prec: str, rel: str) -> bool:
    """Remove the manifest record of a slot/precision (and `rel` from the file table),
    without checking the listed files first: this is for bundles where one is damaged."""
    dropped = {}

    def mutate(m: Manifest, _path: Path) -> None:
        old = slot.records(m).pop(prec, None)
        dropped["old"] = old
        for f in {rel, (old or {}).get("file")} - {None}:
            m.files.pop(f, None)
        slot.prune(m)

    update_manifest(bundle_path, mutate, verify=False)
    return dropped.get("old") is not None
