import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clipped_trip import clip_by_norm, clip_factor

vectors = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20)
thresholds = st.floats(1e-6, 1e4)


@settings(max_examples=100, deadline=None)
@given(vectors, thresholds)
def test_clip_is_idempotent_and_bounded(g, c):
    g = jnp.asarray(g)
    once = clip_by_norm(g, c)
    twice = clip_by_norm(once, c)
    assert float(jnp.linalg.norm(once)) <= c * (1 + 1e-12)
    np.testing.assert_allclose(twice, once, rtol=1e-12, atol=0)


@settings(max_examples=50, deadline=None)
@given(vectors)
def test_infinite_threshold_is_identity(g):
    g = jnp.asarray(g)
    assert jnp.array_equal(clip_by_norm(g, jnp.inf), g)


def test_clip_of_zero_is_zero_without_nan():
    out = clip_by_norm(jnp.zeros(5), 1.0)
    assert jnp.array_equal(out, jnp.zeros(5))
    assert float(clip_factor(0.0, 0.0)) == 1.0  # 0 gradient stays 0 even at c = 0


def test_small_threshold_goes_to_zero_and_keeps_direction():
    g = jnp.array([3.0, -4.0])
    assert jnp.array_equal(clip_by_norm(g, 0.0), jnp.zeros(2))
    out = clip_by_norm(g, 1e-3)
    np.testing.assert_allclose(out, g / 5 * 1e-3, rtol=1e-12)


def test_below_threshold_untouched():
    g = jnp.array([0.3, 0.4])
    assert jnp.array_equal(clip_by_norm(g, 0.5), g)
    assert jnp.array_equal(clip_by_norm(g, 0.6), g)


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_clip_factor_matches_definition(c):
    norms = jnp.array([0.0, c / 2, c, 2 * c, 1e6])
    expected = jnp.array([1.0, 1.0, 1.0, 0.5, c / 1e6])
    np.testing.assert_allclose(clip_factor(norms, c), expected, rtol=1e-12)
