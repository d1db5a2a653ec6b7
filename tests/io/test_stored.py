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


@pytest.fixture
def s3_settings(s3_settings, s3_proxy):
    """The S3 store reached through a proxy that counts the bytes it forwards."""
    return s3_settings.with_overrides(store_endpoint=s3_proxy.endpoint)


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
@pytest.mark.parametrize("zarr_above_mb", ["64", "0"])
def test_a_box_of_a_volume_in_an_object_store_is_read_by_ranges(s3_pipeline, s3_proxy, tmp_path, monkeypatch,
                                                                  zarr_above_mb):
    """A box reads the rows (``.npy``) or the chunks (zarr) it touches, never the whole object."""
    from neuropipe.worker import run_worker

    monkeypatch.setenv("NEUROPIPE_ZARR_ABOVE_MB", zarr_above_mb)
    volume = np.random.default_rng(1).integers(0, 255, (32, 1024, 1024), dtype=np.uint8)  # 16 chunks of 2 MiB
    np.save(tmp_path / "v.npy", volume)
    s3_pipeline.volume.Dataset.insert1(dict(dataset="v", source=f"file://{tmp_path}/v.npy"))
    run_worker([s3_pipeline.volume.Volume], max_idle=0)
    image = s3_pipeline.volume.Volume.open_image({"dataset": "v"})
    assert isinstance(image, stored.RangedNpy) == (zarr_above_mb == "64")
    before = s3_proxy.bytes_from_server
    np.testing.assert_array_equal(image[3:5, 100:140, 7:300], volume[3:5, 100:140, 7:300])
    fetched = s3_proxy.bytes_from_server - before
    touched = 2 * 40 * 1024 if zarr_above_mb == "64" else 2 * 32 * 256 * 256  # two planes' rows; two chunks
    assert touched <= fetched < 1.05 * touched + 64 * 1024, fetched  # plus headers and the array's metadata
    np.testing.assert_array_equal(image[-1, ::7, 5], volume[-1, ::7, 5])
    np.testing.assert_array_equal(np.asarray(image), volume)
