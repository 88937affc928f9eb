"""The manifest is not trusted as written (issue 14, items 3 and 11): a digest protects it, every
field is validated on load, every file a variant uses must be listed and hashed, and each
variant's piece chain must be the one its route gives. Each test edits a copy of the shipped
bundle the way a damaged or hand-edited manifest would be, re-stamping the digest (computed here
from the documented canonical form, not with snrt's function) so that the check under test, not
the digest, is what must catch it."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import snrt
from snrt.bundle import Bundle
from snrt.errors import BundleError


def canonical_digest(d: dict) -> str:
    """sha256 of the JSON without `digest`, sorted keys, no whitespace (the documented form)."""
    body = {k: v for k, v in d.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture
def shipped(tmp_path) -> Path:
    dst = tmp_path / "default.snrt"
    shutil.copytree(snrt.default_bundle(), dst)
    return dst


def load(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text("utf-8"))


def save(bundle: Path, d: dict, *, restamp: bool = True) -> None:
    if restamp and d.get("schema_version", 1) >= 2:
        d["digest"] = canonical_digest(d)
    (bundle / "manifest.json").write_text(json.dumps(d, indent=1), "utf-8")


def edit(bundle: Path, fn, *, restamp: bool = True) -> None:
    d = load(bundle)
    fn(d)
    save(bundle, d, restamp=restamp)


def variant(d: dict, vid: str) -> dict:
    return next(v for v in d["variants"] if v["id"] == vid)


def flip_byte(p: Path, at: int) -> None:
    raw = bytearray(p.read_bytes())
    raw[at] ^= 0xFF
    p.write_bytes(bytes(raw))


X = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)


# ----------------------------------------------------------------------------- digest

def test_shipped_manifest_is_current_and_its_digest_is_the_documented_one():
    d = load(snrt.default_bundle())
    assert d["schema_version"] == 2
    assert d["digest"] == canonical_digest(d)
    assert Bundle.open(snrt.default_bundle()).digest == d["digest"]


def test_an_edit_without_a_new_digest_is_refused(shipped):
    edit(shipped, lambda d: variant(d, "ti").__setitem__("flops", 1), restamp=False)
    with pytest.raises(BundleError, match=r"manifest\.json: the manifest's digest does not "
                                          r"match its content.*restore it or re-export"):
        Bundle.open(shipped, verify=False)


def test_the_digest_can_be_pinned(shipped):
    good = load(shipped)["digest"]
    assert Bundle.open(shipped, expected_digest=good).digest == good
    assert Bundle.open(shipped, expected_digest=good.split(":")[1].upper()).digest == good
    wrong = "sha256:" + "0" * 64
    with pytest.raises(BundleError, match=r"manifest\.json: manifest digest .* was expected "
                                          r"\(pinned\)"):
        Bundle.open(shipped, expected_digest=wrong)
    with pytest.raises(BundleError, match="not a sha256"):
        Bundle.open(shipped, expected_digest="abc")
    with pytest.raises(BundleError, match="pinned"):
        snrt.Runtime(shipped, variants=["ti"], expected_digest=wrong)
    b = Bundle.open(shipped)
    with pytest.raises(BundleError, match="pinned"):
        snrt.Runtime(b, variants=["ti"], expected_digest=wrong)
    snrt.Runtime(b, variants=["ti"], expected_digest=good).close()
    # a deliberate edit with a recomputed digest opens, but not under the old pin
    edit(shipped, lambda d: d["provenance"].__setitem__("note", "edited"))
    Bundle.open(shipped)
    with pytest.raises(BundleError, match="pinned"):
        Bundle.open(shipped, expected_digest=good)


# ----------------------------------------------------------------------------- files

def test_weights_file_missing_from_the_file_table_is_refused(shipped):
    """Item 3: drop weights.bin from `files` and flip one of its bytes; before, every variant
    ran on the corrupted weights with no error."""
    flip_byte(shipped / "graphs" / "weights.bin", 5000)
    edit(shipped, lambda d: d["files"].pop("graphs/weights.bin"))
    with pytest.raises(BundleError, match=r"manifest\.json: files: 'graphs/weights\.bin' is "
                                          r"not listed"):
        Bundle.open(shipped)


def test_graph_reading_an_unlisted_file_is_refused(shipped):
    """The same with the tensors table emptied too, so only the graphs' own external-data
    references show that weights.bin is read: refused on open, and with verification off
    before any session is created."""
    flip_byte(shipped / "graphs" / "weights.bin", 5000)

    def unlist(d):
        d["files"].pop("graphs/weights.bin")
        d["tensors"] = {}

    edit(shipped, unlist)
    msg = r"\.onnx: reads external data from 'weights\.bin' \(graphs/weights\.bin\), which .* " \
          r"does not list"
    with pytest.raises(BundleError, match=msg):
        Bundle.open(shipped)
    b = Bundle.open(shipped, verify=False)
    for placement in ("pieces", "graphs"):
        with pytest.raises(BundleError, match=msg):
            snrt.Runtime(b, variants=["s"], placement=placement)


def _retarget_external_data(bundle: Path, rel: str, location: str) -> None:
    """Point every external tensor of graph `rel` at `location`; update its hash."""
    import onnx

    path = bundle / rel
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(m.SerializeToString())

    def rehash(d):
        d["files"][rel] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                           "bytes": path.stat().st_size}

    edit(bundle, rehash)


def test_graph_reading_outside_the_bundle_is_refused(shipped):
    shutil.copy(shipped / "graphs" / "weights.bin", shipped.parent / "weights.bin")
    _retarget_external_data(shipped, "graphs/p_s.block0.onnx", "../../weights.bin")
    with pytest.raises(BundleError, match=r"p_s\.block0\.onnx: reads external data from "
                                          r"'\.\./\.\./weights\.bin', outside the bundle"):
        Bundle.open(shipped)


def test_graph_reading_another_listed_file_is_refused(shipped):
    """A listed file that is not where the tensors are (e.g. another graph) is caught by the
    offsets check or the tensors table, not run."""
    _retarget_external_data(shipped, "graphs/p_s.block0.onnx", "p_s.block1.onnx")
    with pytest.raises(BundleError, match=r"p_s\.block0\.onnx: tensor .* reads bytes"):
        Bundle.open(shipped, verify="size")


def test_swapped_piece_graphs_are_refused(shipped):
    """Two records of the same kind, anchor and FLOPs with their graphs swapped pass every
    manifest rule; the graph's own name gives it away, on open and before first use."""
    def swap(d):
        a = next(p for p in d["pieces"] if p["id"] == "s.block0")
        b = next(p for p in d["pieces"] if p["id"] == "s.block1")
        a["graph"], b["graph"] = b["graph"], a["graph"]

    edit(shipped, swap)
    msg = r"p_s\.block(0|1)\.onnx: holds the graph of 's\.block\1', but the manifest lists " \
          r"it as the graph of 's\.block(?!\1)[01]'"
    with pytest.raises(BundleError, match=msg):
        Bundle.open(shipped)
    with pytest.raises(BundleError, match=msg):
        snrt.Runtime(Bundle.open(shipped, verify=False), variants=["s"], placement="pieces")


def test_swapped_variant_graphs_are_refused(shipped):
    def swap(d):
        a, b = variant(d, "ti"), variant(d, "s")
        a["graph"], b["graph"] = b["graph"], a["graph"]

    edit(shipped, swap)
    with pytest.raises(BundleError, match=r"holds the graph of '(ti|s)', but the manifest lists "
                                          r"it as the graph of '(?!\1)(ti|s)'"):
        Bundle.open(shipped)


# ----------------------------------------------------------------------------- chains

def test_cut_piece_chain_is_refused(shipped):
    """Item 3: cut `s`'s chain to [embed, block0, block1, head]; before, `s` returned wrong
    logits silently."""
    edit(shipped, lambda d: variant(d, "s").__setitem__(
        "pieces", ["s.embed", "s.block0", "s.block1", "s.head"]))
    with pytest.raises(BundleError, match=r"manifest\.json: variants\[1\]\.pieces\[3\]: "
                                          r"\"s\.head\", but the route of 's' has \"s\.block2\""):
        Bundle.open(shipped)


@pytest.mark.parametrize("change, field", [
    (lambda v: v["pieces"].__setitem__(3, "s.block3"), r"variants\[1\]\.pieces\[3\]"),
    (lambda v: v["pieces"].reverse(), r"variants\[1\]\.pieces\[0\]"),
    (lambda v: v["pieces"].append("s.head"),
     r"variants\[1\]\.pieces: 15 entries, but the route of 's' has 14"),
    (lambda v: v.__setitem__("stitches", [{"front": "s", "end": "b", "front_block": 3,
                                           "end_block": 3, "layer": 3}]),
     r"variants\[1\]\.stitches: 1 entries, but the route of 's' has 0"),
    (lambda v: v.__setitem__("flops", v["flops"] + 1), r"variants\[1\]\.flops"),
    (lambda v: v.__setitem__("params", v["params"] - 1), r"variants\[1\]\.params"),
    (lambda v: v.__setitem__("cfg_id", 0), r"variants\[1\]\.cfg_id: 0 is also"),
    (lambda v: v.__setitem__("id", "ti"), r"variants\[1\]\.id: 'ti' is also"),
    (lambda v: v.__setitem__("id", "s>x@3:3"), r"variants\[1\]\.id: 's>x@3:3' is not a "
                                               r"variant of this family"),
])
def test_variant_records_must_be_what_the_route_gives(shipped, change, field):
    edit(shipped, lambda d: change(variant(d, "s")))
    with pytest.raises(BundleError, match=rf"manifest\.json: {field}.*re-export"):
        Bundle.open(shipped, verify=False)


def test_piece_records_must_be_what_the_family_gives(shipped):
    def retarget(d):
        p = next(p for p in d["pieces"] if p["id"] == "ti.block3")
        p["kind"] = "head"

    edit(shipped, retarget)
    with pytest.raises(BundleError, match=r"pieces\[\d+\]\.kind: \"head\", but piece "
                                          r"'ti\.block3' of this family has \"block\""):
        Bundle.open(shipped, verify=False)


# ----------------------------------------------------------------------------- fields

FIELD_CASES = {
    # item 3's five crashes, each now an error naming the field
    "bytes missing": (lambda d: d["files"]["graphs/weights.bin"].pop("bytes"),
                      r'files\["graphs/weights\.bin"\]\.bytes: missing'),
    "unknown piece": (lambda d: d["variants"][0]["pieces"].__setitem__(1, "nope.block9"),
                      r"variants\[0\]\.pieces\[1\]: no piece 'nope\.block9' in pieces"),
    "crop_pct 0": (lambda d: d["preprocess"].__setitem__("crop_pct", 0),
                   r"preprocess\.crop_pct: 0 is out of range \(0\.0, 1\.0\]"),
    "std 0": (lambda d: d["preprocess"].__setitem__("std", [0]),
              r"preprocess\.std\[0\]: 0 is out of range"),
    "labels short": (lambda d: d.__setitem__("labels", d["labels"][:3]),
                     r"labels: 3 labels for 10 classes"),
    # and their neighbours
    "crop_pct > 1": (lambda d: d["preprocess"].__setitem__("crop_pct", 1.5),
                     r"preprocess\.crop_pct: 1\.5 is out of range"),
    "std negative": (lambda d: d["preprocess"].__setitem__("std", [-0.3]),
                     r"preprocess\.std\[0\]"),
    "mean as text": (lambda d: d["preprocess"].__setitem__("mean", ["0.1"]),
                     r"preprocess\.mean\[0\]: expected a number, got a string"),
    "std per channel": (lambda d: d["preprocess"].__setitem__("std", [0.3, 0.3, 0.3]),
                        r"preprocess\.std: 3 values for 1 channels"),
    "channels": (lambda d: d["preprocess"].__setitem__("channels", "RGB"),
                 r"preprocess\.channels: RGB \(3 channels\), but the anchors take 1"),
    "img_size": (lambda d: d["preprocess"].__setitem__("img_size", 0),
                 r"preprocess\.img_size: 0 is out of range"),
    "img_size vs anchors": (lambda d: d["preprocess"].__setitem__("img_size", 32),
                            r"preprocess\.img_size: 32, but the anchors take 28"),
    "interpolation": (lambda d: d["preprocess"].__setitem__("interpolation", "cubic"),
                      r"preprocess\.interpolation: \"cubic\"; expected one of"),
    "preprocess field dropped": (lambda d: d["preprocess"].pop("crop_pct"),
                                 r"preprocess\.crop_pct: missing"),
    "label type": (lambda d: d["labels"].__setitem__(2, 2), r"labels\[2\]: expected a string"),
    "labels long": (lambda d: d["labels"].append("10"), r"labels: 11 labels for 10 classes"),
    "sha256 format": (lambda d: d["files"]["graphs/weights.bin"].__setitem__("sha256", "x"),
                      r'files\["graphs/weights\.bin"\]\.sha256'),
    "bytes negative": (lambda d: d["files"]["graphs/weights.bin"].__setitem__("bytes", -1),
                       r'files\["graphs/weights\.bin"\]\.bytes: -1 is out of range'),
    "piece graph unlisted": (lambda d: d["files"].pop(d["pieces"][0]["graph"]),
                             r"pieces\[0\]\.graph: 'graphs/p_ti\.embed\.onnx' is not listed"),
    "variant graph unlisted": (lambda d: d["files"].pop(d["variants"][2]["graph"]),
                               r"variants\[2\]\.graph: '.*' is not listed"),
    "config img_size": (lambda d: d["family"]["anchors"][1]["config"].__setitem__("img_size",
                                                                                  -28),
                        r"family\.anchors\[1\]\.config\.img_size: -28 is out of range"),
    "config heads": (lambda d: d["family"]["anchors"][0]["config"].__setitem__("num_heads", 5),
                     r"family\.anchors\[0\]\.config\.num_heads: 5 does not divide"),
    "config bool": (lambda d: d["family"]["anchors"][0]["config"].__setitem__("qkv_bias", 1),
                    r"family\.anchors\[0\]\.config\.qkv_bias: expected true or false"),
    "anchor name": (lambda d: d["family"]["anchors"][0].__setitem__("name", "t.i"),
                    r"family\.anchors\[0\]\.name: \"t\.i\" is not of the form"),
    "window": (lambda d: d["family"]["stitching"].__setitem__("window", 0),
               r"family\.stitching\.window: 0 is out of range"),
    "stitching pairs": (lambda d: d["family"]["stitching"]["pairs"].pop(),
                        r"family\.stitching\.pairs: .*but these anchors and settings give"),
    "family kind": (lambda d: d["family"].__setitem__("kind", "ufo"),
                    r"family\.kind: 'ufo'; this snrt knows"),
    "family field": (lambda d: d["family"].__setitem__("subnets", {}),
                     r"family\.subnets: unknown field"),
    "input shape": (lambda d: d["input"].__setitem__("shape", ["batch", 3, 28, 28]),
                    r"input\.shape: .*the anchors give \[\"batch\", 1, 28, 28\]"),
    "top1": (lambda d: d["variants"][4].__setitem__("accuracy", {"top1": 140.0}),
             r"variants\[4\]\.accuracy\.top1: 140\.0 is out of range"),
    "tflite file unlisted": (lambda d: d["variants"][0].__setitem__(
        "exports", {"tflite": {"fp32": {"file": "tflite/fp32/v000_ti.tflite", "bytes": 1}}}),
        r"variants\[0\]\.exports\.tflite\.fp32\.file: 'tflite/fp32/v000_ti\.tflite' is not "
        r"listed"),
    "tensor past the end": (lambda d: d["tensors"]["ti.pos_embed"].__setitem__("offset",
                                                                              10 ** 9),
                            r'tensors\["ti\.pos_embed"\]: bytes .* lie past the end'),
    "tensor source": (lambda d: d["tensors"]["ti.pos_embed"].__setitem__("source", "x.pos"),
                      r'tensors\["ti\.pos_embed"\]\.source'),
    "unknown top-level field": (lambda d: d.__setitem__("extra", 1),
                                r"manifest\.extra: unknown field"),
    "field dropped": (lambda d: d.pop("labels"), r"manifest\.labels: missing"),
    "no variants": (lambda d: d.__setitem__("variants", []),
                    r"variants: 0 entries, at least 1 needed"),
    "path escapes": (lambda d: d["files"].__setitem__("graphs/../../x", {"sha256": "0" * 64,
                                                                         "bytes": 1}),
                     r'files\["graphs/\.\./\.\./x"\]: file path .* escapes the bundle'),
}


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_bad_fields_are_named(shipped, case):
    change, field = FIELD_CASES[case]
    edit(shipped, change)
    with pytest.raises(BundleError) as e:
        Bundle.open(shipped)
    msg = str(e.value)
    assert msg.startswith(str(shipped / "manifest.json") + ": "), msg
    assert __import__("re").search(field, msg), msg
    assert "re-export" in msg or "restore" in msg, msg


def test_non_finite_numbers_in_the_json_text_are_refused(shipped):
    text = (shipped / "manifest.json").read_text("utf-8")
    text = text.replace('"std": [\n   0.3081\n  ]', '"std": [NaN]', 1)
    assert "NaN" in text
    (shipped / "manifest.json").write_text(text, "utf-8")
    with pytest.raises(BundleError, match=r"not valid JSON .*non-finite number NaN"):
        Bundle.open(shipped)


def test_a_valid_bundle_still_runs(shipped):
    """The checks refuse damage, not valid bundles: a copy opens and every variant runs."""
    b = Bundle.open(shipped)
    with snrt.Runtime(b, placement="pieces") as rt:
        out = {v.id: rt.infer(X, variant=v.id) for v in b.variants}
    assert all(o.shape == (2, 10) and np.isfinite(o).all() for o in out.values())


# ----------------------------------------------------------------------------- writing, CLI

def test_invalid_manifests_are_never_written(shipped):
    from snrt.bundle import update_manifest

    before = (shipped / "manifest.json").read_bytes()

    def bad(m, _path):
        m.variants[0].pieces = m.variants[0].pieces[:2]

    with pytest.raises(BundleError, match=r"\(not written\): variants\[0\]\.pieces"):
        update_manifest(shipped, bad)
    assert (shipped / "manifest.json").read_bytes() == before


def test_info_exits_nonzero_on_a_variant_with_a_missing_piece(shipped, caplog):
    """Item 11 (part): `snrt-export info` exited 0 on a bundle whose variant names a missing
    piece."""
    from exporters.cli import main

    edit(shipped, lambda d: d["pieces"].remove(next(p for p in d["pieces"]
                                                    if p["id"] == "s.block5")))
    with caplog.at_level(logging.ERROR):
        assert main(["info", str(shipped)]) == 1
    assert "variants[1].pieces[6]: no piece 's.block5' in pieces" in caplog.text


def test_info_prints_and_checks_the_digest(shipped, capsys):
    from exporters.cli import main

    digest = load(shipped)["digest"]
    assert main(["info", str(shipped)]) == 0
    assert f"digest {digest}" in capsys.readouterr().out
    assert main(["info", str(shipped), "--expect-digest", digest]) == 0
    assert main(["info", str(shipped), "--expect-digest", "sha256:" + "1" * 64]) == 1


def test_rewrite_migrates_version_1_and_leaves_every_other_file_alone(shipped, caplog,
                                                                      capsys):
    from exporters.cli import main

    d = load(shipped)
    d.pop("digest")
    d["schema_version"] = 1
    d["provenance"].pop("schema_migrations", None)
    d.pop("tasks", None)  # version 1 had no tasks (their files stay listed in `files`)
    save(shipped, d)
    with caplog.at_level(logging.WARNING):
        v1 = Bundle.open(shipped)
    assert v1.manifest.schema_version == 1 and "has no digest" in caplog.text
    others = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shipped.rglob("*")
              if p.is_file() and p.name != "manifest.json"}
    assert main(["info", str(shipped), "--rewrite"]) == 0
    new = load(shipped)
    assert new["schema_version"] == 2 and new["digest"] == canonical_digest(new)
    assert f"digest {new['digest']}" in capsys.readouterr().out
    assert new["provenance"]["schema_migrations"][-1]["previous_digest"] == v1.digest
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in others} == others
    assert main(["info", str(shipped), "--rewrite"]) == 0  # idempotent on version 2
    assert load(shipped)["digest"] == new["digest"]
    # the rewritten manifest carries the same content apart from the schema fields
    for k in ("variants", "pieces", "files", "tensors", "preprocess", "labels", "family"):
        assert new[k] == d[k], k


def test_rewrite_refuses_a_damaged_bundle(shipped):
    from exporters.cli import main

    flip_byte(shipped / "graphs" / "weights.bin", 100)
    before = (shipped / "manifest.json").read_bytes()
    assert main(["info", str(shipped), "--rewrite"]) == 1
    assert (shipped / "manifest.json").read_bytes() == before


def test_interpolations_are_the_ones_preprocessing_knows():
    from snrt import preprocess
    from snrt.manifest import INTERPOLATIONS

    assert set(INTERPOLATIONS) == set(preprocess._RESAMPLE)
