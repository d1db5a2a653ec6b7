"""A step run block by block equals the whole-volume call, and a failed block is retried alone."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from neuropipe import steps
from neuropipe.database import import_datajoint
from neuropipe.errors import ConfigurationError, TransientError
from neuropipe.steps import outputs
from neuropipe.worker import registry, run_worker

dj = import_datajoint()
pytestmark = pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)

SIGMA = 1.0  # scipy truncates at 4 sigma: the Gaussian reaches 4 voxels
SHAPE = (9, 30, 34)


@pytest.fixture
def image(pipeline, settings, tmp_path):
    """A volume registered in the bound bundled pipeline; yields (volume module, image, lab schema)."""
    from schemas import volume

    data = np.random.default_rng(3).random(SHAPE).astype(np.float32)
    np.save(tmp_path / "stack.npy", data)
    volume.Dataset.insert1(dict(dataset="stack", source=f"file://{tmp_path}/stack.npy",
                                voxel_z_nm=4, voxel_y_nm=4, voxel_x_nm=4))
    schema = dj.Schema(settings.schema_prefix + "blocks", connection=volume.Dataset.connection)
    yield volume, data, schema
    schema.drop(prompt=False)


@pytest.mark.parametrize("block", [(4, 16, 16), (5, 11, 13), (2, 7, 9), (16, 64, 64)])
def test_a_blockwise_gaussian_equals_scipy_on_the_whole_volume(image, block):
    volume, data, schema = image

    @steps.step(schema, name="Blurred", block=block, halo=(4, 4, 4))
    def blurred(image, *, sigma: float = SIGMA) -> np.ndarray:
        return scipy.ndimage.gaussian_filter(np.asarray(image, np.float32), sigma)

    tally = run_worker([volume.Volume, blurred.grid_table, blurred.block_table, blurred], max_idle=0)
    counts = -(-np.asarray(SHAPE) // np.asarray(block))
    assert tally["BlurredBlock"].made == int(np.prod(counts)) and tally["Blurred"].made == 1
    result = outputs.open_output(blurred, {}, "blurred")
    assert type(result).__module__.startswith("zarr") and result.chunks == tuple(min(b, s) for b, s in
                                                                                 zip(block, SHAPE))
    np.testing.assert_allclose(np.asarray(result), scipy.ndimage.gaussian_filter(data, SIGMA), rtol=1e-6, atol=1e-7)


def test_a_failed_block_is_retried_alone(image, tmp_path):
    volume, data, schema = image
    calls = []

    @steps.step(schema, name="Flaky", block=(5, 16, 16), halo=(4, 4, 4))
    def flaky(image, *, sigma: float = SIGMA) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise TransientError("the file server is busy")
        return scipy.ndimage.gaussian_filter(np.asarray(image, np.float32), sigma)

    # One block per transaction, as blocks of real work run (a batch of short jobs that fails is
    # rolled back whole and its other blocks made again, see neuropipe.worker.batch).
    tally = run_worker([volume.Volume, flaky.grid_table, flaky.block_table, flaky], max_idle=1, poll=0.05,
                       retry_backoff=0.05, batch=1)
    assert tally["FlakyBlock"].made == 12 and tally["Flaky"].made == 1  # 2 x 2 x 3 blocks
    assert len(calls) == 13  # each block once, the failed one twice
    failures = (registry.Failure & {"table_name": flaky.block_table.full_table_name}).to_dicts()
    assert [row["kind"] for row in failures] == ["transient"] and "busy" in failures[0]["error_message"]
    np.testing.assert_allclose(np.asarray(outputs.open_output(flaky, {}, "flaky")),
                               scipy.ndimage.gaussian_filter(data, SIGMA), rtol=1e-6, atol=1e-7)


def test_a_blockwise_step_must_return_one_array(image):
    _, _, schema = image
    with pytest.raises(ConfigurationError, match="a blockwise step reads arrays and returns one"):
        @steps.step(schema, name="Mean", block=(4, 4, 4))
        def mean(image) -> float:
            return float(np.mean(image))
    with pytest.raises(ConfigurationError, match="block must be three positive ZYX sizes"):
        @steps.step(schema, name="Bad", block=(4, 0, 4))
        def bad(image) -> np.ndarray:
            return image
