"""neuropipe's sweep files: which parameter sets to insert.

A sweep file names a parameter table, the parameters every set shares, and how each swept
parameter varies::

    table: DetectionParams          # a ParamSet table of the pipeline
    description: threshold sweep    # stored with every set
    base: {method: components}      # shared by every set
    sampler: grid                   # grid (default): the cross product; or random
    seed: 0                         # random: the generator's seed
    count: 20                       # random: how many sets
    parameters:
      threshold: {range: {start: 0.3, stop: 0.8, step: 0.1}}   # stop excluded, as Python's range
      min_voxels: [10, 20, 40]                                   # a list
      stop: {min: 0.2, max: 0.6, num: 5}                         # grid: num points; random: uniform
      sphere_size: {min: 8, max: 20, type: int}                  # integers
      dust: {min: 1, max: 1000, log: true}                       # log-spaced / log-uniform

Several such blocks may be given as a list under ``sweeps:``.  Inserting a sweep only adds
parameter sets: the workers then compute the cross product of the parameter sets with
everything else the schema joins them with.  SABER's parameter files are read by
:mod:`~neuropipe.sweeps.saber`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from neuropipe.errors import BadInputError

SAMPLERS = ("grid", "random")
FIELDS = ("table", "parameters", "base", "sampler", "seed", "count", "description")


@dataclass
class Sweep:
    """One parameter table's sweep, as read from a sweep file."""

    table: str
    parameters: dict
    base: dict = field(default_factory=dict)
    sampler: str = "grid"
    seed: int = 0
    count: int | None = None
    description: str = ""

    def parameter_sets(self) -> list[dict]:
        """Return the parameter sets the sweep asks for (``base`` merged into each)."""
        if self.sampler == "grid":
            axes = {name: grid_values(name, spec) for name, spec in self.parameters.items()}
            return [dict(self.base, **dict(zip(axes, values))) for values in itertools.product(*axes.values())]
        rng = np.random.default_rng(self.seed)
        return [dict(self.base, **{name: random_value(name, spec, rng) for name, spec in self.parameters.items()})
                for _ in range(self.count)]


def read_sweeps(document) -> list[Sweep]:
    """Read the sweeps of a parsed sweep file (a dict, or a list of blocks under ``sweeps``).

    Raises
    ------
    BadInputError
        Naming the block and the field that is wrong.
    """
    if not isinstance(document, dict):
        raise BadInputError("a sweep file holds a mapping: table, parameters, and optionally base, sampler, ...")
    blocks = document["sweeps"] if "sweeps" in document else [document]
    if not isinstance(blocks, list) or not blocks:
        raise BadInputError("`sweeps:` must be a non-empty list of sweep blocks.")
    return [_read_block(block, number) for number, block in enumerate(blocks, 1)]


def _read_block(block, number: int) -> Sweep:
    where = f"sweep {number}"
    if not isinstance(block, dict):
        raise BadInputError(f"{where}: expected a mapping, got {type(block).__name__}.")
    unknown = sorted(set(block) - set(FIELDS))
    if unknown:
        raise BadInputError(f"{where}: unknown field(s) {', '.join(unknown)}.")
    if not isinstance(block.get("table"), str):
        raise BadInputError(f"{where}: `table` must name a parameter table, e.g. DetectionParams.")
    parameters = block.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise BadInputError(f"{where}: `parameters` must map at least one parameter to its values.")
    sampler = block.get("sampler", "grid")
    if sampler not in SAMPLERS:
        raise BadInputError(f"{where}: sampler {sampler!r} is not one of {', '.join(SAMPLERS)}.")
    count = block.get("count")
    if sampler == "random" and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise BadInputError(f"{where}: the random sampler needs `count`, a positive integer.")
    base = block.get("base") or {}
    if not isinstance(base, dict):
        raise BadInputError(f"{where}: `base` must be a mapping of parameter values.")
    sweep = Sweep(table=block["table"], parameters=parameters, base=base, sampler=sampler,
                  seed=int(block.get("seed", 0)), count=count, description=str(block.get("description", "")))
    for name, spec in parameters.items():  # every spec is checked before anything is inserted
        if sampler == "grid":
            grid_values(name, spec)
        else:
            random_value(name, spec, np.random.default_rng(0))
    return sweep


def grid_values(name: str, spec) -> list:
    """Return the values a parameter takes on a grid."""
    if isinstance(spec, list):
        if not spec:
            raise BadInputError(f"parameter {name}: the list of values is empty.")
        return list(spec)
    if not isinstance(spec, dict):
        return [spec]  # a single value
    if "range" in spec:
        return range_values(name, spec["range"])
    low, high, integer, log = _bounds(name, spec)
    num = spec.get("num", 5)
    if not isinstance(num, int) or num < 1:
        raise BadInputError(f"parameter {name}: `num` must be a positive integer, got {num!r}.")
    values = np.geomspace(low, high, num) if log else np.linspace(low, high, num)
    return sorted({int(round(v)) for v in values}) if integer else [round(float(v), 12) for v in values]


def random_value(name: str, spec, rng):
    """Return one random value of a parameter: a choice from a list or range, else uniform in [min, max]."""
    if isinstance(spec, list) or (isinstance(spec, dict) and "range" in spec):
        values = grid_values(name, spec)
        return values[int(rng.integers(len(values)))]
    if not isinstance(spec, dict):
        return spec
    low, high, integer, log = _bounds(name, spec)
    if integer:
        return int(rng.integers(int(low), int(high) + 1))
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
    return round(float(value), 12)


def range_values(name: str, spec) -> list:
    """Return ``start, start + step, ...`` below ``stop`` (floats rounded to the step's decimals)."""
    if not isinstance(spec, dict) or not {"start", "stop"} <= set(spec):
        raise BadInputError(f"parameter {name}: `range` needs start and stop (and step, default 1).")
    start, stop, step = spec["start"], spec["stop"], spec.get("step", 1)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, stop, step)) or step <= 0:
        raise BadInputError(f"parameter {name}: range start, stop and step must be numbers, step > 0.")
    count = math.ceil((stop - start) / step - 1e-9)
    if count < 1:
        raise BadInputError(f"parameter {name}: range {start}..{stop} by {step} holds no value.")
    if all(isinstance(v, int) for v in (start, stop, step)):
        return list(range(start, stop, step))
    return [round(start + index * step, 12) for index in range(count)]


def _bounds(name: str, spec: dict):
    if not {"min", "max"} <= set(spec):
        raise BadInputError(f"parameter {name}: give a list, a `range`, or `min` and `max`; got {sorted(spec)}.")
    low, high = spec["min"], spec["max"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
        raise BadInputError(f"parameter {name}: min and max must be numbers with min <= max.")
    integer = spec.get("type") == "int" or (isinstance(low, int) and isinstance(high, int) and "type" not in spec)
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise BadInputError(f"parameter {name}: a log scale needs min > 0.")
    return low, high, integer, log
