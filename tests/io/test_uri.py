"""Parsing source and target URIs, and the errors malformed ones give."""

import numpy as np
import pytest

from neuropipe.errors import BadInputError
from neuropipe.io import parse_source, read_volume
from neuropipe.io.uri import parse_target


@pytest.fixture
def stack():
    return np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)


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


@pytest.mark.parametrize("uri, message", [("file:///x/cells.h5#labels", "cannot write hdf5"),
                                          ("file:///x/cells.tif", "cannot write tif"),
                                          ("precomputed://file:///x/layer?resolution=2", "resolution 0")])
def test_unwritable_targets_are_named(uri, message):
    with pytest.raises(BadInputError, match=message):
        parse_target(uri)
