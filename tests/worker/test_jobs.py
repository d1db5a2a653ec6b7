"""The job protocol, one state change of a job row at a time, on MariaDB and PostgreSQL.

:class:`~neuropipe.worker.jobs.JobQueue` is driven directly (no worker loop) over the toy
pipeline (``tests/support/toy_pipeline.py``) in a schema of the test's own, with the worker
registry beside it.  Each test takes jobs through one transition (refresh, claim, run, fail,
release, hand-back of strays, reset of orphans, batches) and checks the job rows, the
table's rows, the provenance records and the :class:`~neuropipe.worker.registry.Failure`
rows the real server holds afterwards.  Throughout: a job done has its rows and its record;
a job rolled back has neither.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import toy_pipeline
from worker_runs import toy_schema

from neuropipe import provenance
from neuropipe.database import import_datajoint, open_like
from neuropipe.errors import BadInputError
from neuropipe.worker import registry
from neuropipe.worker.holdings import HOLDINGS, Identity
from neuropipe.worker.jobs import JobQueue

dj = import_datajoint()

pytestmark = pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)

HOST = "jobs-test-host"  # the host of this test's workers (no process of it is judged by pid)
ELSEWHERE = "jobs-test-elsewhere"  # another machine's workers
VERSION = "jobs-test 1.0"
SUPPORT = Path(__file__).resolve().parents[1] / "support"


# --- fixtures and helpers -----------------------------------------------------------------


def declare_picky(schema):
    """Declare ``Picky``: its make inserts, then raises where its call number is in ``failing_calls``."""

    @schema
    class Picky(dj.Computed):
        definition = """
        -> Item
        ---
        call_number : int32       # which make() call of this test inserted it
        """
        failing_calls: set = set()
        calls: list = []

        def make(self, key):
            made = type(self)
            made.calls.append(key["item"])
            self.insert1(dict(key, call_number=len(made.calls)))
            if len(made.calls) in made.failing_calls:
                raise ValueError(f"make call {len(made.calls)} failed after its insert")

    Picky.failing_calls, Picky.calls = set(), []
    return Picky


@pytest.fixture
def toy(settings):
    """The toy tables, and ``Picky``, in a schema of the test's own, with the worker registry beside them."""
    with toy_schema(settings) as tables:
        schema = dj.Schema(tables.Item.database, context={"Item": tables.Item}, connection=tables.Item.connection)
        tables.Picky = declare_picky(schema)
        yield tables


@pytest.fixture(params=[True, False], ids=["keep_completed", "delete_completed"])
def keep_completed(request, toy):
    """DataJoint's ``jobs.keep_completed``: a done job's row kept as ``success``, or deleted."""
    with dj.config.override(jobs__keep_completed=request.param):
        yield request.param


@pytest.fixture
def observer(toy):
    """A second connection to the server: what other workers see."""
    connection = open_like(toy.Item.connection)
    yield connection
    connection.close()


def queue_for(table, pid: int | None = None, host: str = HOST, provenance_on: bool = True) -> JobQueue:
    """Return a job queue of ``table`` as a worker with ``host`` and ``pid`` (default: this process) sees it."""
    identity = Identity(uuid.uuid4().hex, host, os.getpid() if pid is None else pid, VERSION)
    return JobQueue(table, identity, provenance=provenance_on)


def add_items(toy, items) -> list[dict]:
    """Insert ``items`` into Item; return their keys."""
    toy.Item.insert([{"item": item} for item in items])
    return [{"item": item} for item in items]


def job(queue: JobQueue, key: dict) -> dict:
    """Return the job row of ``key``."""
    return (queue.jobs & key).fetch1()


def by_item(keys) -> list[dict]:
    """Return ``keys`` sorted by item, as plain dicts."""
    return sorted(({"item": int(key["item"])} for key in keys), key=lambda key: key["item"])


def statuses(queue: JobQueue) -> dict:
    """Return ``{item: status}`` of every job row."""
    return {int(item): status for item, status in zip(*queue.jobs.to_arrays("item", "status"))}


def assert_reserved_by(queue: JobQueue, key: dict) -> None:
    row = job(queue, key)
    assert row["status"] == "reserved", row
    assert (row["host"], row["pid"], row["version"]) == (queue.identity.host, queue.identity.pid, VERSION)
    assert row["connection_id"] == queue.connection.connection_id and row["user"] == queue.user
    assert row["reserved_time"] is not None


def assert_pending_unowned(queue: JobQueue, key: dict, note: str) -> None:
    row = job(queue, key)
    assert row["status"] == "pending", row
    assert (row["host"], row["pid"], row["connection_id"], row["reserved_time"]) == ("", 0, 0, None)
    assert row["error_message"].startswith(note), row["error_message"]


def assert_done(queue: JobQueue, keys, *, kept: bool) -> None:
    """A done job has its rows, its provenance record (by this worker) and a job row ``success``, or none."""
    for key in keys:
        assert queue.table & key, f"{key} is done without its rows"
        record = (provenance.of(queue.table) & key).fetch1()
        assert (record["worker_id"], record["host"], record["pid"]) == (
            queue.identity.worker_id, queue.identity.host, queue.identity.pid)
        if kept:
            row = job(queue, key)
            assert row["status"] == "success" and row["completed_time"] is not None, row
            assert row["duration"] is not None and row["duration"] >= 0
            assert (row["host"], row["pid"]) == (queue.identity.host, queue.identity.pid)
        else:
            assert not queue.jobs & key, f"the job row of {key} was kept"


def assert_not_made(queue: JobQueue, keys) -> None:
    """A rolled-back job has neither rows nor a provenance record."""
    keys = list(keys)
    assert not queue.table & keys, (queue.table & keys).to_dicts()
    assert not provenance.of(queue.table) & keys


def made_elsewhere(toy, key: dict) -> None:
    """Insert Square's row of ``key`` as another worker (or plain DataJoint) would have: no record."""
    toy.Square.insert1(dict(key, square=key["item"] ** 2, made_by_pid=-1), allow_direct_insert=True)


def failures_of(queue: JobQueue) -> list[dict]:
    return (registry.Failure & {"table_name": queue.table.full_table_name}).to_dicts(order_by="attempt")


def raised(error: BaseException) -> BaseException:
    """Return ``error`` after raising it, so it carries a traceback."""
    try:
        raise error
    except BaseException as caught:
        return caught


# --- refresh ------------------------------------------------------------------------------


def test_refresh_queues_each_new_key_once_as_a_pending_job(toy):
    keys = add_items(toy, range(5))
    queue = queue_for(toy.Square)
    assert queue.refresh() == 5
    assert statuses(queue) == {key["item"]: "pending" for key in keys}
    row = job(queue, keys[0])
    assert row["priority"] == dj.config.jobs.default_priority and (row["host"], row["pid"]) == ("", 0)
    assert queue.refresh() == 0
    add_items(toy, [5])
    assert queue.refresh() == 1 and len(queue.jobs) == 6


def test_refresh_under_a_restriction_queues_only_its_keys(toy):
    add_items(toy, range(4))
    queue = queue_for(toy.Square)
    assert queue.refresh(["item > 1", {"item": 3}]) == 1
    assert statuses(queue) == {3: "pending"}


def test_refresh_passes_over_keys_whose_rows_exist(toy):
    add_items(toy, range(3))
    made_elsewhere(toy, {"item": 1})
    queue = queue_for(toy.Square)
    assert queue.refresh() == 2
    assert statuses(queue) == {0: "pending", 2: "pending"}


def test_refresh_requeues_a_completed_key_whose_rows_were_deleted(toy):
    [key] = add_items(toy, [4])
    queue = queue_for(toy.Square)
    queue.refresh()
    assert queue.claim() == [key] and queue.run(key) == "done"
    queue.forget([key])
    old_record = (provenance.of(toy.Square) & key).fetch1("row_id")
    (toy.Square & key).delete_quick()
    assert not provenance.of(toy.Square) & key  # a deleted row takes its record's validity with it
    assert queue.refresh() == 0  # no new key: the job row is re-used
    assert_pending_unowned(queue, key, "re-queued: its rows were deleted")
    assert queue.claim() == [key] and queue.run(key) == "done"
    assert_done(queue, [key], kept=True)
    assert (provenance.of(toy.Square) & key).fetch1("row_id") != old_record


# --- claim --------------------------------------------------------------------------------


def test_claim_reserves_up_to_n_due_pending_jobs_for_this_worker(toy):
    keys = add_items(toy, range(5))
    queue = queue_for(toy.Square)
    queue.refresh()
    first = queue.claim(2)
    assert len(first) == 2
    for key in first:
        assert_reserved_by(queue, key)
        assert HOLDINGS.holds(toy.Square.full_table_name, key)
    rest = queue.claim(10)
    assert by_item(first + rest) == keys
    assert queue.claim(1) == [] and set(statuses(queue).values()) == {"reserved"}


def test_claim_passes_over_a_job_scheduled_in_the_future(toy):
    add_items(toy, [0, 1])
    queue = queue_for(toy.Square)
    queue.refresh()
    quote = queue.quote
    later = registry.server_now(queue.connection) + datetime.timedelta(hours=1)
    queue.connection.query(f"UPDATE {queue.jobs.full_table_name} SET {quote('scheduled_time')}=%s "
                           f"WHERE {quote('item')}=1", args=(later,))
    assert queue.claim(5) == [{"item": 0}]
    assert queue.claim(5) == [] and job(queue, {"item": 1})["status"] == "pending"


def bound_to(toy, connection):
    """Return the toy tables bound to ``connection``: what another worker's session works on."""
    return toy_pipeline.declare(dj.Schema(toy.Item.database, connection=connection))


def fail_lock_waits(connection, seconds: int = 5) -> None:
    """Make ``connection``'s statements fail after ``seconds`` waiting for a lock, rather than wait on."""
    if "postgres" in type(connection.adapter).__name__.lower():
        connection.query(f"SET lock_timeout = '{int(seconds)}s'")
    else:
        connection.query(f"SET SESSION innodb_lock_wait_timeout = {int(seconds)}")


def test_a_claim_passes_by_the_jobs_of_another_workers_open_batch(toy, observer):
    """While a batch's transaction holds its jobs, another worker's claims take the others at once and commit."""
    keys = add_items(toy, range(8))
    batcher = queue_for(toy.Square)
    batcher.refresh()
    other = queue_for(bound_to(toy, observer).Square, pid=4_000_011, host=ELSEWHERE, provenance_on=False)
    fail_lock_waits(observer)  # a claim that waited for the batch's locks would fail here, not hang
    claims, seen = [], []

    def keep_going():  # before the batch's first job: its jobs are locked and reserved, uncommitted
        if not claims:
            claims.extend([other.claim(1), other.claim(10), other.claim(1)])
            seen.extend((batcher.jobs & key).fetch1("status", "pid") for claimed in claims for key in claimed)
        return True

    outcome = batcher.run_batch(4, keep_going)
    first, rest, after = claims
    batch = by_item(outcome.done)
    assert len(batch) == 4 and len(first) == 1 and after == []
    assert by_item(first + rest) == [key for key in keys if key not in batch]
    assert seen == [("reserved", other.identity.pid)] * 4, "the claims were not committed while the batch was open"
    assert_done(batcher, batch, kept=True)
    for key in first + rest:
        assert_reserved_by(other, key)


def test_a_batch_passes_by_the_jobs_of_another_workers_open_batch(toy, observer):
    """Two batches at once, on two sessions: each makes jobs the other does not hold, and every key once."""
    keys = add_items(toy, range(8))
    batcher = queue_for(toy.Square)
    batcher.refresh()
    other = queue_for(bound_to(toy, observer).Square, pid=4_000_012, host=ELSEWHERE, provenance_on=False)
    fail_lock_waits(observer)
    inner = []

    def keep_going():
        if not inner:
            inner.append(other.run_batch(8))
        return True

    outcome = batcher.run_batch(4, keep_going)
    [theirs] = inner
    assert len(outcome.done) == 4 and len(theirs.done) == 4
    assert by_item(outcome.done + theirs.done) == keys
    assert sorted(int(item) for item in toy.Square.to_arrays("item")) == list(range(8))
    assert set(statuses(batcher).values()) == {"success"}


CLAIMER = """
import json, os, sys, time
from pathlib import Path
import datajoint as dj
import toy_pipeline
from neuropipe.worker.holdings import Identity
from neuropipe.worker.jobs import JobQueue

host, port, user, backend, schema, start = sys.argv[1:7]
connection = dj.Connection(host, user, "", port=int(port), use_tls=False, backend=backend)
toy = toy_pipeline.declare(dj.Schema(schema, connection=connection))
queue = JobQueue(toy.Square, Identity("claimer", "racing-host", os.getpid(), "race"), provenance=False)
print("ready", flush=True)
while not Path(start).exists():
    time.sleep(0.001)
claimed = []
while True:
    keys = queue.claim(2)
    claimed += keys
    if not keys and not queue.jobs.pending:
        break
print(json.dumps(claimed), flush=True)
"""


def wait_for_line(process, line: str) -> str:
    """Read ``process``'s output up to ``line`` (DataJoint prints too); return it, or '' at its end."""
    while (read := process.stdout.readline()) and read.strip() != line:
        pass
    return read.strip()


def test_racing_claimers_in_separate_processes_never_get_the_same_key(toy, settings, tmp_path):
    """Three processes, each its own identity and connection, claim two at a time until no job is pending."""
    keys = add_items(toy, range(60))
    queue = queue_for(toy.Square, provenance_on=False)
    queue.refresh()
    start = tmp_path / "start"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")])}
    arguments = [settings.host, str(settings.port), settings.user, settings.backend, toy.Item.database, str(start)]
    claimers = [subprocess.Popen([sys.executable, "-c", CLAIMER, *arguments], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    try:
        ready = [wait_for_line(claimer, "ready") for claimer in claimers]
        start.touch()
        outputs = [claimer.communicate(timeout=120) for claimer in claimers]
    finally:
        for claimer in claimers:
            claimer.kill()
    assert ready == ["ready"] * 3, [error for _, error in outputs]
    assert [claimer.returncode for claimer in claimers] == [0, 0, 0], [error for _, error in outputs]
    claims = {claimer.pid: json.loads(out.splitlines()[-1]) for claimer, (out, _) in zip(claimers, outputs)}
    every = [key for claimed in claims.values() for key in claimed]
    assert by_item(every) == keys, "a key was claimed twice or not at all"
    assert sum(1 for claimed in claims.values() if claimed) >= 2, f"the claimers did not race: {claims}"
    owners = dict(zip(*[list(column) for column in queue.jobs.to_arrays("item", "pid")]))
    for pid, claimed in claims.items():
        assert all(owners[key["item"]] == pid for key in claimed)
    assert set(statuses(queue).values()) == {"reserved"}


# --- run: complete ------------------------------------------------------------------------


def test_run_makes_the_rows_and_marks_the_job_done(toy, keep_completed):
    [key] = add_items(toy, [4])
    queue = queue_for(toy.Square)
    queue.refresh()
    queue.claim()
    assert queue.run(key) == "done"
    assert (toy.Square & key).fetch1("square") == 16
    assert_done(queue, [key], kept=keep_completed)
    assert not queue.connection.in_transaction


def test_run_skips_a_key_whose_rows_exist_and_marks_its_job_done(toy):
    [key] = add_items(toy, [3])
    queue = queue_for(toy.Square)
    queue.refresh()
    queue.claim()
    made_elsewhere(toy, key)  # e.g. by a worker that took over while this one was paused
    assert queue.run(key) == "skipped"
    assert (toy.Square & key).fetch1("made_by_pid") == -1  # theirs stands
    assert not provenance.of(toy.Square) & key  # this worker made nothing: it writes no record
    assert job(queue, key)["status"] == "success"


def test_a_make_that_raises_after_its_insert_leaves_no_rows_and_the_job_held(toy):
    [key] = add_items(toy, [2])
    toy.Picky.failing_calls = {1}
    queue = queue_for(toy.Picky)
    queue.refresh()
    queue.claim()
    with pytest.raises(ValueError, match="failed after its insert"):
        queue.run(key)
    assert toy.Picky.calls == [2] and not queue.connection.in_transaction
    assert_not_made(queue, [key])
    assert_reserved_by(queue, key)
    assert HOLDINGS.holds(toy.Picky.full_table_name, key)
    assert queue.hand_back_strays() == ([], [])  # held until fail(): not a stray
    assert_reserved_by(queue, key)


# --- fail ---------------------------------------------------------------------------------


def test_a_transient_failure_is_requeued_later_with_a_note_and_a_failure_row(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_STATE", str(tmp_path))
    monkeypatch.setenv("TOY_FLAKY_FAILURES", "99")
    [key] = add_items(toy, [1])
    queue = queue_for(toy.Flaky)
    queue.refresh()
    queue.claim()
    with pytest.raises(TimeoutError) as failure:
        queue.run(key)
    before = registry.server_now(queue.connection)
    assert queue.fail(key, failure.value, max_retries=2, backoff=30) == "retry"
    queue.forget([key])
    assert_pending_unowned(queue, key, "attempt 1 of 3 failed, retrying after ")
    row = job(queue, key)
    assert row["error_message"].endswith("TimeoutError: attempt 1 timed out")
    assert row["scheduled_time"] >= before + datetime.timedelta(seconds=30)
    [recorded] = failures_of(queue)
    assert (recorded["attempt"], recorded["kind"], recorded["worker_id"]) == (1, "transient", queue.identity.worker_id)
    assert recorded["error_message"] == "TimeoutError: attempt 1 timed out" and recorded["job_key"] == key
    assert queue.claim() == []  # not due before its backoff ends
    assert_not_made(queue, [key])


def test_a_job_that_keeps_failing_transiently_gives_up_after_max_retries(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_STATE", str(tmp_path))
    monkeypatch.setenv("TOY_FLAKY_FAILURES", "99")
    [key] = add_items(toy, [1])
    queue = queue_for(toy.Flaky)
    queue.refresh()
    outcomes = []
    for _ in range(2):
        deadline = time.monotonic() + 10
        while not queue.claim() and time.monotonic() < deadline:  # wait out the backoff
            time.sleep(0.02)
        assert_reserved_by(queue, key)
        with pytest.raises(TimeoutError) as failure:
            queue.run(key)
        outcomes.append(queue.fail(key, failure.value, max_retries=1, backoff=0.05))
        queue.forget([key])
    assert outcomes == ["retry", "error"]
    row = job(queue, key)
    assert row["status"] == "error" and row["completed_time"] is not None
    assert row["error_message"] == "gave up after 2 attempts: TimeoutError: attempt 2 timed out"
    assert "TimeoutError: attempt 2 timed out" in row["error_stack"]
    assert [(f["attempt"], f["kind"]) for f in failures_of(queue)] == [(1, "transient"), (2, "transient")]
    assert queue.claim() == [] and not queue.refresh()  # an error is neither claimed nor queued again
    assert_not_made(queue, [key])


def test_a_permanent_error_from_make_goes_straight_to_error_with_message_and_traceback(toy):
    [key] = add_items(toy, [toy_pipeline.UNLUCKY])
    queue = queue_for(toy.Square)
    queue.refresh()
    queue.claim()
    with pytest.raises(ValueError) as failure:
        queue.run(key)
    assert queue.fail(key, failure.value, max_retries=5) == "error"
    queue.forget([key])
    row = job(queue, key)
    assert row["status"] == "error" and row["error_message"] == "ValueError: item 13 is unlucky"
    assert row["error_stack"].startswith("Traceback") and "in make" in row["error_stack"]
    [recorded] = failures_of(queue)
    assert (recorded["attempt"], recorded["kind"]) == (1, "permanent")
    assert_not_made(queue, [key])


def test_a_bad_input_error_goes_straight_to_error(toy):
    [key] = add_items(toy, [6])
    queue = queue_for(toy.Square)
    queue.refresh()
    queue.claim()
    error = raised(BadInputError("the volume is empty"))
    assert queue.fail(key, error, max_retries=5) == "error"
    row = job(queue, key)
    assert row["status"] == "error" and row["error_message"] == "BadInputError: the volume is empty"
    assert "BadInputError: the volume is empty" in row["error_stack"]
    assert [f["kind"] for f in failures_of(queue)] == ["permanent"]


# --- hand back ----------------------------------------------------------------------------


def test_release_returns_only_this_workers_reservations_to_pending(toy):
    add_items(toy, range(4))
    queue, other = queue_for(toy.Square), queue_for(toy.Square, pid=4_000_009, host=ELSEWHERE)
    queue.refresh()
    mine = by_item(queue.claim(3))
    [theirs] = other.claim(1)
    queue.release([*mine[:2], theirs])
    for key in mine[:2]:
        assert_pending_unowned(queue, key, "released by a stopping worker")
        assert not HOLDINGS.holds(toy.Square.full_table_name, key)
    assert_reserved_by(queue, mine[2])
    assert_reserved_by(other, theirs)
    queue.release()  # all of this worker's reservations
    assert_pending_unowned(queue, mine[2], "released by a stopping worker")
    assert_reserved_by(other, theirs)


def test_hand_back_strays_returns_lost_reservations_and_settles_committed_ones(toy):
    add_items(toy, range(5))
    queue, other = queue_for(toy.Square), queue_for(toy.Square, pid=4_000_009, host=ELSEWHERE)
    queue.refresh()
    claimed = by_item(queue.claim(4))
    lost, committed, held = claimed[:2], claimed[2], claimed[3]
    [theirs] = other.claim(1)
    made_elsewhere(toy, committed)  # its COMMIT went through, but the reply was lost with the connection
    queue.forget([*lost, committed])
    returned, found = queue.hand_back_strays()
    assert by_item(returned) == lost and found == [committed]
    for key in lost:
        assert_pending_unowned(queue, key, "released: its worker lost track of it")
    row = job(queue, committed)
    assert row["status"] == "success"
    assert row["error_message"] == "its rows were committed before the connection was lost"
    assert_reserved_by(queue, held)
    assert_reserved_by(other, theirs)
    assert queue.hand_back_strays() == ([], [])


def register_worker(pid: int, *, status: str = "running", silent: bool = False) -> None:
    """Insert a registry row of a worker on ``ELSEWHERE``: heartbeating now, or silent for an hour."""
    now = registry.server_now(registry.Worker.connection)
    beat = now - datetime.timedelta(hours=1) if silent else now
    registry.Worker.insert1(dict(worker_id=uuid.uuid4().hex, host=ELSEWHERE, pid=pid, status=status,
                                 started_time=beat, heartbeat_time=beat, heartbeat_seconds=60.0, resources={}))


def dead_pid() -> int:
    """Return the pid of a process of this host that has exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_reset_orphans_requeues_only_the_reservations_of_gone_workers(toy, observer):
    add_items(toy, range(5))
    queue = queue_for(toy.Square)
    queue.refresh()
    register_worker(4_000_001, status="stopped")
    register_worker(4_000_002)
    register_worker(4_000_003, silent=True)
    claimers = {"stopped": queue_for(toy.Square, pid=4_000_001, host=ELSEWHERE),
                "alive": queue_for(toy.Square, pid=4_000_002, host=ELSEWHERE),
                "silent": queue_for(toy.Square, pid=4_000_003, host=ELSEWHERE),
                "unregistered": queue_for(toy.Square, pid=4_000_004, host=ELSEWHERE),
                "dead here": queue_for(toy.Square, pid=dead_pid())}
    held = {name: claimer.claim(1)[0] for name, claimer in claimers.items()}
    time.sleep(0.05)
    judge = registry.orphan_judge(observer, HOST)
    assert (registry.Worker & {"pid": 4_000_003}).fetch1("status") == "lost"
    assert queue.reset_orphans(judge, observer) == 3
    for name in ("stopped", "silent", "dead here"):
        identity = claimers[name].identity
        assert_pending_unowned(queue, held[name], f"re-queued: its worker {identity.host}:{identity.pid} stopped")
    for name in ("alive", "unregistered"):
        assert_reserved_by(claimers[name], held[name])


class AllGone:
    """An orphan judge that finds every worker gone, as the registry stood at ``as_of``."""

    def __init__(self, as_of):
        self.as_of = as_of

    def __call__(self, job: dict) -> bool:
        """Return True: ``job``'s worker is gone."""
        return True


def test_reset_orphans_leaves_reservations_made_after_the_judgement(toy, observer):
    add_items(toy, range(2))
    queue = queue_for(toy.Square, pid=4_000_005, host=ELSEWHERE)
    queue.refresh()
    [before] = queue.claim(1)
    time.sleep(0.05)
    judge = AllGone(registry.server_now(observer))
    time.sleep(0.05)
    [after] = queue.claim(1)  # its worker came back and claimed afresh
    assert queue.reset_orphans(judge, observer) == 1
    assert_pending_unowned(queue, before, "re-queued: its worker")
    assert_reserved_by(queue, after)


# --- batches ------------------------------------------------------------------------------


def test_a_batch_is_made_in_one_transaction_and_committed_once(toy, keep_completed, observer):
    keys = add_items(toy, range(6))
    queue = queue_for(toy.Square)
    queue.refresh()
    seen = []

    def keep_going():  # before each job: what another session sees of the batch so far
        rows = observer.query(f"SELECT COUNT(*) FROM {toy.Square.full_table_name}").fetchone()[0]
        taken = observer.query(f"SELECT COUNT(*) FROM {queue.jobs.full_table_name} "
                               f"WHERE {queue.quote('status')} <> 'pending'").fetchone()[0]
        seen.append((rows, taken))
        return True

    outcome = queue.run_batch(4, keep_going)
    assert outcome.claimed == 4 and len(outcome.done) == 4 and outcome.skipped == [] and outcome.failed == []
    assert seen == [(0, 0)] * 4, "other sessions saw part of the batch before its one commit"
    assert_done(queue, outcome.done, kept=keep_completed)
    rest = [key for key in keys if key not in by_item(outcome.done)]
    assert statuses(queue) == {**({key["item"]: "success" for key in outcome.done} if keep_completed else {}),
                               **{key["item"]: "pending" for key in rest}}
    assert not any(HOLDINGS.holds(toy.Square.full_table_name, key) for key in keys)
    assert not queue.connection.in_transaction


def test_a_batch_skips_the_keys_whose_rows_exist(toy):
    add_items(toy, range(3))
    queue = queue_for(toy.Square)
    queue.refresh()
    made_elsewhere(toy, {"item": 1})
    outcome = queue.run_batch(3)
    assert outcome.skipped == [{"item": 1}] and by_item(outcome.done) == [{"item": 0}, {"item": 2}]
    assert_done(queue, outcome.done, kept=True)
    assert job(queue, {"item": 1})["status"] == "success" and not provenance.of(toy.Square) & {"item": 1}


def test_a_make_that_raises_mid_batch_rolls_back_the_whole_batch(toy):
    keys = add_items(toy, range(5))
    toy.Picky.failing_calls = {3}  # two jobs made (inserted) before it, in the batch's transaction
    queue = queue_for(toy.Picky)
    queue.refresh()
    outcome = queue.run_batch(5)
    assert outcome.claimed == 5 and outcome.done == [] and len(toy.Picky.calls) == 3
    [(failed, error)] = outcome.failed
    assert failed == {"item": toy.Picky.calls[2]} and isinstance(error, ValueError)
    assert_not_made(queue, keys)
    assert_reserved_by(queue, failed)
    assert HOLDINGS.holds(toy.Picky.full_table_name, failed)
    for key in keys:
        if key != failed:
            assert job(queue, key)["status"] == "pending"
            assert not HOLDINGS.holds(toy.Picky.full_table_name, key)
    assert queue.fail(failed, error, max_retries=3) == "error"
    queue.forget([failed])
    again = queue.run_batch(5)  # the rest are made by the next batch
    assert by_item(again.done) == [key for key in keys if key != failed] and again.failed == []
    assert_done(queue, again.done, kept=True)
    assert_not_made(queue, [failed])


def test_a_batch_told_to_stop_releases_the_rest(toy):
    keys = add_items(toy, range(5))
    queue = queue_for(toy.Square)
    queue.refresh()
    answers = iter([True, True])
    outcome = queue.run_batch(5, keep_going=lambda: next(answers, False))
    assert outcome.claimed == 5 and len(outcome.done) == 2 and outcome.failed == []
    assert_done(queue, outcome.done, kept=True)
    rest = [key for key in keys if key not in by_item(outcome.done)]
    assert_not_made(queue, rest)
    for key in rest:
        assert_pending_unowned(queue, key, "released by a stopping worker")
        assert not HOLDINGS.holds(toy.Square.full_table_name, key)
