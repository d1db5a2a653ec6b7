"""Pure compute kernels of neuropipe (no database access).

Everything here works on numpy arrays in ZYX (plane, row, column) order.
Implementations live in the submodules; the public names are re-exported
here.
"""

from __future__ import annotations

from ._runtime import PRECISIONS
from .block_detection import assemble_cells, detect_blockwise, detect_in_block, detection_halo
from .components import Components, label_components
from .detect import DETECTION_DEFAULTS, DETECTION_METHODS, Detections, components_connectivity, detect_cells
from .gmm import gmm_probability
from .metrics import (
    MatchResult,
    PixelScores,
    VariationOfInformation,
    adapted_rand_error,
    match_centroids,
    membrane_map_scores,
    pixel_scores,
    variation_of_information,
)
from .nuclei import NucleiMaps, NucleiModel, centre_map, predict_nuclei, train_nuclei
from .synthetic import SyntheticSample, make_sample
from .synthetic_nuclei import NucleiSample, make_nuclei
from .unet import NORMALISATIONS, SCHEDULES, MembraneModel, UNet2d, predict_membrane, train_membrane

__all__ = [
    "DETECTION_DEFAULTS",
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
    "assemble_cells",
    "centre_map",
    "components_connectivity",
    "detect_blockwise",
    "detect_cells",
    "detect_in_block",
    "detection_halo",
    "gmm_probability",
    "label_components",
    "make_nuclei",
    "make_sample",
    "match_centroids",
    "membrane_map_scores",
    "pixel_scores",
    "predict_membrane",
    "predict_nuclei",
    "train_membrane",
    "train_nuclei",
    "variation_of_information",
]
