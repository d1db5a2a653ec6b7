"""make_nuclei: ground truth consistent with the image, touching and border-cut nuclei.

And the detection floor it lets us assert (blobs beat the greedy spheres where nuclei differ in size).
"""

import itertools

import numpy as np
import pytest
from scipy import ndimage

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
    (dict(elongation=0.5), "elongation must be a ratio >= 1"),
    (dict(irregularity=-0.1), "irregularity and chromatin must be >= 0"),
    (dict(photons=0), "photons must be a positive count"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_nuclei(**kwargs)


def _axis_ratios(nuclei):
    """Long-to-short axis ratio (square root of the inertia eigenvalues) of each nucleus of 200+ voxels."""
    ratios = []
    for index in range(1, int(nuclei.max()) + 1):
        points = np.argwhere(nuclei == index)
        if len(points) >= 200:
            eigenvalues = np.linalg.eigvalsh(np.cov(points.T))
            ratios.append(np.sqrt(eigenvalues[-1] / eigenvalues[0]))
    return np.asarray(ratios)


def _surface_to_volume(nuclei):
    """Faces of each nucleus of 200+ voxels, over its volume to the 2/3 (least for a ball)."""
    faces = np.zeros(int(nuclei.max()) + 1)
    for axis in range(3):
        a, b = np.moveaxis(nuclei, axis, 0)[:-1], np.moveaxis(nuclei, axis, 0)[1:]
        differ = a != b
        np.add.at(faces, a[differ], 1)
        np.add.at(faces, b[differ], 1)
    volume = np.bincount(nuclei.ravel(), minlength=len(faces))
    large = np.flatnonzero(volume >= 200)
    large = large[large > 0]
    return faces[large] / volume[large] ** (2 / 3)


def test_elongated_irregular_nuclei_are_longer_and_rougher_than_the_default():
    round_, long_ = (make_nuclei((32, 64, 64), seed=2, **options) for options in ({}, {"elongation": 2.0}))
    assert np.median(_axis_ratios(long_.nuclei)) > np.median(_axis_ratios(round_.nuclei)) + 0.2
    rough = make_nuclei((32, 64, 64), seed=2, irregularity=0.3)
    assert np.median(_surface_to_volume(rough.nuclei)) > 1.1 * np.median(_surface_to_volume(round_.nuclei))


def test_photon_noise_grows_with_brightness_and_chromatin_varies_nuclei_inside():
    quiet, shot = (make_nuclei((24, 48, 48), seed=4, **options) for options in ({}, {"photons": 10}))
    bright, dark = shot.nuclei > 0, shot.nuclei == 0
    extra = np.abs(shot.image.astype(float) - quiet.image)  # the same volume but for the Poisson draw
    assert extra[bright].mean() > 1.5 * extra[dark].mean() > 0  # shot noise scales with the signal
    plain, textured = (make_nuclei((24, 48, 48), seed=4, **options) for options in ({}, {"chromatin": 0.5}))
    inner = ndimage.binary_erosion(plain.nuclei > 0, iterations=2)  # away from the blurred outlines
    spread = [np.median([np.std(sample.image[inner & (sample.nuclei == index)])
                         for index in np.unique(sample.nuclei[inner])]) for sample in (plain, textured)]
    assert spread[1] > 1.5 * spread[0]


def test_blobs_place_an_elongated_cell_at_its_middle():
    z, y, x = np.ogrid[:24, :32, :64]
    prob = (((z - 12) / 5) ** 2 + ((y - 16) / 5) ** 2 + ((x - 32) / 16) ** 2 <= 1).astype(float)
    found = detect_cells(prob, method="blobs", threshold=0.5, sphere_size=10)
    assert found.count <= 2
    middle = np.average(found.centroids, axis=0, weights=found.voxel_counts)
    np.testing.assert_allclose(middle, [12, 16, 32], atol=0.5)
    assert np.all(np.abs(found.centroids[:, 2] - 32) < 12)  # each piece at the middle of its part


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
