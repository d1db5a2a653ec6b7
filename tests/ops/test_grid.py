"""Block grids: reading a box of a chunked array one chunk at a time."""

import numpy as np
import pytest
import zarr

from neuropipe.blockwise.grid import read_chunkwise


@pytest.mark.parametrize("box", [((0, 1), (0, 20), (0, 20)),  # one plane across every chunk
                                 ((3, 9), (5, 17), (7, 8)),  # crossing chunk edges on two axes
                                 ((4, 8), (6, 12), (0, 6))])  # exactly one chunk
def test_read_chunkwise_equals_one_read(tmp_path, box):
    data = np.random.default_rng(0).integers(0, 2**40, (9, 20, 20), dtype=np.uint64)
    array = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=data.shape, chunks=(4, 6, 6), dtype="uint64")
    array[:] = data
    expected = data[tuple(slice(start, stop) for start, stop in box)]
    assert np.array_equal(read_chunkwise(array, box), expected)
