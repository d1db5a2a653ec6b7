"""Workers: exactly-once results, crash recovery, signals, routing, retries, reconnection.

Worker processes are real ``neuropipe worker`` processes serving the toy pipeline
(``tests/support/toy_pipeline.py``) against the real servers; the quick cases run a worker
in the test's own process.
"""

import os
import signal
import time

import numpy as np
import pytest
import toy_pipeline
from worker_runs import logs, toy_schema, wait_until, worker_process

from neuropipe.worker import Worker, WorkerOptions, registry, run_worker, status
from neuropipe.worker.resources import Resources

SERVERS = pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)
HEARTBEAT = 1.0


@pytest.fixture
def toy(settings):
    """The toy tables in a schema of the test's own, with the worker registry beside them."""
    with toy_schema(settings) as tables:
        yield tables


@SERVERS
def test_many_workers_make_each_key_exactly_once(toy, settings, tmp_path):
    toy.Item.insert([{"item": i} for i in range(300) if i != toy_pipeline.UNLUCKY])
    workers = [worker_process(settings, tmp_path / f"worker{i}.log", "--max-idle", "3", "--batch", "4",
                              TOY_DELAY=0.01) for i in range(4)]
    codes = [worker.wait(timeout=180) for worker in workers]
    assert codes == [0, 0, 0, 0], logs(tmp_path)
    rows = toy.Square.to_arrays("item", "made_by_pid")
    assert sorted(rows[0]) == sorted(i for i in range(300) if i != toy_pipeline.UNLUCKY)
    assert len(set(rows[1])) >= 2, "the work was not shared"
    jobs = toy.Square().jobs
    assert len(jobs.completed) == 299 and not jobs.reserved and not jobs.pending and not jobs.errors
    assert len(registry.Worker & "status='stopped'") == 4


@SERVERS
def test_kill_9_loses_and_duplicates_nothing(toy, settings, tmp_path):
    items = 150
    toy.Item.insert([{"item": i} for i in range(100, 100 + items)])
    jobs = toy.Square().jobs
    workers = [worker_process(settings, tmp_path / f"worker{i}.log", TOY_DELAY=0.3) for i in range(3)]
    recoveries = []
    try:
        for round_number in range(4):
            victim = next(w for w in workers if w.poll() is None)
            wait_until(lambda: jobs.reserved & {"pid": victim.pid}, 30, f"worker {victim.pid} to hold a job")
            victim.kill()
            killed_at = time.monotonic()
            victim.wait()
            held = jobs & {"pid": victim.pid} & "status='reserved'"
            recovered_at = wait_until(lambda: not held, 4 * HEARTBEAT + 5, "the killed worker's job to return")
            recoveries.append(recovered_at - killed_at)
            workers.append(worker_process(settings, tmp_path / f"worker{3 + round_number}.log", TOY_DELAY=0.3))
        wait_until(lambda: len(toy.Square()) == items, 120, f"all {items} rows\n{logs(tmp_path)}")
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
    assert len(toy.Square()) == items  # a primary key per item: a duplicate could not even exist
    assert len(jobs.completed) == items and not jobs.reserved and not jobs.errors
    assert max(recoveries) <= 2 * HEARTBEAT + 3, recoveries


@SERVERS
def test_sigterm_finishes_the_current_job_and_exits_0(toy, settings, tmp_path):
    toy.Item.insert([{"item": i} for i in range(5)])
    jobs = toy.Square().jobs
    worker = worker_process(settings, tmp_path / "worker.log", TOY_DELAY=3)
    wait_until(lambda: jobs.reserved, 30, "a job to start")
    running = jobs.reserved.proj().fetch1()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, logs(tmp_path)
    assert toy.Square & running, "the job in progress was not finished"
    assert len(toy.Square()) == 1 and not jobs.reserved and len(jobs.pending) == 4
    assert (registry.Worker & {"pid": worker.pid}).fetch1("status") == "stopped"


@SERVERS
def test_second_signal_stops_at_once_and_releases_the_job(toy, settings, tmp_path):
    """Both signals land inside ``make()`` (a closed gate): the second rolls the job back and exits at once.

    (Signalled as soon as the claim showed, a loaded machine could deliver the first signal
    between the claim and ``make()``: the worker then rightly released the job and stopped
    cleanly before the second.)
    """
    toy.Item.insert1({"item": 7})
    jobs = toy.Gated().jobs
    (tmp_path / "7.gate").write_text("before-insert")
    worker = worker_process(settings, tmp_path / "worker.log", tables=("Gated",), TOY_STATE=tmp_path)
    wait_until(lambda: (tmp_path / "7.before-insert.arrived").exists(), 60, f"the job to start\n{logs(tmp_path)}")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) != 0
    assert len(toy.Gated()) == 0
    assert jobs.fetch1("status") == "pending", logs(tmp_path)


@SERVERS
def test_a_live_workers_slow_job_is_never_taken_away(toy, settings, tmp_path):
    toy.Item.insert1({"item": 3})
    jobs = toy.Square().jobs
    slow = worker_process(settings, tmp_path / "worker-slow.log", "--max-jobs", "1", TOY_DELAY=6 * HEARTBEAT)
    wait_until(lambda: jobs.reserved, 30, "the slow job to start")
    other = worker_process(settings, tmp_path / "worker-other.log", "--max-idle", str(8 * HEARTBEAT), TOY_DELAY=0)
    assert slow.wait(timeout=60) == 0 and other.wait(timeout=60) == 0, logs(tmp_path)
    assert toy.Square.fetch1("made_by_pid") == slow.pid
    assert not registry.Failure() and "re-queued" not in logs(tmp_path) and "handed back" not in logs(tmp_path)


@SERVERS
def test_a_reservation_its_worker_lost_track_of_returns_within_a_heartbeat(toy, settings, tmp_path):
    """A reservation with the worker's host and pid that it does not hold (its claim's reply was lost)."""
    worker = worker_process(settings, tmp_path / "worker.log", TOY_DELAY=0)
    try:
        wait_until(lambda: registry.Worker & {"pid": worker.pid, "status": "running"}, 60, "the worker to start")
        host = (registry.Worker & {"pid": worker.pid}).fetch1("host")
        jobs = toy.Square().jobs
        with toy.Item.connection.transaction:
            toy.Item.insert1({"item": 21})
            jobs.insert1(dict(item=21, status="reserved", host=host, pid=worker.pid, priority=5,
                              reserved_time=registry.server_now(toy.Item.connection)))
        planted = time.monotonic()
        returned = wait_until(lambda: not jobs.reserved & {"item": 21}, 10 * HEARTBEAT, "the stray to be handed back")
        wait_until(lambda: toy.Square & {"item": 21}, 30, "the job to be made")
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0, logs(tmp_path)
    assert returned - planted <= HEARTBEAT + 0.5, logs(tmp_path)
    assert "handed back" in logs(tmp_path) and jobs.fetch1("status") == "success"
    assert toy.Square.fetch1("made_by_pid") == worker.pid and not registry.Failure()


@SERVERS
def test_a_worker_killed_mid_batch_leaves_the_whole_batch_to_others(toy, settings, tmp_path):
    jobs = toy.Gated().jobs
    toy.Item.insert1({"item": 0})  # the first job runs alone: then the worker knows its jobs are short
    first = worker_process(settings, tmp_path / "worker-killed.log", tables=("Gated",), TOY_STATE=tmp_path)
    try:
        wait_until(lambda: len(toy.Gated()) == 1, 60, f"the first job\n{logs(tmp_path)}")
        (tmp_path / "10.gate").write_text("before-insert")
        toy.Item.insert([{"item": item} for item in range(1, 21)])
        wait_until(lambda: (tmp_path / "10.before-insert.arrived").exists(), 60, "the batch to reach item 10")
        # in a batch, the claims and the rows made so far are inside its open transaction
        assert set(jobs.to_arrays("status")) == {"success", "pending"} and len(toy.Gated()) == 1
        first.kill()
        first.wait()
    finally:
        first.kill()
    (tmp_path / "10.open").write_text("")
    other = worker_process(settings, tmp_path / "worker-other.log", "--max-idle", "1", tables=("Gated",),
                           TOY_STATE=tmp_path)
    assert other.wait(timeout=60) == 0, logs(tmp_path)
    made = dict(zip(*toy.Gated.to_arrays("item", "made_by_pid")))
    assert sorted(made) == list(range(21))
    assert set(made[item] for item in range(1, 21)) == {other.pid}  # the killed batch left nothing behind
    assert len(jobs.completed) == 21 and not jobs.reserved and not jobs.errors and not registry.Failure()
    assert (tmp_path / "10.attempts").read_text().split() == [str(first.pid), str(other.pid)]


@SERVERS
def test_a_paused_worker_that_lost_its_job_creates_no_duplicate_or_error(toy, settings, tmp_path):
    toy.Item.insert1({"item": 5})
    jobs = toy.Gated().jobs
    (tmp_path / "5.gate").write_text("before-insert")  # the paused worker stops inside make(), before its insert
    paused = worker_process(settings, tmp_path / "worker-paused.log", "--max-jobs", "1", tables=("Gated",),
                            TOY_STATE=tmp_path)
    wait_until(lambda: (tmp_path / "5.before-insert.arrived").exists(), 30, "the job to reach its insert")
    paused.send_signal(signal.SIGSTOP)
    (tmp_path / "5.open").write_text("")
    other = worker_process(settings, tmp_path / "worker-other.log", "--max-jobs", "1", tables=("Gated",),
                           TOY_STATE=tmp_path)
    try:
        assert other.wait(timeout=60) == 0, logs(tmp_path)
        assert toy.Gated.fetch1("made_by_pid") == other.pid
    finally:
        paused.send_signal(signal.SIGCONT)
    assert paused.wait(timeout=60) == 0, logs(tmp_path)
    assert len(toy.Gated()) == 1 and jobs.fetch1("status") == "success"
    assert not jobs.errors and not registry.Failure()
    assert "made by another worker meanwhile" in (tmp_path / "worker-paused.log").read_text()


@SERVERS
def test_a_cpu_worker_leaves_gpu_tables_alone(toy, settings):
    toy.Item.insert([{"item": i} for i in range(3)])
    tables = [toy.Square, toy.GpuSquare]
    run_worker(tables, max_idle=0, poll=0.1)
    assert len(toy.Square()) == 3 and len(toy.GpuSquare()) == 0
    assert not toy.GpuSquare().jobs.reserved and not toy.GpuSquare().jobs.completed
    Worker(tables, WorkerOptions(max_idle=0, poll=0.1), Resources(gpus=(0,), memory_gb=8)).serve()
    assert len(toy.GpuSquare()) == 3


@SERVERS
def test_transient_failures_are_retried_with_backoff(toy, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_STATE", str(tmp_path))
    monkeypatch.setenv("TOY_FLAKY_FAILURES", "2")
    toy.Item.insert1({"item": 1})
    start = time.monotonic()
    run_worker([toy.Flaky], max_idle=3, poll=0.05, retry_backoff=0.5)
    assert toy.Flaky.fetch1("attempts") == 3
    assert time.monotonic() - start >= 0.5 + 1.0  # backoff 0.5 s, then 1 s
    failures = registry.Failure.to_dicts(order_by="attempt")
    assert [f["kind"] for f in failures] == ["transient", "transient"]
    assert "TimeoutError: attempt 1 timed out" in failures[0]["error_message"]
    assert toy.Flaky().jobs.fetch1("status") == "success"


@SERVERS
def test_a_job_that_keeps_failing_transiently_gives_up(toy, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_STATE", str(tmp_path))
    monkeypatch.setenv("TOY_FLAKY_FAILURES", "99")
    toy.Item.insert1({"item": 2})
    run_worker([toy.Flaky], max_idle=2, poll=0.05, retry_backoff=0.1, max_retries=2)
    job = toy.Flaky().jobs.fetch1()
    assert job["status"] == "error" and job["error_message"].startswith("gave up after 3 attempts: TimeoutError")
    assert len(registry.Failure()) == 3


@SERVERS
def test_a_permanent_error_is_recorded_once_and_can_be_retried(toy, settings):
    toy.Item.insert([{"item": toy_pipeline.UNLUCKY}, {"item": 4}])
    tally = run_worker([toy.Square], max_idle=1, poll=0.05, retry_backoff=0.05)
    assert tally["Square"].made == 1 and tally["Square"].failed == 1
    failed = status.failed_jobs([toy.Square], tracebacks=True)
    assert len(failed) == 1 and failed[0]["attempts"] == 1
    assert failed[0]["message"] == "ValueError: item 13 is unlucky" and "make" in failed[0]["traceback"]
    assert registry.Failure.fetch1("kind") == "permanent"
    assert status.retry([toy.Square], key={"item": toy_pipeline.UNLUCKY}) == 1
    assert not toy.Square().jobs.errors
    assert (toy.Square().jobs & {"item": toy_pipeline.UNLUCKY}).fetch1("status") == "pending"  # queued at once
    run_worker([toy.Square], max_idle=0)
    again = status.failed_jobs([toy.Square])
    assert len(again) == 1 and again[0]["attempts"] == 1  # the cleared attempt no longer counts
    assert len(registry.Failure()) == 2


@pytest.mark.parametrize("settings", ["embedded"], indirect=True)
def test_workers_ride_out_a_database_restart(toy, settings, tmp_path, embedded_server):
    toy.Item.insert([{"item": i} for i in range(200, 240)])
    worker = worker_process(settings, tmp_path / "worker.log", "--max-idle", "5", TOY_DELAY=0.1)
    wait_until(lambda: len(toy.Square()) >= 5, 60, "work to start")
    embedded_server.stop()
    time.sleep(2)
    embedded_server.ensure_running()
    assert worker.wait(timeout=180) == 0, logs(tmp_path)
    assert "database unreachable" in (tmp_path / "worker.log").read_text()
    toy.Item.connection.connect()  # this test's own connection broke with the restart too
    assert len(toy.Square()) == 40 and not toy.Square().jobs.reserved and not toy.Square().jobs.errors, logs(tmp_path)


@SERVERS
def test_a_running_worker_reports_its_counts_with_each_heartbeat(toy, settings, tmp_path):
    toy.Item.insert([{"item": i} for i in range(40)])  # item 13 fails, whenever its turn comes
    worker = worker_process(settings, tmp_path / "worker0.log", "--max-idle", "1", "--batch", "1",
                            heartbeat=0.5, TOY_DELAY=0.1)
    try:
        wait_until(lambda: len(toy.Square()) >= 20, 60, "20 squares")
        wait_until(lambda: (registry.Worker & {"pid": worker.pid}).fetch1("jobs_done") >= 15, 5,
                   "the heartbeat's count of jobs done")
        row = (registry.Worker & {"pid": worker.pid}).fetch1()
        assert row["status"] == "running" and row["jobs_failed"] in (0, 1) and row["jobs_done"] <= len(toy.Square())
    finally:
        assert worker.wait(timeout=60) == 0, logs(tmp_path)


def test_status_reports_tables_and_live_workers(pipeline, settings):
    tables = [pipeline.volume.Volume]
    progress = status.table_progress(tables)
    assert progress == [dict(table="Volume", done=0, pending=0, running=0, error=0, ignored=0, workers=[])]
    assert status.live_workers() == []
    np.testing.assert_equal(len(registry.Worker()), 0)


@SERVERS
def test_processes_run_as_separate_workers_and_a_killed_one_is_restarted(toy, settings, tmp_path):
    toy.Item.insert([{"item": i} for i in range(300, 360)])
    supervisor = worker_process(settings, tmp_path / "worker-supervisor.log", "--processes", "3", "--max-idle", "3",
                                TOY_DELAY=0.2)
    wait_until(lambda: len(registry.Worker & "status='running'") == 3, 60, "three worker processes")
    children = registry.Worker.to_arrays("pid")
    assert supervisor.pid not in children
    os.kill(int(children[0]), signal.SIGKILL)
    wait_until(lambda: len(registry.Worker & "status='running'") == 3 and len(registry.Worker()) == 4, 60,
               "the supervisor to replace the killed worker")
    assert supervisor.wait(timeout=120) == 0, logs(tmp_path)
    assert len(toy.Square()) == 60 and not toy.Square().jobs.reserved and not toy.Square().jobs.errors
    assert "exited with -9; restarting it" in (tmp_path / "worker-supervisor.log").read_text()
