"""`snrt-export regraph`: re-export a bundle's graphs in another operator form (--ops) from the
bundle's own weights.bin, for bundles whose source weights are gone (the shipped ones).

One entry point for every bundle kind: `regraph_bundle` opens and checks the bundle, hands it
to the exporter of its kind (REGRAPHERS: family kind -> the function beside that kind's
exporter, which writes weights.bin and every graph into the new bundle), then checks what must
not change and keeps what the graphs do not decide:
- weights.bin byte-identical (sha256) and the tensor table identical;
- the variants' and pieces' records (ids, routes, FLOPs, params, graph paths, accuracies) as
  the bundle had them;
- family, stitch fit and provenance kept, this step appended to provenance["regraphs"].
Nothing is replaced unless every check holds (the writer commits at the end). Bundles holding
files the graphs' form would leave stale (TFLite, int8 graphs) are refused: regraph, then
export those again.
"""

from __future__ import annotations

import datetime as _dt
import os

from snrt.bundle import Bundle, BundleWriter, Manifest
from snrt.errors import SnrtError
from snrt.fileio import sha256_file
from snrt.variants import FAMILY_KINDS as STITCH_KINDS
from snrt.variants.subnets import FAMILY_KINDS as SUBNET_KINDS
from snrt.version import __version__

from .onnx_export import GRAPHS, bundle_ops, regraph_stitches
from .onnx_graph import DEFAULT_OPS, OPS_FORMS, WEIGHTS_FILE
from .subnet_export import regraph_subnets

REGRAPHERS = {**{k: regraph_stitches for k in STITCH_KINDS},
              **{k: regraph_subnets for k in SUBNET_KINDS}}


def _stale_files(m: Manifest) -> list[str]:
    """What the bundle holds beside its ONNX graphs that a regraph would leave stale."""
    out = [f"exports['{k}']" for k in (m.exports or {}) if k != "onnx"]
    out += [f"variant '{v.id}' TFLite files" for v in m.variants if v.exports][:3]
    out += [f"task '{t.name}' TFLite files" for t in m.tasks if t.exports]
    return out


def _records(items) -> dict[str, dict]:
    return {r.id: vars(r) for r in items}


def regraph_bundle(src: str | os.PathLike, out: str | os.PathLike, *, ops: str = DEFAULT_OPS,
                   progress: bool = False) -> Manifest:
    """Rebuild every graph of bundle `src` in operator form `ops` (OPS_FORMS) into `out` (may
    be `src`: replaced only when every check holds); returns the new manifest."""
    if ops not in OPS_FORMS:
        raise SnrtError(f"--ops {ops!r}: choose from {sorted(OPS_FORMS)}")
    b = Bundle.open(src, verify=True)
    old = b.manifest
    stale = _stale_files(old)
    if stale:
        raise SnrtError(f"{b.path}: has files beside its ONNX graphs ({', '.join(stale)}); "
                        "regraph a bundle of ONNX graphs only (a copy without them), then "
                        "export those again")
    kind = old.family.get("kind")
    rebuild = REGRAPHERS.get(kind)
    if rebuild is None:
        raise SnrtError(f"{b.path}: regraph cannot rebuild a bundle of kind {kind!r}; it "
                        f"handles {sorted(REGRAPHERS)}")
    with BundleWriter(out) as w:
        m = rebuild(b, w, ops, progress=progress)
        rel = f"{GRAPHS}/{WEIGHTS_FILE}"
        if w.files[rel]["sha256"] != sha256_file(b.file(rel)):
            raise SnrtError(f"{b.path}: re-exported weights.bin differs from the bundle's; "
                            "graphs not replaced")
        if m.tensors != old.tensors:
            raise SnrtError(f"{b.path}: re-exported tensor table differs; graphs not replaced")
        for what, new, was in (("variant", m.variants, old.variants),
                               ("piece", m.pieces, old.pieces)):
            new, was = _records(new), _records(was)
            bad = sorted(k for k in new.keys() | was.keys() if new.get(k) != was.get(k))
            if bad:
                raise SnrtError(f"{b.path}: re-exported {what} records differ from the "
                                f"bundle's ({', '.join(bad[:5])}); graphs not replaced")
        m.family = old.family
        m.stitch_fit = old.stitch_fit
        m.provenance = dict(old.provenance)
        m.provenance["regraphs"] = list(old.provenance.get("regraphs", [])) + [{
            "tool": "snrt-export regraph", "ops": ops, "from_digest": old.digest,
            "from_ops": bundle_ops(old), "snrt_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}]
        w.commit(m)
    return m
