"""Exceptions raised by neuropipe.

Every error neuropipe raises derives from :class:`NeuropipeError`, and each message says
what went wrong and what to do next.  :class:`BadInputError` marks *permanent* failures
(bad data, bad parameters): retrying them cannot help, so workers record them once in the
job table and move on.
"""


class NeuropipeError(Exception):
    """Root of all neuropipe errors."""


class ConfigurationError(NeuropipeError):
    """The configuration file or an environment variable holds an invalid value."""


class DatabaseUnreachableError(NeuropipeError):
    """No database server answered at the configured address."""


class BadInputError(NeuropipeError, ValueError):
    """Input data or parameters are invalid; retrying will not help."""
