"""SN-Net's least-squares initialisation of stitching layers, in numpy, streamed over batches.

For each anchor pair and stitching position (j, k), SN-Net solves `[X, 1] · A ≈ Y` where X are the
front anchor's block-j output tokens and Y the end anchor's block-k input tokens (the output of
block k-1, or of the patch embedding when k = 0), taking the minimum-norm solution
`A = pinv([X, 1]) · Y`; positions that share a stitching layer get the mean of their solutions.

Here the normal equations are accumulated in float64 batch by batch (memory independent of the
number of images): G_j = [X_j,1]ᵀ[X_j,1], C_jk = [X_j,1]ᵀ Y_k, so A = pinv(G_j) C_jk, which equals
pinv([X,1]) Y. The fit error reported per layer is the residual variance left unexplained,
1 - R² = ‖[X,1]A - Y‖² / ‖Y - mean(Y)‖², averaged over the positions that share the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .family import Family, StitchLayer
from .variants import VariantSpace

# features(batch) -> for each anchor, {block index: tokens [B, N, D]}, -1 = patch embedding
FeatureFn = Callable[[np.ndarray], list[dict[int, np.ndarray]]]


@dataclass
class LayerFit:
    pair: tuple[str, str]
    layer: int
    positions: list[tuple[int, int]]
    rel_residual: float  # mean over positions of 1 - R²


class _PairStats:
    def __init__(self, front_dim: int, end_dim: int, positions: list[tuple[int, int]]):
        self.G: dict[int, np.ndarray] = {}
        self.C: dict[tuple[int, int], np.ndarray] = {}
        self.yy: dict[int, float] = {}
        self.ysum: dict[int, np.ndarray] = {}
        self.n = 0
        self.positions = positions

    def update(self, front: dict[int, np.ndarray], end: dict[int, np.ndarray]) -> None:
        xs, ys = {}, {}
        for j, k in self.positions:
            if j not in xs:
                x = front[j].reshape(-1, front[j].shape[-1]).astype(np.float64)
                xs[j] = np.hstack([x, np.ones((len(x), 1))])
                self.G[j] = self.G.get(j, 0) + xs[j].T @ xs[j]
            if k - 1 not in ys:
                y = end[k - 1].reshape(-1, end[k - 1].shape[-1]).astype(np.float64)
                ys[k - 1] = y
                self.yy[k - 1] = self.yy.get(k - 1, 0.0) + float((y * y).sum())
                self.ysum[k - 1] = self.ysum.get(k - 1, 0) + y.sum(0)
            self.C[(j, k)] = self.C.get((j, k), 0) + xs[j].T @ ys[k - 1]
        self.n += len(next(iter(xs.values())))

    def solve(self, j: int, k: int) -> tuple[np.ndarray, float]:
        G, C = self.G[j], self.C[(j, k)]
        A = np.linalg.pinv(G, rcond=1e-12, hermitian=True) @ C
        yy, ysum = self.yy[k - 1], self.ysum[k - 1]
        resid = yy - 2.0 * float((A * C).sum()) + float((A * (G @ A)).sum())
        total = yy - float(ysum @ ysum) / self.n
        return A, max(resid, 0.0) / max(total, 1e-30)


def fit_stitch_layers(family: Family, space: VariantSpace, batches: Iterable[np.ndarray],
                      features: FeatureFn) -> list[LayerFit]:
    """Fit every stitching layer of `space` from calibration `batches`; store them in `family`."""
    layer_positions = space.layer_positions()
    all_positions = [pos for t in sorted(layer_positions) for pos in layer_positions[t]]
    stats = {pair: _PairStats(family.anchors[pair[0]].config.embed_dim,
                              family.anchors[pair[1]].config.embed_dim, all_positions)
             for pair in space.pairs}
    seen = 0
    for batch in batches:
        feats = features(batch)
        for (f, e), st in stats.items():
            st.update(feats[f], feats[e])
        seen += len(batch)
    if not seen:
        raise ValueError("no calibration images: the stitch fit needs at least one batch")
    report: list[LayerFit] = []
    for (f, e), st in stats.items():
        layers = []
        for t in sorted(layer_positions):
            sols = [st.solve(j, k) for j, k in layer_positions[t]]
            A = np.mean([a for a, _ in sols], axis=0)
            layers.append(StitchLayer(weight=np.ascontiguousarray(A[:-1].T, np.float32),
                                      bias=np.ascontiguousarray(A[-1], np.float32)))
            report.append(LayerFit((family.anchors[f].name, family.anchors[e].name), t,
                                   layer_positions[t], float(np.mean([r for _, r in sols]))))
        family.stitch_layers[(f, e)] = layers
    return report
