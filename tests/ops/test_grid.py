"""Block grids: cores that tile a volume, halos, and reading a box of a chunked array one chunk at a time."""

import numpy as np
import pytest
import zarr

from neuropipe.ops.grid import block_grid, contains, grow, read_chunkwise, slices


@pytest.mark.parametrize("box", [((0, 1), (0, 20), (0, 20)),  # one plane across every chunk
                                 ((3, 9), (5, 17), (7, 8)),  # crossing chunk edges on two axes
                                 ((4, 8), (6, 12), (0, 6))])  # exactly one chunk
def test_read_chunkwise_equals_one_read(tmp_path, box):
    data = np.random.default_rng(0).integers(0, 2**40, (9, 20, 20), dtype=np.uint64)
    array = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=data.shape, chunks=(4, 6, 6), dtype="uint64")
    array[:] = data
    expected = data[tuple(slice(start, stop) for start, stop in box)]
    assert np.array_equal(read_chunkwise(array, box), expected)


def test_read_chunkwise_reads_an_array_without_chunks_in_one_piece():
    data = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    box = ((1, 4), (0, 6), (2, 3))
    np.testing.assert_array_equal(read_chunkwise(data, box), data[1:4, 0:6, 2:3])


def test_blocks_tile_the_volume_and_grow_within_it():
    shape, block = (5, 9, 4), (2, 4, 4)
    cover = np.zeros(shape, int)
    cores = block_grid(shape, block)
    for _, core in cores:
        cover[slices(core)] += 1
    assert len(cores) == 3 * 3 * 1 and (cover == 1).all()  # every voxel in exactly one core
    assert cores[-1] == ((2, 2, 0), ((4, 5), (8, 9), (0, 4)))  # the last blocks clipped to the volume
    assert grow(((0, 2), (4, 8), (0, 4)), (1, 3, 2), shape) == ((0, 3), (1, 9), (0, 4))
    assert contains(((0, 2), (4, 8), (0, 4)), (1.9, 4.0, 0.5)) and not contains(((0, 2), (4, 8), (0, 4)), (2, 4, 0))
