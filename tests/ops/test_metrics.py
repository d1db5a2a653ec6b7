"""Metrics: centroid matching, pixel scores, adapted Rand error, variation of information."""

import numpy as np
import pytest

from neuropipe.ops import (
    adapted_rand_error,
    match_centroids,
    membrane_map_scores,
    pixel_scores,
    variation_of_information,
)


def test_matching_is_optimal_not_greedy():
    # Along x: truth at 0 and 3; detections at 1 and -1.5, radius 2.2.
    # Greedy nearest-first pairs detection 0 with truth 0 (distance 1) and then
    # detection 1 (4.5 from truth 1) stays unmatched; the optimum matches both.
    truth = [[0, 0, 0], [0, 0, 3]]
    detected = [[0, 0, 1], [0, 0, -1.5]]
    result = match_centroids(detected, truth, radius=2.2)
    assert (result.tp, result.fp, result.fn) == (2, 0, 0)
    assert result.pairs.tolist() == [[0, 1], [1, 0]]
    assert result.precision == result.recall == result.f1 == 1.0


def test_matching_counts_and_scores():
    truth = [[0, 0, 0], [10, 10, 10], [20, 20, 20]]
    detected = [[0, 0, 1], [10, 11, 10], [50, 50, 50], [60, 60, 60]]
    r = match_centroids(detected, truth, radius=3)
    assert (r.tp, r.fp, r.fn) == (2, 2, 1)
    assert r.precision == pytest.approx(2 / 4)
    assert r.recall == pytest.approx(2 / 3)
    assert r.f1 == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))


def test_matching_scales_by_voxel_size():
    detected, truth = [[1, 0, 0]], [[0, 0, 0]]
    assert match_centroids(detected, truth, radius=2).tp == 1
    assert match_centroids(detected, truth, radius=2, voxel_size=(3, 1, 1)).tp == 0


@pytest.mark.parametrize(
    "detected, truth, expected",
    [
        ([], [], (1.0, 1.0, 1.0)),
        ([[0, 0, 0]], [], (0.0, 1.0, 0.0)),
        ([], [[0, 0, 0]], (1.0, 0.0, 0.0)),
    ],
)
def test_matching_conventions_for_empty_sets(detected, truth, expected):
    r = match_centroids(detected, truth, radius=1)
    assert (r.precision, r.recall, r.f1) == expected
    assert r.pairs.shape == (0, 2)


def test_matching_many_points_recovers_every_pair():
    rng = np.random.default_rng(3)
    truth = 10.0 * np.argwhere(np.ones((20, 20, 20), bool))  # 8000 points on a grid
    detected = truth + rng.uniform(-2, 2, truth.shape)
    order = rng.permutation(len(truth))
    r = match_centroids(detected[order], truth, radius=4)
    assert r.tp == len(truth) and r.fp == r.fn == 0
    np.testing.assert_array_equal(order[r.pairs[:, 0]], r.pairs[:, 1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"detected": [[0, 0]], "truth": [[0, 0, 0]], "radius": 1}, r"detected must have shape \(N, 3\)"),
        ({"detected": [[0, 0, 0]], "truth": [[0, np.nan, 0]], "radius": 1}, "truth contains 1 NaN"),
        ({"detected": [[0, 0, 0]], "truth": [[0, 0, 0]], "radius": 0},
         "radius must be a finite number > 0; got 0"),
    ],
)
def test_matching_refuses_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        match_centroids(**kwargs)


def test_pixel_scores_by_hand():
    prob = np.array([[[0.9, 0.8, 0.2, 0.1, 0.7]]])
    truth = np.array([[[True, False, True, False, True]]])
    # predicted: T T F F T -> tp 2 (0, 4), fp 1 (1), fn 1 (2), tn 1 (3)
    s = pixel_scores(prob, truth)
    assert s.pixel_error == pytest.approx(2 / 5)
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == pytest.approx(2 / 3)
    assert s.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_pixel_scores_threshold_is_strict():
    s = pixel_scores(np.array([0.5, 0.6]), np.array([False, True]), threshold=0.5)
    assert s.pixel_error == 0.0


def test_pixel_scores_refuse_shape_mismatch():
    with pytest.raises(ValueError, match=r"same shape; got \(2,\) and \(3,\)"):
        pixel_scores(np.zeros(2), np.zeros(3, bool))


def test_adapted_rand_error_of_a_perfect_segmentation_is_zero():
    truth = np.array([1, 1, 2, 2, 3])
    assert adapted_rand_error(truth * 7, truth) == pytest.approx(0.0)


def test_adapted_rand_error_2x2_contingency_by_hand():
    # truth [1,1,2,2] vs seg [1,2,1,2]: n = [[1,1],[1,1]], sum n^2 = 4,
    # sum s^2 = 2^2 + 2^2 = 8, sum t^2 = 8 -> precision = recall = 0.5,
    # F = 0.5, error = 0.5.
    assert adapted_rand_error(np.array([1, 2, 1, 2]), np.array([1, 1, 2, 2])) == pytest.approx(0.5)


def test_adapted_rand_error_of_a_merge_by_hand():
    # truth [1,1,2,2] vs seg [1,1,1,1]: sum n^2 = 8, sum s^2 = 16, sum t^2 = 8
    # -> precision 0.5, recall 1, F = 2/3, error = 1/3.
    assert adapted_rand_error(np.ones(4, int), np.array([1, 1, 2, 2])) == pytest.approx(1 / 3)


def test_adapted_rand_error_ignores_truth_background():
    seg = np.array([1, 1, 1, 1, 5, 6])
    truth = np.array([1, 1, 2, 2, 0, 0])
    assert adapted_rand_error(seg, truth) == pytest.approx(1 / 3)


def test_adapted_rand_error_treats_seg_zero_as_singletons():
    # four singletons in one truth object: sum n^2 = 4, sum s^2 = 4, sum t^2 = 16
    # -> precision 1, recall 0.25, F = 0.4, error = 0.6.
    assert adapted_rand_error(np.zeros(4, int), np.ones(4, int)) == pytest.approx(0.6)


def test_variation_of_information_by_hand():
    merged = variation_of_information(np.ones(4, int), np.array([1, 1, 2, 2]))
    assert (merged.split, merged.merge) == pytest.approx((0.0, 1.0))  # one bit to tell 1 from 2
    split = variation_of_information(np.array([1, 2, 3, 4]), np.ones(4, int))
    assert (split.split, split.merge) == pytest.approx((2.0, 0.0))
    assert split.total == pytest.approx(2.0)


def test_variation_of_information_ignores_truth_background():
    vi = variation_of_information(np.array([1, 1, 2, 3]), np.array([4, 4, 0, 0]))
    assert (vi.split, vi.merge) == pytest.approx((0.0, 0.0))


@pytest.mark.parametrize("metric", [adapted_rand_error, variation_of_information])
@pytest.mark.parametrize(
    "seg, truth, message",
    [
        (np.ones(3, int), np.zeros(3, int), "truth has no labelled"),
        (np.ones(3), np.ones(3, int), "seg must be an integer label array; got dtype float64"),
        (np.ones(3, int), np.ones(4, int), "same shape"),
    ],
)
def test_segmentation_metrics_refuse_bad_input(metric, seg, truth, message):
    with pytest.raises(ValueError, match=message):
        metric(seg, truth)


def test_a_membrane_map_is_scored_by_its_pixels_and_by_the_cells_it_separates():
    cells = np.zeros((2, 6, 9), np.uint32)
    cells[:, :, 0:4], cells[:, :, 5:9] = 1, 2  # two cells either side of a membrane plane at x = 4
    membrane = cells == 0
    perfect = membrane_map_scores(membrane.astype(float), membrane, cells, threshold=0.5)
    assert perfect == {"pixel_error": 0.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "adapted_rand_error": 0.0}
    gap = membrane.astype(float)
    gap[:, 2, 4] = 0.3  # a hole in the wall merges the two cells; two voxels wrong
    scores = membrane_map_scores(gap, membrane, cells, threshold=0.5)
    assert scores["pixel_error"] == pytest.approx(2 / cells.size) and scores["recall"] == pytest.approx(10 / 12)
    assert scores["adapted_rand_error"] == pytest.approx(adapted_rand_error(np.where(gap <= 0.5, 1, 0), cells))
    assert scores["adapted_rand_error"] > 0.3
    assert membrane_map_scores(gap, membrane, cells, threshold=0.2)["adapted_rand_error"] == 0.0  # 0.3 is wall
