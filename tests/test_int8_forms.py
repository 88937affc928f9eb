"""int8 (snrt-export quantize) on every operator form of the graphs, and the 7-bit weight range.

References independent of exporters/quantize.py: the fp32 graphs' logits and argmax on the
real test digits; a numpy evaluation of the dynamic-quantization arithmetic written here from
the ONNX operator definitions (DynamicQuantizeLinear: uint8, scale = (max(0, max x) -
min(0, min x)) / 255, zero point = round(-min / scale); MatMulInteger: exact integer sums)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import snrt


def _sess(p):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])


# linear weights per block that stay plain MatMuls (and so become int8) in each form: qkv,
# proj, fc1, fc2; the contrib form's com.microsoft Attention takes the qkv weight itself
LINEAR_PER_BLOCK = {"standard": 4, "contrib": 3, "decomposed": 4}


@pytest.mark.parametrize("ops", ["contrib", "decomposed"])
def test_quantize_each_operator_form_against_fp32_on_test_digits(ops, tmp_path):
    """The shipped bundle is in the standard form (tests/test_int8.py quantizes it); regraphed
    to the other forms, quantize still writes int8 graphs that agree with their fp32 graphs."""
    pytest.importorskip("mlxtend")
    from exporters.onnx_export import bundle_ops, regraph_bundle
    from exporters.quantize import quantize_bundle
    from tools.default_family_int8 import test_split

    path = tmp_path / f"{ops}.snrt"
    regraph_bundle(snrt.default_bundle(), path, ops=ops)
    rec = quantize_bundle(path, images="default", n_inputs=6)
    b = snrt.Bundle.open(path)
    assert bundle_ops(b.manifest) == ops
    for pid, rel in rec["pieces"].items():
        if ".block" in pid:
            m = onnx.load(str(path / rel), load_external_data=False)
            assert sum(n.op_type == "MatMulInteger" for n in m.graph.node) == \
                LINEAR_PER_BLOCK[ops], pid
    x, labels = test_split(b, 200)
    tol = rec["tolerance"]
    for vid in ["ti", "b", "ti>s@9:10", "s>b@5:5"]:
        s32 = _sess(b.graph_path(vid))
        s8 = _sess(b.precision_graph_path("variants", vid, "int8"))
        ref = np.concatenate([s32.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])
        got = np.concatenate([s8.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])
        assert np.abs(got - ref).max() <= tol["atol"] + tol["rtol"] * np.abs(ref).max(), vid
        assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.97, vid
        assert np.abs(got - ref).max() > 1e-4  # really int8, not the fp32 graph again
        # and the accuracy on these digits is that of fp32 within a few images
        assert abs(np.mean(got.argmax(1) == labels) - np.mean(ref.argmax(1) == labels)) <= 0.03


def _dynamic_reference(x: np.ndarray, q: np.ndarray, w_scale: np.ndarray) -> np.ndarray:
    """y = (x_q - zp) @ q * (x_scale * w_scale), from the ONNX operator definitions."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    s = np.float32((hi - lo) / 255.0)
    zp = np.clip(np.rint(-lo / s), 0, 255)
    xq = np.clip(np.rint(x / s) + zp, 0, 255)
    acc = (xq.astype(np.int64) - int(zp)) @ q.astype(np.int64)  # exact
    return acc.astype(np.float64) * (float(s) * w_scale.astype(np.float64))


def _one_matmul(tmp: Path, w: np.ndarray, qmax: int):
    """A graph y = x @ W with W in weights.bin, quantized by the exporter (weights in
    [-qmax, qmax]) into tmp/weights_int8.bin; returns (int8 session, int8 W, its scales)."""
    from exporters.quantize import _Int8Store, quantize_graph

    k, m = w.shape
    t = TensorProto(name="w^T", data_type=TensorProto.FLOAT, dims=[k, m])
    t.data_location = TensorProto.EXTERNAL
    for key, val in (("location", "weights.bin"), ("offset", "0"), ("length", str(4 * k * m))):
        e = t.external_data.add()
        e.key, e.value = key, val
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w^T"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [t])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    store = _Int8Store(qmax)
    model, n = quantize_graph(model, np.frombuffer(w.astype("<f4").tobytes(), np.uint8), store)
    assert n == 1
    (tmp / "weights_int8.bin").write_bytes(store.blob())
    onnx.save(model, tmp / "mm.int8.onnx")
    qt = store.tensors["w^T"]
    blob = store.blob()
    q = np.frombuffer(blob, np.int8, k * m, qt.data_offset).reshape(k, m)
    sc = np.frombuffer(blob, "<f4", m, qt.scale_offset)
    return _sess(tmp / "mm.int8.onnx"), q, sc


def test_int8_matmul_computes_the_exact_integer_sums(tmp_path):
    """With the exporter's 7-bit weights onnxruntime's int8 MatMul equals the exact integer
    arithmetic on every CPU (no int16 saturation in its u8 x s8 kernels); inputs with outlier
    channels, as real activations have, are the ones that would clip full-range weights."""
    from exporters.quantize import WEIGHT_QMAX

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((384, 384)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, 197, 384)).astype(np.float32)
    x[..., :4] *= 6
    s8, q, sc = _one_matmul(tmp_path, w, WEIGHT_QMAX)
    assert np.abs(q).max() == WEIGHT_QMAX == 63
    got = s8.run(None, {"x": x})[0][0]
    want = _dynamic_reference(x[0], q, sc)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # and the int8 result is near the float product (the precision's own error)
    exact = x[0].astype(np.float64) @ w
    assert np.abs(got - exact).max() <= 0.1 * np.abs(exact).max()
