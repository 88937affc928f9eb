"""Numerics of the prediction tools (the latency GP, the accuracy rankers): scipy's optimiser
and Cholesky solves behind small functions.

scipy comes with the `predict` extra (``pip install 'snrt[predict]'``) and is imported lazily,
inside the functions that need it: the run-time path (`snrt.Runtime`, the controller) never
imports this module and works without scipy. `require_scipy` raises `MissingExtraError`
naming the extra; `snrt-profile --predict/--sample` calls it before measuring anything.

- `minimize`: scipy's L-BFGS-B on a function that returns (value, gradient); a non-finite value
  (a kernel matrix that is not positive definite) is turned into a large finite one so that the
  line search backs off instead of stopping.
- `cho_factor` / `cho_solve`: scipy.linalg's Cholesky factorisation and solve.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import MissingExtraError

__all__ = ["cho_factor", "cho_solve", "minimize", "require_scipy"]

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
