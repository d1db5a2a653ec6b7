"""Writing the pipeline module of a CWL file: ``neuropipe cwl import FILE.cwl [-o module.py]``.

The module is plain DataJoint, meant to be read and kept with the lab's code: per step a
parameter-set Lookup and a Computed table whose definition shows its parents (the upstream
steps' tables, the workflow's input table or ``Dataset``) and its columns (``File`` outputs as
``<object@neuropipe>``, values as columns, ``stdout``, ``stderr``, ``ran_in``, and ``score``
where the step has SABER's ``score_format``).  How each tool runs is read from the CWL file
when the module is imported, so editing a tool's command needs no new import; adding or
renaming inputs and outputs does.
"""

from __future__ import annotations

import keyword
import os
from pathlib import Path

from neuropipe.cwl.document import CWLError, Workflow, load
from neuropipe.database import STORE_NAME

RESERVED = ("stdout", "stderr", "ran_in", "score", "dataset")
COLUMN_TYPES = {"int": "int64", "long": "int64", "float": "float64", "double": "float64", "string": "varchar(1024)",
                "boolean": "bool", "enum": "varchar(255)", "array": "json"}


def camel(name: str) -> str:
    """Return a CWL id as a class name (``cell_detect`` -> ``CellDetect``)."""
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_") if part)


def module_text(cwl_path, module_path=None, schema_name: str | None = None) -> str:
    """Return the source of the pipeline module of the CWL file ``cwl_path``.

    Parameters
    ----------
    cwl_path : str or pathlib.Path
        A CWL ``CommandLineTool`` or ``Workflow`` (validated; see :func:`~neuropipe.cwl.document.load`).
    module_path : str or pathlib.Path, optional
        Where the module will be written: the CWL file is named relative to it.
    schema_name : str, optional
        The schema's name after the configured prefix (default: the CWL file's name).

    Raises
    ------
    CWLError
        An unsupported feature, or an output whose name a table column cannot take.
    """
    workflow = load(cwl_path)
    _check_names(workflow)
    folder = Path(module_path).resolve().parent if module_path else Path.cwd()
    relative = Path(os.path.relpath(workflow.path, folder)).as_posix()
    schema_name = schema_name or workflow.name
    inputs_table = f"{camel(workflow.name)}Input" if workflow.file_inputs else None
    blocks = [_header(workflow, relative, schema_name, inputs_table)]
    if inputs_table:
        columns = "\n".join(f"    {item.name}{' = null' if item.optional else ''} : <object@{STORE_NAME}>   "
                            f"# {item.type} input of the workflow" for item in workflow.file_inputs)
        blocks.append(f'''@schema
class {inputs_table}(dj.Manual):
    """The workflow's files per dataset; a row starts the workflow there."""

    definition = """
    -> Dataset
    ---
{columns}
    """''')
    for step in workflow.steps.values():
        blocks.append(_step_tables(step, inputs_table))
    return "\n\n\n".join(blocks) + "\n"


def _header(workflow: Workflow, relative: str, schema_name: str, inputs_table) -> str:
    steps = ", ".join(workflow.steps)
    start = (f"a row of {inputs_table} per dataset (its files)" if inputs_table else "a Dataset")
    return f'''"""Tables of the CWL file {workflow.path.name}: one per step ({steps}).

Written by ``neuropipe cwl import``.  To run it: insert {start},
a parameter set per step where a step has settings without defaults, then run workers
(``neuropipe worker --pipeline <this module>``) or ``neuropipe.populate()``.  Each step's
parameter table is keyed by a hash of its settings, so a sweep is more parameter sets
(``neuropipe sweep`` takes SABER's parameter files).  Import the CWL again after changing a
tool's inputs or outputs; its command is read from the CWL file at run time.
"""

from pathlib import Path

import datajoint as dj

import neuropipe
from neuropipe import cwl
from neuropipe.config import load_settings
from schemas.volume import Dataset  # noqa: F401 (the tables' definitions name it)

neuropipe.connect()
schema = dj.Schema(load_settings().schema_prefix + "{schema_name}")
WORKFLOW = cwl.load(Path(__file__).parent / "{relative}")'''


def _step_tables(step, inputs_table) -> str:
    name = camel(step.name)
    parents = [camel(upstream) for upstream in step.upstream]
    if step.reads_workflow_files:
        parents.append(inputs_table)
    if not parents:
        parents.append(inputs_table or "Dataset")
    lines = [f"-> {parent}" for parent in parents] + [f"-> {name}Params", "---"]
    for output in step.outputs:
        null = " = null" if output.optional else ""
        kind = f"<object@{STORE_NAME}>" if output.type in ("File", "Directory", "stdout", "stderr") else \
            COLUMN_TYPES[output.type]
        lines.append(f"{output.name}{null} : {kind}   # {output.type} output")
    if step.score_format:
        lines.append(f"score = null : float64   # SABER score_format {step.score_format!r}")
    lines += ["stdout = null : bytes   # the tool's standard output (its end)",
              "stderr = null : bytes   # the tool's standard error (its end)",
              "ran_in : varchar(255)   # container IMAGE, or host (and why)"]
    definition = "\n".join(f"    {line}" for line in lines)
    upstream = ", ".join(f'"{item}": {camel(item)}' for item in step.upstream)
    settings = ", ".join(item.name for item in step.settings) or "none"
    doc = (step.doc.strip().splitlines() or [f"Runs {step.tool.name}"])[0].rstrip(".")
    return f'''@schema
class {name}Params(cwl.StepParams, dj.Lookup):
    """Settings of step {step.name}, keyed by their hash: {settings}."""

    step = WORKFLOW.step("{step.name}")


@schema
class {name}(cwl.StepRun, dj.Computed):
    """{doc} (step {step.name} of {step.tool.name})."""

    step = WORKFLOW.step("{step.name}")
    params_table = {name}Params
    inputs_table = {inputs_table if step.reads_workflow_files else None}
    upstream = {{{upstream}}}
    definition = """
{definition}
    """'''


def _check_names(workflow: Workflow) -> None:
    for step in workflow.steps.values():
        names = [item.name for item in step.outputs]
        for name in names:
            if name in RESERVED or keyword.iskeyword(name) or not name.isidentifier() or name != name.lower():
                raise CWLError(f"{workflow.path.name}: step {step.name} output {name!r} cannot be a column "
                               f"(reserved: {', '.join(RESERVED)}; lower-case identifiers only); rename it")
        for item in step.settings:
            if not item.name.isidentifier():
                raise CWLError(f"{workflow.path.name}: step {step.name} input {item.name!r} is not a Python "
                               f"identifier; rename it")
