"""The two tables of a CWL step: its settings (a parameter-set Lookup) and its runs (a Computed table).

A module written by ``neuropipe cwl import`` declares, per step::

    @schema
    class CellDetectParams(cwl.StepParams, dj.Lookup):
        step = WORKFLOW.step("cell_detect")

    @schema
    class CellDetect(cwl.StepRun, dj.Computed):
        step = WORKFLOW.step("cell_detect")
        definition = \"\"\"
        -> BossPull
        -> CellDetectParams
        ---
        cells : <object@neuropipe>     # File output
        stdout = null : bytes
        stderr = null : bytes
        ran_in : varchar(255)
        \"\"\"

:class:`StepRun`'s ``make()`` reads the step's files from the upstream rows (or the workflow's
input table), its settings from the parameter set, runs the tool (:mod:`~neuropipe.cwl.runner`)
and inserts one row: ``File`` outputs copied into the object store, values as columns, the
tool's stdout and stderr, SABER's ``score`` where the step has a ``score_format``.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from pathlib import Path

from neuropipe.cwl import runner
from neuropipe.cwl.document import MISSING, Step
from neuropipe.errors import BadInputError
from neuropipe.params import ParamSet, one_of, params_hash

TYPE_RULES = {
    "int": (lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer"),
    "long": (lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer"),
    "float": (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
    "double": (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
    "string": (lambda value: isinstance(value, str), "a string"),
    "boolean": (lambda value: isinstance(value, bool), "true or false"),
    "array": (lambda value: isinstance(value, list), "a list"),
}


def settings_signature(step: Step):
    """Return a function whose keyword-only parameters are the step's settings with their CWL defaults.

    It is the ``kernel`` of the step's :class:`~neuropipe.params.ParamSet`: parameter checks and
    defaults read signatures.  An optional setting without a default defaults to None (left out).
    """
    def settings(**values):
        return values

    parameters = []
    for item in step.settings:
        default = item.default if item.default is not MISSING else (None if item.optional else inspect.Parameter.empty)
        parameters.append(inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=default))
    settings.__signature__ = inspect.Signature(parameters)
    settings.__name__ = settings.__qualname__ = f"{step.name}_settings"
    settings.__module__ = f"CWL {step.tool.name}"
    return settings


class StepParams(ParamSet):
    """Mixin of a CWL step's parameter-set Lookup: its settings, keyed by their hash (see the module).

    A subclass sets ``step``; its key is ``<step>_id``, its parameters the step's settings, each
    checked against its CWL type at insert.  It holds the tool's defaults from the start where
    every required setting has one.
    """

    step: Step = None

    def __init_subclass__(cls, **kwargs):
        """Derive the key, the checks and the first parameter set from ``step``."""
        step = vars(cls).get("step")
        if step is not None:
            cls.key_name = f"{step.name}_id"
            cls.kernel = staticmethod(settings_signature(step))
            cls.rules = {item.name: one_of(item.symbols) if item.type == "enum" else TYPE_RULES[item.type]
                         for item in step.settings if item.type in TYPE_RULES or item.type == "enum"}
            if not _required(step):
                cls.contents = [{cls.key_name: params_hash({}), "params": {}, "description": "the tool's defaults"}]
        super().__init_subclass__(**kwargs)

    @classmethod
    def insert_params(cls, params: dict, description: str = "") -> dict:
        """Validate and insert a parameter set (every required setting given); return its key."""
        missing = [name for name in _required(cls.step) if params.get(name) is None]
        if missing:
            raise BadInputError(f"{cls.__name__}: step {cls.step.name} needs {', '.join(missing)} (no default in "
                                f"the CWL); give them in the parameter set")
        return super().insert_params(params, description)


class StepRun:
    """Mixin of a CWL step's Computed table: ``make()`` runs the tool for one key (see the module).

    A subclass sets ``step``, ``params_table``, ``upstream`` (step name to its table, for the
    files read from earlier steps) and ``inputs_table`` (the workflow's input table, or None).
    """

    step: Step = None
    params_table = None
    inputs_table = None
    upstream: dict = {}

    def __init_subclass__(cls, **kwargs):
        """Take the step's resources (what a worker needs) and code files (its provenance hash) from ``step``."""
        super().__init_subclass__(**kwargs)
        step = vars(cls).get("step")
        if step is not None:
            cls.resources = dict(step.resources)
            cls.source_files = tuple(step.source_files())

    def make(self, key):
        """Fetch the step's files and settings, run its tool, insert what it left."""
        scratch = Path(tempfile.mkdtemp(prefix=f"neuropipe-{self.step.name}-"))
        try:
            files = {item.name: self._file(item, key, scratch) for item in self.step.files}
            settings = self.params_table().fetch_effective(key)
            finished = runner.run_step(self.step, files, settings, scratch)
            self.insert1({**key, **self._row(finished)})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _file(self, item, key: dict, scratch: Path):
        if item.source[0] == "step":
            table, column = self.upstream[item.source[1]], item.source[2]
        else:
            table, column = self.inputs_table, item.source[1]
        stored = (table & key).fetch1(column)
        if stored is None:
            if item.optional:
                return None
            raise BadInputError(f"step {self.step.name}: input {item.name} needs {table.__name__}.{column}, "
                                f"which is empty for {key}")
        return local_path(stored, scratch / "in" / item.name)

    def _row(self, finished) -> dict:
        row = {"stdout": finished.stdout, "stderr": finished.stderr, "ran_in": finished.ran_in[:255]}
        if self.step.score_format:
            row["score"] = finished.score
        for output in self.step.outputs:
            value = finished.outputs.get(output.name)
            if value is None and not output.optional:
                raise runner.ToolFailed(f"step {self.step.name}: the tool left no output {output.name}")
            row[output.name] = str(value) if isinstance(value, Path) else value
        return row


def local_path(stored, destination: Path) -> Path:
    """Return a local path of a stored ``<object@>`` file: itself in a file store, else a download."""
    full = str(stored.full_path)
    if "://" not in full and Path(full).exists():
        return Path(full)
    destination.mkdir(parents=True, exist_ok=True)
    return Path(stored.download(destination))


def _required(step: Step) -> list[str]:
    return [item.name for item in step.settings if item.default is MISSING and not item.optional]
