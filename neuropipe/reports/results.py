"""The results of a dataset worth looking at: its volume, a membrane map and a detection.

Where a dataset has several maps or detections (a parameter sweep), the detection with the
best :class:`~schemas.metrics.DetectionMetrics` F1 is shown, with the map it was made from;
without scores, the first in key order.  The report's image panels and ``neuropipe view``
choose alike.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from neuropipe.database import import_datajoint

#: Bundled tables a report draws images from, by class name.
NAMES = ("Dataset", "Volume", "MembraneMap", "CellDetection", "DetectionMetrics")


@dataclass(frozen=True)
class Result:
    """One dataset's volume and the map and detection chosen to show with it.

    Attributes
    ----------
    dataset : str
    shape : tuple of int
        ZYX voxels.
    voxel_size : tuple of float
        ZYX, nanometres.
    volume : dict
        The ``Volume`` key.
    probability, labels : dict or None
        Keys of the ``MembraneMap`` and ``CellDetection`` rows shown, where there are any.
    cell_count : int or None
    f1 : float or None
        The detection's best F1 against the annotation, where scored.
    """

    dataset: str
    shape: tuple
    voxel_size: tuple
    volume: dict
    probability: dict | None = None
    labels: dict | None = None
    cell_count: int | None = None
    f1: float | None = None


def pipeline_classes(tables) -> dict:
    """Return the bound table classes that ``tables`` and the modules they come from name, by class name.

    A module's namespace holds the classes it imports too (``schemas.metrics`` imports
    ``CellDetection``), so the bundled tables are found from any of their descendants.
    """
    dj = import_datajoint()
    found = {}
    modules = {sys.modules.get(table.__module__) for table in tables}
    for module in filter(None, modules):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, dj.Table) and getattr(value, "database", None):
                found.setdefault(value.__name__, value)
    for table in tables:
        found[table.__name__] = table
    return found


def dataset_results(classes: dict, *, dataset: str | None = None, restriction: dict | None = None) -> list[Result]:
    """Return a :class:`Result` per imported volume (of ``dataset`` only, where given).

    Parameters
    ----------
    classes : dict
        Table classes by name (:func:`pipeline_classes`); without ``Volume`` there is nothing.
    dataset : str, optional
    restriction : dict, optional
        Only maps and detections matching it (e.g. ``{"detection_id": ...}``).
    """
    volume = classes.get("Volume")
    if volume is None or "Dataset" not in classes:
        return []
    volumes = volume() & {"dataset": dataset} if dataset else volume()
    found = []
    for key in volumes.proj().to_dicts(order_by="dataset"):
        shape = tuple(int(v) for v in (volume & key).fetch1("depth", "height", "width"))
        voxel = tuple(float(v) for v in (classes["Dataset"] & key).fetch1("voxel_z_nm", "voxel_y_nm", "voxel_x_nm"))
        found.append(Result(key["dataset"], shape, voxel, key, **_chosen(classes, key, restriction)))
    return found


def _chosen(classes: dict, key: dict, restriction: dict | None) -> dict:
    maps, detections = classes.get("MembraneMap"), classes.get("CellDetection")
    chosen: dict = {}
    if detections is not None:
        rows = detections() & key & (restriction or {})
        best = _best_detection(classes.get("DetectionMetrics"), rows)
        if best is not None:
            labels, count, f1 = best
            chosen.update(labels=labels, cell_count=count, f1=f1)
    if maps is not None:
        candidates = maps() & key & (restriction or {}) & _map_part(maps, chosen.get("labels"))
        keys = candidates.proj().to_dicts(order_by="KEY", limit=1)
        if keys:
            chosen["probability"] = keys[0]
    return chosen


def _map_part(maps, detection_key: dict | None) -> dict:
    if not detection_key:
        return {}
    return {name: detection_key[name] for name in maps.primary_key if name in detection_key}


def _best_detection(metrics, rows):
    """Return (key, cell count, f1) of the best-scoring detection among ``rows`` (first one unscored)."""
    if not rows:
        return None
    if metrics is not None:
        scored = (metrics() & rows.proj()).proj("f1").to_dicts(order_by="f1 DESC", limit=1)
        if scored:
            key = {name: scored[0][name] for name in rows.primary_key}
            return key, int((rows & key).fetch1("cell_count")), float(scored[0]["f1"])
    key = rows.proj().to_dicts(order_by="KEY", limit=1)[0]
    return key, int((rows & key).fetch1("cell_count")), None
