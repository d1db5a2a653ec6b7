"""Arrays in the store: block-by-block copies into zarr, and reading either kind back lazily."""

import fsspec
import numpy as np
import pytest

from neuropipe.io import stored


def test_a_block_copy_writes_every_voxel_and_gathers_the_statistics(tmp_path):
    volume = np.random.default_rng(0).integers(0, 1000, size=(7, 33, 20)).astype(np.uint16)
    target = stored.create_zarr(fsspec.FSMap(str(tmp_path / "v.zarr"), fsspec.filesystem("file"), create=True),
                                volume.shape, volume.dtype, chunks=(2, 8, 8))
    reads, progress = [], []
    def record_progress(done, total, _):
        progress.append((done, total))

    statistics = stored.copy_in_blocks(lambda part: reads.append(part) or volume[part], volume.shape, target,
                                       block=(4, 16, 16), progress=record_progress)
    assert len(reads) == 2 * 3 * 2 and progress[-1] == (12, 12)
    assert (statistics.minimum, statistics.maximum) == (volume.min(), volume.max())
    assert statistics.mean == pytest.approx(volume.mean())
    np.testing.assert_allclose(statistics.slice_mean, volume.mean(axis=(1, 2)))
    np.testing.assert_allclose(statistics.slice_std, volume.std(axis=(1, 2)))
    back = stored.open_stored(type("Ref", (), {"fsmap": fsspec.FSMap(str(tmp_path / "v.zarr"),
                                                                     fsspec.filesystem("file"))})())
    assert back.chunks == (2, 8, 8) and back.dtype == np.uint16
    np.testing.assert_array_equal(back[...], volume)


def test_chunks_never_exceed_the_volume_and_small_arrays_pass_through(tmp_path):
    target = stored.create_zarr(fsspec.FSMap(str(tmp_path / "s.zarr"), fsspec.filesystem("file"), create=True),
                                (3, 10, 10), "float32")
    assert target.chunks == (3, 10, 10)
    array = np.ones((2, 2, 2))
    np.testing.assert_array_equal(stored.open_stored(array), array)
