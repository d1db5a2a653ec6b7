"""Running one CWL step for one job through cwltool, the CWL reference runner.

cwltool runs the tool in this process's Python (no second interpreter to start): it builds the
command line from the tool's bindings, stages the inputs, runs the command, in its container
where the tool asks for one (``DockerRequirement``) and a container engine answers, else on the
host, and collects the outputs by their globs.  neuropipe adds what the table needs: the
tool's standard output and error kept (a tool that does not capture them itself has them
written to files of the job's scratch folder), SABER's ``score_format`` read from them, and a
failure that names the tool, its exit status and the end of its standard error.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from neuropipe.cwl.document import Step, quiet
from neuropipe.errors import NeuropipeError, TransientError

logger = logging.getLogger(__name__)

CAPTURED = {"stdout": "neuropipe.stdout", "stderr": "neuropipe.stderr"}
LOG_LIMIT = 1_000_000  # bytes of stdout and of stderr kept with a row (the end, where a tool says how it ended)
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class ToolFailed(NeuropipeError):
    """A CWL tool that exited with a failure status or left a declared output missing."""


@dataclass
class Finished:
    """What one successful run of a step's tool left.

    Attributes
    ----------
    outputs : dict
        Output name to a local path (``File``, ``Directory``, ``stdout``) or a value.
    stdout, stderr : bytes
        The tool's standard output and error (their last ``LOG_LIMIT`` bytes).
    score : float or None
        The number ``score_format`` found, where the step has one.
    ran_in : str
        Where the tool ran: ``container IMAGE`` or ``host`` (and why, where a container was asked for).
    """

    outputs: dict
    stdout: bytes
    stderr: bytes
    score: float | None
    ran_in: str


def run_step(step: Step, files: dict, settings: dict, scratch: Path) -> Finished:
    """Run ``step``'s tool once in ``scratch`` and return what it left.

    Parameters
    ----------
    step : Step
    files : dict
        Input name to a local path (None for an optional file not given).
    settings : dict
        Input name to value (None: left out, the tool's default applies).
    scratch : pathlib.Path
        An empty folder of this job's; the caller removes it.

    Raises
    ------
    ToolFailed
        The tool failed (its exit status and stderr in the message) or an output is missing.
    TransientError
        The tool exited with one of its ``temporaryFailCodes``.
    """
    from cwltool.context import RuntimeContext
    from cwltool.executors import SingleJobExecutor

    cwl_logger = _quiet_logger()
    tool, streams = _loaded(step.tool)
    engine = container_engine() if step.container else None
    ran_in = (f"container {step.container} ({engine})" if engine else
              f"host (no container engine answered; {step.container} not used)" if step.container else "host")
    if step.container and not engine:
        logger.warning("step %s: %s asks for the container %s, but no container engine answered; running it on "
                       "this host", step.name, step.tool.name, step.container)
    for folder in ("out", "work", "tmp"):
        (scratch / folder).mkdir(parents=True, exist_ok=True)
    job = {name: _location(path) for name, path in files.items() if path is not None}
    job.update({name: value for name, value in settings.items() if value is not None})
    context = RuntimeContext({"outdir": str(scratch / "out"), "tmp_outdir_prefix": f"{scratch / 'work'}/",
                              "tmpdir_prefix": f"{scratch / 'tmp'}/", "basedir": str(scratch),
                              "use_container": bool(engine), "rm_tmpdir": False, "move_outputs": "move",
                              "podman": engine == "podman"})
    heard = _Heard()
    cwl_logger.addHandler(heard)
    try:
        outputs, status = SingleJobExecutor()(tool, job, context, logger=cwl_logger)
    except Exception as error:  # cwltool's own refusal of the job (a bad input value)
        raise ToolFailed(f"step {step.name}: cwltool refused the job for {step.tool.name}: {error}") from None
    finally:
        cwl_logger.removeHandler(heard)
    stdout, stderr = (_captured(scratch, streams[stream]) for stream in ("stdout", "stderr"))
    if status != "success":
        why = "; ".join(heard.messages[-3:]) or status
        message = (f"step {step.name}: {step.tool.name} failed ({status}): {why}\n"
                   f"--- its stderr ends:\n{_tail(stderr)}")
        raise (TransientError if status == "temporaryFail" else ToolFailed)(message)
    found = {name: _value(value) for name, value in (outputs or {}).items()}
    return Finished(found, stdout, stderr, score_of(step, stdout, stderr), ran_in)


def score_of(step: Step, stdout: bytes, stderr: bytes) -> float | None:
    """Return the last number SABER's ``score_format`` (``"F1: {score}"``) finds in the tool's output.

    Raises
    ------
    ToolFailed
        The step has a ``score_format`` and its output holds no match.
    """
    if not step.score_format:
        return None
    pattern = score_pattern(step.score_format)
    for stream in (stdout, stderr):
        found = pattern.findall(stream.decode(errors="replace"))
        if found:
            return float(found[-1])
    raise ToolFailed(f"step {step.name}: its score_format {step.score_format!r} matched nothing the tool printed; "
                     f"stdout ends:\n{_tail(stdout)}")


def score_pattern(score_format: str) -> re.Pattern:
    """Return the regular expression of a SABER score format: ``{score}`` a number, other ``{fields}`` any text."""
    if "{score}" not in score_format:
        raise ToolFailed(f"score_format {score_format!r} names no {{score}} field")
    pieces = re.split(r"(\{\w*\})", score_format)
    regex = "".join(f"({NUMBER})" if piece == "{score}" else ".*?" if re.fullmatch(r"\{\w*\}", piece)
                    else re.escape(piece) for piece in pieces)
    return re.compile(regex)


@functools.lru_cache(maxsize=None)
def container_engine() -> str | None:
    """Return the container engine that answers here (docker, podman), or None."""
    for engine in ("docker", "podman"):
        if shutil.which(engine):
            try:
                if subprocess.run([engine, "info"], capture_output=True, timeout=20).returncode == 0:
                    return engine
            except (OSError, subprocess.TimeoutExpired):
                continue
    return None


@functools.lru_cache(maxsize=None)
def _loaded(path: Path) -> tuple:
    """Return cwltool's process object for a tool and the file names of its stdout and stderr.

    Where the tool does not capture a stream itself, it is captured to a file neuropipe names.
    """
    from cwltool.context import LoadingContext
    from cwltool.load_tool import fetch_document, make_tool, resolve_and_validate_document
    from cwltool.workflow import default_make_tool

    context = LoadingContext()
    context.construct_tool_object = default_make_tool
    with quiet("cwltool", "salad"):
        context, document, uri = fetch_document(str(path), context)
        for stream, name in CAPTURED.items():
            document.setdefault(stream, name)
        streams = {stream: str(document[stream]) for stream in CAPTURED}
        context, uri = resolve_and_validate_document(context, document, uri)
        return make_tool(uri, context), streams


@functools.lru_cache(maxsize=None)
def _quiet_logger() -> logging.Logger:
    """Return cwltool's logger at WARNING, its own console handler removed: its messages reach neuropipe's log once."""
    from cwltool.loghandler import _logger, defaultStreamHandler

    _logger.removeHandler(defaultStreamHandler)
    _logger.setLevel(logging.WARNING)
    return _logger


class _Heard(logging.Handler):
    """The warnings and errors cwltool logs during one run (why a job failed)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(" ".join(record.getMessage().split()))


def _location(path) -> dict:
    path = Path(path)
    return {"class": "Directory" if path.is_dir() else "File", "location": path.resolve().as_uri()}


def _captured(scratch: Path, name: str) -> bytes:
    """Return a captured stream: the file ``name`` in the tool's working folder, or among the outputs."""
    if "$(" in name or "${" in name:  # named by an expression: not found without evaluating it
        return b""
    for path in [*sorted((scratch / "work").glob(f"*/{name}")), scratch / "out" / name]:
        if path.is_file():
            return _read_end(path)
    return b""


def _read_end(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - LOG_LIMIT))
        return handle.read()


def _value(value):
    if isinstance(value, dict) and value.get("class") in ("File", "Directory"):
        return Path(value["location"].removeprefix("file://"))
    return value


def _tail(data: bytes, lines: int = 20) -> str:
    return "\n".join(data.decode(errors="replace").rstrip().splitlines()[-lines:]) or "(empty)"
