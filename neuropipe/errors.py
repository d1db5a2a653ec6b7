"""Exceptions raised by neuropipe.

Every error neuropipe raises derives from :class:`NeuropipeError`, and each message says
what went wrong and what to do next.  :class:`BadInputError` marks *permanent* failures
(bad data, bad parameters): retrying them cannot help, so workers record them once in the
job table and move on.  :class:`TransientError` marks the opposite: a failure that another
attempt may get past (a busy service), which workers retry after :func:`backoff_seconds`.
"""

import random


class NeuropipeError(Exception):
    """Root of all neuropipe errors."""


class ConfigurationError(NeuropipeError):
    """The configuration file or an environment variable holds an invalid value."""


class DatabaseUnreachableError(NeuropipeError):
    """No database server answered at the configured address."""


class BadInputError(NeuropipeError, ValueError):
    """Input data or parameters are invalid; retrying will not help."""


class TransientError(NeuropipeError):
    """A failure another attempt may get past (a busy or unreachable service); raise it from ``make()`` to retry."""


def backoff_seconds(attempt: int, *, base: float = 2.0, cap: float = 300.0) -> float:
    """Return the wait before attempt ``attempt + 1``: exponential, capped, with jitter.

    Examples
    --------
    >>> 2.0 <= backoff_seconds(1) <= 2.5 and 8.0 <= backoff_seconds(3) <= 10.0
    True
    """
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * (1 + 0.25 * random.random())
