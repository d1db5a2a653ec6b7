"""Steps that score against annotations: a shared parameter Lookup, inputs that restrict, exact column types.

As the bundled metrics do (``schemas/metrics.py``): steps declared beside the bound bundled
pipeline, reading the bundled annotations of one of two datasets.
"""

import sys
from typing import TypedDict

import numpy as np
import pytest

from neuropipe import steps
from neuropipe.database import import_datajoint
from neuropipe.errors import ConfigurationError
from neuropipe.params import ParamSet
from neuropipe.steps import outputs
from neuropipe.worker import run_worker

dj = import_datajoint()
BACKENDS = pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)
SHAPE = (6, 30, 34)


def scoring_options(*, level: float = 0.5, radius: float = 2.0) -> dict:
    """The options the lab's scores share: the kernel of :class:`ScoringParams`."""
    return {"level": level, "radius": radius}


class ScoringParams(ParamSet, dj.Lookup):
    """Shared options, as ``MetricsParams`` (bound to each test's schema)."""

    key_name = "scoring_id"
    kernel = staticmethod(scoring_options)


class Bright(TypedDict):
    """Bright voxels in the annotated cells, one column of each numpy type."""

    fraction: np.float32
    voxels: np.int32
    cells: np.int64
    anisotropic: np.bool_
    mean: np.float64


def bright_cells(image, annotated_labels, voxel_size, *, level: float = 0.5) -> Bright:
    """Count the voxels above ``level`` in the annotated cells (python values for numpy columns)."""
    labels, bright = np.asarray(annotated_labels), np.asarray(image) > level
    return {"fraction": float(bright[labels > 0].mean()), "voxels": int(bright[labels > 0].sum()),
            "cells": int(labels.max()), "anisotropic": voxel_size[0] != voxel_size[2],
            "mean": np.float32(np.asarray(image).mean())}


def isolated_cells(annotated_cells, *, radius: float = 2.0) -> np.int32:
    """Count the annotated cells with no other within ``radius`` voxels."""
    centroids = np.asarray(annotated_cells)
    distances = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    return int((np.sum(distances <= radius, axis=1) == 1).sum())


def masked(image, annotated_membrane) -> np.ndarray:
    """Keep the image on the annotated membrane only."""
    return np.where(np.asarray(annotated_membrane), np.asarray(image, np.float32), 0)


@pytest.fixture
def scored(pipeline, settings, tmp_path):
    """Two datasets, ``stack`` annotated with three cells and ``plain`` not, and the lab's schema with its Lookup."""
    from schemas import volume

    image = np.random.default_rng(5).random(SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint32)
    labels[1:4, 2:8, 2:8], labels[1:4, 2:8, 20:26], labels[2:5, 20:26, 10:16] = 1, 2, 3
    np.savez(tmp_path / "stack.npz", image=image, cells=labels)
    for dataset in ("stack", "plain"):
        volume.Dataset.insert1(dict(dataset=dataset, source=f"file://{tmp_path}/stack.npz#image",
                                    voxel_z_nm=6, voxel_y_nm=4, voxel_x_nm=4))  # labelled in 3-D
    volume.Annotation.insert1(dict(dataset="stack", kind="cells", purpose="evaluate",
                                   source=f"file://{tmp_path}/stack.npz#cells"))
    schema = dj.Schema(settings.schema_prefix + "scoring", connection=volume.Dataset.connection)
    params = schema(type("ScoringParams", (ScoringParams,), {"__module__": __name__}))
    yield volume, image, labels, schema, params
    schema.drop(prompt=False)


def definition_lines(table) -> list[str]:
    """The lines of a table's definition."""
    return [line.strip() for line in table.definition.splitlines() if line.strip()]


@BACKENDS
def test_steps_share_a_parameter_lookup_and_get_their_own_settings_of_each_set(scored):
    volume, image, labels, schema, params = scored
    bright = steps.step(schema, bright_cells, params=params)
    isolated = steps.step(schema, isolated_cells, params=params)
    assert not hasattr(sys.modules[__name__], "BrightCellsParams") and len(params()) == 0  # nothing inserted
    assert definition_lines(bright)[:3] == ["-> Volume", "-> ScoringParams", "---"]
    sets = {"defaults": params.insert_params({}), "dim": params.insert_params({"level": 0.9}),
            "far": params.insert_params({"radius": 19.0})}

    tally = run_worker([volume.Volume, volume.AnnotationVolume, bright, isolated], max_idle=0)
    assert tally["BrightCells"].made == 3 and tally["IsolatedCells"].made == 3  # each set once, its settings only
    inside = labels > 0
    for name, level, radius in (("defaults", 0.5, 2.0), ("dim", 0.9, 2.0), ("far", 0.5, 19.0)):
        row = (bright & sets[name]).fetch1()
        assert row["voxels"] == int((image[inside] > level).sum()) and row["cells"] == 3 and row["anisotropic"]
        assert row["fraction"] == pytest.approx((image[inside] > level).mean(), rel=1e-5)  # float32: MySQL's 6 digits
        assert row["mean"] == pytest.approx(float(image.mean()), rel=1e-6)
        assert (isolated & sets[name]).fetch1("isolated_cells") == (3 if radius == 2.0 else 1)  # 18 and 19.7 apart


@BACKENDS
def test_an_input_that_restricts_adds_no_parent_and_only_its_keys_are_made(scored):
    volume, image, labels, schema, params = scored
    bright = steps.step(schema, bright_cells, params=params)
    params.insert_params({})
    assert definition_lines(bright)[:2] == ["-> Volume", "-> ScoringParams"]  # no AnnotationVolume, no Dataset
    assert definition_lines(steps.step(schema, isolated_cells, params=params))[:2] == [
        "-> AnnotationVolume", "-> ScoringParams"]  # every input restricts: keyed by their tables
    blockwise = steps.step(schema, masked, block=(4, 16, 16))
    assert definition_lines(blockwise.grid_table)[0] == "-> Volume"

    tally = run_worker([volume.Volume, volume.AnnotationVolume, bright, blockwise.grid_table, blockwise.block_table,
                        blockwise], max_idle=0)
    assert len(volume.Volume()) == 2 and tally["BrightCells"].made == 1 and tally["Masked"].made == 1
    assert list(bright.to_arrays("dataset")) == list(blockwise.to_arrays("dataset")) == ["stack"]
    assert len(bright.key_source) == 1 and len(blockwise.grid_table.key_source) == 1
    np.testing.assert_array_equal(np.asarray(outputs.open_output(blockwise, {}, "masked")),
                                  np.where(labels == 0, image, 0))


def test_a_shared_lookup_must_state_each_setting_with_the_same_default():
    schema = dj.Schema()  # never bound: the declaration is refused first

    def spread(image, *, width: float = 1.0) -> float:
        return width

    def brighter(image, *, level: float = 0.7) -> float:
        return level

    with pytest.raises(ConfigurationError, match=r"step spread: setting 'width' is not a parameter of "
                                                 r"ScoringParams \(its parameters: level, radius\)"):
        steps.step(schema, spread, params=ScoringParams)
    with pytest.raises(ConfigurationError, match="setting 'level' defaults to 0.7 here and to 0.5 in ScoringParams"):
        steps.step(schema, brighter, params=ScoringParams)
    with pytest.raises(ConfigurationError, match="params= takes a ParamSet Lookup"):
        steps.step(schema, brighter, params=dict)


def test_numpy_scalar_types_declare_exact_columns_and_take_python_values_that_fit():
    columns = outputs.columns(Bright, "bright_cells", "bright_cells")
    assert [column.definition() for column in columns] == [
        "fraction : float32", "voxels : int32", "cells : int64", "anisotropic : bool", "mean : float64"]
    found = outputs.values({"fraction": 1, "voxels": np.int64(7), "cells": 3, "anisotropic": np.True_,
                            "mean": np.float32(0.5)}, columns, "bright_cells")
    assert found == {"fraction": 1.0, "voxels": 7, "cells": 3, "anisotropic": True, "mean": 0.5}
    assert type(found["voxels"]) is int and type(found["anisotropic"]) is bool
    with pytest.raises(TypeError, match="voxels=4294967296 does not fit int32"):
        outputs.values({**found, "voxels": 2 ** 32}, columns, "bright_cells")
    with pytest.raises(TypeError, match="voxels should be int32, got bool"):
        outputs.values({**found, "voxels": True}, columns, "bright_cells")
    with pytest.raises(TypeError, match="anisotropic should be bool, got int"):
        outputs.values({**found, "anisotropic": 1}, columns, "bright_cells")
