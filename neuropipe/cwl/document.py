"""Reading a CWL file into what the tables need: steps, their inputs' origins, outputs, resources.

A CWL ``CommandLineTool`` becomes one step; a ``Workflow`` one step per entry of ``steps``.
Each step input is one of

- a **file** (``File`` or ``Directory``): read from an upstream step's row, where the workflow's
  ``in:`` connects it to that step's output, or from the workflow's input table (the first
  step's files, or any ``File`` input of the workflow);
- a **setting** (any other type): a parameter of the step's parameter-set Lookup, with the
  default that the step's ``in:``, the workflow's input or the tool gives, in that order;
- **fixed**: a tool input the workflow does not connect, or a ``File`` with a default (a
  tool's own script): passed as the tool declares it.

The file is validated by cwltool's loader (schema-salad: the same code that runs it, with
``file:line:column`` in its messages); the model is read with cwl-utils' typed parser, which
knows v1.0, v1.1 and v1.2.  What neuropipe cannot run as one job per step is refused here, by
name: ``ExpressionTool``, ``Operation``, ``InlineJavascriptRequirement``, ``scatter``, ``when``,
``valueFrom``, several sources for one input, nested workflows, and requirements declared on
the workflow or its steps (declare them on the tools: each tool runs on its own).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuropipe.errors import BadInputError, ConfigurationError

MISSING = object()
FILE_TYPES = ("File", "Directory")
SCALAR_TYPES = ("string", "int", "long", "float", "double", "boolean")
REFUSED_REQUIREMENTS = {"InlineJavascriptRequirement": "JavaScript expressions"}
CUDA = "CUDARequirement"
SABER = "saber"


class CWLError(ConfigurationError):
    """A CWL file neuropipe cannot import; the message names the file and the line or the feature."""


@dataclass(frozen=True)
class Input:
    """One input of a step's tool, with where its value comes from.

    Attributes
    ----------
    name : str
        The tool's input id.
    type : str
        Its CWL type without the optional mark: ``File``, ``int``, ``string``, ``enum``, ...
    optional : bool
        Whether the type admits ``null`` (``int?``).
    default : object
        Its default (``MISSING`` when it has none).
    source : tuple or None
        ``("step", step, output)``, ``("input", workflow_input)`` or None (a setting or fixed).
    symbols : tuple of str
        The choices of an ``enum``.
    """

    name: str
    type: str
    optional: bool = False
    default: Any = MISSING
    source: tuple | None = None
    symbols: tuple = ()

    @property
    def is_file(self) -> bool:
        """Whether it is a ``File`` or ``Directory``."""
        return self.type in FILE_TYPES


@dataclass(frozen=True)
class Output:
    """One output of a step's tool: ``File``/``Directory`` (stored in the object store) or a value."""

    name: str
    type: str
    optional: bool = False


@dataclass(frozen=True)
class Step:
    """One CWL step as neuropipe runs it: one job per upstream row and parameter set.

    Attributes
    ----------
    name : str
        The step's id in the workflow (a lone tool: its file's name).
    tool : pathlib.Path
        The ``CommandLineTool`` file cwltool runs.
    files : list of Input
        File inputs wired to an upstream step or to the workflow's input table.
    settings : list of Input
        Inputs that become parameters of the step's Lookup.
    outputs : list of Output
    resources : dict
        ``gpu``, ``memory_gb`` and ``cpus`` from ``ResourceRequirement`` and ``CUDARequirement``.
    container : str or None
        The ``DockerRequirement``'s image, run where a container engine is present.
    score_format : str or None
        SABER's ``hints: saber: score_format`` (e.g. ``"F1: {score}"``), on the step or the tool.
    doc : str
    """

    name: str
    tool: Path
    files: list = field(default_factory=list)
    settings: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    resources: dict = field(default_factory=dict)
    container: str | None = None
    score_format: str | None = None
    doc: str = ""

    @property
    def upstream(self) -> list[str]:
        """The steps whose outputs this step reads, in input order, each once."""
        return list(dict.fromkeys(item.source[1] for item in self.files if item.source[0] == "step"))

    @property
    def reads_workflow_files(self) -> bool:
        """Whether a file input comes from the workflow's input table."""
        return any(item.source[0] == "input" for item in self.files)

    def source_files(self) -> list[Path]:
        """Return the files whose content is this step's code: the tool and the files beside it that it names."""
        found = [self.tool]
        text = self.tool.read_text()
        for candidate in sorted(set(re.findall(r"[\w./-]+\.\w+", text))):
            path = (self.tool.parent / candidate).resolve()
            if path.is_file() and path != self.tool and path.suffix != ".cwl":
                found.append(path)
        return found


@dataclass(frozen=True)
class Workflow:
    """A CWL file read for neuropipe: its steps in an order where upstream comes first, and its inputs."""

    name: str
    path: Path
    steps: dict
    inputs: list = field(default_factory=list)

    @property
    def file_inputs(self) -> list[Input]:
        """The workflow's ``File``/``Directory`` inputs that some step reads: columns of its input table."""
        used = {item.source[1] for step in self.steps.values() for item in step.files if item.source[0] == "input"}
        return [item for item in self.inputs if item.name in used]

    def step(self, name: str) -> Step:
        """Return the step ``name``, or say which steps there are."""
        try:
            return self.steps[name]
        except KeyError:
            raise CWLError(f"{self.path.name} has no step {name!r}; its steps: {', '.join(self.steps)}") from None


@functools.lru_cache(maxsize=None)
def load(path) -> Workflow:
    """Read a CWL ``CommandLineTool`` or ``Workflow`` (validated, unsupported features refused).

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.cwl`` file.

    Raises
    ------
    CWLError
        A file that does not validate (with its line and column), or a feature neuropipe does
        not run, named.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise CWLError(f"no CWL file at {path}")
    validate(path)
    document = _parsed(path)
    kind = type(document).__name__
    if kind == "CommandLineTool":
        step = _tool_step(path.stem.replace("-", "_"), path, document, {}, None)
        return Workflow(name=step.name, path=path, steps={step.name: step}, inputs=list(step.files))
    if kind != "Workflow":
        raise CWLError(f"{path.name}: a {kind} cannot run as a table; neuropipe runs CommandLineTools and "
                       f"Workflows of them")
    return _workflow(path, document)


def validate(path: Path) -> None:
    """Validate ``path`` with cwltool's loader; raise CWLError with its ``file:line:column`` message."""
    from cwltool.context import LoadingContext
    from cwltool.load_tool import fetch_document, resolve_and_validate_document
    from schema_salad.exceptions import ValidationException

    try:
        with quiet("cwltool", "salad"):  # their warnings (an unknown hint such as saber) are not ours to print
            context, document, uri = fetch_document(str(path), LoadingContext())
            resolve_and_validate_document(context, document, uri)
    except ValidationException as error:
        raise CWLError(f"{path.name} is not valid CWL:\n{_readable(str(error))}") from None


@contextlib.contextmanager
def quiet(*names: str, level: int = logging.ERROR):
    """Raise the level of the loggers ``names`` to ``level`` while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, previous in zip(loggers, before):
            logger.setLevel(previous)


def _readable(message: str) -> str:
    """Return schema-salad's message one entry per line, each naming its file by name, not by relative path."""
    entries = []
    for line in message.splitlines():
        located = re.match(r"^\S*?([^/\s]+\.cwl:\d+:\d+:)(.*)$", line)
        if located or not entries:
            entries.append(" ".join(located.groups()) if located else line.strip())
        else:
            entries[-1] += " " + line.strip()
    return "\n".join(" ".join(entry.split()) for entry in entries)


def _parsed(path: Path):
    from cwl_utils.parser import load_document_by_uri

    document = load_document_by_uri(path)
    _refuse_features(document, path.name)
    return document


def _workflow(path: Path, document) -> Workflow:
    where = path.name
    for entry in _entries(document.requirements) + _entries(document.hints):
        kind = _class_of(entry)
        if not kind.endswith("FeatureRequirement") and kind != SABER:
            raise CWLError(f"{where}: the workflow declares {kind}, which neuropipe does not apply to its steps; "
                           f"declare it on the tools (neuropipe runs each step's tool on its own)")
    inputs = {_short(item.id): _input(item, where) for item in document.inputs}
    steps = {}
    for entry in document.steps:
        name = _short(entry.id)
        tool_path, tool = _step_tool(entry, name, where)
        wiring = {_short(item.id): (_source(item, inputs, steps, where, name), item.default) for item in entry.in_}
        steps[name] = _tool_step(name, tool_path, tool, wiring, _saber_hints(entry, name, tool_path, where)
                                 .get("score_format"), inputs, steps)
    return Workflow(name=path.stem.replace("-", "_"), path=path, steps=steps, inputs=list(inputs.values()))


def _step_tool(entry, name: str, where: str) -> tuple:
    """Return the path and the parsed tool of a workflow step, refusing what neuropipe does not run."""
    for feature, what in (("scatter", "scatter"), ("when", "conditional steps (when)")):
        if getattr(entry, feature, None):
            raise CWLError(f"{where}: step {name} uses {what}, which neuropipe does not run; make one step per "
                           f"value (a parameter set each) instead")
    if not isinstance(entry.run, str):
        raise CWLError(f"{where}: step {name} defines its tool inline; put it in a file of its own (run: tool.cwl)")
    tool_path = Path(entry.run.removeprefix("file://")).resolve()
    tool = _parsed(tool_path)
    if type(tool).__name__ != "CommandLineTool":
        raise CWLError(f"{where}: step {name} runs a {type(tool).__name__} ({tool_path.name}); neuropipe runs "
                       f"CommandLineTools (nested workflows and ExpressionTools are not supported)")
    return tool_path, tool


def _saber_hints(entry, name: str, tool_path: Path, where: str) -> dict:
    """Return a step's ``saber`` hints; any other step-level requirement or hint is refused."""
    hints = {}
    for item in _entries(entry.requirements) + _entries(entry.hints):
        if _class_of(item) != SABER:
            raise CWLError(f"{where}: step {name} declares {_class_of(item)}; declare it on the tool {tool_path.name}")
        hints.update({key: value for key, value in item.items() if key != "class"})
    return hints


def _source(item, inputs: dict, steps: dict, where: str, step: str):
    """Return where a step input's value comes from (see :class:`Input`), refusing expressions and merges."""
    port = _short(item.id)
    if getattr(item, "valueFrom", None) is not None:
        raise CWLError(f"{where}: step {step} input {port} uses valueFrom, which needs expressions; compute it in "
                       f"the tool")
    source = item.source
    if isinstance(source, list):
        if len(source) != 1:
            raise CWLError(f"{where}: step {step} input {port} merges {len(source)} sources "
                           f"(MultipleInputFeatureRequirement), which neuropipe does not run")
        source = source[0]
    return _origin(source, inputs, steps, where, step, port)


def _origin(source, inputs: dict, steps: dict, where: str, step: str, port: str):
    if source is None:
        return None
    reference = source.split("#", 1)[-1]
    if "/" in reference:
        upstream, output = reference.rsplit("/", 1)
        upstream = upstream.rsplit("/", 1)[-1]
        if upstream not in steps:
            raise CWLError(f"{where}: step {step} input {port} reads {upstream}/{output}, a step not declared "
                           f"before it (list the steps upstream first)")
        return ("step", upstream, output)
    if reference not in inputs:
        raise CWLError(f"{where}: step {step} input {port} reads {reference!r}, which the workflow does not declare")
    return ("input", reference)


def _tool_step(name: str, path: Path, tool, wiring: dict, score_format, workflow_inputs=None, steps=None) -> Step:
    where = path.name
    files, settings = [], []
    lone = workflow_inputs is None
    for item in tool.inputs:
        declared = _input(item, where)
        if not lone and declared.name not in wiring:
            continue  # not connected: the tool's own default applies
        origin, step_default = wiring.get(declared.name, (None, None))
        default = declared.default
        if origin and origin[0] == "input" and workflow_inputs[origin[1]].default is not MISSING:
            default = workflow_inputs[origin[1]].default
        if step_default is not None:
            default = step_default
        if declared.is_file:
            if origin is None and default is not MISSING:
                continue  # the tool's own file (a script): passed as declared
            if origin is None:
                origin = ("input", declared.name)  # a lone tool: its files come from its input table
            if origin[0] == "step":
                _check_upstream_output(origin, steps, where, name, declared.name)
            files.append(Input(declared.name, declared.type, declared.optional, MISSING, origin))
        elif origin is not None and origin[0] == "step":
            raise CWLError(f"{where}: step {name} input {declared.name} ({declared.type}) reads step output "
                           f"{origin[1]}/{origin[2]}; neuropipe connects steps by File and Directory outputs")
        else:
            settings.append(Input(declared.name, declared.type, declared.optional, default, None, declared.symbols))
    hints = _tool_hints(tool, where)
    return Step(name=name, tool=path, files=files, settings=settings,
                outputs=[_output(item, where) for item in tool.outputs], resources=hints["resources"],
                container=hints["container"], score_format=score_format or hints["score_format"],
                doc=str(getattr(tool, "doc", None) or getattr(tool, "label", None) or ""))


def _check_upstream_output(origin, steps: dict, where: str, step: str, port: str) -> None:
    outputs = {output.name: output for output in steps[origin[1]].outputs}
    output = outputs.get(origin[2])
    if output is None:
        raise CWLError(f"{where}: step {step} input {port} reads {origin[1]}/{origin[2]}, but {origin[1]} has no "
                       f"output {origin[2]} (its outputs: {', '.join(outputs) or 'none'})")
    if output.type not in FILE_TYPES + ("stdout", "stderr"):
        raise CWLError(f"{where}: step {step} input {port} reads {origin[1]}/{origin[2]} ({output.type}); neuropipe "
                       f"connects steps by File and Directory outputs")


def _tool_hints(tool, where: str) -> dict:
    found = {"resources": {}, "container": None, "score_format": None}
    for feature in ("requirements", "hints"):
        for entry in _entries(getattr(tool, feature, None)):
            kind = _class_of(entry)
            if kind == "ResourceRequirement":
                ram = getattr(entry, "ramMin", None) or getattr(entry, "ramMax", None)
                cores = getattr(entry, "coresMin", None) or getattr(entry, "coresMax", None)
                if isinstance(ram, (int, float)):
                    found["resources"]["memory_gb"] = round(float(ram) / 1024, 3)  # CWL counts mebibytes
                if isinstance(cores, (int, float)):
                    found["resources"]["cpus"] = int(cores)
            elif kind.endswith(CUDA):
                found["resources"]["gpu"] = True
            elif kind == "DockerRequirement":
                found["container"] = getattr(entry, "dockerPull", None) or getattr(entry, "dockerImageId", None)
            elif kind == SABER and isinstance(entry, dict):
                found["score_format"] = entry.get("score_format")
    return found


def _input(item, where: str) -> Input:
    name = _short(item.id)
    kind, optional, symbols = _type(item.type_, where, name)
    default = MISSING if item.default is None else _plain(item.default)
    return Input(name, kind, optional, default, None, symbols)


def _output(item, where: str) -> Output:
    name = _short(item.id)
    kind, optional, _ = _type(item.type_, where, name)
    return Output(name, kind, optional)


def _type(declared, where: str, name: str) -> tuple[str, bool, tuple]:
    """Return (type name, optional, enum symbols) of a CWL type."""
    optional = False
    if isinstance(declared, list):
        kinds = [k for k in declared if k != "null"]
        optional = len(kinds) < len(declared)
        if len(kinds) != 1:
            raise CWLError(f"{where}: {name} has the union type {declared}; neuropipe stores one type per column")
        declared = kinds[0]
    if isinstance(declared, str):
        short = declared.rsplit("#", 1)[-1]
        if short in FILE_TYPES + SCALAR_TYPES or short in ("stdout", "stderr"):
            return short, optional, ()
        raise CWLError(f"{where}: {name} has type {short}, which neuropipe does not store")
    kind = getattr(declared, "type_", None)
    if kind == "enum":
        return "enum", optional, tuple(_short(symbol).rsplit("/", 1)[-1] for symbol in declared.symbols)
    if kind == "array":
        return "array", optional, ()
    raise CWLError(f"{where}: {name} has a {kind or type(declared).__name__} type, which neuropipe does not store")


def _refuse_features(document, where: str) -> None:
    kind = type(document).__name__
    if kind in ("ExpressionTool", "Operation"):
        raise CWLError(f"{where}: an {kind} is not supported (neuropipe runs CommandLineTools as tables)")
    for feature in ("requirements", "hints"):
        for entry in _entries(getattr(document, feature, None)):
            refused = REFUSED_REQUIREMENTS.get(_class_of(entry))
            if refused:
                raise CWLError(f"{where}: {_class_of(entry)} is not supported ({refused} are not run by neuropipe; "
                               f"compute the value in the tool)")


def _entries(value) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        return [dict(entry, **{"class": kind}) if isinstance(entry, dict) else entry for kind, entry in value.items()]
    return list(value)


def _class_of(entry) -> str:
    if isinstance(entry, dict):
        return str(entry.get("class", "")).rsplit("#", 1)[-1].rsplit(":", 1)[-1]
    return type(entry).__name__


def _short(identifier: str) -> str:
    """Return the last part of a CWL id (``file:///x.cwl#step/input`` -> ``input``)."""
    return str(identifier).split("#", 1)[-1].rsplit("/", 1)[-1]


def _plain(value):
    """Return a default as plain JSON-ready data (cwl-utils may give its own objects)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "save"):
        return value.save()
    raise BadInputError(f"cannot read the default {value!r}")
