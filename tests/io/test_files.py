"""Single-file sources (.npy, .npz, .tif): each format read back, and its own errors."""

import numpy as np
import pytest
import tifffile

from neuropipe.errors import BadInputError
from neuropipe.io import read_volume, volume_shape


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


def test_a_resolution_level_a_file_lacks(tmp_path, stack):
    np.save(tmp_path / "s.npy", stack)
    with pytest.raises(BadInputError, match="npy files have one resolution; drop"):
        read_volume(f"file://{tmp_path}/s.npy?resolution=1")


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        read_volume(f"file://{tmp_path}/absent.npy")
