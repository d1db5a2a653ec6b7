"""HDF5 sources: datasets read box by box, their voxel size from CREMI or ilastik attributes."""

import h5py
import numpy as np
import pytest

from neuropipe.errors import BadInputError
from neuropipe.io import read_volume, voxel_size

BOX = "1:3,2:5,3:9"
BOX_SLICES = (slice(1, 3), slice(2, 5), slice(3, 9))


@pytest.fixture
def stack():
    return np.random.default_rng(0).integers(0, 60000, size=(6, 10, 12), dtype=np.uint16)


def test_hdf5_dataset_with_cremi_resolution(tmp_path, stack):
    with h5py.File(tmp_path / "sample.h5", "w") as handle:
        handle.create_dataset("volumes/raw", data=stack, chunks=(2, 5, 6))
        handle["volumes/raw"].attrs["resolution"] = [40.0, 4.0, 4.0]
        handle.create_dataset("volumes/labels/neuron_ids", data=stack.astype(np.uint64))
    uri = f"file://{tmp_path}/sample.h5#volumes/raw"
    np.testing.assert_array_equal(read_volume(uri, BOX), stack[BOX_SLICES])
    assert voxel_size(uri) == (40.0, 4.0, 4.0)
    with pytest.raises(BadInputError, match="holds 2 datasets"):
        read_volume(f"file://{tmp_path}/sample.h5")
    with pytest.raises(BadInputError, match="no dataset 'volumes/nope'"):
        read_volume(f"file://{tmp_path}/sample.h5#volumes/nope")
    with pytest.raises(BadInputError, match="no resolution levels"):
        read_volume(f"file://{tmp_path}/sample.h5?resolution=1#volumes/raw")


def test_hdf5_micrometre_sizes_and_2d_planes(tmp_path):
    with h5py.File(tmp_path / "plane.hdf5", "w") as handle:
        handle.create_dataset("image", data=np.ones((7, 8), np.float32))
        handle["image"].attrs["element_size_um"] = [0.004, 0.004]
    uri = f"file://{tmp_path}/plane.hdf5"
    assert read_volume(uri).shape == (1, 7, 8) and voxel_size(uri) is None  # no z size in a plane's metadata
    with h5py.File(tmp_path / "stack.hdf5", "w") as handle:
        handle.create_dataset("image", data=np.ones((2, 7, 8), np.float32))
        handle["image"].attrs["element_size_um"] = [0.05, 0.004, 0.004]
    assert voxel_size(f"file://{tmp_path}/stack.hdf5") == pytest.approx((50.0, 4.0, 4.0))
