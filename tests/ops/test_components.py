"""label_components: connectivity, dtypes, label volumes, dust, statistics, empty input."""

import numpy as np
import pytest

from neuropipe.ops import label_components


def _touching_pairs():
    """Three objects: a corner-touching pair, an edge-touching pair and a lone voxel."""
    v = np.zeros((3, 3, 8), np.uint8)
    v[0, 0, 0] = v[1, 1, 1] = 1  # share a corner only
    v[0, 0, 4] = v[0, 1, 5] = 1  # share an edge only
    v[2, 2, 7] = 1
    return v


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int32, np.uint64])
@pytest.mark.parametrize("connectivity, expected", [(6, 5), (18, 4), (26, 3)])
def test_connectivity_decides_which_neighbours_join(dtype, connectivity, expected):
    comps = label_components(_touching_pairs().astype(dtype), connectivity=connectivity)
    assert comps.count == expected
    assert comps.labels.dtype == np.uint32
    assert sorted(np.unique(comps.labels).tolist()) == list(range(expected + 1))
    assert comps.voxel_counts.sum() == 5


def test_statistics_of_a_hand_built_box():
    v = np.zeros((4, 5, 6), bool)
    v[1:3, 1:4, 2:6] = True  # 2 x 3 x 4 = 24 voxels
    v[0, 0, 0] = True
    comps = label_components(v)
    assert comps.voxel_counts.tolist() == [1, 24]
    assert comps.voxel_counts.dtype == np.int64
    np.testing.assert_allclose(comps.centroids, [[0, 0, 0], [1.5, 2.0, 3.5]])
    assert comps.bounding_boxes.tolist() == [[0, 1, 0, 1, 0, 1], [1, 3, 1, 4, 2, 6]]
    z0, z1, y0, y1, x0, x1 = comps.bounding_boxes[1]
    assert np.all(comps.labels[z0:z1, y0:y1, x0:x1] == 2)


def test_label_volume_keeps_touching_labels_apart_and_splits_pieces():
    v = np.zeros((1, 1, 7), np.int64)
    v[0, 0, :] = [5, 5, 9, 9, 0, 5, 5]  # 5|9 touch; the two 5-pieces are apart
    comps = label_components(v)
    assert comps.labels[0, 0].tolist() == [1, 1, 2, 2, 0, 3, 3]
    assert comps.voxel_counts.tolist() == [2, 2, 2]


def test_dust_removes_small_objects_and_renumbers():
    v = np.zeros((2, 10, 10), bool)
    v[0, 0, 0] = True  # 1 voxel: dust
    v[:, 4:7, 4:7] = True  # 18 voxels
    v[1, 9, 9] = True  # 1 voxel: dust
    v[0, 0, 8:10] = True  # 2 voxels
    comps = label_components(v, dust=2)
    assert comps.voxel_counts.tolist() == [2, 18]
    assert comps.labels.max() == 2
    assert comps.labels[0, 0, 0] == 0 and comps.labels[1, 9, 9] == 0


@pytest.mark.parametrize("dtype", [bool, np.uint16])
def test_empty_volume_gives_zero_objects(dtype):
    comps = label_components(np.zeros((2, 3, 4), dtype))
    assert comps.count == 0
    assert comps.labels.shape == (2, 3, 4) and comps.labels.dtype == np.uint32
    assert not comps.labels.any()
    assert comps.voxel_counts.shape == (0,)
    assert comps.centroids.shape == (0, 3)
    assert comps.bounding_boxes.shape == (0, 6)


def test_dust_can_remove_everything():
    v = np.zeros((3, 3, 3), bool)
    v[1, 1, 1] = True
    assert label_components(v, dust=2).count == 0


@pytest.mark.parametrize(
    "volume, kwargs, message",
    [
        (np.zeros((2, 2, 2), bool), {"connectivity": 4}, "connectivity must be one of"),
        (np.zeros((2, 2, 2), bool), {"dust": -1}, "dust must be an integer >= 0; got -1"),
        (np.zeros((2, 2, 2), np.float32), {}, "bool mask or an integer label volume; got dtype float32"),
        (np.zeros((4, 4), bool), {}, "3-D ZYX volume; got an array with ndim=2"),
        (np.zeros((0, 4, 4), bool), {}, "must not be empty"),
    ],
)
def test_invalid_input_is_refused(volume, kwargs, message):
    with pytest.raises(ValueError, match=message):
        label_components(volume, **kwargs)


def test_thick_sections_are_labelled_plane_by_plane():
    # One column of voxels through three planes: a single object in 3D, but three
    # cross-sections when the planes are 50 nm apart and the pixels 4 nm.
    volume = np.zeros((3, 4, 4), bool)
    volume[:, 1:3, 1:3] = True
    assert label_components(volume, connectivity=6).count == 1
    planes = label_components(volume, connectivity=6, voxel_size=(50, 4, 4))
    assert planes.count == 3
    assert planes.voxel_counts.tolist() == [4, 4, 4]
    assert planes.centroids[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert label_components(volume, connectivity=6, voxel_size=(1.5, 1, 1)).count == 1


def test_plane_by_plane_dust_is_per_plane():
    volume = np.zeros((2, 5, 5), bool)
    volume[0, 0:3, 0:3] = True  # 9 pixels
    volume[1, 0, 0] = True  # 1 pixel
    result = label_components(volume, connectivity=6, dust=2, voxel_size=(40, 4, 4))
    assert result.count == 1 and result.voxel_counts.tolist() == [9]
