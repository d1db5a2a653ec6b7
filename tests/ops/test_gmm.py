"""gmm_probability: two-level images, foreground choice, monotonicity, bad input."""

import numpy as np
import pytest

from neuropipe.ops import gmm_probability


def _two_level(seed=0, shape=(6, 48, 48)):
    rng = np.random.default_rng(seed)
    bright = np.zeros(shape, bool)
    bright[:, 12:36, 12:36] = True
    volume = np.where(bright, 160.0, 60.0) + rng.normal(0.0, 20.0, shape)
    return volume, bright


def test_bright_region_gets_high_probability():
    volume, bright = _two_level()
    p = gmm_probability(volume)
    assert p.shape == volume.shape and p.dtype == np.float32
    assert p[bright].mean() > 0.95 and p[~bright].mean() < 0.05
    assert np.mean((p > 0.5) != bright) < 0.02


def test_dark_foreground_is_the_complement():
    volume, _ = _two_level()
    dark = gmm_probability(volume, foreground="dark")
    np.testing.assert_allclose(dark, 1.0 - gmm_probability(volume), atol=1e-6)


def test_probability_is_monotonic_in_intensity():
    rng = np.random.default_rng(1)
    # unequal spreads: a narrow bright class would lose its far tail without clamping
    values = np.concatenate([rng.normal(50, 30, 2998), rng.normal(200, 5, 1000), [260.0, 290.0]])
    volume = values.reshape(1, 40, 100)
    p = gmm_probability(volume).ravel()
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(p[order]) >= -1e-6)
    assert p[-1] > 0.99  # 18 sd above the bright mean, but only 8 above the dark one


def test_subsampled_fit_is_deterministic_and_close_to_the_full_fit():
    volume, bright = _two_level(seed=2)
    a = gmm_probability(volume, max_samples=2000)
    b = gmm_probability(volume, max_samples=2000)
    np.testing.assert_array_equal(a, b)
    assert np.mean((a > 0.5) != (gmm_probability(volume) > 0.5)) < 0.01


def test_integer_input_is_accepted():
    volume, bright = _two_level(seed=3)
    p = gmm_probability(np.clip(volume, 0, 255).astype(np.uint8))
    assert np.mean((p > 0.5) != bright) < 0.02


@pytest.mark.parametrize(
    "volume, kwargs, message",
    [
        (np.full((2, 3, 3), 7.0), {}, "volume is constant"),
        (np.ones((2, 3, 3)), {"foreground": "grey"}, "foreground must be one of .*got 'grey'"),
        (np.where(np.eye(3)[None] > 0, np.nan, 1.0), {}, "3 NaN value"),
        (np.ones((3, 3)), {}, "ndim=2"),
    ],
)
def test_invalid_input_is_refused(volume, kwargs, message):
    with pytest.raises(ValueError, match=message):
        gmm_probability(volume, **kwargs)
