"""Sweep files: the parameter sets each sampler yields, and clear errors for bad files."""

import pytest

from neuropipe.errors import BadInputError
from neuropipe.sweeps import read_sweeps


def sets_of(document):
    (sweep,) = read_sweeps(document)
    return sweep.parameter_sets()


def test_grid_is_the_cross_product_of_lists_ranges_and_min_max():
    sets = sets_of({"table": "DetectionParams", "base": {"method": "components"}, "parameters": {
        "threshold": {"range": {"start": 0.3, "stop": 0.8, "step": 0.1}},
        "min_voxels": [10, 20],
        "stop": {"min": 0.2, "max": 0.6, "num": 3}}})
    assert len(sets) == 5 * 2 * 3
    assert sorted({s["threshold"] for s in sets}) == [0.3, 0.4, 0.5, 0.6, 0.7]  # stop excluded, no 0.30000000000000004
    assert sorted({s["stop"] for s in sets}) == [0.2, 0.4, 0.6]
    assert all(s["method"] == "components" for s in sets)
    assert sets_of({"table": "T", "parameters": {"size": {"range": {"start": 2, "stop": 11, "step": 3}}}}) == [
        {"size": 2}, {"size": 5}, {"size": 8}]


def test_integer_and_log_grids():
    sets = sets_of({"table": "T", "parameters": {"dust": {"min": 1, "max": 1000, "num": 4, "log": True}}})
    assert [s["dust"] for s in sets] == [1, 10, 100, 1000]


def test_random_sampler_is_reproducible_and_stays_in_bounds():
    document = {"table": "T", "sampler": "random", "seed": 7, "count": 50, "parameters": {
        "threshold": {"min": 0.1, "max": 0.9}, "size": {"min": 8, "max": 20, "type": "int"},
        "method": ["spheres", "blobs"], "dust": {"min": 1.0, "max": 1e4, "log": True}}}
    first, again = sets_of(document), sets_of(document)
    assert first == again and len(first) == 50
    assert all(0.1 <= s["threshold"] <= 0.9 and 8 <= s["size"] <= 20 and isinstance(s["size"], int) for s in first)
    assert {s["method"] for s in first} == {"spheres", "blobs"}
    assert min(s["dust"] for s in first) < 100 < max(s["dust"] for s in first)  # log-uniform reaches both ends
    assert sets_of({**document, "seed": 8}) != first


def test_several_sweeps_in_one_file():
    sweeps = read_sweeps({"sweeps": [{"table": "A", "parameters": {"x": [1, 2]}},
                                     {"table": "B", "parameters": {"y": [3]}}]})
    assert [(s.table, len(s.parameter_sets())) for s in sweeps] == [("A", 2), ("B", 1)]


@pytest.mark.parametrize("document, message", [
    ({"parameters": {"x": [1]}}, "`table` must name a parameter table"),
    ({"table": "T"}, "`parameters` must map"),
    ({"table": "T", "sampler": "bayes", "parameters": {"x": [1]}}, "sampler 'bayes' is not one of grid, random"),
    ({"table": "T", "sampler": "random", "parameters": {"x": [1]}}, "needs `count`"),
    ({"table": "T", "parameters": {"x": []}}, "parameter x: the list of values is empty"),
    ({"table": "T", "parameters": {"x": {"range": {"start": 1, "stop": 0}}}}, "holds no value"),
    ({"table": "T", "parameters": {"x": {"min": 2, "max": 1}}}, "min <= max"),
    ({"table": "T", "parameters": {"x": {"low": 2}}}, "give a list, a `range`, or `min` and `max`"),
    ({"table": "T", "parameters": {"x": {"min": 0, "max": 1, "log": True}}}, "a log scale needs min > 0"),
    ({"table": "T", "parameters": {"x": [1]}, "seeds": 3}, "unknown field(s) seeds"),
    (["table"], "holds a mapping"),
])
def test_bad_sweep_files_name_the_problem(document, message):
    with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_sweeps(document)
