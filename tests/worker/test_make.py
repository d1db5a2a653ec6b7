"""Calling make(): an object store that drops out mid-job, and what a failed attempt left behind."""

import numpy as np
import pytest

from neuropipe.io import stored
from neuropipe.worker import failures, registry, run_worker


@pytest.fixture
def s3_settings(s3_settings, s3_proxy):
    """The S3 store reached through a proxy the test can cut."""
    return s3_settings.with_overrides(store_endpoint=s3_proxy.endpoint)


@pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)
def test_a_store_cut_mid_import_is_retried_and_leaves_no_orphan(s3_pipeline, s3_settings, s3_server, s3_proxy,
                                                               tmp_path, monkeypatch):
    """The proxy cuts every connection after 3 of 8 blocks were written; the job fails transiently.

    The connection comes back once the worker has judged the failure; the retry imports the
    volume and, first, removes the chunks the failed attempt wrote (its row was never committed).
    """
    monkeypatch.setenv("NEUROPIPE_ZARR_ABOVE_MB", "0")
    monkeypatch.setattr(stored, "COPY_BLOCK", (32, 256, 256))
    image = np.random.default_rng(2).integers(0, 255, (64, 512, 512), dtype=np.uint8)  # 8 blocks of 2 MiB
    np.save(tmp_path / "big.npy", image)
    copy, judge, judged = stored.copy_in_blocks, failures.is_transient, []

    def copy_then_cut(read, shape, target, *, block=None, progress=None):
        def cut_after_three(done, total, seconds):
            if done == 3 and not judged:
                s3_proxy.cut()
        return copy(read, shape, target, block=block, progress=cut_after_three)

    def judge_then_restore(error, table=None):
        judged.append((failures.describe(error), judge(error, table)))
        s3_proxy.restore()
        return judged[-1][1]

    monkeypatch.setattr(stored, "copy_in_blocks", copy_then_cut)
    monkeypatch.setattr(failures, "is_transient", judge_then_restore)
    volume = s3_pipeline.volume
    volume.Dataset.insert1(dict(dataset="big", source=f"file://{tmp_path}/big.npy"))
    tally = run_worker([volume.Volume], max_idle=8, retry_backoff=0.5, poll=0.2)

    assert len(judged) == 1 and judged[0][1], judged  # one failure, judged transient
    assert "connect" in judged[0][0].lower(), judged
    assert tally["Volume"].made == 1
    attempts = (registry.Failure & {"table_name": volume.Volume.full_table_name}).to_dicts()
    assert [(row["attempt"], row["kind"]) for row in attempts] == [(1, "transient")]
    np.testing.assert_array_equal(np.asarray(volume.Volume.open_image({"dataset": "big"})), image)
    reference = (volume.Volume & {"dataset": "big"}).fetch1("image_zarr")
    folder = reference.path.rpartition("/")[0]
    left = [key for key in s3_server.keys(s3_settings.store) if f"/{folder}/" in f"/{key}"]
    assert left and all(f"/{reference.path}/" in f"/{key}" for key in left), left  # only the row's own array
