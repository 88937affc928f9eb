"""Predict what was not measured: one import for the prediction tools, which live by concept in

- `snrt.ranks`: ranks, normal scores and Kendall's tau-b (`rank_average`, `normal_ppf`,
  `normal_scores`, `kendall_tau`);
- `snrt.gp`: `GaussianProcessRegressor`, a linear mean plus an ARD squared-exponential GP with
  hyperparameters by maximum marginal likelihood (the latency model's regressor);
- `snrt.rankers`: the subnet accuracy rankers (`SubnetRankPredictor`, `MultiTaskLinearGP`,
  `SubnetRankEnsemble`) and the GP-NAS baseline (`GPNASBaseline`);
- `snrt.numerics`: scipy behind small functions (optimiser, Cholesky solves).

The numerics are scipy's (the `predict` extra: ``pip install 'snrt[predict]'``), imported when a
function is called, so importing this module needs numpy only, and the run-time path never
imports it. Without scipy, fitting or scoring raises `snrt.MissingExtraError` naming the extra.
"""

from __future__ import annotations

from .gp import GaussianProcessRegressor
from .rankers import (
    GPNASBaseline,
    MultiTaskLinearGP,
    RankSetting,
    SubnetRankEnsemble,
    SubnetRankPredictor,
)
from .ranks import kendall_tau, normal_ppf, normal_scores, rank_average

__all__ = [
    "GPNASBaseline", "GaussianProcessRegressor", "MultiTaskLinearGP", "RankSetting",
    "SubnetRankEnsemble", "SubnetRankPredictor", "kendall_tau", "normal_ppf", "normal_scores",
    "rank_average",
]
