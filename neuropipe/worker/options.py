"""What a worker is told (:class:`WorkerOptions`) and what it reports (:class:`TableTally`).

The options are declared here once: their defaults and help texts give the flags of
``neuropipe worker``, the keywords of :func:`neuropipe.populate` and
:func:`~neuropipe.worker.run_worker`, and the argv of the worker processes a supervisor starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class TableTally:
    """What one worker did on one table."""

    table: str
    made: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)


def _option(default, help: str, metavar: str | None = None):
    """Declare a worker option: its default, and the help its command-line flag shows."""
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker behaves: declared once, for :class:`Worker`, ``neuropipe worker`` and :func:`neuropipe.populate`.

    Each field is a keyword of :func:`neuropipe.populate` and :func:`run_worker` and a flag
    of ``neuropipe worker`` (``max_idle`` is ``--max-idle``; the boolean ``provenance`` is
    ``--no-provenance``), with the help text given here; :meth:`argv` gives the flags back,
    for worker processes a supervisor starts.

    Attributes
    ----------
    heartbeat : float
        Seconds between heartbeats; a worker silent for twice that is presumed dead.
    poll : float
        Seconds between looks for work when there is none.
    max_idle : float or None
        Stop after this long without work (0: drain once); None serves forever.
    max_jobs : int or None
        Stop after this many jobs.
    max_retries : int
        Further attempts of a job after a transient failure.
    retry_backoff : float
        Seconds before the first retry of a transient failure; doubled for each further one.
    batch : int or None
        Jobs made per transaction.  None (the default) chooses from measured job durations:
        one at a time, each visible as ``reserved`` while it runs, until jobs prove shorter
        than 0.1 s, then batches of about 0.5 s of work committed once
        (:meth:`~neuropipe.worker.jobs.JobQueue.run_batch`).  1 always claims jobs one by one.
    reconnect_cap : float
        Longest wait, in seconds, between attempts to reach a database that is down
        (the waits start at 1 s and double).
    wait_for_database : float
        Seconds a starting worker keeps trying to reach its database before giving up.
    provenance : bool
        Record each row's provenance (code, settings, worker, time, CPU, memory) in the
        table's sidecar (:mod:`neuropipe.provenance`); on by default.
    restrictions : tuple
        Restrictions of every table's ``key_source`` (not a flag: given in Python only).
    """

    heartbeat: float = _option(10.0, "seconds between heartbeats; silent for twice that = presumed dead (default 10)")
    poll: float = _option(5.0, "seconds between looks for new work (default 5)")
    max_idle: float | None = _option(None, "exit 0 after this many seconds without work (0: drain once)")
    max_jobs: int | None = _option(None, "exit after this many jobs")
    max_retries: int = _option(3, "retries of a transiently failed job (default 3)")
    retry_backoff: float = _option(2.0, "seconds before the first retry of a transient failure, doubled for "
                                        "each further one (default 2)")
    batch: int | None = _option(None, "jobs per transaction (default: from measured durations: 1 for jobs over "
                                      "0.1 s, batches of about 0.5 s of work for shorter ones)")
    reconnect_cap: float = _option(30.0, "longest wait in seconds between attempts to reach a database that is "
                                         "down (default 30)")
    wait_for_database: float = _option(300.0, "at start, keep trying to reach the database this long (default 300)",
                                       metavar="SECONDS")
    provenance: bool = _option(True, "do not record each row's provenance (code, settings, time, memory)")
    restrictions: tuple = field(default=(), metadata={"flag": False})

    def __post_init__(self):
        object.__setattr__(self, "restrictions", tuple(self.restrictions))

    @classmethod
    def flags(cls) -> list:
        """Return the fields that are command-line flags, in declaration order."""
        return [option for option in fields(cls) if option.metadata.get("flag", True)]

    @classmethod
    def create(cls, **options) -> WorkerOptions:
        """Return options from keywords, naming a keyword that is none (e.g. a misspelt ``max_idel``)."""
        known = {option.name for option in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown worker option(s) {', '.join(unknown)}; the options are "
                            f"{', '.join(sorted(known))}")
        return cls(**options)

    def argv(self) -> list[str]:
        """Return the ``neuropipe worker`` flags that give these options (those that differ from the defaults)."""
        argv = []
        for option in self.flags():
            value = getattr(self, option.name)
            if value == option.default:
                continue
            flag = "--" + option.name.replace("_", "-")
            argv.append(f"--no-{flag[2:]}" if value is False else f"{flag}={value}")
        return argv
