"""Parameter sets: keyed by content, checked at insert, bad ones recorded by the worker; their defaults the kernels'."""

import inspect
import json

import numpy as np
import pytest

from neuropipe import ops
from neuropipe.errors import BadInputError
from neuropipe.params import params_hash
from neuropipe.pipeline import pipeline_tables
from neuropipe.worker import run_worker


def test_same_parameters_same_key(pipeline):
    detection = pipeline.detection.DetectionParams
    first = detection.insert_params({"threshold": 0.3, "sphere_size": 12})
    again = detection.insert_params({"sphere_size": 12, "threshold": 0.3})
    assert first == again == {"detection_id": params_hash({"threshold": 0.3, "sphere_size": 12})}
    assert len(detection()) == 1
    assert detection().fetch_params(first) == {"threshold": 0.3, "sphere_size": 12}
    assert detection.insert_params({"threshold": 0.4}) != first


@pytest.mark.parametrize(
    "table, params, message",
    [
        ("DetectionParams", {"threshold": 1.5}, "threshold=1.5 is invalid; it must be a probability in"),
        ("DetectionParams", {"sphere_size": -3}, "sphere_size=-3 is invalid"),
        ("DetectionParams", {"method": "magic"}, "method='magic' is invalid; it must be one of spheres, components"),
        ("DetectionParams", {"radius": 3}, "unknown parameter"),
        ("TrainingParams", {"iterations": 0}, "iterations=0 is invalid"),
        ("TrainingParams", {"device": "cuda"}, "unknown parameter"),
        ("InferenceParams", {"normalise": "slice"}, "unknown parameter"),  # the model's own, set in training
        ("MetricsParams", {"threshold": -0.1}, "threshold=-0.1 is invalid"),
    ],
)
def test_invalid_parameters_are_refused_at_insert(pipeline, table, params, message):
    module = {"DetectionParams": pipeline.detection, "TrainingParams": pipeline.membrane,
              "InferenceParams": pipeline.membrane, "MetricsParams": pipeline.metrics}[table]
    with pytest.raises(BadInputError, match=message):
        getattr(module, table).insert_params(params)
    assert len(getattr(module, table)()) == 0


def test_parameters_inserted_around_the_check_fail_in_the_job_table(pipeline, tmp_path):
    rng = np.random.default_rng(1)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, ::8] = 1
    np.savez(tmp_path / "s.npz", image=rng.integers(0, 255, (2, 32, 32), dtype=np.uint8), membrane=labels)
    volume, membrane = pipeline.volume, pipeline.membrane
    volume.Dataset.insert1(dict(dataset="s", source=f"file://{tmp_path}/s.npz#image"))
    volume.Annotation.insert1(dict(dataset="s", kind="membrane", purpose="train", source=f"file://{tmp_path}/s.npz#membrane"))
    membrane.TrainingParams.insert1(dict(training_id="raw", params={"iterations": -5}))
    run_worker(pipeline_tables([volume, membrane]), max_idle=0)
    assert len(membrane.MembraneModel()) == 0
    job = (membrane.MembraneModel().jobs & {"training_id": "raw"}).fetch1()
    assert job["status"] == "error" and "iterations" in job["error_message"]


def test_a_set_that_leaves_out_a_parameter_runs_with_the_kernel_default_yet_keeps_its_own_key(pipeline):
    detection = pipeline.detection.DetectionParams
    explicit = {name: parameter.default for name, parameter in inspect.signature(ops.detect_cells).parameters.items()
                if parameter.kind == parameter.KEYWORD_ONLY and name not in ("voxel_size", "centres")}
    empty, spelled_out = detection.insert_params({}), detection.insert_params(explicit)
    # The keys of stored sets: the hash of the parameters as given, as it always was.
    assert empty == {"detection_id": "44136fa355b3678a"} == {"detection_id": params_hash({})}
    assert spelled_out == {"detection_id": "d9bed5064ea52e91"} == {"detection_id": params_hash(explicit)}
    assert detection().fetch_params(empty) == {} and detection().fetch_params(spelled_out) == explicit
    assert detection().fetch_effective(empty) == detection().fetch_effective(spelled_out) == explicit
    assert detection.defaults() == explicit == dict(ops.DETECTION_DEFAULTS)
    components = detection.insert_params({"method": "components", "threshold": 0.5})
    assert detection().fetch_effective(components) == {**explicit, "method": "components", "threshold": 0.5}
    assert sorted(detection.using(("spheres",)), key=str) == sorted([empty, spelled_out], key=str)
    assert detection.using(("components",)) == [components]

    inference = pipeline.membrane.InferenceParams
    tiles = inference.insert_params({"overlap": 8})
    assert inference().fetch_effective(tiles)["tile"] == inspect.signature(ops.predict_membrane).parameters[
        "tile"].default
    metrics = pipeline.metrics.MetricsParams
    assert metrics().fetch_effective(metrics.insert_params({"radius": 3.0})) == {"radius": 3.0, "threshold": 0.5}


@pytest.mark.parametrize("module, table", [("membrane", "TrainingParams"), ("membrane", "InferenceParams"),
                                           ("nuclei", "NucleiTrainingParams"), ("metrics", "MetricsParams")])
def test_every_parameter_table_takes_its_defaults_from_its_kernel(module, table):
    import schemas

    cls = getattr(getattr(schemas, module), table)
    signature = inspect.signature(cls.kernel).parameters
    assert cls.defaults() == {name: parameter.default for name, parameter in signature.items()
                              if parameter.kind == parameter.KEYWORD_ONLY and name not in cls.not_params}
    first = next(iter(cls.defaults()))
    assert cls.effective({first: 7}) == cls.effective(json.dumps({first: 7})) == {**cls.defaults(), first: 7}


def columns(definition: str) -> list[str]:
    """The lines of a table definition that declare something, comments and spacing left out."""
    lines = (" ".join(line.split("#", 1)[0].split()) for line in definition.splitlines())
    return [line for line in lines if line]


PARAMS = """
{key} : char(16)                # content hash of params
---
params : json                   # keyword arguments of the kernel
description = "" : varchar(255)
"""
TRAINED = """
-> AnnotationVolume
-> {params}
---
model : <object@neuropipe>
iterations : int32
train_seconds : float64
final_loss : float64
device : varchar(32)
"""
DETECTED_CELL = """
-> master
cell_id : int32
---
centroid_z : float64
centroid_y : float64
centroid_x : float64
score : float64
voxel_count : int64
"""
CENTROID_SCORES = """
-> {detections}
-> MetricsParams
---
precision : float64
recall : float64
f1 : float64
true_positives : int32
false_positives : int32
false_negatives : int32
"""


def test_shared_definitions_declare_the_columns_the_tables_always_had():
    """Definitions now built from shared pieces, against what each table declared before (existing databases)."""
    from schemas import detection, membrane, metrics, nuclei, volume

    expected = {
        detection.DetectionParams: PARAMS.format(key="detection_id"),
        membrane.TrainingParams: PARAMS.format(key="training_id"),
        membrane.InferenceParams: PARAMS.format(key="inference_id"),
        nuclei.NucleiTrainingParams: PARAMS.format(key="nuclei_training_id"),
        metrics.MetricsParams: PARAMS.format(key="metrics_id"),
        membrane.MembraneModel: TRAINED.format(params="TrainingParams"),
        nuclei.NucleiModel: TRAINED.format(params="NucleiTrainingParams"),
        detection.CellDetection.Cell: DETECTED_CELL,
        nuclei.NucleiDetection.Cell: DETECTED_CELL,
        volume.AnnotationVolume.Cell: DETECTED_CELL.replace("score : float64\n", "") + 'bbox : varchar(255)\n',
        metrics.DetectionMetrics: CENTROID_SCORES.format(detections="CellDetection"),
        nuclei.NucleiMetrics: CENTROID_SCORES.format(detections="NucleiDetection"),
    }
    for table, definition in expected.items():
        assert columns(table.definition) == columns(definition), table.__qualname__
