"""make_sample: determinism, consistency of the ground truth, difficulty, bad input."""

import numpy as np
import pytest

from neuropipe.ops import label_components, make_sample


@pytest.fixture(scope="module")
def sample():
    return make_sample()


def test_types_and_shapes(sample):
    assert sample.image.shape == sample.cells.shape == sample.membrane.shape == (24, 128, 128)
    assert sample.image.dtype == np.uint8
    assert sample.cells.dtype == np.uint32
    assert sample.membrane.dtype == np.bool_
    assert sample.centroids.shape == (sample.cells.max(), 3) and sample.centroids.dtype == np.float64


def test_same_seed_same_sample_other_seed_other_sample(sample):
    again = make_sample(seed=0)
    np.testing.assert_array_equal(again.image, sample.image)
    np.testing.assert_array_equal(again.cells, sample.cells)
    assert not np.array_equal(make_sample(seed=1).image, sample.image)


def test_membrane_is_where_there_is_no_cell(sample):
    np.testing.assert_array_equal(sample.membrane, sample.cells == 0)
    assert 0.2 < sample.membrane.mean() < 0.45


def test_cells_are_contiguous_6_connected_labels(sample):
    n = int(sample.cells.max())
    assert np.array_equal(np.unique(sample.cells), np.arange(n + 1))
    comps = label_components(~sample.membrane, connectivity=6)
    np.testing.assert_array_equal(comps.labels, sample.cells)


def test_centroids_follow_label_order(sample):
    coords = np.argwhere(sample.cells == 7)
    np.testing.assert_allclose(sample.centroids[6], coords.mean(axis=0))


def test_interior_cells_are_about_cell_diameter_wide():
    s = make_sample((40, 96, 96), seed=2, cell_diameter=14)
    comps = label_components(s.cells)
    box = comps.bounding_boxes
    inner = np.all(box[:, 0::2] > 0, axis=1) & np.all(box[:, 1::2] < np.array(s.cells.shape), axis=1)
    diameters = (6.0 * comps.voxel_counts[inner] / np.pi) ** (1 / 3)  # of the interior, without membrane
    assert inner.sum() > 20
    assert 9 < np.median(diameters) < 16


def test_membranes_are_darker_but_no_raw_threshold_finds_them(sample):
    assert sample.image[sample.membrane].mean() < sample.image[~sample.membrane].mean() - 30
    errors = [np.mean((sample.image < t) != sample.membrane) for t in range(256)]
    assert min(errors) > 0.12


def test_anisotropic_sample_keeps_cells_separated():
    s = make_sample((8, 64, 64), seed=3, voxel_size=(3.0, 1.0, 1.0))
    assert s.voxel_size == (3.0, 1.0, 1.0)
    np.testing.assert_array_equal(label_components(~s.membrane, connectivity=6).labels, s.cells)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": (4, 4)}, r"shape must be three integers >= 1 \(Z, Y, X\); got \(4, 4\)"),
        ({"shape": (0, 4, 4)}, "shape must be three integers >= 1"),
        ({"cell_diameter": 0}, "cell_diameter must be a finite number > 0; got 0"),
        ({"voxel_size": (1, -1, 1)}, "voxel_size must be a sequence of three positive numbers"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_sample(**kwargs)
