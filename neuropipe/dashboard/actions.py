"""What the dashboard may change: retry failed jobs, ignore a key, re-queue stale rows.

Each action is planned first (:func:`plan`): the plan says in words what it will do and to how
many rows, and the page shows it before anything happens; :func:`apply` then does it through
the same functions as the command line (``neuropipe retry``, ``neuropipe stale --recompute``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neuropipe.errors import BadInputError
from neuropipe.provenance import stale
from neuropipe.worker import status

ACTIONS = ("retry", "ignore", "requeue-stale")


@dataclass
class Plan:
    """An action on one table, and what it will do."""

    action: str
    table: type
    key: dict = field(default_factory=dict)
    count: int = 0
    description: str = ""
    stale_rows: list = field(default_factory=list, repr=False)


def plan(action: str, table, tables, key: dict | None = None) -> Plan:
    """Return what ``action`` on ``table`` (one key, or all where allowed) would do, changing nothing.

    Raises
    ------
    BadInputError
        An unknown action, or ``ignore`` without a whole key.
    """
    key = {name: value for name, value in (key or {}).items() if name in table().jobs.primary_key}
    name = table.__name__
    if action == "retry":
        count = len(table().jobs.errors & key) if key else len(table().jobs.errors)
        which = f"the failed job {key}" if key else f"all {count} failed job(s)"
        return Plan(action, table, key, count, f"Send {which} of {name} back to the queue; their earlier attempts "
                                               f"stop counting against the retry limit (they stay in the history).")
    if action == "ignore":
        if set(key) != set(table().jobs.primary_key):
            raise BadInputError(f"ignore needs a whole key of {name}: {', '.join(table().jobs.primary_key)}")
        return Plan(action, table, key, 1, f"Mark the job {key} of {name} ignored: no worker takes it until it is "
                                           f"retried.")
    if action == "requeue-stale":
        found = stale.find_stale(tables, only=lambda candidate: candidate is table)
        own = next((s for s in found if s.table is table), None)
        later = {s.name: len(s.keys) for s in found if s.keys and s.table is not table}
        count = len(own.keys) if own else 0
        reasons = ", ".join(f"{n} {why}" for why, n in (own.counts() if own else {}).items()) or "none"
        downstream = "; with them, the rows made from them: " + ", ".join(f"{n} of {t}" for t, n in later.items()) \
            if later else ""
        return Plan(action, table, {}, count, f"Delete the {count} stale row(s) of {name} ({reasons}){downstream}, "
                                              f"then queue their keys again.", [s for s in found if s.keys])
    raise BadInputError(f"unknown action {action!r}; the actions: {', '.join(ACTIONS)}")


def apply(planned: Plan) -> int:
    """Do what ``planned`` says; return how many jobs or rows it changed."""
    if planned.action == "retry":
        return status.retry([planned.table], key=planned.key or None)
    if planned.action == "ignore":
        jobs = planned.table().jobs
        if len(jobs & planned.key & {"status": "reserved"}):
            raise BadInputError("that job is running now; ignore it once it has finished or failed")
        jobs.ignore(planned.key)
        return 1
    return sum(stale.recompute(planned.stale_rows).values())

