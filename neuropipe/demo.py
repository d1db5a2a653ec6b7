"""The demo: the whole chain on a sample volume, through the same worker loop as the daemons.

Without a source the demo makes its own sample: two small synthetic EM-like volumes with
known cells (one to train on, one to evaluate), written once under the data directory.
With ``source`` (and ``labels``) it runs the same chain on real data: the first part of the
stack trains the model, the rest is held out for evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuropipe import ops
from neuropipe.config import Settings, data_home
from neuropipe.database import connect
from neuropipe.io import format_bbox, open_source, parse_source
from neuropipe.pipeline import pipeline_tables
from neuropipe.worker import registry, run_worker

SAMPLE_SHAPE = (24, 128, 128)
# The small synthetic sample (24 slices of 128 x 128, a half-minute budget) trains with its own
# settings; real data gets train_membrane's defaults, the settings measured best on ISBI 2012.
SAMPLE_TRAINING = dict(crop=64, depth=3, learning_rate=1e-3, schedule="constant", balance=1.0, normalise="stack",
                       validation=0)
SAMPLE_CELL_DIAMETER = 14


@dataclass
class Plan:
    """What the demo registers: datasets, annotations and one parameter set per table."""

    datasets: list[dict]
    annotations: list[dict]
    training: dict
    inference: dict = field(default_factory=dict)
    detection: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=lambda: {"radius": 5.0, "threshold": 0.5})


def sample_plan(folder: Path | None = None, *, seed: int = 0, minutes: float = 0.5, iterations: int = 400) -> Plan:
    """Write the synthetic sample (once) and return the plan that processes it.

    Parameters
    ----------
    folder : Path, optional
        Where the sample files go. Default: ``<data home>/samples``.
    seed : int, optional
        Seed of the training volume; the evaluation volume uses ``seed + 1``.
    minutes, iterations : float, int, optional
        Training budget: training stops at whichever comes first.
    """
    folder = Path(folder or data_home() / "samples")
    folder.mkdir(parents=True, exist_ok=True)
    datasets, annotations = [], []
    for name, volume_seed, purpose in (("sample_train", seed, "train"), ("sample_eval", seed + 1, "evaluate")):
        path = folder / f"{name}_seed{volume_seed}.npz"
        if not path.exists():
            sample = ops.make_sample(SAMPLE_SHAPE, seed=volume_seed, cell_diameter=SAMPLE_CELL_DIAMETER)
            np.savez_compressed(path, image=sample.image, cells=sample.cells)
        datasets.append(dict(dataset=name, source=f"file://{path}#image", description="synthetic EM-like sample"))
        annotations.append(dict(dataset=name, kind="cells", purpose=purpose, source=f"file://{path}#cells"))
    return Plan(
        datasets=datasets,
        annotations=annotations,
        training=dict(iterations=iterations, minutes=minutes, seed=seed, **SAMPLE_TRAINING),
        detection=dict(method="spheres", threshold=0.5, stop=0.5, sphere_size=10, dilation=2),
    )


def source_plan(source: str, labels: str | None, *, name: str | None = None, train_fraction: float = 2 / 3,
                voxel_size=None, labels_kind: str = "membrane", minutes: float = 2.0,
                iterations: int = 100_000) -> Plan:
    """Return the plan for a real volume: its first planes train, the rest evaluate.

    Parameters
    ----------
    source, labels : str
        URIs of the image and of its expert labels (see :func:`neuropipe.io.parse_source`).
    name : str, optional
        Dataset name prefix. Default: the source file's stem.
    train_fraction : float, optional
        Fraction of the z planes used for training. Default 2/3 (ISBI 2012: 20 of 30).
    voxel_size : tuple of float, optional
        ZYX voxel size in nm. Default: the source's metadata where it has one, else 1.
    labels_kind : {'membrane', 'cells'}
    minutes, iterations : float, int
        Training budget: training stops at whichever comes first.
    """
    volume = open_source(source)
    (depth, height, width), (z0, y0, x0) = volume.shape, volume.origin  # boxes are in the source's coordinates
    name = name or parse_source(source).path.stem
    split = max(1, min(depth - 1, round(depth * train_fraction)))
    parts = (("train", (z0, z0 + split), "train"), ("eval", (z0 + split, z0 + depth), "evaluate"))
    voxel = dict(zip(("voxel_z_nm", "voxel_y_nm", "voxel_x_nm"), map(float, voxel_size))) if voxel_size else {}
    datasets, annotations = [], []
    for suffix, planes, purpose in parts:
        bbox = format_bbox((planes, (y0, y0 + height), (x0, x0 + width)))
        datasets.append(dict(dataset=f"{name}_{suffix}", source=source, bbox=bbox, **voxel))
        if labels:
            annotations.append(dict(dataset=f"{name}_{suffix}", kind=labels_kind, purpose=purpose,
                                    source=labels, bbox=bbox, min_cell_voxels=20))
    return Plan(
        datasets=datasets,
        annotations=annotations,
        training=dict(iterations=iterations, minutes=minutes, seed=0),
        detection=dict(method="components", threshold=0.5, min_voxels=20, max_cells=100_000),
    )


def register(plan: Plan) -> dict:
    """Insert the plan's datasets, annotations and parameter sets (again is harmless).

    Returns
    -------
    dict
        The primary keys of the plan's parameter sets, merged into one restriction.
    """
    from schemas import detection, membrane, metrics, volume

    volume.Dataset.insert(plan.datasets, skip_duplicates=True)
    volume.Annotation.insert(plan.annotations, skip_duplicates=True)
    return {
        **membrane.TrainingParams.insert_params(plan.training, "demo"),
        **membrane.InferenceParams.insert_params(plan.inference, "demo"),
        **detection.DetectionParams.insert_params(plan.detection, "demo"),
        **metrics.MetricsParams.insert_params(plan.metrics, "demo"),
    }


def run_demo(plan: Plan, settings: Settings, *, connection=None) -> dict:
    """Register ``plan`` and drain the pipeline with the worker loop; return the results.

    Returns
    -------
    dict
        ``rows`` (table name -> row count), ``membrane`` and ``detection`` (lists of score
        dicts), ``failed`` (table name -> error messages) and ``seconds``.
    """
    import schemas

    start = time.perf_counter()
    connection = connection or connect(settings)
    schemas.activate(settings.schema_prefix, connection)
    registry.activate(settings.schema_prefix, connection)
    parameters = register(plan)
    datasets = [{"dataset": entry["dataset"]} for entry in plan.datasets]
    tables = pipeline_tables(schemas.CHAIN)
    tally = run_worker(tables, max_idle=0, restrictions=(datasets, parameters))
    return collect_results(tables, (datasets, parameters), tally, time.perf_counter() - start)


def collect_results(tables, restrictions, tally, seconds: float) -> dict:
    """Gather row counts and scores of the rows under ``restrictions`` after a run."""
    from schemas import metrics

    def restricted(table):
        for restriction in restrictions:
            table = table & restriction
        return table

    return {
        "rows": {table.__name__: len(restricted(table())) for table in tables},
        "membrane": restricted(metrics.MembraneMetrics()).to_dicts(order_by="dataset"),
        "detection": restricted(metrics.DetectionMetrics()).to_dicts(order_by="dataset"),
        "failed": {name: t.errors for name, t in tally.items() if t.errors},
        "seconds": seconds,
    }


def format_results(results: dict) -> str:
    """Render demo results as the short text report the CLI prints."""
    lines = [f"Pipeline finished in {results['seconds']:.1f} s.", "", "Rows per table:"]
    lines += [f"  {name:<18} {count}" for name, count in results["rows"].items()]
    lines += ["", "Membrane maps (vs annotation):", "  dataset              pixel error  F1     adapted Rand error"]
    lines += [
        f"  {row['dataset']:<20} {row['pixel_error']:<12.4f} {row['f1']:<6.3f} {row['adapted_rand_error']:.4f}"
        for row in results["membrane"]
    ]
    lines += ["", "Cell detections (vs annotated cells):", "  dataset              precision  recall  F1     TP/FP/FN"]
    lines += [
        f"  {row['dataset']:<20} {row['precision']:<10.3f} {row['recall']:<7.3f} {row['f1']:<6.3f} "
        f"{row['true_positives']}/{row['false_positives']}/{row['false_negatives']}"
        for row in results["detection"]
    ]
    for table, errors in results["failed"].items():
        lines += ["", f"{table} failed:"] + [f"  {key}: {message}" for key, message in errors]
    lines += [
        "",
        "Look further: neuropipe status, neuropipe report, neuropipe provenance DetectionMetrics; in a notebook:",
        "  import neuropipe; neuropipe.connect()",
        "  from schemas import metrics; metrics.DetectionMetrics()   # then neuropipe.populate() after inserting more",
    ]
    return "\n".join(lines)
