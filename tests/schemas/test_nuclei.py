"""The learned option through the tables: train on annotated nuclei, detect, score; bad labels recorded."""

import numpy as np
import pytest

from neuropipe import ops
from neuropipe.pipeline import pipeline_tables
from neuropipe.worker import run_worker

LEARNED = dict(method="learned", threshold=0.5, stop=0.4, sphere_size=10)


def register(pipeline, paths):
    volume, nuclei, detection, metrics = pipeline.volume, pipeline.nuclei, pipeline.detection, pipeline.metrics
    for name, purpose in (("train", "train"), ("eval", "evaluate"), ("empty", "train")):
        volume.Dataset.insert1(dict(dataset=name, source=f"file://{paths[name]}#image"))
        volume.Annotation.insert1(dict(dataset=name, kind="cells", purpose=purpose,
                                       source=f"file://{paths[name]}#cells"))
    training = nuclei.NucleiTrainingParams.insert_params(dict(iterations=40, width=8, crop=24, seed=0))
    learned = detection.DetectionParams.insert_params(LEARNED)
    detection.DetectionParams.insert_params(dict(method="spheres"))  # for membrane maps: not taken here
    metrics.MetricsParams.insert_params({"radius": 5.0, "threshold": 0.5})
    return training, learned


@pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)  # the embedded server adds nothing here
def test_a_model_trained_on_annotated_nuclei_detects_and_is_scored(pipeline, nuclei_files):
    nuclei = pipeline.nuclei
    training, learned = register(pipeline, nuclei_files)

    tally = run_worker(pipeline_tables([pipeline]), max_idle=0)

    model = (nuclei.NucleiModel & {"dataset": "train"}).fetch1()
    assert model["iterations"] == 40 and model["device"] == "cpu" and model["train_seconds"] > 0
    loaded = nuclei.NucleiModel().load({"training_dataset": "train", **training})  # as a detection's key names it
    assert isinstance(loaded, ops.NucleiModel) and loaded.iterations == 40
    assert nuclei.NucleiModel().load({"training_dataset": "train", **training}) is loaded  # loaded once, as maps' are
    # Every volume under the one model and the one learned parameter set; none from the model that failed.
    made = nuclei.NucleiDetection().to_dicts(order_by="dataset")
    assert [(row["dataset"], row["training_dataset"]) for row in made] == [
        ("empty", "train"), ("eval", "train"), ("train", "train")]
    assert {row["detection_id"] for row in made} == {learned["detection_id"]}
    for row in made:
        labels = np.asarray(row["labels"])
        cells = nuclei.NucleiDetection.Cell & {"dataset": row["dataset"]}
        assert labels.dtype == np.uint32 and labels.max() == row["cell_count"] == len(cells) > 0
        counts = np.sort(cells.to_arrays("voxel_count"))
        np.testing.assert_array_equal(counts, np.sort(np.bincount(labels.ravel())[1:]))
    scores = nuclei.NucleiMetrics().to_dicts(order_by="dataset")
    assert [row["dataset"] for row in scores] == ["empty", "eval", "train"]
    assert scores[0]["f1"] == 0.0  # no annotated nucleus to find
    evaluated = scores[1]
    assert evaluated["true_positives"] + evaluated["false_negatives"] == len(
        pipeline.volume.AnnotationVolume.Cell & {"dataset": "eval"})
    # The membrane chain leaves learned parameter sets alone.
    assert len(pipeline.detection.DetectionBlock.key_source & learned) == 0
    assert len(pipeline.detection.CellDetection.key_source & learned) == 0

    # An annotation without a nucleus is an error in the job table, naming the problem.
    assert tally["NucleiModel"].errors
    error = (nuclei.NucleiModel().jobs & {"dataset": "empty"}).fetch1()
    assert error["status"] == "error" and "at least one nucleus" in error["error_message"]
    assert len(nuclei.NucleiModel & {"dataset": "empty"}) == 0


def test_training_params_are_checked_at_insert(pipeline):
    from neuropipe.errors import BadInputError

    with pytest.raises(BadInputError, match="unknown parameter"):
        pipeline.nuclei.NucleiTrainingParams.insert_params(dict(epochs=3))
    with pytest.raises(BadInputError, match="levels"):
        pipeline.nuclei.NucleiTrainingParams.insert_params(dict(iterations=10, levels=0))
