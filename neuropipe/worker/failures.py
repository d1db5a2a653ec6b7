"""Which failures deserve another try, and when.

Transient failures (a lost database connection, an unreachable or throttled object store, a
timeout, CUDA out of memory, a killed child process) may succeed on another attempt, so a worker re-queues the job with
exponential backoff.  Everything else (bad input, bad parameters, a bug) would fail the same
way again, so it goes straight to ``error`` with its message.  Raising
:class:`~neuropipe.errors.TransientError` asks for another attempt.  A table may name further
transient exception types in a class attribute ``transient_errors``.
"""

from __future__ import annotations

import logging
import time

from neuropipe import store
from neuropipe.errors import BadInputError, backoff_seconds

logger = logging.getLogger(__name__)

TRANSIENT_NAMES = frozenset({
    "LostConnectionError",  # datajoint
    "OperationalError",  # pymysql, psycopg2: server gone, connection reset, lock wait timeout
    "InterfaceError",  # a closed connection
    "OutOfMemoryError",  # torch.cuda.OutOfMemoryError
    "TimeoutError",
    "ConnectionError",
    "BrokenPipeError",
    "ChildProcessError",
    "BrokenProcessPool",
    "TransientError",
})


# Words of server answers that no retry changes, whatever the exception's class says
# (pymysql and psycopg2 raise OperationalError for a wrong password too).
PERMANENT_TEXT = ("access denied", "authentication failed", "permission denied")


def is_transient(error: BaseException, table=None) -> bool:
    """Return True when ``error`` (or its cause) is worth retrying.

    The chain of causes is read from ``error`` down; the first that decides, decides: a
    :class:`~neuropipe.errors.BadInputError` or a server's refusal is never retried, even
    when raised while handling a timeout.

    Parameters
    ----------
    error : BaseException
        What ``make()`` raised.
    table : table class, optional
        Its ``transient_errors`` attribute, a tuple of exception types, extends the list.
    """
    extra = tuple(getattr(table, "transient_errors", ()))
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, BadInputError) or any(text in str(error).lower() for text in PERMANENT_TEXT):
            return False  # bad input is bad however it came about: a timeout it was raised after changes nothing
        if isinstance(error, extra) or any(cls.__name__ in TRANSIENT_NAMES for cls in type(error).__mro__):
            return True
        if store.is_transient(error):  # the object store unreachable, throttled or failing
            return True
        if "out of memory" in str(error).lower() and "cuda" in str(error).lower():
            return True
        error = error.__cause__ or error.__context__
    return False


def describe(error: BaseException) -> str:
    """Return ``'Type: message'`` on one line, for logs and the job table."""
    text = " ".join(str(error).split())
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


def keep_trying(call, *, patience: float, cap: float, what: str):
    """Call ``call()`` until it does not fail transiently, for up to ``patience`` seconds; return its result.

    Used where a worker starts: a daemon launched while its database is still coming up
    (a cluster booting, a server restarting) waits for it instead of exiting.  The waits
    start at 1 s and double up to ``cap``; each attempt logs one line.

    Raises
    ------
    Exception
        The last error, when it is not transient or patience ran out.
    """
    deadline, attempt = time.monotonic() + patience, 0
    while True:
        try:
            return call()
        except Exception as error:
            attempt += 1
            wait = min(cap, backoff_seconds(attempt, base=1.0, cap=cap))
            if not is_transient(error) or time.monotonic() + wait > deadline:
                raise
            logger.warning("database unreachable %s (%s); attempt %d, retrying in %.1f s", what, describe(error),
                           attempt, wait)
            time.sleep(wait)
