"""Zarr sources (v2, v3, OME-Zarr) read box by box, and zarr arrays written as targets."""

import numpy as np
import pytest
import zarr

from neuropipe.errors import BadInputError
from neuropipe.io import read_volume, volume_shape, voxel_size
from neuropipe.io.targets import write_volume

BOX = "1:3,2:5,3:9"
BOX_SLICES = (slice(1, 3), slice(2, 5), slice(3, 9))
PROBABILITY = np.array([[[0.0, 0.5, 1.0, 0.25]]], np.float32)


@pytest.fixture
def stack():
    return np.random.default_rng(0).integers(0, 60000, size=(6, 10, 12), dtype=np.uint16)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_arrays_read_whole_and_by_box(tmp_path, stack, zarr_format):
    path = tmp_path / "vol.zarr"
    zarr.create_array(store=str(path), data=stack, chunks=(2, 4, 4), zarr_format=zarr_format)
    uri = f"file://{path}"
    np.testing.assert_array_equal(read_volume(uri), stack)
    np.testing.assert_array_equal(read_volume(uri, BOX), stack[BOX_SLICES])
    assert volume_shape(uri) == stack.shape and voxel_size(uri) is None


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_inside_a_group(tmp_path, stack, zarr_format):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=zarr_format)
    group.create_array("volumes/raw", data=stack, chunks=(3, 5, 6))
    np.testing.assert_array_equal(read_volume(f"file://{tmp_path}/g.zarr#volumes/raw", BOX), stack[BOX_SLICES])
    with pytest.raises(BadInputError, match="is a zarr group, not an array"):
        read_volume(f"file://{tmp_path}/g.zarr")
    zarr.create_array(store=str(tmp_path / "a.zarr"), data=stack, zarr_format=zarr_format)
    with pytest.raises(BadInputError, match="the store is a zarr array, not a group; it holds no 'labels'"):
        read_volume(f"file://{tmp_path}/a.zarr#labels")
    with pytest.raises(BadInputError, match="no array or group 'volumes/nope'"):
        read_volume(f"file://{tmp_path}/g.zarr#volumes/nope")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_levels_and_voxel_size(tmp_path, stack, zarr_format):
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=zarr_format)
    levels = [stack[np.newaxis], stack[np.newaxis, :, ::2, ::2]]  # c, z, y, x
    for index, level in enumerate(levels):
        group.create_array(str(index), data=level, chunks=(1, 2, 4, 4))
    multiscale = {"version": "0.4" if zarr_format == 2 else "0.5",
                  "axes": [{"name": "c", "type": "channel"}] + [{"name": name, "type": "space", "unit": "nanometer"}
                                                                for name in "zyx"],
                  "datasets": [{"path": str(index), "coordinateTransformations": [
                      {"type": "scale", "scale": [1.0, 40.0, 4.0 * 2 ** index, 4.0 * 2 ** index]}]}
                      for index in range(2)]}
    group.attrs.update({"multiscales": [multiscale]} if zarr_format == 2 else {"ome": {"multiscales": [multiscale]}})
    uri = f"file://{tmp_path}/img.ome.zarr"
    np.testing.assert_array_equal(read_volume(uri, BOX), stack[BOX_SLICES])
    np.testing.assert_array_equal(read_volume(uri + "?resolution=1"), stack[:, ::2, ::2])
    assert voxel_size(uri) == (40.0, 4.0, 4.0) and voxel_size(uri + "?resolution=1") == (40.0, 8.0, 8.0)
    with pytest.raises(BadInputError, match="resolution 2 does not exist; the OME-Zarr group has levels 0-1"):
        read_volume(uri + "?resolution=2")


def test_a_truncated_chunk_is_an_error_not_zeros(tmp_path, stack):
    path = tmp_path / "vol.zarr"
    zarr.create_array(store=str(path), data=stack, chunks=(2, 4, 4), zarr_format=2, compressors=None)
    (path / "0.0.0").write_bytes((path / "0.0.0").read_bytes()[:5])
    with pytest.raises(BadInputError, match="reading 0:2,0:4,0:4 failed"):
        read_volume(f"file://{path}", "0:2,0:4,0:4")


def test_an_existing_zarr_array_keeps_its_dtype_and_must_match_the_shape(tmp_path):
    zarr.create_array(store=str(tmp_path / "maps.zarr"), shape=(1, 1, 4), dtype="uint8")
    written = write_volume(f"file://{tmp_path}/maps.zarr", PROBABILITY, content="probability", create=False)
    assert written.dtype == "uint8"
    assert zarr.open_array(str(tmp_path / "maps.zarr"), mode="r")[...].ravel().tolist() == [0, 128, 255, 64]
    with pytest.raises(BadInputError, match=r"the array has shape \(1, 1, 4\), the result \(1, 2, 2\)"):
        write_volume(f"file://{tmp_path}/maps.zarr", np.zeros((1, 2, 2), np.float32), content="probability")
    with pytest.raises(BadInputError, match="no zarr array there"):
        write_volume(f"file://{tmp_path}/none.zarr", PROBABILITY, content="probability", create=False)
