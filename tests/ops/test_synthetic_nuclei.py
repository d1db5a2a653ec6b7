"""make_nuclei: ground truth consistent with the image, touching and border-cut nuclei, and the
detection floor it lets us assert (blobs beat the greedy spheres where nuclei differ in size)."""

import itertools

import numpy as np
import pytest

from neuropipe.ops import detect_cells, gmm_probability, make_nuclei, match_centroids


@pytest.fixture(scope="module")
def sample():
    return make_nuclei((32, 56, 64), seed=3, packing=0.75, radius=(3.0, 9.0))


def test_labels_and_centroids_agree(sample):
    n = len(sample.centroids)
    assert sample.image.dtype == np.uint8 and sample.nuclei.dtype == np.uint32
    assert np.array_equal(np.unique(sample.nuclei), np.arange(n + 1))
    z, y, x = np.nonzero(sample.nuclei == 1)
    np.testing.assert_allclose(sample.centroids[0], [z.mean(), y.mean(), x.mean()])
    assert sample.radii.shape == (n,) and np.all((sample.radii >= 3) & (sample.radii <= 9))


def test_nuclei_touch_and_are_cut_by_the_border(sample):
    touching = sample.nuclei[:, :, 1:] * sample.nuclei[:, :, :-1] > 0
    touching &= sample.nuclei[:, :, 1:] != sample.nuclei[:, :, :-1]
    assert touching.sum() > 50  # faces between different nuclei with no background between them
    border = np.unique(np.concatenate([sample.nuclei[0].ravel(), sample.nuclei[-1].ravel(),
                                       sample.nuclei[:, 0].ravel(), sample.nuclei[:, :, -1].ravel()]))
    assert len(border) > 10


def test_nuclei_are_brighter_than_background(sample):
    inside = sample.image[sample.nuclei > 0].mean()
    outside = sample.image[sample.nuclei == 0].mean()
    assert inside > outside + 40


def test_same_seed_same_volume():
    a, b = make_nuclei((8, 24, 24), seed=5), make_nuclei((8, 24, 24), seed=5)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, make_nuclei((8, 24, 24), seed=6).image)


@pytest.mark.parametrize("kwargs, message", [
    (dict(radius=(5.0, 2.0)), "low <= high"),
    (dict(packing=0.0), "packing must be in"),
    (dict(dim=1.5), "dim must be in"),
    (dict(shape=(4, 4)), "shape must be three integers"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_nuclei(**kwargs)


def _best_f1(probability, truth, sweep):
    return max(match_centroids(detect_cells(probability, **params).centroids, truth, radius=5).f1 for params in sweep)


def test_blobs_beat_the_greedy_spheres_on_touching_nuclei_of_mixed_sizes(sample):
    probability = gmm_probability(sample.image, foreground="bright")
    spheres = _best_f1(probability, sample.centroids, [
        dict(threshold=t, stop=s, sphere_size=d, dilation=g)
        for t, s, d, g in itertools.product((0.2, 0.4), (0.47,), (8, 10, 12, 14), (2, 4, 8))])
    blobs = _best_f1(probability, sample.centroids, [
        dict(method="blobs", threshold=t, sphere_size=d) for t, d in itertools.product((0.7, 0.85), (10, 12))])
    assert blobs >= 0.85
    assert blobs > spheres + 0.03
