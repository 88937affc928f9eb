"""Accuracy of the subnets not measured, and which subnets to measure (the UFO loop's step 2).

- `encode(space, ids)`: one-hot columns of a member's choices: width and depth (POA, plus the
  two as ordinal columns), depth and
  per block position its heads and MLP width (UFO; zeros beyond the depth). A linear model on
  them is the additive per-choice model; distances count differing choices.
- `space_filling_sample(space, n)`: which subnets to measure: the largest and the smallest
  member, then greedy farthest-point (max-min Hamming distance on the encoding) over a seeded
  pool of members (the whole grid for POA). Why not active learning on the GP's uncertainty:
  before the first measurement that uncertainty is the prior's, which for the rankers' kernels
  (linear + squared-exponential on the encoding) is largest far from the chosen points, so the
  first batch is the same space-filling design; afterwards a batch chosen at once can be
  measured in one run (resumable, no refit between subnets), and every choice of every block
  position gets measured alongside others, which is what the additive model needs.
- `AccuracyModel`: a prior line, top-1 ~ a + b log(FLOPs), fitted on the measured top-1s, plus
  snrt.rankers.SubnetRankPredictor fitted on what the line leaves (the residuals' ranks as
  normal scores, kernel settings by leave-one-out on the measured rows only), its scores mapped
  back to top-1 points by a least-squares line on the measured rows. The FLOPs line is the
  prior a handful of measurements cannot give an encoding of 10+ columns: on the shipped
  elastic family (16 members), FLOPs alone orders the held-out subnets better (tau 0.675) than
  the ranker alone fitted on 3 measured ones (0.448; line + ranker 0.664), and on its 28-member
  every-depth grid line + ranker from 6 measured (0.669) beats both FLOPs (0.614) and the ranker
  alone (0.634) (benchmarks/ufo_loop_bench.py, README). The 1-sigma uncertainty is the ranker
  line's slope times the leave-one-out error of the scores, plus the final residual.

Needs scipy (the `predict` extra).
"""

from __future__ import annotations

import numpy as np

from .errors import SnrtError

MIN_MEASURED = 3


def encode(space, ids: list[str]) -> np.ndarray:
    """One-hot encoding of members `ids` of a snrt.variants.subnets.SubnetSpace."""
    t = space.table
    rows = []
    if space.kind == "poa":
        ws, ds = t["widths"], t["depths"]
        for vid in ids:
            s = space.subnet(vid)
            r = np.zeros(len(ws) + len(ds) + 2)
            r[ws.index(s.width)] = 1
            r[len(ws) + ds.index(s.depth)] = 1
            # ordinal columns too: a wider or deeper subnet is usually more accurate, which
            # one-hot columns alone cannot say about a width no measured subnet had
            r[-2] = 2 * ws.index(s.width) / max(len(ws) - 1, 1)
            r[-1] = 2 * ds.index(s.depth) / max(len(ds) - 1, 1)
            rows.append(r)
        return np.asarray(rows)
    depths = sorted(t["depth_codes"].values())
    heads = sorted(t["heads_codes"].values())
    hidden = sorted(int(space.config.embed_dim * m) for m in t["mlp_codes"].values())
    per = len(heads) + len(hidden)
    for vid in ids:
        s = space.subnet(vid)
        r = np.zeros(len(depths) + t["max_depth"] * per)
        r[depths.index(s.depth)] = 1
        for b, (h, m) in enumerate(zip(s.heads, s.hidden)):
            c = len(depths) + b * per
            r[c + heads.index(h)] = 1
            r[c + len(heads) + hidden.index(m)] = 1
        rows.append(r)
    return np.asarray(rows)


def candidate_pool(space, n: int, seed: int = 0) -> list[str]:
    """The whole grid (POA) or `n` seeded random members (UFO), with the extremes first."""
    if space.kind == "poa":
        pool = space.grid()
    else:  # at most the space's size: sample() tries 100 draws per member it cannot find
        pool = space.sample(min(n, int(space.size())), seed=seed)
    first = [x for x in space.extremes()]
    return first + [p for p in pool if p not in first]


def space_filling_sample(space, n: int, *, seed: int = 0, pool_size: int = 5000,
                         exclude: tuple[str, ...] = ()) -> list[str]:
    """n members to measure: the extremes, then farthest-point over a pool (module docstring).
    Members in `exclude` are neither chosen nor counted."""
    pool = [p for p in candidate_pool(space, pool_size, seed) if p not in set(exclude)]
    return farthest_point(space, pool, n)


def farthest_point(space, pool: list[str], n: int) -> list[str]:
    """n of `pool`: its first two (the extremes when they are in it), then farthest-point."""
    if n >= len(pool):
        return list(pool)
    X = encode(space, pool)
    chosen = [i for i in range(min(2, n))]
    d = np.full(len(pool), np.inf)
    for i in chosen:
        d = np.minimum(d, ((X - X[i]) ** 2).sum(1))
    while len(chosen) < n:
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, ((X - X[i]) ** 2).sum(1))
    return [pool[i] for i in chosen]


class AccuracyModel:
    """Top-1 (%) of any member from the measured ones (module docstring)."""

    def __init__(self, space, **ranker_kw):
        self.space = space
        self.ranker_kw = ranker_kw

    def log_flops(self, ids: list[str]) -> np.ndarray:
        sp = self.space
        return np.log(np.array([sp.flops(sp.subnet(v)) for v in ids], dtype=float))

    def fit(self, measured: dict[str, float]) -> AccuracyModel:
        from .rankers import SubnetRankPredictor
        from .ranks import rank_average

        if len(measured) < MIN_MEASURED:
            raise SnrtError(f"{len(measured)} subnets measured; the accuracy predictor needs at "
                            f"least {MIN_MEASURED} (measure more with snrt-accuracy --sample)")
        ids = list(measured)
        top1 = np.array([measured[i] for i in ids], dtype=float)
        lf = self.log_flops(ids)
        P = np.column_stack([np.ones_like(lf), lf])
        self.prior_, *_ = np.linalg.lstsq(P, top1, rcond=None)
        res = top1 - P @ self.prior_
        X = encode(self.space, ids)
        self.ranker = SubnetRankPredictor(**self.ranker_kw).fit(X, rank_average(-res))
        s = self.ranker.predict(X)[:, 0]
        A = np.column_stack([np.ones_like(s), s])
        coef, *_ = np.linalg.lstsq(A, res, rcond=None)
        if coef[1] > 0:  # scores run opposite to top-1; a positive slope is noise: flatten
            coef = np.array([res.mean(), 0.0])
        self.coef_ = coef
        resid = res - A @ coef
        loo = float(np.mean([st.loo_mse for st in self.ranker.selected_[0]]))
        self.sigma_ = float(np.sqrt(coef[1] ** 2 * loo + resid.var()))
        self.trained_on = len(ids)
        return self

    def scores(self, ids: list[str]) -> np.ndarray:
        """Ranker scores of the residual from the FLOPs line, lower = predicted better."""
        return self.ranker.predict(encode(self.space, ids))[:, 0]

    def predict(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(top-1 %, 1-sigma %) of `ids`."""
        prior = self.prior_[0] + self.prior_[1] * self.log_flops(ids)
        s = self.scores(ids)
        return prior + self.coef_[0] + self.coef_[1] * s, np.full(len(ids), self.sigma_)

    def describe(self) -> dict:
        return {"model": "top-1 ~ a + b log(FLOPs), plus SubnetRankPredictor (one-hot encoding) "
                         "on the residuals with a linear map to top-1 points",
                "prior": {"intercept": round(float(self.prior_[0]), 4),
                          "per_log_flops": round(float(self.prior_[1]), 4)},
                "trained_on": self.trained_on, "sigma_top1": round(self.sigma_, 4)}
