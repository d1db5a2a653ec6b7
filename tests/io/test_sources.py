"""Reading through open_source/read_volume whatever the format: boxes, bad data, chunks left unread."""

import json

import h5py
import numpy as np
import pytest
import zarr
from volume_files import write_precomputed

from neuropipe.errors import BadInputError
from neuropipe.io import read_volume, voxel_size


@pytest.fixture
def stack():
    return np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)


@pytest.fixture
def random_stack():
    return np.random.default_rng(0).integers(0, 60000, size=(6, 10, 12), dtype=np.uint16)


def test_bbox_cuts_the_half_open_box(tmp_path, stack):
    np.save(tmp_path / "s.npy", stack)
    part = read_volume(f"file://{tmp_path}/s.npy", "1:3,0:2,4:6")
    np.testing.assert_array_equal(part, stack[1:3, 0:2, 4:6])


def test_unreadable_file(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"this is not numpy")
    with pytest.raises(BadInputError, match="cannot read .*junk.npy as npy"):
        read_volume(f"file://{tmp_path}/junk.npy")


def test_wrong_dtype_and_rank(tmp_path):
    np.save(tmp_path / "text.npy", np.array([["a"]]))
    with pytest.raises(BadInputError, match="not a numeric image type"):
        read_volume(f"file://{tmp_path}/text.npy")
    np.save(tmp_path / "4d.npy", np.zeros((2, 2, 2, 2)))
    with pytest.raises(BadInputError, match=r"2D or 3D .* got shape \(2, 2, 2, 2\)"):
        read_volume(f"file://{tmp_path}/4d.npy")


def test_nan_and_empty_volumes(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((2, 3, 3), np.nan))
    with pytest.raises(BadInputError, match="18 of 18 voxels are NaN"):
        read_volume(f"file://{tmp_path}/nan.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3, 3)))
    with pytest.raises(BadInputError, match="empty volume"):
        read_volume(f"file://{tmp_path}/empty.npy")


def test_bbox_outside_the_volume(tmp_path, stack):
    np.save(tmp_path / "s.npy", stack)
    with pytest.raises(BadInputError, match=r"reaches outside .* shape \(4, 5, 6\).*y range 0:9 exceeds 5"):
        read_volume(f"file://{tmp_path}/s.npy", "0:2,0:9,0:6")


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


@pytest.mark.parametrize("kind", ["zarr2", "zarr3", "precomputed"])
def test_a_box_reads_only_its_own_chunks(tmp_path, random_stack, kind):
    """Every chunk outside the box is overwritten with garbage: reading the box must not touch them."""
    if kind == "precomputed":
        uri = write_precomputed(tmp_path / "layer", random_stack, chunk_xyz=(4, 4, 2))
        chunks = [p for p in (tmp_path / "layer").rglob("*") if p.is_file() and p.name != "info"]
        first = [p for p in chunks if p.name == "0-4_0-4_0-2"]
    else:
        path = tmp_path / "vol.zarr"
        zarr.create_array(store=str(path), data=random_stack, chunks=(2, 4, 4), zarr_format=int(kind[-1]))
        uri = f"file://{path}"
        chunks = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".z", "zarr.json"))]
        first = [p for p in chunks if p.relative_to(path).as_posix() in ("0.0.0", "c/0/0/0")]
    assert len(first) == 1 and len(chunks) == 3 * 3 * 3
    for chunk in set(chunks) - set(first):
        chunk.write_bytes(b"\xff" * 7)
    np.testing.assert_array_equal(read_volume(uri, "0:2,0:4,0:4"), random_stack[:2, :4, :4])
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
