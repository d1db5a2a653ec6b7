"""Writing results to targets: dtype fitting, zarr and precomputed targets new and existing."""

import re

import numpy as np
import pytest
import zarr

from neuropipe.errors import BadInputError
from neuropipe.io import read_volume
from neuropipe.io.targets import fit_dtype, parse_target, write_volume

PROBABILITY = np.array([[[0.0, 0.5, 1.0, 0.25]]], np.float32)


@pytest.mark.parametrize("dtype, expected", [("uint8", [0, 128, 255, 64]), ("uint16", [0, 32768, 65535, 16384]),
                                             ("float32", [0.0, 0.5, 1.0, 0.25])])
def test_probabilities_scale_to_the_full_range_of_an_integer_target(dtype, expected):
    fitted = fit_dtype(PROBABILITY, "probability", dtype, "t")
    assert fitted.dtype == np.dtype(dtype) and fitted.ravel().tolist() == expected


@pytest.mark.parametrize(
    "content, array, dtype, message",
    [
        ("probability", PROBABILITY, "uint64", "a probability map needs a float, uint8 or uint16"),
        ("labels", np.array([[[1, 70000]]], np.uint32), "uint16",
         "holds uint16 (at most 65535); the labels reach 70000"),
        ("labels", np.array([[[1, 2]]], np.uint32), "float32", "labels need an integer target"),
    ],
)
def test_a_target_that_cannot_hold_the_values_is_refused(content, array, dtype, message):
    with pytest.raises(BadInputError, match=re.escape(message)):
        fit_dtype(array, content, dtype, "t")


def test_labels_that_fit_keep_their_values():
    labels = np.array([[[0, 3, 255]]], np.uint32)
    assert fit_dtype(labels, "labels", "uint8", "t").tolist() == [[[0, 3, 255]]]


@pytest.mark.parametrize("uri, message", [("file:///x/cells.h5#labels", "cannot write hdf5"),
                                          ("file:///x/cells.tif", "cannot write tif"),
                                          ("precomputed://file:///x/layer?resolution=2", "resolution 0")])
def test_unwritable_targets_are_named(uri, message):
    with pytest.raises(BadInputError, match=message):
        parse_target(uri)


def test_an_existing_zarr_array_keeps_its_dtype_and_must_match_the_shape(tmp_path):
    zarr.create_array(store=str(tmp_path / "maps.zarr"), shape=(1, 1, 4), dtype="uint8")
    written = write_volume(f"file://{tmp_path}/maps.zarr", PROBABILITY, content="probability", create=False)
    assert written.dtype == "uint8"
    assert zarr.open_array(str(tmp_path / "maps.zarr"), mode="r")[...].ravel().tolist() == [0, 128, 255, 64]
    with pytest.raises(BadInputError, match=r"the array has shape \(1, 1, 4\), the result \(1, 2, 2\)"):
        write_volume(f"file://{tmp_path}/maps.zarr", np.zeros((1, 2, 2), np.float32), content="probability")
    with pytest.raises(BadInputError, match="no zarr array there"):
        write_volume(f"file://{tmp_path}/none.zarr", PROBABILITY, content="probability", create=False)


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
