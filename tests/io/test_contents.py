"""Fitting probability maps and label volumes to a target's dtype."""

import re

import numpy as np
import pytest

from neuropipe.errors import BadInputError
from neuropipe.io.contents import fit_dtype

PROBABILITY = np.array([[[0.0, 0.5, 1.0, 0.25]]], np.float32)


@pytest.mark.parametrize("dtype, expected", [("uint8", [0, 128, 255, 64]), ("uint16", [0, 32768, 65535, 16384]),
                                             ("float32", [0.0, 0.5, 1.0, 0.25])])
def test_probabilities_scale_to_the_full_range_of_an_integer_target(dtype, expected):
    fitted = fit_dtype(PROBABILITY, "probability", dtype, "t")
    assert fitted.dtype == np.dtype(dtype) and fitted.ravel().tolist() == expected


@pytest.mark.parametrize(
    "content, array, dtype, message",
    [
        ("probability", PROBABILITY, "uint64", "a probability map needs a float, uint8 or uint16"),
        ("labels", np.array([[[1, 70000]]], np.uint32), "uint16",
         "holds uint16 (at most 65535); the labels reach 70000"),
        ("labels", np.array([[[1, 2]]], np.uint32), "float32", "labels need an integer target"),
    ],
)
def test_a_target_that_cannot_hold_the_values_is_refused(content, array, dtype, message):
    with pytest.raises(BadInputError, match=re.escape(message)):
        fit_dtype(array, content, dtype, "t")


def test_labels_that_fit_keep_their_values():
    labels = np.array([[[0, 3, 255]]], np.uint32)
    assert fit_dtype(labels, "labels", "uint8", "t").tolist() == [[[0, 3, 255]]]
