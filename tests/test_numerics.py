"""The numerics under the predictors (snrt/ranks.py, snrt/numerics.py: scipy behind small
functions) against independent computations, and snrt without scipy: the run-time path works,
a prediction asks for the `predict` extra."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from snrt.errors import MissingExtraError
from snrt.numerics import cho_factor, cho_solve, minimize
from snrt.predict import GaussianProcessRegressor, kendall_tau, normal_ppf, normal_scores
from snrt.ranks import rank_average

ROOT = Path(__file__).resolve().parents[1]


# -- Kendall's tau ---------------------------------------------------------------------------
def brute_force_tau_b(x, y) -> float:
    nc = nd = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx == dy:
            nc += 1
        else:
            nd += 1
    denom = math.sqrt((nc + nd + tx) * (nc + nd + ty))
    return (nc - nd) / denom if denom else float("nan")


@pytest.mark.parametrize("n, levels", [(2, 2), (5, 3), (30, 4), (57, 1000), (120, 6), (200, 200)])
def test_kendall_tau_matches_brute_force(n, levels):
    rng = np.random.default_rng(n * 7 + levels)
    for _ in range(5):
        x = rng.integers(0, levels, n).astype(float)
        y = np.where(rng.random(n) < 0.5, x, rng.integers(0, levels, n))  # correlated, ties
        expected = brute_force_tau_b(x, y)
        got = kendall_tau(x, y)
        if math.isnan(expected):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_edge_cases():
    x = np.arange(50.0)
    assert kendall_tau(x, 2 * x + 1) == pytest.approx(1.0)
    assert kendall_tau(x, -x) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau(x, np.ones(50)))
    assert math.isnan(kendall_tau([1.0], [2.0]))
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2, 3], [1, 2])


def test_normal_scores():
    p = np.array([1e-9, 1e-4, 0.01, 0.02425, 0.2, 0.5, 0.7, 0.97575, 0.999, 1 - 1e-9])
    cdf = np.array([0.5 * (1 + math.erf(z / math.sqrt(2))) for z in normal_ppf(p)])
    np.testing.assert_allclose(cdf, p, rtol=1e-7)
    z = normal_scores([30, 10, 20, 20])
    assert z[1] < z[2] == z[3] < z[0]
    assert z.sum() == pytest.approx(0.0, abs=1e-12)


def test_rank_average_matches_pair_counting():
    rng = np.random.default_rng(5)
    for n, levels in [(1, 1), (7, 2), (40, 5), (120, 1000)]:
        v = rng.integers(0, levels, n).astype(float)
        # 0-based mean rank: values below, plus half of the other equal values
        expected = [(v < x).sum() + ((v == x).sum() - 1) / 2 for x in v]
        np.testing.assert_array_equal(rank_average(v), expected)


def test_cholesky_solve_matches_a_dense_solve():
    rng = np.random.default_rng(6)
    A = rng.standard_normal((30, 30))
    K = A @ A.T + 0.1 * np.eye(30)
    b = rng.standard_normal((30, 3))
    factor = cho_factor(K)
    np.testing.assert_allclose(cho_solve(factor, b), np.linalg.solve(K, b), rtol=1e-8)
    L = np.tril(factor[0])
    np.testing.assert_allclose(L @ L.T, K, rtol=1e-10)
    with pytest.raises(np.linalg.LinAlgError):
        cho_factor(-K)


def _rosenbrock(x):
    f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    g = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
    return f, g


def test_minimize_finds_the_rosenbrock_minimum():
    x, f = minimize(_rosenbrock, np.array([-1.2, 1.0]), max_iter=500)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-3)
    assert f < 1e-6


def test_minimize_steps_back_from_where_the_objective_is_not_finite():
    """The GP objectives return inf where the kernel is not positive definite; here the
    minimum (x = 3) lies beyond a region where the function is undefined (x > 2)."""
    def fun(x):
        if x[0] > 2:
            return float("inf"), np.zeros(1)
        return float((x[0] - 3) ** 2), np.array([2 * (x[0] - 3)])

    x, f = minimize(fun, np.array([0.0]))
    assert 1.9 < x[0] <= 2 and f == pytest.approx((x[0] - 3) ** 2)
    with pytest.raises(ValueError, match="not finite at the starting point"):
        minimize(fun, np.array([5.0]))


# -- without scipy ---------------------------------------------------------------------------
def test_predictions_without_scipy_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)  # `import scipy` now raises ImportError
    for call in (lambda: kendall_tau([1, 2, 3], [1, 3, 2]), lambda: normal_scores([3, 1, 2]),
                 lambda: GaussianProcessRegressor().fit(np.eye(3), [1.0, 2.0, 3.0])):
        with pytest.raises(MissingExtraError, match=r"pip install 'snrt\[predict\]'"):
            call()


def test_profile_checks_for_scipy_before_measuring(tiny_family, tmp_path, monkeypatch, caplog,
                                                   capsys):
    from snrt.profile import main

    monkeypatch.setitem(sys.modules, "scipy", None)
    for flags in (["--sample", "30%"], ["--predict"]):
        out = tmp_path / "t.json"
        assert main([str(tiny_family["bundle"]), *flags, "--runs", "3", "--min-seconds", "0",
                     "--in-process", "--out", str(out), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "snrt-profile: error:" in err and "snrt[predict]" in err
        assert not out.exists()  # nothing was measured
        assert "profiling" not in caplog.text


def test_runtime_and_controller_run_without_scipy(tiny_family, tmp_path):
    """In a fresh interpreter where any import of scipy fails (and is recorded): snrt-run
    opens the bundle, profiles it and runs the controlled frame loop."""
    script = textwrap.dedent(f"""
        import sys
        from importlib.abc import MetaPathFinder

        attempts = []

        class NoScipy(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "scipy" or name.startswith("scipy."):
                    attempts.append(name)
                    raise ImportError("scipy is blocked in this test")
                return None

        sys.meta_path.insert(0, NoScipy())
        import snrt
        from snrt.run_cli import main

        rc = main([{str(tiny_family["bundle"])!r}, "--seconds", "1", "--fps", "50",
                   "--tables", {str(tmp_path / "tables")!r}, "--rank", "flops"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "scipy")
        print("RESULT", rc, attempts, loaded, "snrt.numerics" in sys.modules)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "frames," in proc.stdout  # the controlled loop ran
    assert proc.stdout.strip().splitlines()[-1] == "RESULT 0 [] [] False"
