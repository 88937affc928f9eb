"""`snrt-export subnets`: a supernet and a space of elastic subnets -> a bundle (or one ONNX).

    snrt-export subnets --supernet vit.safetensors --space poa [--widths 192,256 --depths 8-12] \\
        --out vit.snrt
    snrt-export subnets --supernet ufo_vitb.safetensors --space ufo [--archs archs.txt |
        --sample 200] --out ufo.snrt
    snrt-export subnets --supernet vit.safetensors --space poa --standalone w256d10 --out s.onnx
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

from snrt.bundle import BundleWriter
from snrt.errors import SnrtError
from snrt.family.supernet import load_supernet
from snrt.variants.common import SpaceSpecError
from snrt.variants.subnets import SubnetSpace, builtin_table

from .onnx_graph import DEFAULT_OPS
from .subnet_graph import SUBNET_OPS

log = logging.getLogger("snrt.export")

HELP = """Export the elastic subnets of one supernet (a timm ViT state dict, or a POA teacher
checkpoint) as a bundle whose pieces (an embedding, block slices, a head) share one weights
file: the runtime composes ANY member of the space from them, listed or not
(Runtime.switch("w192d5"), Runtime.infer(x, variant="j111231...")).

Spaces: 'poa' (width x depth; ids w{width}d{depth}; built-in widths 64*ceil(D/2/64)..D step
64, depths ceil(L/2)..L), 'ufo' (VIMER-UFO ViT-B's table; ids are the 1+3*depth-character arch
strings), or a JSON file with a table (see docs/subnets-contract.md). Listed variants: the
whole grid (POA), or the --archs / --sample subnets (UFO; default: the largest and the
smallest). --standalone ID writes that one subnet as a self-contained ONNX file instead."""


def add_parser(sub) -> None:
    s = sub.add_parser("subnets", help="export a supernet's elastic subnets (POA, UFO) as a "
                       "bundle, or one of them as a standalone ONNX file", description=HELP)
    s.add_argument("--supernet", required=True, metavar="WEIGHTS",
                   help="timm ViT weights (.safetensors, .npz, .pth) or a POA checkpoint")
    s.add_argument("--space", required=True, metavar="poa|ufo|SPACE.json",
                   help="built-in table name or a JSON file holding one")
    s.add_argument("--widths", metavar="W,W,...", help="POA: widths to keep (override)")
    s.add_argument("--depths", metavar="A-B|D,D,...", help="POA: depths to keep (override)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--archs", metavar="FILE", help="subnet ids to list, one per line")
    g.add_argument("--sample", type=int, metavar="N", help="list N sampled members (seeded)")
    s.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    s.add_argument("--standalone", metavar="ID", help="write only this subnet, as one "
                   "self-contained ONNX file at --out")
    s.add_argument("--ops", choices=SUBNET_OPS, default=DEFAULT_OPS,
                   help="operator form of the graphs (default %(default)s): standard = ONNX "
                        "opset 23 Attention, Gelu, LayerNormalization; decomposed = opset 17, "
                        "attention as MatMul/Softmax, GELU as Erf (snrt-export regraph converts)")
    s.add_argument("--name", help="family name recorded in the bundle (default: the file's)")
    s.add_argument("--out", required=True, help="bundle directory (or .onnx with --standalone)")
    s.add_argument("--force", action="store_true", help="replace an existing output")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _ints(text: str, flag: str) -> list[int]:
    try:
        if "-" in text and "," not in text:
            a, b = (int(x) for x in text.split("-"))
            return list(range(a, b + 1))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SnrtError(f"{flag} {text!r}: expected integers, e.g. 128,192 or 4-6") from None


def _read_table(args) -> dict | None:
    """The JSON space table of --space FILE (None for the built-in names)."""
    if args.space in ("poa", "ufo"):
        return None
    p = Path(args.space)
    try:
        t = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise SnrtError(f"--space {p}: cannot read a JSON space table ({e})") from None
    if not isinstance(t, dict):
        raise SnrtError(f"--space {p}: a space table is a JSON object")
    return t


def _head_dim(table: dict | None) -> int:
    """head_dim of a table (64 for the built-in spaces): the supernet's heads are D / head_dim."""
    hd = 64 if table is None else table.get("head_dim", 64)
    if type(hd) is not int or hd <= 0:
        raise SnrtError(f"--space: head_dim {hd!r} must be a positive integer")
    return hd


def _table(args, config, head_dim: int, table: dict | None = None) -> dict:
    if table is None:
        t = builtin_table(args.space, config, head_dim)
    else:
        t = table
    if args.widths or args.depths:
        if t.get("kind") != "poa":
            raise SnrtError("--widths/--depths apply to POA spaces only")
        t = {**t}
        if args.widths:
            t["widths"] = _ints(args.widths, "--widths")
        if args.depths:
            t["depths"] = _ints(args.depths, "--depths")
    return t


def run(args, argv) -> int:
    t0 = time.monotonic()
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SnrtError(f"{out} exists; pass --force to replace it")
    table = _read_table(args)
    head_dim = _head_dim(table)
    net = load_supernet(args.supernet, name=args.name, head_dim=head_dim)
    try:
        space = SubnetSpace(net.config, _table(args, net.config, head_dim, table))
    except SpaceSpecError as e:
        raise SnrtError(f"--space {args.space}: {e}") from None
    if args.standalone:
        from .subnet_export import export_standalone

        export_standalone(net, space, args.standalone, out, ops=args.ops)
        log.info("wrote %s: subnet %s, %.1f MB", out, args.standalone, out.stat().st_size / 1e6)
        return 0
    if args.archs:
        try:
            ids = [ln.strip() for ln in Path(args.archs).read_text().splitlines()
                   if ln.strip() and not ln.startswith("#")]
        except OSError as e:
            raise SnrtError(f"--archs {args.archs}: {e}") from None
        for i, sid in enumerate(ids):
            try:
                space.subnet(sid)
            except SnrtError as e:
                raise SnrtError(f"--archs {args.archs} line {i + 1}: {e}") from None
    elif args.sample:
        ids = space.sample(args.sample, args.seed)
    else:
        ids = space.grid() if space.kind == "poa" else space.extremes()
    space.add_listed(ids)
    from .subnet_export import export_subnets

    log.info("supernet %s: D=%d, depth %d, %.2fM params; space %s: %d members, %d listed",
             net.name, net.config.embed_dim, net.config.depth, net.num_params / 1e6,
             space.kind, space.size(), len(space))
    with BundleWriter(out) as writer:
        manifest = export_subnets(net, space, writer, progress=not args.quiet, ops=args.ops)
        manifest.provenance.update({
            "tool": "snrt-export subnets",
            "command": shlex.join(["snrt-export"] + (argv if argv is not None else sys.argv[1:])),
            "options": {k: v for k, v in vars(args).items() if k != "command"},
            "seconds": round(time.monotonic() - t0, 2)})
        writer.commit(manifest)
    size = sum(f["bytes"] for f in manifest.files.values())
    log.info("wrote %s: %d pieces, %d listed subnets, %.1f MB in %.1fs", out,
             len(manifest.pieces), len(manifest.variants), size / 1e6, time.monotonic() - t0)
    return 0
