"""SABER's parameter files, and telling them from neuropipe's own sweep files.

SABER (APL's CWL and Airflow framework, ``aplbrain/saber``) sweeps metaparameters, each
feeding an input of one or more workflow steps::

    stop:                                    # a metaparameter
      range: {start: 0.1, stop: 0.47, step: 0.15}   # as numpy.arange (stop excluded), or a list
      parameters: {abs: stop}                # the step input that takes each value
      steps: [cell_detect]                   # the steps whose input it is
    window:
      range: {start: 0, stop: 100, step: 25}
      parameters: {min: xmin, max: xmax}     # xmin = value, xmax = min(value + step, stop)
      steps: [cutout]
    sampler: {name: random, count: 20, seed: 0}   # neuropipe's addition; grid by default

The grid sampler takes the cross product of the ranges; the random sampler ``count``
distinct points of that grid.  Each point gives every step a dict of input -> value (numbers
stay numbers); a step's distinct dicts become parameter sets of its parameter table, which
:func:`~neuropipe.sweeps.scores.insert_sweeps` finds from the step's name.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np

from neuropipe.errors import BadInputError
from neuropipe.sweeps.spec import FIELDS, SAMPLERS, range_values, read_sweeps

ENTRY = ("range", "parameters", "steps")


@dataclass
class StepSets:
    """The parameter sets a SABER file gives one step; :func:`~neuropipe.sweeps.insert_sweeps` takes it as a sweep."""

    table: str  # the step's name, as the file gives it
    sets: list[dict]
    description: str = ""

    def parameter_sets(self) -> list[dict]:
        """Return the step's distinct parameter sets."""
        return list(self.sets)


@dataclass
class Metaparameter:
    """One metaparameter of a SABER file: what each value of its range sets, and in which steps."""

    name: str
    jobs: list[dict]  # per value: step input -> value
    steps: list[str]


def read_sweep_file(document, *, sampler: str | None = None, count: int | None = None,
                    seed: int | None = None) -> list:
    """Read a parsed sweep file of either format: neuropipe's (``table:`` or ``sweeps:``) or SABER's.

    Parameters
    ----------
    document : dict
        The parsed YAML.
    sampler, count, seed : optional
        Override the file's sampler (``grid`` or ``random``), number of random sets and seed.

    Returns
    -------
    list
        :class:`~neuropipe.sweeps.spec.Sweep` or :class:`StepSets` plans, for
        :func:`~neuropipe.sweeps.insert_sweeps`.

    Raises
    ------
    BadInputError
        Saying which format was expected and what it lacks.
    """
    overrides = {name: value for name, value in dict(sampler=sampler, count=count, seed=seed).items()
                 if value is not None}
    if not isinstance(document, dict) or not document:
        raise BadInputError("a sweep file holds a mapping: neuropipe's format (table, parameters, ...) or SABER's "
                            "(each metaparameter: range, parameters, steps).")
    if "table" in document or "sweeps" in document:
        blocks = document.get("sweeps", [document])
        if overrides and isinstance(blocks, list):
            blocks = [{**block, **overrides} if isinstance(block, dict) else block for block in blocks]
        return read_sweeps({"sweeps": blocks})
    if set(document) <= set(FIELDS):
        raise BadInputError(f"neuropipe's sweep format expected (the file has {', '.join(map(str, document))}): "
                            f"`table` is missing; or give SABER's metaparameters (range, parameters, steps).")
    return read_saber(document, **overrides)


def read_saber(document: dict, *, sampler: str | None = None, count: int | None = None,
               seed: int | None = None) -> list[StepSets]:
    """Return the parameter sets of a parsed SABER file, one :class:`StepSets` per step.

    Raises
    ------
    BadInputError
        Naming the metaparameter and the field that is wrong.
    """
    metaparameters = [_metaparameter(name, entry) for name, entry in document.items() if name != "sampler"]
    if not metaparameters:
        raise BadInputError("SABER parameter file: no metaparameter.")
    _check_inputs(metaparameters)
    points = _points([m.jobs for m in metaparameters], *_sampler(document.get("sampler", "grid"), sampler, count, seed))
    steps = dict.fromkeys(step for m in metaparameters for step in m.steps)
    plans = []
    for step in steps:
        feeding = [index for index, m in enumerate(metaparameters) if step in m.steps]
        sets = [{k: v for index in feeding for k, v in point[index].items()} for point in points]
        unique = list({json.dumps(s, sort_keys=True, default=str): s for s in sets}.values())
        names = ", ".join(metaparameters[index].name for index in feeding)
        plans.append(StepSets(step, unique, f"SABER sweep of {names}"[:255]))
    return plans


def _points(choices: list[list], sampler: str, count: int | None, seed: int) -> list[tuple]:
    """Return the grid's points (one choice per metaparameter), or ``count`` distinct ones drawn at random."""
    if sampler == "grid":
        return list(itertools.product(*choices))
    shape = [len(jobs) for jobs in choices]
    drawn = np.random.default_rng(seed).choice(math.prod(shape), size=min(count, math.prod(shape)), replace=False)
    return [tuple(jobs[i] for jobs, i in zip(choices, np.unravel_index(int(n), shape))) for n in drawn]


def _metaparameter(name, entry) -> Metaparameter:
    where = f"SABER parameter file: metaparameter {name}"
    if not isinstance(entry, dict):
        raise BadInputError(f"{where}: expected a mapping of range, parameters and steps, got {entry!r}.")
    missing = [field for field in ENTRY if field not in entry]
    if missing:
        raise BadInputError(f"{where}: `{missing[0]}` is missing (each metaparameter needs range, parameters "
                            f"and steps; neuropipe's own format needs `table:`).")
    unknown = sorted(set(map(str, entry)) - set(ENTRY))
    if unknown:
        raise BadInputError(f"{where}: unknown field(s) {', '.join(unknown)}.")
    values = _range(where, entry["range"])
    inputs = entry["parameters"]
    if not isinstance(inputs, dict) or set(inputs) not in ({"abs"}, {"min", "max"}) or not all(
            isinstance(value, str) and value for value in inputs.values()):
        raise BadInputError(f"{where}: `parameters` must be {{abs: INPUT}} or {{min: INPUT, max: INPUT}} "
                            f"(step input names), got {inputs!r}.")
    steps = entry["steps"]
    if not isinstance(steps, list) or not steps or not all(isinstance(step, str) and step for step in steps):
        raise BadInputError(f"{where}: `steps` must be a non-empty list of step names, got {steps!r}.")
    steps = list(dict.fromkeys(steps))
    if "abs" in inputs:
        return Metaparameter(name, [{inputs["abs"]: value} for value in values], steps)
    if not isinstance(entry["range"], dict):
        raise BadInputError(f"{where}: `parameters` min/max needs a `range` of start, stop and step, not a list.")
    step, stop = entry["range"].get("step", 1), entry["range"]["stop"]
    return Metaparameter(name, [{inputs["min"]: value, inputs["max"]: min(round(value + step, 12), stop)}
                                for value in values], steps)


def _range(where: str, spec) -> list:
    if isinstance(spec, list):
        if not spec:
            raise BadInputError(f"{where}: `range` is an empty list.")
        return list(spec)
    if not isinstance(spec, dict) or not {"start", "stop"} <= set(spec) or set(spec) - {"start", "stop", "step"}:
        raise BadInputError(f"{where}: `range` must be a list of values or a mapping of start, stop and step "
                            f"(as numpy.arange), got {spec!r}.")
    start, stop, step = spec["start"], spec["stop"], spec.get("step", 1)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, stop, step)):
        raise BadInputError(f"{where}: `range` start, stop and step must be numbers, got {spec!r}.")
    if step <= 0:
        raise BadInputError(f"{where}: `range` step must be > 0, got {step}.")
    if stop <= start:
        raise BadInputError(f"{where}: `range` from {start} to {stop} holds no value (stop is excluded).")
    return range_values(where, spec)


def _check_inputs(metaparameters: list[Metaparameter]) -> None:
    """Refuse two metaparameters setting the same input of the same step."""
    setters: dict = {}
    for m in metaparameters:
        for step, name in itertools.product(m.steps, m.jobs[0]):
            other = setters.setdefault((step, name), m.name)
            if other != m.name:
                raise BadInputError(f"SABER parameter file: metaparameters {other} and {m.name} both set "
                                    f"input {name} of step {step}.")


def _sampler(spec, name: str | None, count: int | None, seed: int | None) -> tuple[str, int | None, int]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or set(spec) - {"name", "count", "seed"}:
        raise BadInputError(f"SABER parameter file: `sampler` must be grid, or a mapping of name (grid or random), "
                            f"count and seed; got {spec!r}.")
    name = name if name is not None else spec.get("name", "grid")
    count = count if count is not None else spec.get("count")
    seed = seed if seed is not None else spec.get("seed", 0)
    if name not in SAMPLERS:
        raise BadInputError(f"SABER parameter file: sampler {name!r} is not one of {', '.join(SAMPLERS)}.")
    if name == "random" and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise BadInputError("SABER parameter file: the random sampler needs a count, a positive integer "
                            "(`count:` under `sampler:`, or --count).")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BadInputError(f"SABER parameter file: the sampler's seed must be an integer, got {seed!r}.")
    return name, count, seed
