"""Property tests: a mutated manifest or graph never crashes the loader and never opens wrong.

Bundle.open on a manifest with any field dropped, renamed, retyped or out of range, any list
truncated, reordered or duplicated, or piece ids swapped, either raises BundleError or opens a
bundle whose every variant runs exactly what the original ran (same pieces, same graph files
by sha256, same preprocessing, same weights table): never KeyError, TypeError, IndexError,
ZeroDivisionError, and never a silently different network. Mutated manifests are re-stamped
with a valid digest (computed here from the documented canonical form), so that the field
checks, not the digest, are what is tested; unstamped ones must fail on the digest.

Bounded in time: SNRT_FUZZ_EXAMPLES examples (default 40, ~15 s here); the slow suite runs 400.
No example database is written (runs must not write into the repository).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snrt
from snrt.bundle import Bundle
from snrt.errors import BundleError, ModelFileError
from snrt.onnx_file import OnnxFileInfo, read_onnx_info

EXAMPLES = int(os.environ.get("SNRT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
FUZZ_SLOW = settings(FUZZ, max_examples=10 * EXAMPLES)


def canonical_digest(d: dict) -> str:
    body = {k: v for k, v in d.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("fuzz") / "default.snrt"
    shutil.copytree(snrt.default_bundle(), dst)
    return dst


BASE_TEXT = (snrt.default_bundle() / "manifest.json").read_text("utf-8")
BASE = json.loads(BASE_TEXT)


def _paths(x, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(x, dict):
        for k, v in x.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(x, list):
        # long lists of plain values (split rows, shapes of 500 tensors): a few positions do
        items = list(enumerate(x))
        if len(items) > 40 and not isinstance(x[0], (dict, list)):
            items = items[:3] + items[-2:]
        for i, v in items:
            out += _paths(v, prefix + (i,))
    return out


# every path of the manifest, grouped by top-level section so that big free-form sections
# (provenance) do not drown the ones the loader must check
SECTIONS: dict[str, list[tuple]] = {}
for p in _paths(BASE)[1:]:
    SECTIONS.setdefault(p[0], []).append(p)


def _get(d, path):
    """The container at `path`, or None when an earlier mutation removed or retyped it."""
    for k in path:
        if isinstance(d, dict) and k in d or isinstance(d, list) and isinstance(k, int) and \
                k < len(d):
            d = d[k]
        else:
            return None
    return d


OTHER_VALUES = [None, True, False, 0, 1, -1, 0.5, 1.5, -1e9, 1e300, 2 ** 63, "", "x",
                "s.block0", "graphs/weights.bin", [], [0], ["x"], {}, {"x": 1}, float("nan")]


def mutate(data, d: dict) -> str:
    """Apply one random mutation to `d` in place; return a description."""
    draw = data.draw
    section = draw(st.sampled_from(sorted(SECTIONS)))
    paths = SECTIONS[section]
    path = paths[draw(st.integers(0, len(paths) - 1))]
    parent, key = _get(d, path[:-1]), path[-1]
    if not (isinstance(parent, dict) and key in parent or isinstance(parent, list) and
            isinstance(key, int) and key < len(parent)):
        return "no-op (an earlier mutation removed it)"
    value = parent[key]
    ops = ["drop", "retype", "range", "swap_piece_ids"]
    ops += ["rename"] if isinstance(parent, dict) else []
    ops += ["truncate"] if isinstance(value, (list, str)) and value else []
    ops += ["swap"] if isinstance(value, list) and len(value) >= 2 else []
    ops += ["duplicate"] if isinstance(value, list) and value else []
    op = draw(st.sampled_from(ops))
    where = "/".join(map(str, path))
    if op == "drop":
        del parent[key]
    elif op == "rename" and isinstance(parent, dict):
        parent[str(key) + "_x"] = parent.pop(key)
    elif op == "retype" or op == "rename":
        parent[key] = draw(st.sampled_from([v for v in OTHER_VALUES
                                            if type(v) is not type(value)]))
    elif op == "range":
        if type(value) in (int, float):
            parent[key] = draw(st.sampled_from([0, -1, value + 1, value - 1, -value,
                                                value * 1000, 1e-12, 2 ** 40]))
        elif isinstance(value, str):
            parent[key] = draw(st.sampled_from(["", value + "x", value[:-1], value.upper()]))
        elif isinstance(value, bool):
            parent[key] = not value
        else:
            parent[key] = copy.deepcopy(draw(st.sampled_from(OTHER_VALUES)))
    elif op == "truncate" and isinstance(value, (list, str)) and value:
        parent[key] = value[:draw(st.integers(0, len(value) - 1))]
    elif op == "swap" and isinstance(value, list) and len(value) >= 2:
        i, j = draw(st.lists(st.integers(0, len(value) - 1), min_size=2, max_size=2,
                             unique=True))
        value[i], value[j] = value[j], value[i]
    elif op == "duplicate" and isinstance(value, list) and value:
        value.insert(draw(st.integers(0, len(value))),
                     copy.deepcopy(value[draw(st.integers(0, len(value) - 1))]))
    elif op == "swap_piece_ids" and isinstance(d.get("pieces"), list) and len(d["pieces"]) > 1:
        ps = d["pieces"]
        i, j = draw(st.lists(st.integers(0, len(ps) - 1), min_size=2, max_size=2, unique=True))
        if isinstance(ps[i], dict) and isinstance(ps[j], dict) and "id" in ps[i] and \
                "id" in ps[j]:
            ps[i]["id"], ps[j]["id"] = ps[j]["id"], ps[i]["id"]
        where = f"pieces/{i}<->{j}"
    else:
        return f"no-op ({op} on {type(value).__name__})"
    return f"{op} {where}"


def run_view(b: Bundle) -> dict:
    """Everything that decides what a variant computes."""
    m = b.manifest
    sha = {rel: f["sha256"] for rel, f in m.files.items()}
    variants = {}
    for v in m.variants:
        variants[v.id] = {
            "index": v.index, "cfg_id": v.cfg_id, "is_anchor": v.is_anchor,
            "anchors": v.anchors, "stitches": v.stitches, "flops": v.flops,
            "params": v.params, "graph": (v.graph, sha[v.graph]),
            "pieces": [(p, b.piece(p).graph, sha[b.piece(p).graph]) for p in v.pieces],
            "tflite": {k: (r["file"], sha[r["file"]], r.get("layout"))
                       for k, r in v.exports.get("tflite", {}).items()},
        }
    return {"preprocess": m.preprocess.to_json(), "input": m.input, "output": m.output,
            "anchors": [(a["name"], a["config"]) for a in m.family["anchors"]],
            "stitching": m.family["stitching"], "tensors": m.tensors,
            "weights": sha.get("graphs/weights.bin"), "variants": variants}


ORIGINAL = None


def original_view() -> dict:
    global ORIGINAL
    if ORIGINAL is None:
        ORIGINAL = run_view(Bundle.open(snrt.default_bundle()))
    return ORIGINAL


def _finite(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def acceptable_preprocess(got: dict, want: dict) -> bool:
    """Preprocessing values a manifest may legitimately hold (any finite mean, positive std,
    crop in (0, 1], a known resampler); the structure must be the original's."""
    return (set(got) == set(want) and got["img_size"] == want["img_size"]
            and got["channels"] == want["channels"]
            and got["interpolation"] in ("bicubic", "bilinear", "nearest", "lanczos")
            and _finite(got["crop_pct"]) and 0 < got["crop_pct"] <= 1
            and len(got["mean"]) == len(got["std"]) == len(want["mean"])
            and all(_finite(m) for m in got["mean"])
            and all(_finite(s) and s > 0 for s in got["std"]))


def acceptable_configs(got: list, want: list) -> bool:
    """Only the LayerNorm epsilon is a free value (the graphs carry their own; it is read
    back only to rebuild the family for the TFLite exporter, which is verified against ONNX)."""
    strip = [(n, {k: v for k, v in c.items() if k != "norm_eps"}) for n, c in got]
    return strip == [(n, {k: v for k, v in c.items() if k != "norm_eps"}) for n, c in want] \
        and all(_finite(c["norm_eps"]) and 0 < c["norm_eps"] <= 1 for _, c in got)


def check_mutated(bundle_copy: Path, d: dict, restamp: bool, note: str) -> None:
    if restamp and isinstance(d, dict) and type(d.get("schema_version")) is int and \
            d["schema_version"] >= 2:
        try:
            d["digest"] = canonical_digest(d)
        except ValueError:  # NaN somewhere: the stamp cannot be computed; leave it stale
            pass
    (bundle_copy / "manifest.json").write_text(json.dumps(d), "utf-8")
    try:
        b = Bundle.open(bundle_copy)
    except BundleError as e:
        assert str(bundle_copy) in str(e), (note, str(e))  # it names the file
        return
    want, got = original_view(), run_view(b)
    for k in want:
        if k == "variants":
            for vid, view in got["variants"].items():
                assert view == want["variants"][vid], (note, vid)
        elif k == "preprocess" and got[k] != want[k]:
            assert acceptable_preprocess(got[k], want[k]), (note, got[k])
        elif k == "anchors" and got[k] != want[k]:
            assert acceptable_configs(got[k], want[k]), (note, got[k])
        else:
            assert got[k] == want[k], (note, k)
    labels = b.labels
    assert labels is None or len(labels) == b.manifest.output["shape"][1], note


@FUZZ
@given(data=st.data())
def test_mutated_manifest_fails_cleanly_or_opens_equivalent(bundle_copy, data):
    d = json.loads(BASE_TEXT)
    notes = [mutate(data, d) for _ in range(data.draw(st.integers(1, 3)))]
    check_mutated(bundle_copy, d, restamp=True, note="; ".join(notes))


@pytest.mark.slow
@FUZZ_SLOW
@given(data=st.data())
def test_mutated_manifest_fails_cleanly_or_opens_equivalent_long(bundle_copy, data):
    d = json.loads(BASE_TEXT)
    notes = [mutate(data, d) for _ in range(data.draw(st.integers(1, 3)))]
    check_mutated(bundle_copy, d, restamp=True, note="; ".join(notes))


@FUZZ
@given(data=st.data())
def test_mutation_without_a_new_digest_is_caught_by_the_digest(bundle_copy, data):
    d = json.loads(BASE_TEXT)
    note = mutate(data, d)
    if d == BASE:
        return  # the mutation happened to change nothing
    (bundle_copy / "manifest.json").write_text(json.dumps(d), "utf-8")
    with pytest.raises(BundleError):
        Bundle.open(bundle_copy, verify=False)
    if d.get("schema") == BASE["schema"] and d.get("schema_version") == 2 and \
            d.get("digest") == BASE["digest"]:
        with pytest.raises(BundleError, match="digest does not match|not valid JSON"):
            Bundle.open(bundle_copy, verify=False)
    assert note


def test_a_restamped_unchanged_manifest_opens(bundle_copy):
    """The property above would pass vacuously if nothing ever opened."""
    check_mutated(bundle_copy, json.loads(BASE_TEXT), restamp=True, note="none")
    assert Bundle.open(bundle_copy).digest == BASE["digest"]


# ----------------------------------------------------------------------------- graphs

GRAPHS = sorted((snrt.default_bundle() / "graphs").glob("*.onnx"))
SAMPLE_GRAPHS = [g.read_bytes() for g in (GRAPHS[0], GRAPHS[-1])]  # a piece and a variant


@FUZZ_SLOW
@given(which=st.integers(0, 1), data=st.data())
def test_damaged_graph_bytes_parse_or_raise_model_file_error(which, data):
    raw = bytearray(SAMPLE_GRAPHS[which])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del raw[i:]
        elif op == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del raw[i:i + data.draw(st.integers(1, 16))]
        if not raw:
            break
    try:
        info = read_onnx_info(bytes(raw))
    except ModelFileError:
        return
    assert isinstance(info, OnnxFileInfo) and isinstance(info.graph_name, str)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_parse_or_raise_model_file_error(raw):
    try:
        read_onnx_info(raw)
    except ModelFileError:
        pass


def test_onnx_reader_agrees_with_the_onnx_package_on_every_shipped_graph():
    onnx = pytest.importorskip("onnx")
    for path in GRAPHS:
        m = onnx.load(str(path), load_external_data=False)
        want = [(t.name, {e.key: e.value for e in t.external_data}, tuple(t.dims))
                for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        info = read_onnx_info(path)
        assert info.graph_name == m.graph.name
        assert info.inputs == tuple(i.name for i in m.graph.input)
        assert info.outputs == tuple(o.name for o in m.graph.output)
        assert [(r.tensor, r.location, r.offset, r.length, r.dims) for r in info.external] == \
               [(n, e["location"], int(e["offset"]), int(e["length"]), dims)
                for n, e, dims in want]


def test_onnx_reader_finds_external_data_wherever_onnx_puts_it(tmp_path):
    """Initializers, Constant attributes, subgraphs (If branches), sparse initializers and
    function bodies: every place onnx.external_data_helper looks."""
    pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def ext(name, loc, offset):
        t = numpy_helper.from_array(np.zeros((2, 3), np.float32), name)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", loc), ("offset", str(offset)), ("length", "24")):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    const = helper.make_node("Constant", [], ["c"], value=ext("c_value", "a.bin", 64))
    then_g = helper.make_graph([helper.make_node("Constant", [], ["y"],
                                                 value=ext("then_value", "b.bin", 0))],
                               "then", [], [helper.make_tensor_value_info("y", 1, [2, 3])])
    else_g = helper.make_graph([helper.make_node("Identity", ["c"], ["y"])], "else", [],
                               [helper.make_tensor_value_info("y", 1, [2, 3])])
    cond = helper.make_node("If", ["cond"], ["out"], then_branch=then_g, else_branch=else_g)
    sparse = helper.make_sparse_tensor(ext("sp_values", "c.bin", 128),
                                       numpy_helper.from_array(np.array([0, 1], np.int64),
                                                               "sp_idx"), [2, 3])
    graph = helper.make_graph([const, cond], "main",
                              [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("out", 1, [2, 3])],
                              [ext("w", "d.bin", 4096)], sparse_initializer=[sparse])
    fn = helper.make_function("snrt.test", "F", [], ["z"],
                              [helper.make_node("Constant", [], ["z"],
                                                value=ext("fn_value", "e.bin", 8))],
                              [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, functions=[fn],
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("snrt.test", 1)])
    info = read_onnx_info(model.SerializeToString())
    assert info.graph_name == "main"
    got = {(r.tensor, r.location, r.offset, r.length, r.dims) for r in info.external}
    assert got == {("w", "d.bin", 4096, 24, (2, 3)), ("c_value", "a.bin", 64, 24, (2, 3)),
                   ("then_value", "b.bin", 0, 24, (2, 3)),
                   ("sp_values", "c.bin", 128, 24, (2, 3)),
                   ("fn_value", "e.bin", 8, 24, (2, 3))}
    # and the onnx package's own walk finds the same tensors
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    assert {t.name for t in _get_all_tensors(model) if uses_external_data(t)} <= \
        {r[0] for r in got}
