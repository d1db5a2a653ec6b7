"""SABER's parameter files: the sets each sampler gives each step, clear errors, and inserting them."""

import importlib.util
import json
import re
import sys
import textwrap

import pytest
import yaml

from neuropipe.cli import main
from neuropipe.database import import_datajoint
from neuropipe.errors import BadInputError
from neuropipe.sweeps import StepSets, Sweep, read_sweep_file

EXAMPLE = """
stop:
  range: {start: 0.1, stop: 0.47, step: 0.15}
  parameters: {abs: stop}
  steps: [cell_detect]
initial_template_size:
  range: [12, 22, 32]
  parameters: {abs: initial_template_size}
  steps: [cell_detect]
window:
  range: {start: 0, stop: 100, step: 30}
  parameters: {min: xmin, max: xmax}
  steps: [cutout]
"""


def plans(document, **sampler) -> dict:
    return {plan.table: plan.parameter_sets() for plan in read_sweep_file(document, **sampler)}


def test_the_grid_gives_each_step_the_cross_product_of_what_feeds_it():
    found = plans(yaml.safe_load(EXAMPLE))
    assert list(found) == ["cell_detect", "cutout"]
    assert len(found["cell_detect"]) == 3 * 3
    assert sorted({s["stop"] for s in found["cell_detect"]}) == [0.1, 0.25, 0.4]  # as numpy.arange, no 0.25000000001
    assert {s["initial_template_size"] for s in found["cell_detect"]} == {12, 22, 32}  # numbers stay numbers
    assert found["cutout"] == [{"xmin": 0, "xmax": 30}, {"xmin": 30, "xmax": 60}, {"xmin": 60, "xmax": 90},
                               {"xmin": 90, "xmax": 100}]  # the last window stops at stop


def test_one_metaparameter_may_feed_several_steps():
    found = plans({"threshold": {"range": [0.3, 0.5], "parameters": {"abs": "threshold"}, "steps": ["a", "b"]},
                   "size": {"range": {"start": 2, "stop": 8, "step": 2}, "parameters": {"abs": "size"},
                            "steps": ["b"]}})
    assert found["a"] == [{"threshold": 0.3}, {"threshold": 0.5}]  # distinct sets only, though 6 points
    assert len(found["b"]) == 6 and {"threshold": 0.5, "size": 6} in found["b"]


def test_the_random_sampler_is_reproducible_and_draws_count_distinct_points():
    document = yaml.safe_load(EXAMPLE)
    document["sampler"] = {"name": "random", "count": 5, "seed": 3}
    first = plans(document)
    assert first == plans(document) and len(first["cell_detect"]) == 5
    grid = plans(yaml.safe_load(EXAMPLE))
    assert all(s in grid["cell_detect"] for s in first["cell_detect"])
    assert plans(document, seed=4) != first
    assert len(plans(document, count=1000)["cell_detect"]) == 9  # at most the whole grid
    assert plans(document, sampler="grid") == grid  # the command line's flags win


def test_the_format_is_told_by_its_fields():
    (sweep,) = read_sweep_file({"table": "DetectionParams", "parameters": {"threshold": [0.3, 0.5]}})
    assert isinstance(sweep, Sweep) and len(sweep.parameter_sets()) == 2
    (sweep,) = read_sweep_file({"sweeps": [{"table": "T", "parameters": {"x": {"min": 0.0, "max": 1.0}}}]},
                               sampler="random", count=4, seed=1)
    assert len(sweep.parameter_sets()) == 4  # the flags apply to neuropipe's format too
    assert all(isinstance(plan, StepSets) for plan in read_sweep_file(yaml.safe_load(EXAMPLE)))


def entry(**fields):
    return {"x": {"range": [1, 2], "parameters": {"abs": "x"}, "steps": ["s"], **fields}}


@pytest.mark.parametrize("document, message", [
    (entry(range=5), "metaparameter x: `range` must be a list of values or a mapping of start, stop and step"),
    (entry(range={"start": 0}), "metaparameter x: `range` must be a list of values or a mapping"),
    (entry(range={"start": 0, "stop": "9"}), "metaparameter x: `range` start, stop and step must be numbers"),
    (entry(range={"start": 0, "stop": 1, "step": 0}), "metaparameter x: `range` step must be > 0, got 0"),
    (entry(range={"start": 1, "stop": 1}), "metaparameter x: `range` from 1 to 1 holds no value"),
    (entry(range=[]), "metaparameter x: `range` is an empty list"),
    (entry(parameters={"value": "x"}), "metaparameter x: `parameters` must be {abs: INPUT} or {min: INPUT, max"),
    (entry(parameters={"min": "lo"}), "metaparameter x: `parameters` must be"),
    (entry(parameters={"min": "lo", "max": "hi"}), "metaparameter x: `parameters` min/max needs a `range` of start"),
    (entry(steps=[]), "metaparameter x: `steps` must be a non-empty list of step names"),
    (entry(steps="s"), "metaparameter x: `steps` must be a non-empty list of step names, got 's'"),
    (entry(step=["s"]), "metaparameter x: unknown field(s) step"),
    ({"x": {"range": [1], "parameters": {"abs": "x"}}}, "metaparameter x: `steps` is missing"),
    ({"x": 0.5}, "metaparameter x: expected a mapping of range, parameters and steps, got 0.5"),
    ({**entry(), "y": entry()["x"]}, "metaparameters x and y both set input x of step s"),
    ({**entry(), "sampler": "bayes"}, "sampler 'bayes' is not one of grid, random"),
    ({**entry(), "sampler": {"name": "random"}}, "the random sampler needs a count, a positive integer"),
    ({**entry(), "sampler": {"kind": "random"}}, "`sampler` must be grid, or a mapping of name"),
    ({"parameters": {"x": [1]}, "base": {}}, "neuropipe's sweep format expected (the file has parameters, base): "
                                             "`table` is missing"),
    (["x"], "a sweep file holds a mapping"),
])
def test_bad_saber_files_name_the_metaparameter_and_the_field(document, message):
    with pytest.raises(BadInputError, match=re.escape(message)):
        read_sweep_file(document)


def test_a_dry_run_lists_each_steps_sets_without_a_database(tmp_path, capsys):
    (tmp_path / "saber.yaml").write_text(EXAMPLE + "sampler: grid\n")
    assert main(["sweep", str(tmp_path / "saber.yaml"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9 + 4 and lines[-1] == 'cutout {"xmax": 100, "xmin": 90}'
    assert main(["sweep", str(tmp_path / "saber.yaml"), "--dry-run", "--sampler", "random", "--count", "2"]) == 0
    assert sum(line.startswith("cell_detect ") for line in capsys.readouterr().out.splitlines()) == 2
    assert main(["sweep", str(tmp_path / "saber.yaml"), "--dry-run", "--sampler", "random"]) == 2
    assert "the random sampler needs a count" in capsys.readouterr().err


STEPS = '''
import numpy as np

from neuropipe import steps


def declare(schema):
    @steps.step(schema)
    def cell_detect(image, *, threshold: float = 0.5, size: int = 3) -> float:
        return float((np.asarray(image) > threshold).mean()) * size
'''

SWEEP = """
threshold:
  range: {start: 0.3, stop: 0.8, step: 0.2}
  parameters: {abs: threshold}
  steps: [DetectionParams, cell_detect]
size:
  range: [2, 4]
  parameters: {abs: size}
  steps: [cell_detect]
"""


@pytest.fixture
def lab(environment, settings, tmp_path):
    """A step ``cell_detect`` (tables CellDetect, CellDetectParams) in a schema of its own, as module lab_saber."""
    from schemas import volume

    (tmp_path / "lab_saber.py").write_text(textwrap.dedent(STEPS))
    spec = importlib.util.spec_from_file_location("lab_saber", tmp_path / "lab_saber.py")
    module = sys.modules["lab_saber"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema = import_datajoint().Schema(settings.schema_prefix + "lab", connection=volume.Dataset.connection)
    module.declare(schema)
    yield module
    schema.drop(prompt=False)
    sys.modules.pop("lab_saber", None)


def stored(table) -> set:
    """The parameter sets in ``table``, each as sorted (name, value) pairs."""
    decoded = (json.loads(row["params"]) if isinstance(row["params"], str) else row["params"]
               for row in table().to_dicts())
    return {tuple(sorted(params.items())) for params in decoded}


def test_a_saber_file_inserts_each_steps_sets_once(lab, environment, tmp_path, capsys):
    detection = environment.detection.DetectionParams
    before = stored(detection)
    command = ["sweep", str(tmp_path / "saber.yaml"), "--pipeline", "schemas", "--pipeline", "lab_saber"]
    (tmp_path / "saber.yaml").write_text(SWEEP)
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "DetectionParams: 3 parameter set(s), 3 new" in out and "CellDetectParams: 6 parameter set(s), 6 new" in out
    assert stored(detection) - before == {(("threshold", 0.3),), (("threshold", 0.5),), (("threshold", 0.7),)}
    assert stored(lab.CellDetectParams) == {()} | {(("size", size), ("threshold", threshold))
                                                   for size in (2, 4) for threshold in (0.3, 0.5, 0.7)}
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "3 parameter set(s), 0 new" in out and "6 parameter set(s), 0 new" in out

    (tmp_path / "saber.yaml").write_text(SWEEP.replace("cell_detect", "CellDetect"))  # the step's table names it too
    assert main(command) == 0
    assert "CellDetectParams: 6 parameter set(s), 0 new" in capsys.readouterr().out

    (tmp_path / "saber.yaml").write_text(SWEEP.replace("stop: 0.8", "stop: 1.2"))  # DetectionParams refuses 1.1
    assert main(command) == 2
    assert "DetectionParams: threshold=1.1 is invalid" in capsys.readouterr().err
    assert len(lab.CellDetectParams()) == 7  # nothing inserted: every set is checked first

    (tmp_path / "saber.yaml").write_text(SWEEP.replace("cell_detect", "CellDetection"))  # it has no params_table
    assert main(command) == 2
    assert re.search("'CellDetection' is neither a parameter table nor a step of the pipeline; known: .*CellDetect, "
                     "CellDetectParams, .*DetectionParams", capsys.readouterr().err)
