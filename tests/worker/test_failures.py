"""Which failures are retried: transient ones, unless the server's answer says no retry will help."""

import pymysql
import pytest

from neuropipe.errors import BadInputError, TransientError
from neuropipe.worker.failures import describe, is_transient, keep_trying


@pytest.mark.parametrize("error, transient", [
    (pymysql.err.OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1'"), True),
    (pymysql.err.OperationalError(1045, "Access denied for user 'x'@'localhost' (using password: YES)"), False),
    (TimeoutError("took too long"), True),
    (ValueError("bad parameter"), False),
    (TransientError("busy"), True),
])
def test_transient_or_not(error, transient):
    assert is_transient(error) is transient


def test_bad_input_is_not_retried_even_when_raised_while_handling_a_timeout():
    try:
        try:
            raise TimeoutError("the first read timed out")
        except TimeoutError:
            raise BadInputError("the volume is empty")
    except BadInputError as error:
        assert error.__context__ is not None and not is_transient(error)


def test_the_cause_counts_too():
    try:
        try:
            raise ConnectionError("reset by peer")
        except ConnectionError as cause:
            raise RuntimeError("the import failed") from cause
    except RuntimeError as error:
        assert is_transient(error)


def test_keep_trying_waits_out_transient_failures_only():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 2:
            raise TimeoutError("not yet")
        return "up"

    assert keep_trying(flaky, patience=10, cap=1.5, what="in a test") == "up" and len(calls) == 2
    with pytest.raises(ValueError):
        keep_trying(lambda: (_ for _ in ()).throw(ValueError("no")), patience=10, cap=1, what="in a test")
    assert describe(ValueError("two\nlines")) == "ValueError: two lines"
