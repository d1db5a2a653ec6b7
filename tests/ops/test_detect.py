"""detect_cells: planted balls, anisotropy, borders, limits, exact local updates, components."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.signal import fftconvolve

from neuropipe.ops import _blobs, detect_cells, gmm_probability


def _ball(diameter, voxel_size=(1.0, 1.0, 1.0)):
    """Voxels within the ellipsoid of physical diameter ``diameter * min(voxel_size)``."""
    vs = np.asarray(voxel_size, float)
    radii = 0.5 * diameter * vs.min() / vs
    half = np.floor(radii + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) / r for h, r in zip(half, radii)], indexing="ij")
    return sum(g**2 for g in grids) <= 1.0 + 1e-9


def _plant(shape, centres, diameter, voxel_size=(1.0, 1.0, 1.0)):
    """Return a probability volume that is 1 inside a ball at each centre (clipped), 0 elsewhere."""
    prob = np.zeros(shape)
    ball = _ball(diameter, voxel_size)
    half = np.array(ball.shape) // 2
    for c in centres:
        lo = np.array(c) - half
        src = tuple(slice(max(0, -a), b - max(0, a + b - n)) for a, b, n in zip(lo, ball.shape, shape))
        dst = tuple(slice(max(0, a), min(n, a + b)) for a, b, n in zip(lo, ball.shape, shape))
        prob[dst] = np.maximum(prob[dst], ball[src])
    return prob


def _assert_same_points(found, planted):
    found = np.asarray(found, float)
    planted = np.asarray(planted, float)
    assert found.shape == planted.shape
    order_f = np.lexsort(found.T[::-1])
    order_p = np.lexsort(planted.T[::-1])
    np.testing.assert_allclose(found[order_f], planted[order_p], atol=0.5)


def test_planted_balls_are_recovered_exactly():
    centres = [(8, 10, 10), (8, 10, 30), (20, 28, 12), (22, 30, 34), (10, 34, 22)]
    prob = _plant((30, 44, 44), centres, 10)
    d = detect_cells(prob, sphere_size=10, dilation=2)
    assert d.count == len(centres)
    _assert_same_points(d.centroids, centres)
    np.testing.assert_allclose(d.scores, 1.0)
    assert d.labels.dtype == np.uint32 and d.labels.shape == prob.shape
    assert d.voxel_counts.tolist() == [int(_ball(10).sum())] * len(centres)
    np.testing.assert_array_equal(np.bincount(d.labels.ravel())[1:], d.voxel_counts)


def test_anisotropic_voxels_use_ellipsoids():
    voxel_size = (3.0, 1.0, 1.0)
    centres = [(4, 10, 10), (10, 12, 30), (5, 30, 20)]
    prob = _plant((14, 42, 42), centres, 12, voxel_size)
    d = detect_cells(prob, sphere_size=12, dilation=2, voxel_size=voxel_size)
    _assert_same_points(d.centroids, centres)
    assert d.voxel_counts.tolist() == [int(_ball(12, voxel_size).sum())] * 3
    assert _ball(12, voxel_size).shape == (5, 13, 13)


def test_ball_cut_by_the_border_is_found_at_its_centre():
    centres = [(1, 12, 12), (10, 12, 0)]
    d = detect_cells(_plant((16, 24, 24), centres, 10), sphere_size=10, dilation=2)
    _assert_same_points(d.centroids, centres)
    np.testing.assert_allclose(d.scores, 1.0)


def test_no_cells_gives_zero_detections():
    d = detect_cells(np.zeros((8, 16, 16)), sphere_size=6)
    assert d.count == 0
    assert d.centroids.shape == (0, 3) and d.scores.shape == (0,) and d.voxel_counts.shape == (0,)
    assert d.labels.dtype == np.uint32 and not d.labels.any()


def test_max_cells_limits_the_count():
    centres = [(6, 8, 8 + 12 * i) for i in range(5)]
    d = detect_cells(_plant((12, 16, 68), centres, 8), sphere_size=8, dilation=2, max_cells=3)
    assert d.count == 3


def test_more_than_255_cells_do_not_wrap_labels():
    centres = [(2, 2 + 5 * i, 2 + 5 * j) for i in range(20) for j in range(16)]
    d = detect_cells(_plant((5, 100, 80), centres, 3), sphere_size=3, dilation=0, max_cells=500)
    assert d.count == 320
    assert d.labels.max() == 320 and len(np.unique(d.labels)) == 321


def _reference_spheres(prob, threshold, stop, size, dilation, max_cells):
    """Slow reference: recompute the whole score map after every detection."""
    q = np.where(prob > threshold, prob, 0.0)
    ball = _ball(size).astype(float)
    norm = fftconvolve(np.ones(prob.shape), ball, mode="same")
    found = []
    while len(found) < max_cells:
        score = fftconvolve(q, ball, mode="same") / norm
        centre = np.unravel_index(np.argmax(score), score.shape)
        if score[centre] < stop:
            break
        found.append((centre, score[centre]))
        q[_plant(prob.shape, [centre], size + dilation) > 0] = 0.0
    return found


def test_local_updates_match_a_full_recomputation():
    rng = np.random.default_rng(4)
    centres = rng.integers(0, [20, 40, 40], size=(25, 3))
    prob = np.clip(_plant((20, 40, 40), centres, 9) * rng.uniform(0.6, 1.0, (20, 40, 40))
                   + rng.uniform(0, 0.3, (20, 40, 40)), 0, 1)
    d = detect_cells(prob, threshold=0.2, stop=0.4, sphere_size=9, dilation=3)
    expected = _reference_spheres(prob, 0.2, 0.4, 9, 3, 500)
    assert d.count == len(expected) > 5
    np.testing.assert_array_equal(d.centroids, [c for c, _ in expected])
    np.testing.assert_allclose(d.scores, [s for _, s in expected], atol=1e-9)


def test_components_method_finds_blobs_and_drops_dust():
    prob = np.zeros((6, 20, 20))
    prob[1:4, 2:6, 2:6] = 0.9  # 48 voxels
    prob[2:5, 10:16, 10:14] = 0.7  # 72 voxels
    prob[5, 19, 19] = 0.9  # dust
    d = detect_cells(prob, method="components", threshold=0.5, min_voxels=5)
    assert d.count == 2
    np.testing.assert_allclose(d.centroids, [[2, 3.5, 3.5], [3, 12.5, 11.5]])
    np.testing.assert_allclose(d.scores, [0.9, 0.7])
    assert d.voxel_counts.tolist() == [48, 72]
    assert d.labels[5, 19, 19] == 0 and d.labels.max() == 2


def test_components_method_keeps_the_largest_in_label_order():
    prob = np.zeros((1, 3, 20))
    prob[0, 1, 0:2] = 1.0  # 2 voxels
    prob[0, 1, 4:9] = 1.0  # 5 voxels
    prob[0, 1, 11:14] = 1.0  # 3 voxels
    d = detect_cells(prob, method="components", threshold=0.5, min_voxels=0, max_cells=2)
    assert d.voxel_counts.tolist() == [5, 3]
    assert d.labels[0, 1].tolist()[:15] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 2, 2, 2, 0]


@pytest.mark.parametrize(
    "prob, kwargs, message",
    [
        (np.zeros((4, 4, 4)), {"method": "magic"},
         r"method must be one of \('spheres', 'components', 'blobs', 'learned'\); got 'magic'"),
        (np.full((4, 4, 4), np.nan), {}, "64 NaN value"),
        (np.full((4, 4, 4), 1.5), {}, r"prob must lie in \[0, 1\]; got values in \[1.5, 1.5\]"),
        (np.zeros((4, 4)), {}, "ndim=2"),
        (np.zeros((4, 0, 4)), {}, "must not be empty"),
        (np.zeros((4, 4, 4)), {"threshold": 1.5}, r"threshold must be a number in \[0, 1\]; got 1.5"),
        (np.zeros((4, 4, 4)), {"stop": -0.1}, r"stop must be a number in \[0, 1\]"),
        (np.zeros((4, 4, 4)), {"sphere_size": 0}, "sphere_size must be a finite number > 0; got 0"),
        (np.zeros((4, 4, 4)), {"dilation": -1}, "dilation must be a finite number >= 0; got -1"),
        (np.zeros((4, 4, 4)), {"max_cells": 0}, "max_cells must be an integer >= 1; got 0"),
        (np.zeros((4, 4, 4)), {"voxel_size": (1, 1)}, "voxel_size must be a sequence of three"),
    ],
)
def test_invalid_input_is_refused(prob, kwargs, message):
    with pytest.raises(ValueError, match=message):
        detect_cells(prob, **kwargs)


def test_probabilities_within_rounding_of_the_range_are_accepted():
    prob = _plant((12, 12, 12), [(6, 6, 6)], 6) * (1 + 1e-7)
    assert detect_cells(prob, sphere_size=6).count == 1


def _balls(shape, centres, radius, spacing=(1.0, 1.0, 1.0)):
    grid = np.indices(shape).reshape(3, -1).T * np.asarray(spacing)
    volume = np.zeros(shape, float)
    for centre in centres:
        inside = np.linalg.norm(grid - np.asarray(centre) * np.asarray(spacing), axis=1) <= radius
        volume.ravel()[inside] = 1.0
    return volume


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blobs_recover_randomly_planted_balls_of_mixed_sizes(seed):
    rng = np.random.default_rng(seed)
    shape, centres, radii = (36, 48, 48), [], []
    while len(centres) < 6:  # separated balls of radius 3.5 to 8, anywhere (some cut by the border)
        centre, radius = rng.integers(0, shape), rng.uniform(3.5, 8.0)
        if all(np.linalg.norm(centre - c) > radius + r + 2 for c, r in zip(centres, radii)):
            centres.append(centre)
            radii.append(radius)
    balls = [_balls(shape, [c], r) for c, r in zip(centres, radii)]
    visible = [np.mean(np.nonzero(ball), axis=1) for ball in balls]  # where an annotator marks a cut ball
    found = detect_cells(np.maximum.reduce(balls), method="blobs", threshold=0.5, sphere_size=10)
    assert found.count == len(centres)
    distance = np.linalg.norm(found.centroids[:, None] - np.asarray(visible)[None], axis=2)
    assert sorted(distance.argmin(axis=1)) == list(range(len(centres)))  # one detection per ball
    assert np.all(distance.min(axis=1) <= 1.5)
    union, labelled = np.maximum.reduce(balls) > 0, found.labels > 0  # the mask is P smoothed by one voxel:
    assert labelled[ndimage.binary_erosion(union)].all()  # every inner voxel labelled, ...
    assert not (labelled & ~ndimage.binary_dilation(union)).any()  # ... none beyond a voxel of a ball
    assert found.voxel_counts.sum() == np.count_nonzero(labelled)


def test_blobs_separate_touching_cells_of_different_sizes():
    centres = [(14, 14, 9), (14, 14, 20)]  # radii 8 and 4: the balls overlap by one voxel
    prob = np.maximum(_balls((28, 28, 28), centres[:1], 8), _balls((28, 28, 28), centres[1:], 4))
    found = detect_cells(prob, method="blobs", threshold=0.5, sphere_size=12)
    assert found.count == 2
    np.testing.assert_allclose(found.centroids[np.argsort(found.centroids[:, 2])], centres, atol=1.0)
    assert sorted(found.voxel_counts) == pytest.approx([4 / 3 * np.pi * 4**3, 4 / 3 * np.pi * 8**3], rel=0.25)


def test_blobs_make_one_cell_of_an_elongated_one(monkeypatch):
    z, y, x = np.ogrid[:24, :24, :40]
    prob = ((((z - 12) / 4) ** 2 + ((y - 12) / 4) ** 2 + ((x - 20) / 9) ** 2) <= 1).astype(float)
    found = detect_cells(prob, method="blobs", threshold=0.5, sphere_size=10)
    assert found.count == 1 and found.labels.max() == 1
    np.testing.assert_allclose(found.centroids[0], (12, 12, 20), atol=0.5)
    assert found.voxel_counts[0] == np.count_nonzero(found.labels)
    monkeypatch.setattr(_blobs, "MERGE", 0.0)  # without merging, the two peaks of its ends are two cells
    assert detect_cells(prob, method="blobs", threshold=0.5, sphere_size=10).count == 2


def test_merging_joins_only_close_touching_cells_each_once():
    labels = np.zeros((1, 1, 12), np.uint32)
    labels[0, 0, :] = [1, 1, 2, 2, 3, 3, 0, 4, 4, 5, 5, 5]
    centroids = np.array([(0, 0, 0.5), (0, 0, 2.5), (0, 0, 4.5), (0, 0, 7.5), (0, 0, 10.0)])
    merged = _blobs.merge_close_cells(labels, centroids, np.ones(3), distance=2.6)
    # 1-2 and 2-3 are 2 apart: 1-2 merges first, so 3 stays apart; 4 and 5 are 2.5 apart; all ids renumbered
    assert merged[0, 0].tolist() == [1, 1, 1, 1, 2, 2, 0, 3, 3, 3, 3, 3]
    assert _blobs.merge_close_cells(labels, centroids, np.ones(3), distance=2.0) is labels


def test_blobs_keep_a_cell_cut_by_the_border():
    found = detect_cells(_balls((20, 20, 20), [(10, 10, 1)], 6), method="blobs", threshold=0.5, sphere_size=12)
    assert found.count == 1 and found.centroids[0, 2] < 4


def test_blobs_find_a_dim_cell_beside_a_bright_one():
    prob = _balls((20, 20, 40), [(10, 10, 10)], 5) + 0.35 * _balls((20, 20, 40), [(10, 10, 28)], 5)
    found = detect_cells(prob, method="blobs", threshold=0.2, sphere_size=10)
    np.testing.assert_allclose(found.centroids[np.argsort(found.centroids[:, 2])], [(10, 10, 10), (10, 10, 28)],
                               atol=0.5)
    assert found.scores.min() == pytest.approx(0.35)


def test_blobs_on_anisotropic_voxels():
    spacing = (3.0, 1.0, 1.0)
    centres = [(4, 10, 10), (4, 10, 23)]
    prob = _balls((9, 20, 34), centres, 6, spacing)
    found = detect_cells(prob, method="blobs", threshold=0.5, sphere_size=12, voxel_size=spacing)
    assert found.count == 2
    np.testing.assert_allclose(found.centroids[np.argsort(found.centroids[:, 2])], centres, atol=1.0)


def test_blobs_find_nothing_in_an_empty_volume():
    found = detect_cells(np.zeros((8, 8, 8)), method="blobs", sphere_size=6)
    assert found.count == 0 and found.labels.shape == (8, 8, 8)
    found = detect_cells(np.full((8, 8, 8), 0.9), method="blobs", sphere_size=6, min_voxels=1000)
    assert found.count == 0


def test_blobs_respect_max_cells_keeping_the_strongest():
    prob = _balls((20, 20, 60), [(10, 10, 10)], 6) + 0.5 * _balls((20, 20, 60), [(10, 10, 30), (10, 10, 50)], 6)
    found = detect_cells(prob, method="blobs", threshold=0.2, sphere_size=12, max_cells=1)
    assert found.count == 1
    np.testing.assert_allclose(found.centroids[0], (10, 10, 10), atol=0.5)


@pytest.mark.parametrize("method", ["spheres", "blobs"])
def test_a_volume_without_cells_gives_no_detections_through_the_gmm(method):
    noise = np.random.default_rng(0).normal(100, 10, (24, 48, 48)).clip(0, 255).astype(np.uint8)
    probability = gmm_probability(noise)  # about 0.5 everywhere, with ripples
    assert detect_cells(probability, method=method, threshold=0.5, sphere_size=10).count == 0
