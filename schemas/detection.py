"""Cell detection on membrane probability maps.

A cell's interior is where the membrane probability is low, so detection runs on
``1 - P(membrane)``: xbrain's greedy sphere detection by default, connected components
(``method='components'``) or multi-scale blob detection that separates touching cells of
mixed sizes (``method='blobs'``), as chosen by :class:`DetectionParams`.
"""

import numpy as np

from neuropipe import ops
from neuropipe.database import import_datajoint
from neuropipe.params import ParamSet, fraction, non_negative_int, positive
from schemas.membrane import MembraneMap
from schemas.volume import Dataset

dj = import_datajoint()
schema = dj.Schema()

@schema
class DetectionParams(ParamSet, dj.Lookup):
    """Keyword arguments of :func:`neuropipe.ops.detect_cells`, keyed by their hash."""

    key_name = "detection_id"
    kernel = staticmethod(ops.detect_cells)
    not_params = ("voxel_size",)
    rules = {
        "threshold": (fraction, "a probability in [0, 1]"),
        "stop": (fraction, "a probability in [0, 1]"),
        "sphere_size": (positive, "a positive diameter in voxels"),
        "dilation": (non_negative_int, "a non-negative integer number of voxels"),
        "max_cells": (positive, "a positive integer"),
        "min_voxels": (non_negative_int, "a non-negative integer"),
        "method": (lambda value: value in ops.DETECTION_METHODS, "one of " + ", ".join(ops.DETECTION_METHODS)),
    }
    definition = """
    detection_id : char(16)               # content hash of params
    ---
    params : json                         # keyword arguments of ops.detect_cells
    description = "" : varchar(255)
    """


@schema
class CellDetection(dj.Computed):
    """Cells detected in one membrane map.

    Attributes
    ----------
    labels : ndarray of uint32 (via ``<npy@neuropipe>``)
        ZYX, the voxels of cell i labelled i (1..N).
    cell_count : int
    """

    definition = """
    -> MembraneMap
    -> DetectionParams
    ---
    labels : <npy@neuropipe>              # uint32 ZYX labels of the detected cells
    cell_count : int32
    """

    class Cell(dj.Part):
        """One detected cell."""

        definition = """
        -> master
        cell_id : int32                   # its label in `labels`
        ---
        centroid_z : float64              # voxels
        centroid_y : float64
        centroid_x : float64
        score : float64                   # detector confidence
        voxel_count : int64
        """

    def make(self, key):
        """Detect cells in the interior probability ``1 - P(membrane)``."""
        membrane = np.asarray((MembraneMap & key).fetch1("probability"))
        voxel_size = (Dataset & key).fetch1("voxel_z_nm", "voxel_y_nm", "voxel_x_nm")
        found = ops.detect_cells(1.0 - membrane, voxel_size=voxel_size, **DetectionParams().fetch_params(key))
        self.insert1(dict(key, labels=found.labels, cell_count=len(found.scores)))
        self.Cell.insert(
            dict(key, cell_id=index + 1, centroid_z=z, centroid_y=y, centroid_x=x, score=score, voxel_count=count)
            for index, ((z, y, x), score, count) in enumerate(zip(found.centroids, found.scores, found.voxel_counts))
        )
