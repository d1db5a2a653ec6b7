"""Reading volumes from file sources, and the errors bad sources give."""

import numpy as np
import pytest
import tifffile

from neuropipe.errors import BadInputError
from neuropipe.io import format_bbox, parse_bbox, parse_source, read_volume, volume_shape


@pytest.fixture
def stack():
    return np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".tif"])
def test_each_format_reads_back_the_array(tmp_path, stack, suffix):
    path = tmp_path / f"stack{suffix}"
    {".npy": lambda: np.save(path, stack), ".npz": lambda: np.savez(path, image=stack),
     ".tif": lambda: tifffile.imwrite(path, stack, photometric="minisblack")}[suffix]()
    np.testing.assert_array_equal(read_volume(f"file://{path}"), stack)
    assert volume_shape(f"file://{path}") == stack.shape


def test_bbox_cuts_the_half_open_box(tmp_path, stack):
    np.save(tmp_path / "s.npy", stack)
    part = read_volume(f"file://{tmp_path}/s.npy", "1:3,0:2,4:6")
    np.testing.assert_array_equal(part, stack[1:3, 0:2, 4:6])


def test_npz_array_is_chosen_by_fragment(tmp_path, stack):
    np.savez(tmp_path / "two.npz", image=stack, labels=stack > 10)
    np.testing.assert_array_equal(read_volume(f"file://{tmp_path}/two.npz#labels"), stack > 10)
    with pytest.raises(BadInputError, match="holds 2 arrays"):
        read_volume(f"file://{tmp_path}/two.npz")
    with pytest.raises(BadInputError, match="no array 'nope'"):
        read_volume(f"file://{tmp_path}/two.npz#nope")


def test_2d_image_becomes_one_plane(tmp_path):
    np.save(tmp_path / "flat.npy", np.ones((3, 4)))
    assert read_volume(f"file://{tmp_path}/flat.npy").shape == (1, 3, 4)


def test_plain_and_relative_paths(tmp_path, stack, monkeypatch):
    np.save(tmp_path / "s.npy", stack)
    monkeypatch.chdir(tmp_path)
    assert read_volume("file://s.npy").shape == stack.shape
    assert read_volume(str(tmp_path / "s.npy")).shape == stack.shape


@pytest.mark.parametrize(
    "uri, message",
    [
        ("s3://bucket/key.npy", "unsupported scheme 's3'"),
        ("file:///data/volume.n5", "'.n5' are not supported"),
        ("file:///data/volume.zarr?level=2", "unknown query parameter.*level"),
        ("file:///data/volume.zarr?resolution=fine", "resolution must be a level number"),
        ("precomputed:///data/layer", "file://, gs://, s3://"),
        ("precomputed://file:///data/layer#x", "take no '#'"),
        ("", "non-empty URI"),
        ("file://", "names no file"),
    ],
)
def test_malformed_sources_are_named(uri, message):
    with pytest.raises(BadInputError, match=message):
        parse_source(uri)


def test_a_resolution_level_a_file_lacks(tmp_path, stack):
    np.save(tmp_path / "s.npy", stack)
    with pytest.raises(BadInputError, match="npy files have one resolution; drop"):
        read_volume(f"file://{tmp_path}/s.npy?resolution=1")


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        read_volume(f"file://{tmp_path}/absent.npy")


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


@pytest.mark.parametrize(
    "text, message",
    [("0:2,0:3", "three ranges"), ("0:2,a:3,0:1", "y range 'a:3'"), ("3:2,0:1,0:1", "0 <= start < stop"),
     ("-1:2,0:1,0:1", "0 <= start < stop"), ("0:2,0:1,0", "x range '0'")],
)
def test_malformed_bbox(text, message):
    with pytest.raises(BadInputError, match=message):
        parse_bbox(text)


def test_bbox_round_trip():
    assert parse_bbox(format_bbox(((0, 20), (5, 512), (7, 9)))) == ((0, 20), (5, 512), (7, 9))
