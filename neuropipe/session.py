"""The notebook's way in: :func:`connect` once, then :func:`populate` whenever there is work.

::

    import neuropipe
    neuropipe.connect()                        # as configured; binds the bundled pipeline
    neuropipe.populate({"dataset": "stack1"})  # the daemon's worker loop, here: progress, tallies

Both read the one configuration (``dj_local_conf.json``, environment variables over it), so
the schema prefix is never typed: what a notebook binds is what the workers serve.
"""

from __future__ import annotations

import sys
import time
from types import ModuleType

from neuropipe import steps
from neuropipe.config import Settings, load_settings
from neuropipe.database import connect as open_connection
from neuropipe.database import retrying_declaration
from neuropipe.pipeline import load_pipeline, pipeline_tables, upstream_first
from neuropipe.worker import TableTally, Worker, WorkerOptions, registry

#: The pipeline modules the latest :func:`connect` bound, which :func:`populate` serves by default.
_BOUND: list[ModuleType] = []
_PREFIX: list[str] = []  # the schema prefix connect() bound them under


def connect(settings: Settings | None = None, *, pipeline="schemas"):
    """Connect as configured and bind the pipeline and the worker registry under the configured prefix.

    Parameters
    ----------
    settings : Settings, optional
        Default: :func:`neuropipe.config.load_settings` (the configuration file and the
        environment); no server configured starts the embedded PostgreSQL.
    pipeline : str, module, list of them, or None
        The pipeline modules to bind (default: the bundled ``schemas``); a module with an
        ``activate(prefix)`` function is bound under the configured prefix, a plain module of
        tables that binds itself is imported.  None binds no pipeline.

    Returns
    -------
    datajoint.Connection
        The connection, also DataJoint's global one (``dj.conn()``).
    """
    settings = settings or load_settings()
    connection = open_connection(settings)
    retrying_declaration(registry.activate, settings.schema_prefix, connection)
    _BOUND[:] = load_pipeline(_as_list(pipeline), prefix=settings.schema_prefix)
    _PREFIX[:] = [settings.schema_prefix]
    return connection


def populate(*restrictions, pipeline=None, tables=None, progress: bool = True, **options) -> dict[str, TableTally]:
    """Fill the pipeline's tables in this process, with the same worker loop as ``neuropipe worker``.

    Jobs are claimed through the job tables like any worker's, so workers elsewhere may share
    the work; rows get their provenance records.  Interrupt the kernel once to stop after the
    current job, twice to stop at once.

    Parameters
    ----------
    *restrictions : dict, list of dicts, str or query
        Restrict every table's ``key_source`` (e.g. ``{"dataset": "stack1"}``); none: all keys.
    pipeline : str, module, list of them, optional
        Default: what :func:`connect` bound (which is called first if it was not), and the
        modules where steps were declared (:func:`neuropipe.steps.step`).
    tables : str, list of str or of table classes, optional
        Only these tables: class names or shell patterns (``"Membrane*"``), or the classes.
    progress : bool
        Print a line as tables fill (at most one every two seconds) and a summary at the end.
    **options
        :class:`~neuropipe.worker.WorkerOptions` fields; ``max_idle`` defaults to 0 (drain
        what can be made now, then return).

    Returns
    -------
    dict of str to TableTally
        Per table class name: rows made, skipped (made by another worker meanwhile) and
        failed, the seconds spent, and the errors.
    """
    if pipeline is not None:
        modules = load_pipeline(_as_list(pipeline), prefix=_PREFIX[0] if _PREFIX else load_settings().schema_prefix)
    else:
        if not _BOUND:
            connect()
        modules = [*_BOUND, *(module for module in steps.declared_modules() if module not in _BOUND)]
    chosen = _chosen_tables(modules, tables)
    options.setdefault("max_idle", 0)
    printer = Progress() if progress else None
    tally = Worker(chosen, WorkerOptions.create(restrictions=restrictions, **options), progress=printer).serve()
    if printer:
        printer.finish(tally)
    return tally


def _chosen_tables(modules, tables) -> list[type]:
    if tables is None or isinstance(tables, str):
        return pipeline_tables(modules, [tables] if tables else ())
    tables = list(tables)
    if all(isinstance(table, type) for table in tables):
        return upstream_first(tables)
    return pipeline_tables(modules, tables)


def _as_list(pipeline) -> list:
    if pipeline is None:
        return []
    return [pipeline] if isinstance(pipeline, (str, ModuleType)) else list(pipeline)


class Progress:
    """Prints what a worker made so far, one line at most every ``every`` seconds, and a summary at the end.

    Parameters
    ----------
    every : float
        Seconds between lines.
    stream : file, optional
        Default: standard output (a notebook cell's output).
    """

    def __init__(self, every: float = 2.0, stream=None):
        self.every = every
        self.stream = stream
        self.started = time.monotonic()
        self._last_time = self.started
        self._last_line = ""

    def __call__(self, tally: dict) -> None:
        """Print the counts so far, if they changed and ``every`` seconds passed since the last line."""
        now = time.monotonic()
        line = ", ".join(_counts(name, t) for name, t in tally.items() if t.made or t.skipped or t.failed)
        if line and line != self._last_line and now - self._last_time >= self.every:
            self._print(f"[{now - self.started:6.1f} s] {line}")
            self._last_time, self._last_line = now, line

    def finish(self, tally: dict) -> None:
        """Print one line per table that had work, with its time, and each table's first error."""
        busy = {name: t for name, t in tally.items() if t.made or t.skipped or t.failed}
        if not busy:
            self._print("nothing to make: every key is made, or waits for rows upstream")
            return
        self._print(f"done in {time.monotonic() - self.started:.1f} s:")
        width = max(len(name) for name in busy)
        for name, t in busy.items():
            self._print(f"  {name:<{width}}  {_counts(name, t, named=False)}  ({t.seconds:.1f} s)")
            for key, message in t.errors[:1]:
                self._print(f"  {'':<{width}}  error {key}: {message[:200]}")
        if any(t.failed for t in busy.values()):
            self._print("failed jobs keep their messages in the job tables: `neuropipe errors`")

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)


def _counts(name: str, tally: TableTally, named: bool = True) -> str:
    text = f"{tally.made} made" + (f", {tally.skipped} skipped" if tally.skipped else "")
    text += f", {tally.failed} failed" if tally.failed else ""
    return f"{name} {text}" if named else text
