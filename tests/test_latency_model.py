"""Latency prediction wiring: structure features -> GP -> predicted table entries."""

import numpy as np

from snrt.bundle import Bundle
from snrt.latency_model import predict_table, variant_features
from snrt.lookup_table import Entry, LookupTable, bundle_key
from snrt.profile import main, sample_variants


def test_predicts_additive_latencies_from_a_sample(tiny_family):
    """23 variants, 9 measured (40%: with 5 features, 20% of 23 would be underdetermined;
    the 71-variant case is in benchmarks/latency_predict_bench.py)."""
    b = Bundle.open(tiny_family["bundle"])
    key = bundle_key(b)
    # a device where each piece has a cost: blocks by width, stitches, per-hop overhead
    cost = {"ti": 0.10, "s": 0.30, "b": 0.55}

    def truth(v):
        pieces = [b.piece(p) for p in v.pieces]
        return 0.05 + sum(cost[p.anchor] for p in pieces if p.kind == "block") + \
            0.04 * sum(p.kind == "stitch" for p in pieces) + 0.01 * len(pieces)

    t = LookupTable.new()
    for v in sample_variants(b.variants, "40%"):
        t.put(Entry(key, v.id, v.cfg_id, "onnxruntime", "fp32", 1, truth(v), truth(v)))
    n = predict_table(t, b)
    assert n == len(b.variants) - 10
    for v in b.variants:
        e = t.get(key, v.id)
        assert abs(e.p50_ms / truth(v) - 1) < 0.05, (v.id, e.p50_ms, truth(v))
        assert e.predicted == (e.uncertainty_ms is not None)
    X = variant_features(b, b.variants)
    assert X.shape == (23, 5) and (X[:, 1:4].sum(1) > 0).all()


def test_profile_sample_writes_predictions(tiny_family, tmp_path):
    out = tmp_path / "t.json"
    assert main([str(tiny_family["bundle"]), "--sample", "30%", "--runs", "3",
                 "--min-seconds", "0", "--in-process", "--out", str(out), "--quiet"]) == 0
    t = LookupTable.load(out)
    measured = [e for e in t.entries if not e.predicted]
    predicted = [e for e in t.entries if e.predicted]
    assert len(measured) == 7 and len(predicted) == 16
    assert all(e.p50_ms > 0 and np.isfinite(e.uncertainty_ms) for e in predicted)
    # the quiet latency is predicted by its own fit, never above the p50, as measured
    assert all(e.quiet_ms is not None and e.quiet_ms <= e.p50_ms for e in measured)
    assert all(0 < e.quiet_ms <= e.p50_ms and e.conditions["quiet_uncertainty_ms"] > 0
               for e in predicted)
    # and it is its own fit, not a copy of the p50 one
    assert any(e.quiet_ms < e.p50_ms for e in predicted)


def test_uncertainty_is_for_a_new_measurement(tiny_family):
    """Predicted entries carry the sigma of a new measurement (GP mean uncertainty plus the
    fitted noise), never smaller than the sigma of the mean alone; log fits stay positive."""
    from snrt.latency_model import fit_predict

    b = Bundle.open(tiny_family["bundle"])
    key = bundle_key(b)
    rng = np.random.default_rng(3)
    measured = {v.id: v.flops / 1e6 * (1 + 0.03 * rng.standard_normal()) + 0.2
                for v in sample_variants(b.variants, "50%")}
    targets = [v for v in b.variants if v.id not in measured]
    m0, s0 = fit_predict(b, measured, targets)
    m1, s1 = fit_predict(b, measured, targets, include_noise=True)
    assert np.allclose(m0, m1) and (s1 >= s0).all() and (s1 > s0).any()
    ml, sl = fit_predict(b, measured, targets, log_target=True)
    assert (ml > 0).all() and (sl > 0).all()
    t = LookupTable.new()
    for k, ms in measured.items():
        v = b.variant(k)
        t.put(Entry(key, k, v.cfg_id, "onnxruntime", "fp32", 1, ms, ms))
    predict_table(t, b)
    assert np.allclose([t.get(key, v.id).uncertainty_ms for v in targets], s1)
