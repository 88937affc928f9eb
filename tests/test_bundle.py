"""Bundle integrity: every damaged bundle fails with a message naming the file and the fix."""

from __future__ import annotations

import json
import shutil

import pytest

from snrt.bundle import Bundle
from snrt.errors import BundleError, UnknownVariantError
from snrt.manifest import manifest_digest


@pytest.fixture
def copy(tiny_family, tmp_path):
    dst = tmp_path / "b.snrt"
    shutil.copytree(tiny_family["bundle"], dst)
    return dst


def test_open_and_lookup(copy):
    b = Bundle.open(copy)
    v = b.variant("ti>s@1:2")
    assert b.variant(v.cfg_id) is v and b.variant(str(v.cfg_id)) is v
    assert b.graph_path(v).is_file()
    assert all(b.piece_path(p).is_file() for p in v.pieces)
    with pytest.raises(UnknownVariantError, match="ids look like"):
        b.variant("ti>b@1:1")
    m = b.manifest
    assert m.provenance["snrt_version"] and m.provenance["command"].startswith("snrt-export")
    assert all(len(f["sha256"]) == 64 for f in m.files.values())


@pytest.mark.parametrize("damage", ["missing", "truncated", "tampered"])
def test_damaged_files_are_named(copy, damage):
    target = copy / "graphs" / "weights.bin"
    if damage == "missing":
        target.unlink()
        msg = "missing"
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:-100])
        msg = "truncated"
    else:
        raw = bytearray(target.read_bytes())
        raw[1000] ^= 0xFF
        target.write_bytes(bytes(raw))
        msg = "sha256"
    with pytest.raises(BundleError, match=rf"weights\.bin.*{msg}.*re-export|{msg}"):
        Bundle.open(copy)


def test_manifest_problems(copy):
    mpath = copy / "manifest.json"
    d = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**d, "schema_version": 99}))
    with pytest.raises(BundleError, match="schema version 99"):
        Bundle.open(copy)
    escaped = dict(d)
    escaped["files"] = {**d["files"], "../outside": {"sha256": "0" * 64, "bytes": 1}}
    mpath.write_text(json.dumps({**escaped, "digest": manifest_digest(escaped)}))
    with pytest.raises(BundleError, match="escapes"):
        Bundle.open(copy)
    mpath.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(copy)
    mpath.unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        Bundle.open(copy)
    with pytest.raises(BundleError, match="no such bundle"):
        Bundle.open(copy / "nope")


def test_interrupted_export_leaves_no_bundle(tiny_family, tmp_path, monkeypatch):
    from exporters import onnx_export
    from exporters.cli import main

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export.WeightStore, "write", boom)
    with pytest.raises(KeyboardInterrupt):
        main(["stitch", "--snnet", str(tiny_family["ckpt"]), "--out", str(tmp_path / "x.snrt"),
              "--quiet"])
    assert not (tmp_path / "x.snrt").exists()
    assert not list(tmp_path.glob(".x.snrt.*"))  # staging directory cleaned up


def test_load_family_round_trips_the_weights(tiny_family):
    import numpy as np

    from snrt.family import family_from_snnet_checkpoint

    a = Bundle.open(tiny_family["bundle"]).load_family()
    b = family_from_snnet_checkpoint(tiny_family["ckpt"])
    for x, y in zip(a.anchors, b.anchors):
        assert x.config == y.config and set(x.weights) == set(y.weights)
        assert all(np.array_equal(x.weights[k], y.weights[k]) for k in x.weights)
    for pair in b.stitch_layers:
        for s, t in zip(a.stitch_layers[pair], b.stitch_layers[pair]):
            assert np.array_equal(s.weight, t.weight) and np.array_equal(s.bias, t.bias)
