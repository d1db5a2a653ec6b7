"""The results of a dataset worth looking at: its volume, a membrane map and a detection.

Where a dataset has several maps or detections (a parameter sweep, the learned option beside
the membrane chain), the detection with the best F1 is shown: of the membrane chain's
(:class:`~schemas.metrics.DetectionMetrics`, with the map it was made from) and of the
learned option's (:class:`~schemas.nuclei.NucleiMetrics`, with the first map); without
scores, the first in key order, the membrane chain's first.  The report's image panels and
``neuropipe view`` choose alike.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Detection tables whose labels can be shown, each with the table that scores it, by class name.
DETECTIONS = (("CellDetection", "DetectionMetrics"), ("NucleiDetection", "NucleiMetrics"))


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
        Keys of the ``MembraneMap`` and detection rows shown, where there are any.
    detection_table : str or None
        The class name of the table ``labels`` is a key of: ``CellDetection`` or
        ``NucleiDetection`` (the learned option).
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
    detection_table: str | None = None
    cell_count: int | None = None
    f1: float | None = None


def dataset_results(classes: dict, *, dataset: str | None = None, restriction: dict | None = None) -> list[Result]:
    """Return a :class:`Result` per imported volume (of ``dataset`` only, where given).

    Parameters
    ----------
    classes : dict
        Table classes by name (:func:`neuropipe.pipeline.classes_around`); without ``Volume`` there is nothing.
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
        voxel = tuple(float(v) for v in classes["Dataset"].voxel_size(key))
        found.append(Result(key["dataset"], shape, voxel, key, **_chosen(classes, key, restriction)))
    return found


def _chosen(classes: dict, key: dict, restriction: dict | None) -> dict:
    chosen: dict = {}
    candidates = []
    for name, metrics in DETECTIONS:
        if name not in classes:
            continue
        best = _best_detection(classes.get(metrics), classes[name]() & key & (restriction or {}))
        if best is not None:
            candidates.append(dict(labels=best[0], detection_table=name, cell_count=best[1], f1=best[2]))
    if candidates:  # the best score wins (the first of equals); unscored ones only where nothing is scored
        chosen.update(max(candidates, key=lambda found: -1.0 if found["f1"] is None else found["f1"]))
    maps = classes.get("MembraneMap")
    if maps is not None:
        made_from = chosen.get("labels") if chosen.get("detection_table") == "CellDetection" else None
        candidates = maps() & key & (restriction or {}) & _map_part(maps, made_from)
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
