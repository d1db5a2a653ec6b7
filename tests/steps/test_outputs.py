"""What a step's return annotation stores, and how a returned value is checked against it (no database)."""

from typing import TypedDict

import numpy as np
import pytest

from neuropipe.steps import outputs


class Scores(TypedDict):
    """What a scoring step returns: one column per key."""

    f1: float
    cells: int


def test_a_single_value_is_stored_under_the_steps_name_and_a_typeddict_under_its_keys():
    single = outputs.columns(float, "f1", "score")
    assert [(c.name, c.kind, c.in_record) for c in single] == [("f1", "scalar", False)]
    assert outputs.values(np.float32(0.5), single, "score") == {"f1": 0.5}
    record = outputs.columns(Scores, "score", "score")
    assert [(c.name, c.kind, c.in_record) for c in record] == [("f1", "scalar", True), ("cells", "scalar", True)]
    assert outputs.values({"f1": 1, "cells": np.int64(3)}, record, "score") == {"f1": 1.0, "cells": 3}


def test_a_returned_value_that_the_annotation_does_not_declare_is_refused_naming_it():
    record = outputs.columns(Scores, "score", "score")
    with pytest.raises(TypeError, match="step score should return a dict of f1, cells, got float"):
        outputs.values(0.5, record, "score")
    with pytest.raises(TypeError, match="step score returned no cells"):
        outputs.values({"f1": 0.5}, record, "score")
    with pytest.raises(TypeError, match="step score: cells should be int, got bool"):
        outputs.values({"f1": 0.5, "cells": True}, record, "score")
    with pytest.raises(TypeError, match="step smoothed: smoothed should be an array, got str"):
        outputs.values("image", outputs.columns(np.ndarray, "smoothed", "smoothed"), "smoothed")


def test_only_arrays_over_the_limit_need_zarr():
    array = outputs.columns(np.ndarray, "smoothed", "smoothed")
    found = outputs.values(np.zeros((10, 10), np.float32), array, "smoothed")  # 400 bytes
    assert outputs.needs_zarr(found, array, limit=399) and not outputs.needs_zarr(found, array, limit=400)
    assert outputs.row(found, array, limit=400)["smoothed"].shape == (10, 10)
