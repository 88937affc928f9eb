"""Latency of the variants that were not profiled, predicted from the ones that were.

In the spirit of GP-NAS / nn-Meter: a variant's latency is nearly additive in the pieces it
runs (blocks of each anchor, stitching layers, embedding and head), so the features are the
variant's structure — GFLOPs, number of blocks run of each anchor, number of stitching layers
(the number of pieces, i.e. session hops, is their sum plus two: already covered) — and the
model is snrt.gp.GaussianProcessRegressor: a Bayesian linear part (the additive costs) plus
a GP correction for what is not additive (cache pressure, chain effects), in milliseconds (costs
add up there, not in log space; a fit on log latency did no better in
benchmarks/latency_predict_bench.py). Each prediction carries a 1-sigma uncertainty for what a
measurement of the variant would give: the GP's uncertainty about the mean plus the
measurement noise it fitted (on random 20% splits of six profiles, 58-70% of the held-out
measurements fell inside ±2 sigma without the noise term, 80-87% with it). Fitted
separately for every (backend, precision, threads) in the table; `snrt-profile --sample 20%`
measures the anchors plus variants spread over FLOPs, which is what this model needs
(extrapolating to anchors from stitched variants alone is where its errors were largest).
`p50_ms` and `quiet_ms` (the latency when the machine is quiet, when the profile has it) are
predicted by two separate fits; on a shared host the quiet latency is the one that repeats
between profiles, and so the one a prediction can be checked against (README).
"""

from __future__ import annotations

import logging

import numpy as np

from .bundle import Bundle, VariantInfo
from .gp import GaussianProcessRegressor
from .lookup_table import Entry, LookupTable, bundle_key

log = logging.getLogger(__name__)

MIN_MEASURED = 4


def variant_features(bundle: Bundle, variants: list[VariantInfo]) -> np.ndarray:
    """[GFLOPs, blocks of anchor 0..n-1, stitching layers] per variant."""
    names = [a["name"] for a in bundle.manifest.family["anchors"]]
    rows = []
    for v in variants:
        kinds = [bundle.piece(p) for p in v.pieces]
        blocks = [sum(p.kind == "block" and p.anchor == a for p in kinds) for a in names]
        rows.append([v.flops / 1e9, *blocks, sum(p.kind == "stitch" for p in kinds)])
    return np.asarray(rows, dtype=np.float64)


def fit_model(bundle: Bundle, measured: dict[str, float], *, log_target: bool = False
              ) -> GaussianProcessRegressor:
    """The latency GP fitted on {variant id: latency ms}; predict with
    `gp.predict(variant_features(bundle, targets), include_noise=...)`.

    log_target: fit log latency (relative errors weigh the same for 1 ms and 400 ms variants)."""
    train = [bundle.variant(k) for k in measured]
    X, y = variant_features(bundle, train), np.array([measured[v.id] for v in train])
    return GaussianProcessRegressor(log_target=log_target).fit(X, y)


def fit_predict(bundle: Bundle, measured: dict[str, float], targets: list[VariantInfo], *,
                log_target: bool = False, include_noise: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """Fit on {variant id: latency ms}; return (mean ms, 1-sigma ms) for `targets`.

    include_noise: the 1-sigma of a new *measurement* of the target (model uncertainty plus
    the measurement noise the GP fitted), not of its noiseless mean."""
    gp = fit_model(bundle, measured, log_target=log_target)
    return gp.predict(variant_features(bundle, targets), include_noise=include_noise)


def predict_table(table: LookupTable, bundle: Bundle) -> int:
    """Add a predicted entry for every variant of `bundle` without a measurement, for each
    (backend, precision, threads) that has at least MIN_MEASURED measurements. Returns the
    number of predictions written."""
    from .lut_graphs import graphs_digest, select_current, stale_reason

    key = bundle_key(bundle)
    n = 0
    for backend, precision, threads in table.configs(key):
        # measured on the bundle's graphs only; a stale entry gives way to a prediction
        es, _ = select_current(table, bundle, backend, precision, threads, measured_only=True)
        if len(es) < MIN_MEASURED:
            log.warning("%s/%s/%dt: %d measurements, need %d to predict the rest", backend,
                        precision, threads, len(es), MIN_MEASURED)
            continue
        measured = {e.variant: e.p50_ms for e in es}
        targets = [v for v in bundle.variants if v.id not in measured]
        if not targets:
            continue
        mean, std = fit_predict(bundle, measured, targets, include_noise=True)
        quiet = quiet_std = [None] * len(targets)
        if all(e.quiet_ms is not None for e in es):
            quiet, quiet_std = fit_predict(bundle, {e.variant: e.quiet_ms for e in es},
                                           targets, include_noise=True)
        for v, m, s, q, qs in zip(targets, mean, std, quiet, quiet_std):
            cond = {"model": "GP on variant structure", "trained_on": len(measured)}
            if q is not None:
                cond["quiet_uncertainty_ms"] = float(qs)
            # a lower quantile: never above the p50, as in every measured entry (two fits on a
            # few noisy rows can cross)
            old = table.get(key, v.id, backend, precision, threads)
            if old is not None and stale_reason(old, bundle):
                table.entries.remove(old)
            table.put(Entry(bundle=key, variant=v.id, cfg_id=v.cfg_id, backend=backend,
                            precision=precision, threads=threads, p50_ms=float(m),
                            mean_ms=float(m), flops=v.flops, params=v.params, accuracy=v.top1,
                            predicted=True, uncertainty_ms=float(s),
                            quiet_ms=None if q is None else float(min(q, m)), conditions=cond,
                            graphs=graphs_digest(bundle, v.id, backend, precision)))
            n += 1
    return n
