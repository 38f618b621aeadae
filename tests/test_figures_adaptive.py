"""Quick versions of the adaptive-threshold and value-clipping figures (SPEC 11, 12) render."""

import numpy as np
import pytest

import clipped_trip._figures_adaptive as fa
from clipped_trip._figures import FIGURES
from _helpers import figure_outputs

try:  # the package-wide render checks (NaN handed to matplotlib, labels, legends, ticks)
    from test_figures_render import _check_figure
except ImportError:  # pragma: no cover - that module absent: a minimal check instead

    def _check_figure(fig, name):
        for ax in fig.get_axes():
            for line in ax.get_lines():
                y = np.asarray(line.get_ydata(orig=True), dtype=float)
                assert not np.isnan(y).any(), f"{name}: NaN in line {line.get_label()!r}"


def test_figures_are_registered():
    assert "adaptive" in FIGURES and "value-clipping" in FIGURES


def _expected_nonfinite(key):
    """The arrays that may hold non-finite values, and where."""
    if key.endswith("/ode_clip"):
        # unclipped and constant-c runs store their constant (inf: no clipping); the max-CCC
        # schedule is c = inf throughout under Gaussian noise (no clipping helps: CCC <= 1)
        return "inf"
    if key.endswith("AutoClip/sgd_clip"):
        return "first"  # no threshold recorded before the first step
    return None


def test_adaptive_quick(quick_figure):
    tmp_path, (path, summary), fig = quick_figure("adaptive")
    assert path.name == "adaptive.png"
    _check_figure(fig, "adaptive")
    arrays, meta = figure_outputs(tmp_path, "adaptive")
    methods = list(fa.ADAPTIVE_METHODS)
    for col in (0, 1):
        for name in methods:
            assert f"{col}/{name}/sgd" in arrays and f"{col}/{name}/ode" in arrays
    for key, v in arrays.items():
        kind = _expected_nonfinite(key)
        if kind is None:
            assert np.isfinite(v).all(), key
        elif kind == "first":
            assert np.isnan(v[:, 0]).all() and np.isfinite(v[:, 1:]).all(), key
        else:
            assert not np.isnan(v).any() and (np.isfinite(v) | (v == np.inf)).all(), key
    # adaptive thresholds are finite and positive, and recorded by the SGD runs
    for col in (0, 1):
        for name in ("quantile, slow", "quantile, fast", "AutoClip"):
            assert (arrays[f"{col}/{name}/ode_clip"] > 0).all()
            assert f"{col}/{name}/sgd_clip" in arrays
    # the Student-t column clips with a finite max-CCC threshold, the Gaussian one does not
    assert np.isfinite(arrays["0/max-CCC schedule/ode_clip"]).all()
    assert np.isinf(arrays["1/max-CCC schedule/ode_clip"]).all()
    assert set(meta["params"]["summary"]) == set(summary)
    for row in summary.values():
        assert np.isfinite(row["sgd_final"]) and np.isfinite(row["ode_final"])


def test_value_clipping_quick(quick_figure):
    tmp_path, (path, summary), fig = quick_figure("value-clipping")
    assert path.name == "value-clipping.png"
    _check_figure(fig, "value-clipping")
    arrays, _ = figure_outputs(tmp_path, "value-clipping")
    for key, v in arrays.items():
        assert np.isfinite(v).all(), key
    lam = arrays["eigenvalues"]
    # unclipped SGD's drift rate is lr * lambda; signSGD's is proportional to sqrt(lambda)
    sgd_rate = arrays["unclipped SGD/rate_R0"]
    np.testing.assert_allclose(sgd_rate, lam * sgd_rate[0] / lam[0], rtol=1e-12)
    sign = next(k for k in arrays if k.startswith("signSGD") and k.endswith("/rate_R0"))
    np.testing.assert_allclose(arrays[sign] / np.sqrt(lam), arrays[sign][0], rtol=1e-12)
    key = "max_rel_gap_value_ode_vs_sign_ode"
    gaps = [r[key] for r in summary.values() if key in r]
    assert len(gaps) == 3 and gaps[0] > gaps[1] > gaps[2]  # signSGD limit: smaller tau, closer


def test_descent_rates_match_the_factors():
    noise = fa.StudentT(3.0, 0.2)
    p = fa.value_problem(50, noise)
    R = 0.3
    mu, _ = fa.value_clip_factors(noise, R, 0.1, p.eigenvalues)
    np.testing.assert_allclose(
        fa.descent_rates(p, fa.ValueClipSGD(2.0, 0.1), R), 2.0 * mu * p.eigenvalues
    )
    assert p.initial_risk == pytest.approx(fa.VALUE_R0, rel=1e-12)
    assert fa.adaptive_problem(40, noise).initial_risk == pytest.approx(fa.ADAPTIVE_R0)
