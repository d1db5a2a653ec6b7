"""A step from a function: its tables, what they store, and how they behave, on every backend.

Each test declares its steps in a module written to its own folder (so that a test can edit
the function's source, as a scientist would) and in a schema of its own, beside the bundled
pipeline bound to fresh schemas (the ``pipeline`` fixture).
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import numpy as np
import pytest
import scipy.ndimage

from neuropipe import provenance, steps
from neuropipe.database import import_datajoint
from neuropipe.errors import BadInputError, ConfigurationError
from neuropipe.provenance import stale
from neuropipe.steps import outputs
from neuropipe.worker import run_worker

dj = import_datajoint()

STEPS = '''
import numpy as np
import scipy.ndimage
from typing import Literal, TypedDict

from neuropipe import steps


class Brightness(TypedDict):
    above: float
    voxels: int


def declare(schema):
    @steps.step(schema)
    def smoothed(image, *, sigma: float = 1.0, mode: Literal["reflect", "nearest"] = "reflect") -> np.ndarray:
        """The image smoothed by a 3-D Gaussian."""
        return scipy.ndimage.gaussian_filter(np.asarray(image, np.float32), SIGMA_SCALE * sigma, mode=mode)

    @steps.step(schema)
    def brightness(smoothed, *, level: float = 0.5) -> Brightness:
        above = np.asarray(smoothed) > level
        return {"above": float(above.mean()), "voxels": int(above.sum())}

    @steps.step(schema)
    def summary(image, brightness) -> dict:
        if brightness["voxels"] == 0:
            raise ValueError("nothing above the level")
        return {"shape": list(np.asarray(image).shape), "voxels": brightness["voxels"]}


SIGMA_SCALE = 1.0
'''


def load_steps(folder, source: str = STEPS, name: str = "lab_steps"):
    """Import ``source`` as the module ``name`` from ``folder`` (written anew)."""
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def lab(pipeline, settings, tmp_path):
    """The steps module, declared in a schema of the test's own beside the bound bundled pipeline."""
    from schemas import volume

    image = np.random.default_rng(7).random((6, 30, 34)).astype(np.float32)
    np.save(tmp_path / "stack.npy", image)
    volume.Dataset.insert1(dict(dataset="stack", source=f"file://{tmp_path}/stack.npy",
                                voxel_z_nm=40, voxel_y_nm=4, voxel_x_nm=4))
    schema = dj.Schema(settings.schema_prefix + "lab", connection=volume.Dataset.connection)
    module = load_steps(tmp_path)
    module.declare(schema)
    module.image, module.volume, module.schema = image, volume, schema
    yield module
    schema.drop(prompt=False)
    sys.modules.pop("lab_steps", None)


def made(lab):
    """Populate the bundled Volume and the lab's steps; return the tallies."""
    return run_worker([lab.volume.Volume, lab.Smoothed, lab.Brightness, lab.Summary], max_idle=0)


def test_a_function_becomes_a_parameter_lookup_and_a_computed_table(lab):
    assert lab.Smoothed.primary_key == ["dataset", "smoothed_id"]
    assert set(lab.Smoothed.heading.secondary_attributes) == {"smoothed", "smoothed_zarr"}
    assert lab.Smoothed.function.__name__ == "smoothed" and "Gaussian" in lab.Smoothed.__doc__
    assert lab.SmoothedParams.defaults() == {"sigma": 1.0, "mode": "reflect"}
    assert lab.Brightness.primary_key == ["dataset", "smoothed_id", "brightness_id"]
    assert set(lab.Brightness.heading.secondary_attributes) == {"above", "voxels"}

    default = lab.SmoothedParams.insert_params({})  # there already: the function's defaults
    assert len(lab.SmoothedParams()) == 1 and lab.SmoothedParams().fetch_params(default) == {}
    assert lab.SmoothedParams.fetch1("description") == "the function's defaults"
    chosen = lab.SmoothedParams.insert_params({"sigma": 2.0})
    tally = made(lab)
    assert tally["Smoothed"].made == 2 and tally["Brightness"].made == 2 and tally["Summary"].made == 2

    for key, sigma in ((chosen, 2.0), (default, 1.0)):
        stored = np.asarray(outputs.open_output(lab.Smoothed, key, "smoothed"))
        np.testing.assert_allclose(stored, scipy.ndimage.gaussian_filter(lab.image, sigma), rtol=1e-6)
        row = (lab.Brightness & key).fetch1()
        above = stored > 0.5
        assert row["above"] == pytest.approx(above.mean()) and row["voxels"] == int(above.sum())
        assert (lab.Summary & key).fetch1("summary") == {"shape": [6, 30, 34], "voxels": int(above.sum())}
    assert len(provenance.of(lab.Smoothed)) == 2  # the worker wrote each row's record


def test_settings_are_checked_against_their_annotations_at_insert(lab):
    with pytest.raises(BadInputError, match="sigma='wide' is invalid; it must be a number"):
        lab.SmoothedParams.insert_params({"sigma": "wide"})
    with pytest.raises(BadInputError, match=r"mode='wrap' is invalid; it must be one of"):
        lab.SmoothedParams.insert_params({"mode": "wrap"})
    with pytest.raises(BadInputError, match="unknown parameter.*sgima"):
        lab.SmoothedParams.insert_params({"sgima": 2.0})
    assert len(lab.SmoothedParams()) == 1  # the defaults' set only


def test_stock_datajoint_populates_a_step(lab):
    lab.volume.Volume.populate()
    key = lab.SmoothedParams.insert_params({"sigma": 1.5})
    lab.Smoothed.populate(key, reserve_jobs=True)
    assert len(lab.Smoothed()) == 1
    stored = np.asarray(outputs.open_output(lab.Smoothed, key, "smoothed"))
    np.testing.assert_allclose(stored, scipy.ndimage.gaussian_filter(lab.image, 1.5), rtol=1e-6)


def test_a_large_result_is_stored_as_chunked_zarr(lab, monkeypatch):
    monkeypatch.setenv("NEUROPIPE_ZARR_ABOVE_MB", "0.001")  # 1 kB: the 24 kB result goes to zarr
    run_worker([lab.volume.Volume, lab.Smoothed], max_idle=0)
    small, chunked = lab.Smoothed.fetch1("smoothed", "smoothed_zarr")
    assert small is None and chunked is not None
    stored = outputs.open_output(lab.Smoothed, {}, "smoothed")
    assert type(stored).__module__.startswith("zarr")
    np.testing.assert_allclose(stored[2:4, 5:9, :], scipy.ndimage.gaussian_filter(lab.image, 1.0)[2:4, 5:9, :],
                               rtol=1e-6)


def test_a_failing_step_leaves_its_message_in_the_job_table_and_no_row(lab):
    lab.BrightnessParams.delete_quick()
    lab.BrightnessParams.insert_params({"level": 2.0})  # nothing is that bright
    tally = made(lab)
    assert tally["Brightness"].made == 1 and tally["Summary"].failed == 1 and len(lab.Summary()) == 0
    assert lab.Summary().jobs.errors.fetch1("error_message") == "ValueError: nothing above the level"


def test_editing_the_function_makes_its_rows_stale(lab, tmp_path):
    run_worker([lab.volume.Volume, lab.Smoothed], max_idle=0)
    assert not any(rows.keys for rows in stale.find_stale([lab.Smoothed]))

    edited = load_steps(tmp_path, STEPS.replace("SIGMA_SCALE = 1.0", "SIGMA_SCALE = 2.0"))
    edited.declare(lab.schema)
    found = stale.find_stale([edited.Smoothed])
    assert [rows.counts() for rows in found] == [{"code changed": 1}]


def test_a_declaration_that_cannot_be_stored_is_refused_naming_why(lab):
    with pytest.raises(ConfigurationError, match="annotate what it returns"):
        steps.step(lab.schema, lambda image, *, size=3: image)
    with pytest.raises(ConfigurationError, match="cannot store 'list'"):
        def listed(image) -> list:
            return []
        steps.step(lab.schema, listed)
    with pytest.raises(ConfigurationError, match=r"no table provides an input named 'spikes'.*image"):
        def rates(spikes) -> float:
            return 0.0
        steps.step(lab.schema, rates)
