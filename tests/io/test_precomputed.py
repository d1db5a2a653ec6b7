"""Neuroglancer precomputed layers: read in ZYX with their offset, created and written as targets."""

import numpy as np
import pytest
from volume_files import write_precomputed

from neuropipe.errors import BadInputError
from neuropipe.io import read_volume, volume_shape, voxel_size
from neuropipe.io.targets import write_volume

BOX_SLICES = (slice(1, 3), slice(2, 5), slice(3, 9))


@pytest.fixture
def stack():
    return np.random.default_rng(0).integers(0, 60000, size=(6, 10, 12), dtype=np.uint16)


def test_precomputed_is_presented_in_zyx_with_its_offset(tmp_path, stack):
    uri = write_precomputed(tmp_path / "layer", stack, offset_xyz=(100, 50, 7))
    assert volume_shape(uri) == stack.shape and voxel_size(uri) == (40.0, 4.0, 4.0)
    np.testing.assert_array_equal(read_volume(uri), stack)
    np.testing.assert_array_equal(read_volume(uri, "8:10,52:55,103:109"), stack[BOX_SLICES])
    with pytest.raises(BadInputError, match=r"starting at \(7, 50, 100\).*x range 0:4 is not within 100:112"):
        read_volume(uri, "7:9,50:52,0:4")
    with pytest.raises(BadInputError, match="cannot open the precomputed layer"):
        read_volume(uri + "?resolution=3")


def test_a_precomputed_layer_is_created_around_the_box_then_written_into(tmp_path):
    layer = f"precomputed://file://{tmp_path}/cells"
    labels = np.arange(2 * 3 * 4, dtype=np.uint32).reshape(2, 3, 4)
    write_volume(layer, labels, content="labels", offset_zyx=(5, 10, 20), voxel_size_nm=(40, 4, 4))
    np.testing.assert_array_equal(read_volume(layer, "5:7,10:13,20:24"), labels)
    write_volume(layer, labels[:1, :2, :2] + 100, content="labels", offset_zyx=(6, 11, 22))
    assert read_volume(layer, "6:7,11:13,22:24").tolist() == (labels[:1, :2, :2] + 100).tolist()
    with pytest.raises(BadInputError, match="reaches outside the target layer"):
        write_volume(layer, labels, content="labels", offset_zyx=(6, 10, 20))
    with pytest.raises(BadInputError, match="cannot open the precomputed layer"):
        write_volume(f"precomputed://file://{tmp_path}/none", labels, content="labels", create=False)
