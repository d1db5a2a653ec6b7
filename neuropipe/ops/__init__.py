"""Pure compute kernels of neuropipe (no database access).

Everything here works on numpy arrays in ZYX (plane, row, column) order.
Implementations live in the submodules; the public names are re-exported
here.
"""

from __future__ import annotations

from ._runtime import PRECISIONS
from .components import Components, label_components
from .detect import DETECTION_METHODS, Detections, detect_cells
from .gmm import gmm_probability
from .metrics import (
    MatchResult,
    PixelScores,
    VariationOfInformation,
    adapted_rand_error,
    match_centroids,
    pixel_scores,
    variation_of_information,
)
from .nuclei import NucleiMaps, NucleiModel, centre_map, predict_nuclei, train_nuclei
from .synthetic import SyntheticSample, make_sample
from .synthetic_nuclei import NucleiSample, make_nuclei
from .unet import NORMALISATIONS, SCHEDULES, MembraneModel, UNet2d, predict_membrane, train_membrane

__all__ = [
    "DETECTION_METHODS",
    "NORMALISATIONS",
    "PRECISIONS",
    "SCHEDULES",
    "Components",
    "Detections",
    "MatchResult",
    "MembraneModel",
    "NucleiMaps",
    "NucleiModel",
    "NucleiSample",
    "PixelScores",
    "SyntheticSample",
    "UNet2d",
    "VariationOfInformation",
    "adapted_rand_error",
    "centre_map",
    "detect_cells",
    "gmm_probability",
    "label_components",
    "make_nuclei",
    "make_sample",
    "match_centroids",
    "pixel_scores",
    "predict_membrane",
    "predict_nuclei",
    "train_membrane",
    "train_nuclei",
    "variation_of_information",
]
