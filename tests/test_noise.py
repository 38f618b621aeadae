import dataclasses
import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

import clipped_trip as ct

N = 40_000
KEY = jax.random.key(1234)

# (law, scipy frozen distribution) pairs for the continuous laws
CONTINUOUS = [
    (ct.Gaussian(0.7), stats.norm(scale=0.7)),
    (ct.StudentT(3.0, 1.5), stats.t(3.0, scale=1.5)),
    (ct.StudentT(1.0, 0.5), stats.cauchy(scale=0.5)),
    (ct.StudentT(2.5, 1.0), stats.t(2.5)),
    (ct.Laplace(0.8), stats.laplace(scale=0.8)),
    (ct.Uniform(2.0), stats.uniform(loc=-2.0, scale=4.0)),
    (ct.Exponential(1.3), stats.expon(loc=-1.3, scale=1.3)),
    (ct.GaussianMixture((0.3, 0.7), (-1.0, 0.5), (0.2, 1.0)), None),
]


def _mixture_cdf(x):
    return 0.3 * stats.norm.cdf(x, -1.0, 0.2) + 0.7 * stats.norm.cdf(x, 0.5, 1.0)


@pytest.mark.parametrize("law,ref", CONTINUOUS, ids=lambda x: repr(x)[:30])
def test_continuous_sampler_matches_scipy(law, ref):
    x = np.asarray(law.sample(KEY, (N,), "float64"))
    cdf = _mixture_cdf if ref is None else ref.cdf
    ks = stats.kstest(x, cdf).statistic
    assert ks < 2.0 / math.sqrt(N)  # KS critical value ~1.63/sqrt(N) at 1%
    if ref is not None and math.isfinite(ref.var()):
        assert law.variance == pytest.approx(ref.var(), rel=1e-12)
        # quartiles
        for q in (0.25, 0.5, 0.75):
            assert np.quantile(x, q) == pytest.approx(
                ref.ppf(q), abs=4 * math.sqrt(q * (1 - q) / N) / ref.pdf(ref.ppf(q))
            )
    if ref is not None and math.isfinite(ref.moment(4)):
        m4 = ref.expect(lambda y: (y - ref.mean()) ** 4)
        assert x.mean() == pytest.approx(ref.mean(), abs=5 * math.sqrt(ref.var() / N))
        assert x.var() == pytest.approx(ref.var(), abs=5 * math.sqrt((m4 - ref.var() ** 2) / N))
    if ref is None:
        assert x.mean() == pytest.approx(law.mean, abs=5 * math.sqrt(law.variance / N))


def test_infinite_variance_reported():
    assert math.isinf(ct.StudentT(2.0).variance)
    assert math.isinf(ct.StudentT(1.0).variance)
    assert math.isinf(ct.StudentT(0.5).second_moment)


@pytest.mark.parametrize(
    "law",
    [
        ct.ThreePoint(2.0, 0.2),
        ct.Discrete((-1.0, 0.5, 3.0), (0.2, 0.5, 0.3)),
        ct.Empirical(np.array([0.1, -0.4, 0.1, 2.0, -1.5])),
    ],
)
def test_finite_sampler_frequencies(law):
    x = np.asarray(law.sample(KEY, (N,), "float64"))
    values, probs = map(np.asarray, law._atoms())
    uniq = np.unique(values)
    for v in uniq:
        p = probs[values == v].sum()
        freq = np.mean(x == v)
        assert freq == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / N) + 1e-12)
    assert set(np.unique(x)) <= set(uniq)
    assert law.variance == pytest.approx(np.dot(probs, (values - np.dot(probs, values)) ** 2))


def test_three_point_variance():
    assert ct.ThreePoint(5 / math.sqrt(0.2), 0.2).variance == pytest.approx(25.0)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ct.Gaussian(-1.0), "std"),
        (lambda: ct.Gaussian(float("nan")), "std"),
        (lambda: ct.StudentT(0.0), "df"),
        (lambda: ct.StudentT(-2.0), "df"),
        (lambda: ct.StudentT(3.0, 0.0), "scale"),
        (lambda: ct.Laplace(-1), "scale"),
        (lambda: ct.Uniform(0), "half_width"),
        (lambda: ct.ThreePoint(1.0, 1.5), "q"),
        (lambda: ct.ThreePoint(1.0, -0.1), "q"),
        (lambda: ct.Discrete((1.0, 2.0), (0.5, 0.6)), "probs"),
        (lambda: ct.Discrete((1.0, 2.0), (0.5,)), "probs"),
        (lambda: ct.GaussianMixture((0.5, 0.5), (0.0,), (1.0, 1.0)), "means"),
        (lambda: ct.Empirical([]), "samples"),
        (lambda: ct.Empirical([1.0, float("inf")]), "samples"),
    ],
)
def test_bad_parameters_raise_named_valueerror(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_laws_are_hashable_and_frozen():
    a, b = ct.StudentT(3.0, 1.0), ct.StudentT(3, 1)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.df = 4.0


@pytest.mark.parametrize(
    "spec,law",
    [
        ("gaussian:std=0.5", ct.Gaussian(0.5)),
        ("student-t:df=3,scale=1", ct.StudentT(3.0, 1.0)),
        ("cauchy:scale=0.5", ct.StudentT(1.0, 0.5)),
        ("laplace:scale=1", ct.Laplace(1.0)),
        ("uniform:half_width=1", ct.Uniform(1.0)),
        ("three-point:value=2,q=0.2", ct.ThreePoint(2.0, 0.2)),
        ("exponential:scale=2", ct.Exponential(2.0)),
        ("discrete:values=-1/2,probs=0.25/0.75", ct.Discrete((-1.0, 2.0), (0.25, 0.75))),
    ],
)
def test_parse_noise(spec, law):
    assert ct.parse_noise(spec) == law
    assert ct.parse_noise(law.to_spec()) == law


@pytest.mark.parametrize(
    "spec,match",
    [
        ("gausian:std=1", "unknown noise law"),
        ("student-t:df=0", "df"),
        ("student-t:df=abc", "df must be a number"),
        ("gaussian:sigma=1", "bad parameter"),
        ("three-point:value=1", "needs parameters"),
        ("", "non-empty"),
        ("gaussian:std=1,std=2", "twice"),
    ],
)
def test_parse_noise_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        ct.parse_noise(spec)


finite = st.floats(1e-3, 1e3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(
        ["gaussian", "laplace", "cauchy", "student-t", "uniform", "three-point", "exponential"]
    ),
    finite,
    finite,
    st.floats(0, 1),
)
def test_parse_noise_round_trips(name, a, b, q):
    spec = {
        "gaussian": f"gaussian:std={a}",
        "laplace": f"laplace:scale={a}",
        "cauchy": f"cauchy:scale={a}",
        "student-t": f"student-t:df={b},scale={a}",
        "uniform": f"uniform:half_width={a}",
        "three-point": f"three-point:value={a},q={q}",
        "exponential": f"exponential:scale={a}",
    }[name]
    law = ct.parse_noise(spec)
    assert ct.parse_noise(law.to_spec()) == law


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=40))
def test_parse_noise_never_crashes_otherwise(text):
    try:
        ct.parse_noise(text)
    except ValueError:
        pass
