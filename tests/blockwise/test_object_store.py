"""Blockwise results written into an object store by workers in processes of their own."""

import importlib
import os
import secrets
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage

from neuropipe.steps import outputs
from neuropipe.worker import run_worker

SHAPE, BLOCK, SIGMA = (9, 40, 44), (4, 16, 16), 1.0
STEP_MODULE = '''
"""A blockwise Gaussian over the bundled pipeline's volumes, in a schema of its own."""
import os

import datajoint as dj
import numpy as np
import scipy.ndimage

from neuropipe import steps

schema = dj.Schema(os.environ["BLUR_SCHEMA"])


@steps.step(schema, name="Blurred", block={block}, halo=(4, 4, 4))
def blurred(image, *, sigma: float = {sigma}) -> np.ndarray:
    return scipy.ndimage.gaussian_filter(np.asarray(image, np.float32), sigma)
'''


@pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)
def test_two_worker_processes_write_one_blockwise_array_into_s3(s3_pipeline, s3_settings, s3_server, tmp_path,
                                                               monkeypatch):
    """Both take blocks, each block is made once, no array is created twice, and the result equals scipy's."""
    from s3_server import store_environment

    name = f"blur_{secrets.token_hex(4)}"  # a module of this test's own: workers import it by name
    (tmp_path / f"{name}.py").write_text(STEP_MODULE.format(block=BLOCK, sigma=SIGMA))
    environment = {**os.environ, "BLUR_SCHEMA": s3_settings.schema_prefix + "blur", "PYTHONPATH": str(tmp_path),
                   "DJ_HOST": s3_settings.host, "DJ_PORT": str(s3_settings.port), "DJ_USER": s3_settings.user,
                   "DJ_PASS": "", "DJ_BACKEND": s3_settings.backend,
                   "NEUROPIPE_SCHEMA_PREFIX": s3_settings.schema_prefix, **store_environment(s3_settings)}
    monkeypatch.setenv("BLUR_SCHEMA", environment["BLUR_SCHEMA"])
    monkeypatch.syspath_prepend(str(tmp_path))
    blur = importlib.import_module(name)
    volume = s3_pipeline.volume
    image = np.random.default_rng(5).random(SHAPE).astype(np.float32)
    np.save(tmp_path / "stack.npy", image)
    volume.Dataset.insert1(dict(dataset="stack", source=f"file://{tmp_path}/stack.npy"))
    run_worker([volume.Volume, blur.blurred.grid_table], max_idle=0)
    blocks = blur.blurred.block_table
    pending = len(blocks.key_source - blocks)
    assert pending == int(np.prod(-(-np.asarray(SHAPE) // np.asarray(BLOCK))))
    command = [sys.executable, "-m", "neuropipe.cli", "worker", "--pipeline", "schemas", "--pipeline", name,
               "--tables", "BlurredBlock", "--max-idle", "5", "--poll", "0.2", "--heartbeat", "1",
               "--max-jobs", str(pending // 2 + 1)]
    workers = [subprocess.Popen(command, env=environment, stdout=open(tmp_path / f"w{index}.log", "wb"),
                                stderr=subprocess.STDOUT) for index in range(2)]
    try:
        codes = [worker.wait(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert codes == [0, 0], [(tmp_path / f"w{index}.log").read_text()[-2000:] for index in range(2)]
    made_by = (blocks().jobs & "status = 'success'").to_arrays("pid")
    assert len(made_by) == pending and len(set(made_by)) == 2  # each block once, both workers took blocks
    run_worker([blur.blurred], max_idle=0)
    result = outputs.open_output(blur.blurred, {}, "blurred")
    np.testing.assert_allclose(np.asarray(result), scipy.ndimage.gaussian_filter(image, SIGMA), rtol=1e-6, atol=1e-7)
    arrays = {key.split(".zarr/")[0] for key in s3_server.keys(s3_settings.store) if "/blockwise/" in key}
    assert len(arrays) == 1, arrays  # one array, created once, however the workers raced
    blur.schema.drop(prompt=False)
    sys.modules.pop(name)
