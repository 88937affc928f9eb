"""Numerics of the prediction tools (the latency GP, the accuracy rankers): scipy's optimiser
and Cholesky solves behind small functions, and the one hand-written routine snrt keeps.

scipy comes with the `predict` extra (``pip install 'snrt[predict]'``) and is imported lazily,
inside the functions that need it: the run-time path (`snrt.Runtime`, the controller) never
imports this module and works without scipy. `require_scipy` raises `MissingExtraError`
naming the extra; `snrt-profile --predict/--sample` calls it before measuring anything.

- `minimize`: scipy's L-BFGS-B on a function that returns (value, gradient); a non-finite value
  (a kernel matrix that is not positive definite) is turned into a large finite one so that the
  line search backs off instead of stopping.
- `own_lbfgs`: the hand-written L-BFGS (Armijo backtracking, at most `max_step` per coordinate
  and iteration) that the latency GP keeps; see `snrt.gp` for the benchmark that decided it.
- `cho_factor` / `cho_solve`: scipy.linalg's Cholesky factorisation and solve.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import MissingExtraError

__all__ = ["cho_factor", "cho_solve", "minimize", "own_lbfgs", "require_scipy"]

PREDICT_FEATURE = "prediction (latency GP, accuracy rankers, Kendall tau)"


def require_scipy():
    """The scipy package, or MissingExtraError naming the `predict` extra."""
    try:
        import scipy
        import scipy.linalg
        import scipy.optimize
        import scipy.special
        import scipy.stats
    except ImportError:
        raise MissingExtraError(PREDICT_FEATURE, "scipy", "predict") from None
    return scipy


def cho_factor(K: np.ndarray) -> tuple[np.ndarray, bool]:
    """Lower Cholesky factor of a symmetric positive definite matrix, as scipy.linalg.cho_factor
    gives it; raises np.linalg.LinAlgError when K is not positive definite."""
    scipy = require_scipy()
    return scipy.linalg.cho_factor(K, lower=True, check_finite=False)


def cho_solve(factor: tuple[np.ndarray, bool], b: np.ndarray) -> np.ndarray:
    """K^-1 b from `cho_factor(K)`."""
    scipy = require_scipy()
    return scipy.linalg.cho_solve(factor, b, check_finite=False)


def minimize(fun_grad: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray,
             max_iter: int = 200) -> tuple[np.ndarray, float]:
    """Minimise a smooth function given value and gradient with scipy's L-BFGS-B (no bounds);
    returns (x, f) at the lowest value evaluated. Raises ValueError when the objective is not
    finite at x0."""
    scipy = require_scipy()
    x0 = np.asarray(x0, dtype=float)
    f0, _ = fun_grad(x0)
    if not np.isfinite(f0):
        raise ValueError("objective is not finite at the starting point")
    big = abs(float(f0)) * 10 + 1e10  # a finite wall: L-BFGS-B's line search steps back
    best = [float(f0), x0.copy()]

    def finite(x):
        f, g = fun_grad(x)
        if not np.isfinite(f):
            return big, np.zeros_like(x)
        if f < best[0]:
            best[:] = [float(f), np.array(x, dtype=float)]
        return float(f), np.asarray(g, dtype=float)

    scipy.optimize.minimize(finite, x0, jac=True, method="L-BFGS-B",
                            options={"maxiter": int(max_iter)})
    # the lowest value evaluated: where a line search ended on the wall, scipy's result can
    # report the wall's value
    return best[1], best[0]


def own_lbfgs(fun_grad: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray,
              max_iter: int = 200, memory: int = 8, gtol: float = 1e-5, max_step: float = 3.0
              ) -> tuple[np.ndarray, float]:
    """Minimise a smooth function given value and gradient (L-BFGS, Armijo backtracking);
    no coordinate moves more than `max_step` in one iteration."""
    x = np.asarray(x0, dtype=float).copy()
    f, g = fun_grad(x)
    if not np.isfinite(f):
        raise ValueError("objective is not finite at the starting point")
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    for _ in range(max_iter):
        q = g.copy()
        coeffs = []
        for s, yv in zip(reversed(s_hist), reversed(y_hist)):
            rho = 1.0 / (yv @ s)
            a = rho * (s @ q)
            q -= a * yv
            coeffs.append((rho, a, s, yv))
        if s_hist:
            q *= (s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1])
        for rho, a, s, yv in reversed(coeffs):
            q += (a - rho * (yv @ q)) * s
        d = -q
        if g @ d >= 0:  # not a descent direction: restart from steepest descent
            d, s_hist, y_hist = -g, [], []
        step = 1.0 if s_hist else min(1.0, 1.0 / max(np.abs(g).max(), 1e-12))
        step = min(step, max_step / max(np.abs(d).max(), 1e-12))
        while True:
            x_new = x + step * d
            f_new, g_new = fun_grad(x_new)
            if np.isfinite(f_new) and f_new <= f + 1e-4 * step * (g @ d):
                break
            step *= 0.5
            if step < 1e-12:
                return x, f
        s, yv = x_new - x, g_new - g
        if s @ yv > 1e-12:
            s_hist.append(s)
            y_hist.append(yv)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(f - f_new) <= 1e-10 * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if np.abs(g).max() < gtol or converged:
            break
    return x, f


