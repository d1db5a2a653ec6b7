"""Chunked sources: zarr (v2, v3, OME-Zarr), HDF5 and Neuroglancer precomputed, read box by box."""

import json

import h5py
import numpy as np
import pytest
import zarr
from volume_files import write_precomputed

from neuropipe.errors import BadInputError
from neuropipe.io import read_volume, volume_shape, voxel_size

BOX = "1:3,2:5,3:9"
BOX_SLICES = (slice(1, 3), slice(2, 5), slice(3, 9))


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


def test_precomputed_is_presented_in_zyx_with_its_offset(tmp_path, stack):
    uri = write_precomputed(tmp_path / "layer", stack, offset_xyz=(100, 50, 7))
    assert volume_shape(uri) == stack.shape and voxel_size(uri) == (40.0, 4.0, 4.0)
    np.testing.assert_array_equal(read_volume(uri), stack)
    np.testing.assert_array_equal(read_volume(uri, "8:10,52:55,103:109"), stack[BOX_SLICES])
    with pytest.raises(BadInputError, match=r"starting at \(7, 50, 100\).*x range 0:4 is not within 100:112"):
        read_volume(uri, "7:9,50:52,0:4")
    with pytest.raises(BadInputError, match="cannot open the precomputed layer"):
        read_volume(uri + "?resolution=3")


def test_bad_chunked_files_are_named(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(BadInputError, match="cannot read .*junk.h5 as HDF5"):
        read_volume(f"file://{tmp_path}/junk.h5")
    with pytest.raises(BadInputError, match="does not exist"):
        read_volume(f"file://{tmp_path}/absent.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(BadInputError, match="not a readable zarr store|zarr group"):
        read_volume(f"file://{tmp_path}/empty.zarr")
    with pytest.raises(BadInputError, match="cannot open the precomputed layer"):
        read_volume(f"precomputed://file://{tmp_path}/nolayer")


def test_a_truncated_chunk_is_an_error_not_zeros(tmp_path, stack):
    path = tmp_path / "vol.zarr"
    zarr.create_array(store=str(path), data=stack, chunks=(2, 4, 4), zarr_format=2, compressors=None)
    (path / "0.0.0").write_bytes((path / "0.0.0").read_bytes()[:5])
    with pytest.raises(BadInputError, match="reading 0:2,0:4,0:4 failed"):
        read_volume(f"file://{path}", "0:2,0:4,0:4")


@pytest.mark.parametrize("kind", ["zarr2", "zarr3", "precomputed"])
def test_a_box_reads_only_its_own_chunks(tmp_path, stack, kind):
    """Every chunk outside the box is overwritten with garbage: reading the box must not touch them."""
    if kind == "precomputed":
        uri = write_precomputed(tmp_path / "layer", stack, chunk_xyz=(4, 4, 2))
        chunks = [p for p in (tmp_path / "layer").rglob("*") if p.is_file() and p.name != "info"]
        first = [p for p in chunks if p.name == "0-4_0-4_0-2"]
    else:
        path = tmp_path / "vol.zarr"
        zarr.create_array(store=str(path), data=stack, chunks=(2, 4, 4), zarr_format=int(kind[-1]))
        uri = f"file://{path}"
        chunks = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".z", "zarr.json"))]
        first = [p for p in chunks if p.relative_to(path).as_posix() in ("0.0.0", "c/0/0/0")]
    assert len(first) == 1 and len(chunks) == 3 * 3 * 3
    for chunk in set(chunks) - set(first):
        chunk.write_bytes(b"\xff" * 7)
    np.testing.assert_array_equal(read_volume(uri, "0:2,0:4,0:4"), stack[:2, :4, :4])
    with pytest.raises(BadInputError):
        read_volume(uri, "0:2,0:4,0:5")  # one voxel into a garbage chunk


def test_isbi_stack_reads_the_same_from_every_format(tmp_path, isbi_path):
    image = np.load(isbi_path)["image"]
    box, slices = "5:15,100:300,200:412", (slice(5, 15), slice(100, 300), slice(200, 412))
    zarr.create_array(store=str(tmp_path / "isbi.zarr"), data=image, chunks=(8, 128, 128))
    with h5py.File(tmp_path / "isbi.h5", "w") as handle:
        handle.create_dataset("raw", data=image, chunks=(8, 128, 128), compression="gzip")
        handle["raw"].attrs["resolution"] = [50.0, 4.0, 4.0]
    layer = write_precomputed(tmp_path / "isbi", image, resolution_xyz=(4, 4, 50), chunk_xyz=(128, 128, 8))
    for uri in (f"file://{tmp_path}/isbi.zarr", f"file://{tmp_path}/isbi.h5#raw", layer):
        np.testing.assert_array_equal(read_volume(uri, box), image[slices], err_msg=uri)
    assert voxel_size(layer) == voxel_size(f"file://{tmp_path}/isbi.h5#raw") == (50.0, 4.0, 4.0)
    info = json.loads((tmp_path / "isbi" / "info").read_text())
    assert info["scales"][0]["size"] == list(image.shape[::-1])  # XYZ on disk
