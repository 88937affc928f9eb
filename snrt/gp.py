"""Gaussian-process regression for small cost tables (the latency model, snrt.latency_model).

The numerics are scipy's (the `predict` extra, imported when a model is fitted): Cholesky
solves and L-BFGS-B for the hyperparameters (`snrt.numerics.minimize`). It replaced a
hand-written L-BFGS (at most 3 units of log-hyperparameter per step) after a side-by-side run on
the shipped lookup table (default family; onnxruntime 1 and 2 threads, TFLite fp32/fp16/int8;
truth quiet_ms and p50_ms; 15 of 71 variants measured, `--sample` plus 20 random splits: 210
fits): the same optimum on 208 fits (objective within 3e-8), a lower one on 1 (-0.86), a higher
one on 1 (+0.43), and the same share of held-out latencies within ±5% on every configuration
(e.g. onnxruntime 2 threads, quiet_ms: 90.1% both). Commit b352b5a has both optimisers
(`benchmarks.latency_predict_bench --models ms,ms-scipy`)."""

from __future__ import annotations

import logging
import math
from typing import ClassVar

import numpy as np

from .numerics import cho_factor, cho_solve, minimize

log = logging.getLogger(__name__)

__all__ = ["GaussianProcessRegressor"]

class GaussianProcessRegressor:
    """Bayesian linear mean plus a GP correction, for small regression tables.

    On inputs centred and divided by their range (x~) and standardised outputs, the prior is
    ``f(x) = b + w.x~ + g(x)``, ``b ~ N(0, 1)``, ``w ~ N(0, s_lin/d I)``,
    ``g ~ GP(0, s_rbf exp(-0.5 sum_k (x~_k - x~'_k)^2 / l_k^2))``, observed with Gaussian noise.
    (A Gaussian prior on linear weights is the same as a linear kernel; see Rasmussen and
    Williams 2006, sec. 2.7.) `s_lin`, `s_rbf`, the lengthscales `l_k` (one per feature with
    `ard=True`) and the noise are fitted by maximising the marginal likelihood, with weak
    log-normal priors that keep them finite on 10-row tables, from a few starting points.

    Args:
        linear_mean: include the linear part (off: constant mean + GP only).
        ard: one lengthscale per feature (off: one shared lengthscale).
        noise_var: fix the noise variance (in standardised output units); None = fit it.
        log_target: model log(y) (positive targets such as latency; errors become relative).
        restarts: number of starting points of the optimiser.

    After `fit`: ``hyperparameters_`` (in the scaled units above), ``noise_var_`` (noise
    variance in units of y, or of log y with `log_target`), ``objective_`` (negative log
    marginal likelihood plus the hyperprior terms, at the optimum).
    """

    _BOUNDS: ClassVar[dict[str, tuple[float, float]]] = {
        "lin": (1e-6, 1e2), "rbf": (1e-6, 1e2), "ell": (0.05, 100.0), "noise": (1e-8, 10.0)}

    def __init__(self, *, linear_mean: bool = True, ard: bool = True,
                 noise_var: float | None = None, log_target: bool = False,
                 restarts: int = 3, max_iter: int = 200):
        self.linear_mean = linear_mean
        self.ard = ard
        self.noise_var = noise_var
        self.log_target = log_target
        self.restarts = restarts
        self.max_iter = max_iter

    # parameter vector: [log s_lin]? [log s_rbf] [log ell x (d or 1)] [log noise]?
    def _unpack(self, th: np.ndarray, d: int) -> dict:
        i = 0
        out = {}
        if self.linear_mean:
            out["lin"] = th[i]
            i += 1
        out["rbf"] = th[i]
        i += 1
        m = d if self.ard else 1
        out["ell"] = th[i:i + m]
        i += m
        out["noise"] = th[i] if self.noise_var is None else math.log(self.noise_var)
        return out

    def _kernel(self, p: dict, A: np.ndarray, B: np.ndarray, grads: bool = False):
        d = A.shape[1]
        inv_ell2 = np.exp(-2 * np.broadcast_to(p["ell"], (d,)))
        diff2 = (A[:, None, :] - B[None, :, :]) ** 2  # (na, nb, d)
        E = np.exp(-0.5 * diff2 @ inv_ell2)
        K = 1.0 + math.exp(p["rbf"]) * E
        parts = []
        if self.linear_mean:
            L = (A @ B.T) / max(d, 1)
            K = K + math.exp(p["lin"]) * L
            if grads:
                parts.append(math.exp(p["lin"]) * L)
        if grads:
            Kr = math.exp(p["rbf"]) * E
            parts.append(Kr)
            scaled = diff2 * inv_ell2  # d/dlog ell_k of exp(-0.5 sum) = E * diff2_k / ell_k^2
            if self.ard:
                parts += [Kr * scaled[:, :, k] for k in range(d)]
            else:
                parts.append(Kr * scaled.sum(-1))
            return K, parts
        return K

    def _prior(self, th: np.ndarray, d: int) -> tuple[float, np.ndarray]:
        """Weak log-normal hyperpriors (negative log density and gradient) plus soft bounds."""
        # (prior mean of the log, prior sd of the log, bounds) per entry of theta
        spec = []
        if self.linear_mean:
            spec.append((0.0, 3.0, self._BOUNDS["lin"]))
        spec.append((math.log(0.1), 3.0, self._BOUNDS["rbf"]))
        # lengthscale ~ sqrt(d) in standardised units: distances grow like sqrt(d)
        spec += [(0.5 * math.log(max(d, 1)), 2.0, self._BOUNDS["ell"])] * (d if self.ard else 1)
        if self.noise_var is None:
            spec.append((math.log(1e-2), 4.0, self._BOUNDS["noise"]))
        mu = np.array([m for m, _, _ in spec])
        sd = np.array([s for _, s, _ in spec])
        lo = np.log([b[0] for _, _, b in spec])
        hi = np.log([b[1] for _, _, b in spec])
        z = (th - mu) / sd
        over = np.maximum(th - hi, 0) - np.maximum(lo - th, 0)
        f = 0.5 * float(z @ z) + 50.0 * float(over @ over)
        return f, z / sd + 100.0 * over

    def _objective(self, th: np.ndarray) -> tuple[float, np.ndarray]:
        A, y = self._Xs, self._ys
        n, d = A.shape
        if np.abs(th).max() > 40:  # far outside the bounds: exp() would overflow
            return float("inf"), np.zeros_like(th)
        p = self._unpack(th, d)
        K, parts = self._kernel(p, A, A, grads=True)
        noise = math.exp(p["noise"])
        K[np.diag_indices(n)] += noise
        try:
            factor = cho_factor(K)
        except np.linalg.LinAlgError:
            return float("inf"), np.zeros_like(th)
        Kinv = cho_solve(factor, np.eye(n))
        alpha = Kinv @ y
        nlml = (0.5 * y @ alpha + np.log(np.diag(factor[0])).sum()
                + 0.5 * n * math.log(2 * math.pi))
        W = Kinv - np.outer(alpha, alpha)
        if self.noise_var is None:
            parts.append(noise * np.eye(n))
        grad = np.array([0.5 * np.sum(W * P) for P in parts])
        pf, pg = self._prior(th, d)
        return float(nlml) + pf, grad + pg

    def fit(self, X: np.ndarray, y: np.ndarray) -> GaussianProcessRegressor:
        """Fit to rows `X` (n, d) and targets `y` (n,); returns self."""
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float).ravel()
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be (n, d) with n = len(y); got {X.shape} and {y.shape}")
        if len(y) < 2:
            raise ValueError("need at least 2 training rows")
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise ValueError("X and y must be finite")
        if self.log_target:
            if (y <= 0).any():
                raise ValueError("log_target=True needs positive targets")
            y = np.log(y)
        # centre, and scale by the range rather than the std: a rare value of a binary or count
        # feature (one anchor among stitched variants) then stays within a unit of the data
        self._x_mean = X.mean(0)
        x_range = X.max(0) - X.min(0)
        self._x_std = np.where(x_range > 0, x_range, 1.0)
        self._y_mean = float(y.mean())
        self._y_std = float(y.std()) or 1.0
        self._Xs = (X - self._x_mean) / self._x_std
        self._ys = (y - self._y_mean) / self._y_std
        d = X.shape[1]
        best: tuple[float, np.ndarray] | None = None
        m = d if self.ard else 1
        base_ell = 0.5 * math.log(max(d, 1))
        for r in range(max(1, self.restarts)):
            th0 = []
            if self.linear_mean:
                th0.append(0.0)
            th0.append(math.log([0.1, 0.5, 0.02][r % 3]))
            th0 += [base_ell + [0.0, 1.0, -1.0][r % 3]] * m
            if self.noise_var is None:
                th0.append(math.log([1e-2, 1e-4, 1e-1][r % 3]))
            try:
                th, f = minimize(self._objective, np.array(th0), max_iter=self.max_iter)
            except ValueError:
                continue
            if best is None or f < best[0]:
                best = (f, th)
        if best is None:
            raise ValueError("GP fit failed: the kernel matrix is not positive definite at any "
                             "starting point; check for duplicated rows with different targets")
        self.objective_, self._theta = best
        self.hyperparameters_ = {k: np.exp(v) if k != "ell" else np.exp(v).tolist()
                                 for k, v in self._unpack(self._theta, d).items()}
        self._finish()
        log.debug("GP fitted: %s", self.hyperparameters_)
        return self

    def _finish(self) -> None:
        A = self._Xs
        n = len(A)
        p = self._unpack(self._theta, A.shape[1])
        K = self._kernel(p, A, A)
        K[np.diag_indices(n)] += math.exp(p["noise"])
        self._factor = cho_factor(K)
        self._alpha = cho_solve(self._factor, self._ys)
        self._noise = math.exp(p["noise"])
        self._p = p
        self.noise_var_ = self._noise * self._y_std ** 2

    def predict(self, X: np.ndarray, *, include_noise: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and standard deviation at rows `X` (of f, or of y with noise).

        With `log_target`, the mean is exp of the log-space mean (the median) and the std is
        that times the log-space std (first order).
        """
        if not hasattr(self, "_alpha"):
            raise RuntimeError("call fit() before predict()")
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self._Xs.shape[1]:
            raise ValueError(f"X must be (m, {self._Xs.shape[1]}), got {X.shape}")
        A = (X - self._x_mean) / self._x_std
        Ks = self._kernel(self._p, A, self._Xs)
        mean = Ks @ self._alpha
        prior_var = 1.0 + math.exp(self._p["rbf"]) + (
            math.exp(self._p["lin"]) * (A * A).sum(1) / A.shape[1] if self.linear_mean else 0.0)
        var = np.maximum(prior_var - np.einsum("ij,ji->i", Ks, cho_solve(self._factor, Ks.T)),
                         0.0)
        if include_noise:
            var = var + self._noise
        mean = mean * self._y_std + self._y_mean
        std = np.sqrt(var) * self._y_std
        if self.log_target:
            mean = np.exp(mean)
            std = mean * std
        return mean, std

