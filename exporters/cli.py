"""snrt-export: from a family's weights to a bundle of verified variants.

    snrt-export stitch --anchors ti.safetensors s.safetensors b.safetensors \\
        (--stitch-weights snnet.pth | --calibrate images/) --out deit.snrt
    snrt-export stitch --snnet snnet_deit.safetensors --out deit.snrt
    snrt-export subnets --supernet vit.safetensors --space poa|ufo|SPACE.json --out vit.snrt
    snrt-export tflite deit.snrt --precisions fp32,int8
    snrt-export quantize deit.snrt --precision int8 [--images DIR|default]
    snrt-export tflite tasks.snrt --task faces --variants s --precisions fp32,int8
    snrt-export info deit.snrt [--expect-digest sha256:...] [--rewrite]
    snrt-export regraph deit.snrt --ops standard|contrib|decomposed [--out new.snrt]
    snrt-export regraph vit.snrt --ops standard|decomposed     # a subnet bundle
    snrt-export task deit.snrt --tuners faces.safetensors [--name faces] [--labels labels.txt]
        [--out copy.snrt]
    snrt-export --list
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from snrt.bundle import SCHEMA_VERSION, Bundle, BundleWriter, rewrite_manifest
from snrt.errors import SnrtError
from snrt.family import Family, family_from_anchor_files, family_from_snnet_checkpoint
from snrt.preprocess import load_image, preprocess_image
from snrt.stitch_fit import fit_stitch_layers
from snrt.variants import VariantSpace
from snrt.version import __version__

from . import subnet_cli
from .onnx_export import AnchorFeatures, batched, export_onnx
from .onnx_graph import DEFAULT_OPS, OPS_FORMS
from .registry import EXPORT_FORMATS
from .regraph import regraph_bundle

log = logging.getLogger("snrt.export")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="snrt-export", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"snrt {__version__}")
    p.add_argument("--list", action="store_true", help="list export formats and exit")
    sub = p.add_subparsers(dest="command")

    s = sub.add_parser(
        "stitch", help="export an SN-Net family (anchors + stitching layers) as a bundle",
        description="Export every SN-Net variant of a ViT/DeiT family as ONNX graphs sharing one "
                    "weights file. Anchors are timm state dicts (.safetensors, .npz, or .pth with "
                    "the torch extra), smallest first or in any order (sorted by width).")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--anchors", nargs="+", metavar="WEIGHTS",
                     help="one timm ViT/DeiT weights file per anchor")
    src.add_argument("--snnet", metavar="CKPT",
                     help="an SN-Net checkpoint holding anchors.{i}.* and stitch_layers.*")
    fit = s.add_mutually_exclusive_group()
    fit.add_argument("--stitch-weights", metavar="CKPT",
                     help="take the stitching layers from this SN-Net checkpoint")
    fit.add_argument("--calibrate", metavar="DIR",
                     help="fit the stitching layers by least squares on the images in DIR")
    s.add_argument("--calib-count", type=int, default=64, metavar="N",
                   help="calibration images to use (default 64)")
    s.add_argument("--calib-batch", type=int, default=8, metavar="N",
                   help="calibration batch size (default 8)")
    s.add_argument("--names", nargs="+", help="anchor names, smallest first (default ti/s/b "
                   "by width, or the checkpoint's)")
    s.add_argument("--num-heads", nargs="+", type=int,
                   help="attention heads per anchor, smallest first, when neither a config.json "
                        "beside the weights nor 'snrt.config' metadata records them (default: "
                        "64-wide heads, with a warning)")
    s.add_argument("--global-pool", choices=["token", "avg"],
                   help="how the head pools, for every anchor: 'token' (class token) or 'avg' "
                        "(mean of the patch tokens, timm's global_pool='avg'); needed when the "
                        "weights have a class token and a final norm and nothing records it "
                        "(default: token, with a warning)")
    s.add_argument("--window", type=int, default=2, help="stitching window (default 2)")
    s.add_argument("--stride", type=int, default=1, help="window stride (default 1)")
    s.add_argument("--all-pairs", action="store_true",
                   help="stitch every anchor pair, not only neighbours (SN-Net nearest=False)")
    s.add_argument("--ops", choices=sorted(OPS_FORMS), default=DEFAULT_OPS,
                   help="operator form of the graphs (default %(default)s): "
                        + "; ".join(f"{k}: {v}" for k, v in OPS_FORMS.items()))
    s.add_argument("--name", help="family name recorded in the bundle (default: from --out)")
    s.add_argument("--out", required=True, metavar="NAME.snrt", help="bundle directory to write")
    s.add_argument("--force", action="store_true", help="replace an existing bundle")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    subnet_cli.add_parser(sub)

    t = sub.add_parser(
        "tflite", help="add TFLite files (fp32, fp16, int8) to a bundle, verified",
        description="Convert a bundle's variants to builtin-ops TFLite files and verify each "
                    "one in ai-edge-litert against the ONNX graph; files over tolerance are "
                    "refused. Needs: pip install 'snrt[tflite]'. Resumes: files already "
                    "recorded with the same settings are skipped.")
    t.add_argument("bundle")
    t.add_argument("--precisions", default="fp32,fp16,int8",
                   help="comma list of fp32,fp16,int8 (default all three)")
    t.add_argument("--variants", nargs="+", metavar="ID[,ID...]",
                   help="ids or cfg_ids, space- or comma-separated (default: all listed "
                        "variants). A subnets bundle takes any member of its space, listed or "
                        "not (e.g. --variants w192d5,w256d8 or a UFO arch string; a member "
                        "not listed yet becomes listed); without --variants its listed "
                        "subnets, refused when more than 20")
    t.add_argument("--task", metavar="NAME",
                   help="export the variants with this task of the bundle (its tuners and "
                        "head; snrt-export task added it): tflite/<prec>/t_<task>.v*.tflite, "
                        "verified against the task's ONNX pieces; --variants defaults to the "
                        "task's own (refused when more than 20)")
    t.add_argument("--images", metavar="DIR", help="verify on these images (default: seeded "
                                                   "random inputs)")
    t.add_argument("--n-inputs", type=int, default=8, help="verification inputs (default 8)")
    t.add_argument("--force", action="store_true", help="re-export recorded files")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    k = sub.add_parser(
        "task", help="add a task (tuners + heads from tools/train_tuners.py) to a bundle",
        description="Check a task file against the bundle (shapes, backbone hash), export its "
                    "tuned blocks and heads as ONNX pieces that read the frozen weights from "
                    "graphs/weights.bin, and record the task in the manifest. The shipped "
                    "default bundle is read-only: name a copy with --out.")
    k.add_argument("bundle")
    k.add_argument("--tuners", required=True, metavar="TASK.safetensors",
                   help="the task file (tools/train_tuners.py --out)")
    k.add_argument("--name", help="task name (default: the file's)")
    k.add_argument("--labels", metavar="TXT", help="class labels, one per line (default: the "
                                                   "file's)")
    k.add_argument("--out", metavar="COPY.snrt",
                   help="copy the bundle here and add the task to the copy")
    k.add_argument("--force", action="store_true",
                   help="replace a task of the same name (or an existing --out)")
    k.add_argument("--graphs", metavar="all|anchors|ID,...",
                   help="also write one whole graph per variant with the task for these of its "
                        "variants (the runtime's 'graphs' placement runs them: faster for tiny "
                        "models; default none: the runtime chains the pieces)")

    q = sub.add_parser(
        "quantize", help="add int8 graphs to a bundle, the int8 weights stored once",
        description="Write every linear weight once as per-channel int8 into "
                    "graphs/weights_int8.bin and an int8 graph per piece and variant that "
                    "reads it (dynamic quantization, onnxruntime's MatMulInteger pattern); "
                    "verify each variant against its fp32 graph and record it in the manifest. "
                    "Then: snrt.Runtime(bundle, precision='int8').")
    q.add_argument("bundle")
    q.add_argument("--precision", default="int8", choices=["int8"])
    q.add_argument("--method", default="dynamic", choices=["dynamic"],
                   help="dynamic (the only one: static calibrated QDQ lost the same "
                        "accuracy and ran 1.3-1.4x slower than dynamic on the default family, "
                        "tools/int8_static_vs_dynamic.py)")
    q.add_argument("--images", metavar="DIR|default", dest="images",
                   help="verify on these images ('default': snrt's sample digits; default: "
                        "seeded random inputs)")
    q.add_argument("--n-inputs", type=int, default=8, help="verification inputs (default 8)")
    q.add_argument("--force", action="store_true", help="redo existing int8 graphs")

    r = sub.add_parser(
        "regraph", help="re-export a bundle's graphs in another operator form (--ops)",
        description="Rebuild every graph of a bundle (SN-Net stitches or elastic subnets) from "
                    "its own weights.bin in the operator form --ops; weights.bin and the tensor "
                    "table stay identical and the variants' records (routes, FLOPs, params, "
                    "accuracies), family and provenance are kept (checked; the step is "
                    "appended to provenance.regraphs). Tasks come along (their piece graphs "
                    "rebuilt in the same form, task_<name>.bin byte-identical). Subnet bundles "
                    "take standard or decomposed. For bundles of ONNX graphs only (no TFLite "
                    "or int8 files: export those again after).")
    r.add_argument("bundle")
    r.add_argument("--ops", choices=sorted(OPS_FORMS), default=DEFAULT_OPS,
                   help="operator form (default %(default)s)")
    r.add_argument("--out", metavar="NEW.snrt", help="write here (default: replace BUNDLE)")

    i = sub.add_parser("info", help="describe a bundle and verify its files",
                       description="Print a bundle's family, variants, files and manifest "
                                   "digest; verify the manifest and every file's sha256. Exits "
                                   "1 if anything is wrong.")
    i.add_argument("bundle")
    i.add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    i.add_argument("--expect-digest", metavar="SHA256",
                   help="fail unless the manifest has this digest (pin a bundle)")
    i.add_argument("--rewrite", action="store_true",
                   help="migrate the manifest to the current schema (adds/updates its digest); "
                        "verifies every file first and changes no other file")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    if args.list:
        for f in EXPORT_FORMATS.values():
            extra = f" (pip install 'snrt[{f.extra}]')" if f.extra else ""
            print(f"{f.name:8s} {','.join(f.precisions):16s} {f.description}{extra}")
        return 0
    if not args.command:
        _parser().print_help()
        return 2
    try:
        if args.command == "stitch":
            return _stitch(args, argv)
        if args.command == "subnets":
            return subnet_cli.run(args, argv)
        if args.command == "regraph":
            m = regraph_bundle(args.bundle, args.out or args.bundle, ops=args.ops)
            log.info("regraphed %s (%s ops): %d variants, %d pieces, %d tasks",
                     args.out or args.bundle, args.ops, len(m.variants), len(m.pieces),
                     len(m.tasks))
            return 0
        if args.command == "info":
            return _info(args)
        if args.command == "tflite":
            return _tflite(args)
        if args.command == "task":
            return _task(args)
        if args.command == "quantize":
            from .quantize import quantize_bundle

            quantize_bundle(args.bundle, precision=args.precision, method=args.method,
                            images=args.images, n_inputs=args.n_inputs, force=args.force)
            return 0
    except SnrtError as e:
        log.error("error: %s", e)
        return 1
    return 2


def _calibration_images(directory: Path, family: Family, count: int):
    if not directory.is_dir():
        raise SnrtError(f"--calibrate {directory}: not a directory of images")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SnrtError(f"--calibrate {directory}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    files = files[:count]
    log.info("calibrating on %d images from %s", len(files), directory)
    return [preprocess_image(load_image(f), family.preprocess) for f in files]


def _stitch(args, argv) -> int:
    t0 = time.monotonic()
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SnrtError(f"{out} exists; pass --force to replace it")
    if args.snnet:
        family = family_from_snnet_checkpoint(args.snnet, name=args.name, names=args.names,
                                              num_heads=args.num_heads,
                                              global_pool=args.global_pool)
    else:
        family = family_from_anchor_files(args.anchors, name=args.name or out.stem,
                                          names=args.names, num_heads=args.num_heads,
                                          global_pool=args.global_pool)
    space = VariantSpace([a.name for a in family.anchors], [a.config for a in family.anchors],
                         window=args.window, stride=args.stride, nearest=not args.all_pairs)
    log.info("family %s: anchors %s, %d variants", family.name,
             ", ".join(f"{a.name} (D={a.config.embed_dim}, {a.num_params / 1e6:.2f}M)"
                       for a in family.anchors), len(space))
    fit_report = None
    if args.stitch_weights:
        # only its stitching layers are used: give it the anchors' heads and pooling rather
        # than warn about guesses that do not matter
        donor = family_from_snnet_checkpoint(
            args.stitch_weights, num_heads=[a.config.num_heads for a in family.anchors],
            global_pool=family.anchors[0].config.global_pool)
        _adopt_stitch_layers(family, donor, space)
        family.sources.append(donor.sources[0])
    elif args.calibrate:
        images = _calibration_images(Path(args.calibrate), family, args.calib_count)
        tf = time.monotonic()
        feats = AnchorFeatures(family)
        try:
            report = fit_stitch_layers(family, space, batched(images, args.calib_batch), feats)
        finally:
            feats.close()
        fit_report = {
            "method": "least squares (SN-Net init), normal equations in float64",
            "images": len(images), "seconds": round(time.monotonic() - tf, 2),
            "layers": [{"pair": list(r.pair), "layer": r.layer, "positions": r.positions,
                        "rel_residual": round(r.rel_residual, 5)} for r in report],
        }
        for pair in {r.pair for r in report}:
            rs = [r.rel_residual for r in report if r.pair == pair]
            log.info("stitch fit %s>%s: 1-R² mean %.4f (min %.4f, max %.4f) over %d layers",
                     *pair, sum(rs) / len(rs), min(rs), max(rs), len(rs))
    missing = [p for p in space.pairs if len(family.stitch_layers.get(p, [])) !=
               space.num_stitch_layers]
    if len(family.anchors) > 1 and missing:
        raise SnrtError(
            "stitching layers are needed for anchor pairs "
            f"{[(family.anchors[f].name, family.anchors[e].name) for f, e in missing]}: pass "
            "--stitch-weights CKPT (trained SN-Net) or --calibrate DIR (least-squares fit)")
    with BundleWriter(out) as writer:
        manifest = export_onnx(family, space, writer, progress=not args.quiet, ops=args.ops)
        manifest.stitch_fit = fit_report
        manifest.provenance.update({
            "tool": "snrt-export stitch",
            "command": shlex.join(["snrt-export"] + (argv if argv is not None else sys.argv[1:])),
            "options": {k: v for k, v in vars(args).items() if k not in ("command",)},
            "seconds": round(time.monotonic() - t0, 2),
        })
        writer.commit(manifest)
    size = sum(f["bytes"] for f in manifest.files.values())
    log.info("wrote %s: %d variants, %d files, %.1f MB in %.1fs", out, len(manifest.variants),
             len(manifest.files), size / 1e6, time.monotonic() - t0)
    return 0


def _adopt_stitch_layers(family: Family, donor: Family, space: VariantSpace) -> None:
    """Use a checkpoint's stitching layers for anchors given separately; widths must match."""
    dw = [a.config.embed_dim for a in donor.anchors]
    fw = [a.config.embed_dim for a in family.anchors]
    if dw != fw:
        raise SnrtError(f"--stitch-weights: checkpoint anchors have widths {dw}, the given "
                        f"anchors {fw}; they must be the same family")
    for pair in space.pairs:
        if pair not in donor.stitch_layers:
            raise SnrtError(f"--stitch-weights: no stitching layers for anchors {pair}")
        family.stitch_layers[pair] = donor.stitch_layers[pair]


def _split_ids(variants: list[str] | None) -> list[str] | None:
    if variants is None:
        return None
    return [s.strip() for k in variants for s in k.split(",") if s.strip()]


def _tflite(args) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ logs are noisy
    from .tflite_export import export_tflite

    report = export_tflite(args.bundle, [p.strip() for p in args.precisions.split(",")],
                           variants=_split_ids(args.variants), images=args.images,
                           n_inputs=args.n_inputs, force=args.force, progress=not args.quiet,
                           task=args.task)
    print(report.table())
    return 0 if report.ok else 1


def _task(args) -> int:
    from .task_bundle import add_task

    b = add_task(args.bundle, args.tuners, name=args.name, labels=args.labels, out=args.out,
                 force=args.force, graphs=args.graphs)
    for t in b.tasks:
        print(f"{b.path}: task {t.name}: {len(t.labels)} labels, {len(t.pieces)} pieces, "
              f"{t.bytes / 1e3:.1f} kB, runs on {len(t.variants)} variants")
    return 0


def _info(args) -> int:
    if args.rewrite:
        if args.no_verify:
            raise SnrtError("--rewrite verifies every file first; drop --no-verify")
        digest = rewrite_manifest(args.bundle, expected_digest=args.expect_digest)
        log.info("rewrote %s (schema version %d), digest %s", Path(args.bundle) /
                 "manifest.json", SCHEMA_VERSION, digest)
    b = Bundle.open(args.bundle, verify=not args.no_verify,
                    expected_digest=None if args.rewrite else args.expect_digest)
    m = b.manifest
    print(f"{b.path}: family {b.name}, {len(b.variants)} variants, "
          f"{sum(f['bytes'] for f in m.files.values()) / 1e6:.1f} MB in {len(m.files)} files"
          f"{'' if args.no_verify else ' (sha256 verified)'}")
    print(f"  manifest schema v{m.schema_version}, digest {b.digest}")
    for a in m.family["anchors"]:
        c = a["config"]
        print(f"  anchor {a['name']:4s} D={c['embed_dim']} depth={c['depth']} "
              f"heads={c['num_heads']} img={c['img_size']} params={a['params'] / 1e6:.2f}M")
    print(f"  {'cfg':>3s}  {'id':16s} {'GFLOPs':>8s} {'Mparams':>8s} {'top1':>6s}")
    for v in b.variants:
        acc = f"{v.top1:.2f}" if v.top1 is not None else "-"
        print(f"  {v.cfg_id:3d}  {v.id:16s} {v.flops / 1e9:8.3f} {v.params / 1e6:8.2f} {acc:>6s}")
    for t in b.tasks:
        print(f"  task {t.name}: labels {t.labels[:4]}{'...' if len(t.labels) > 4 else ''}, "
              f"tuners {[x['kind'] for x in t.tuners]}, {t.params} params, "
              f"{t.bytes / 1e3:.1f} kB, {len(t.variants)} variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
