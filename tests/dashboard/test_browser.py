"""The live dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

The demo chain (the bundled pipeline on the synthetic sample, two training steps) is registered
with one more dataset whose file is missing, and two ``neuropipe worker`` processes make it while
the pipeline graph stays open: its counts rise with no reload.  The missing file's import fails;
its job is opened (message and traceback shown), a read-only dashboard refuses to retry it, and
the acting one retries it with the token once the file exists: the job, queued again at once,
shows pending until a worker is started again, then done.  A dataset's description and the failed job's message carry
markup (``<img onerror>``, ``<script>``) that must stay text.  No console error, no dialog, over
the whole run; screenshots of the graph, a table and the workers are saved in the test's folder,
and copied to ``docs/results/dashboard/`` when ``NEUROPIPE_KEEP_SCREENSHOTS=1`` and the test passes.

Why workers are stopped before the retry: with workers polling every 0.2 s a retried job is
taken within a fraction of a second, too soon for a page refreshed every 2 s to show it pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import uvicorn

from neuropipe import demo
from neuropipe.dashboard.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "dashboard"
TOKEN = "a-long-random-token-for-the-browser-test"
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"
CHAIN_TIMEOUT = 300  # seconds for two workers to make the chain (about 40 s alone on 2 cores)
# Each table's counts, as the page's table of counts shows them: {name: {done: n, pending: n, ...}}.
COUNTS_JS = """() => Object.fromEntries([...document.querySelectorAll('#counts tr[data-table]')].map(row =>
  [row.dataset.table, Object.fromEntries(['done', 'pending', 'running', 'error', 'ignored'].map(
    state => [state, Number(row.querySelector('td.' + state).textContent)]))]))"""
# The jobs a table page lists: [[first key field, status, message], ...].
JOBS_JS = """() => [...document.querySelectorAll('table.jobs tr.job')].map(row =>
  [row.cells[0].textContent, row.querySelector('td.status').textContent,
   row.querySelector('td.message').textContent])"""
MARK_JS = "() => { window.__loadedOnce = performance.timeOrigin; return window.__loadedOnce; }"


def _unavailable(reason: str):
    message = f"dashboard not opened in a browser: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _playwright():
    """Return Playwright's ``sync_playwright``; skip (fail under CI) without it or without Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        _unavailable(f"playwright cannot be imported ({error}); pip install playwright")
    if not CHROMIUM.is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


@contextlib.contextmanager
def serving(*apps):
    """Serve each app with uvicorn on a free port of 127.0.0.1, all in one event loop of a background thread.

    One loop for all: the views read the database synchronously, so requests to either app are
    answered one at a time on the test's one database connection.  Yields the apps' base URLs.
    """
    listening = []
    for _ in apps:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        listening.append(sock)
    servers = [uvicorn.Server(uvicorn.Config(app, log_level="warning")) for app in apps]

    async def serve_all():
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in zip(servers, listening)))

    thread = threading.Thread(target=asyncio.run, args=(serve_all(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not all(server.started for server in servers):
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("the dashboard's server did not start")
            time.sleep(0.05)
        yield [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in listening]
    finally:
        for server in servers:
            server.should_exit = True
        thread.join(timeout=15)
        for sock in listening:
            sock.close()


def start_worker(log: Path, *options: str) -> subprocess.Popen:
    """Start ``neuropipe worker`` on the bundled pipeline (the environment names the test's schemas)."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "neuropipe.cli", "worker", "--poll", "0.2", "--heartbeat", "1",
                                 *options], stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> int:
    """Ask a worker to stop (SIGTERM: it finishes its job first); kill it after 30 s; return its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def worker_logs(folder: Path) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}"
                     for path in sorted(folder.glob("worker*.log")))


def poll(page, predicate, timeout: float, what: str, folder: Path):
    """Call ``predicate()`` every half second (letting the page run) until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        page.wait_for_timeout(500)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{worker_logs(folder)}")


def chain_done(counts: dict) -> bool:
    """Whether the demo chain is made: metrics of both datasets, the broken import failed, nothing left."""
    return (counts["DetectionMetrics"]["done"] == 2 and counts["MembraneMetrics"]["done"] == 2
            and counts["Volume"]["error"] == 1
            and not any(row["pending"] or row["running"] for row in counts.values()))


def watch_the_chain(graph, folder: Path) -> list[dict]:
    """Read the graph's counts from the page until the chain is made; return each different reading."""
    readings = [graph.evaluate(COUNTS_JS)]

    def made():
        counts = graph.evaluate(COUNTS_JS)
        if counts != readings[-1]:
            readings.append(counts)
        return chain_done(counts)

    poll(graph, made, CHAIN_TIMEOUT, "the two workers to make the demo chain", folder)
    return readings


def check_rising(readings: list[dict]) -> None:
    """Counts read from one page load rose step by step to the whole chain: never fell, changed several times."""
    done = [sum(row["done"] for row in counts.values()) for counts in readings]
    assert done == sorted(done) and len(set(done)) >= 4, done
    first, last = readings[0], readings[-1]
    assert first["DetectionMetrics"]["done"] == 0 and first["Volume"]["done"] == 0, first
    assert {name: last[name]["done"] for name in ("Volume", "VolumeBlocks", "MembraneModel", "MembraneMap",
                                                  "CellDetection")} == {"Volume": 2, "VolumeBlocks": 2,
                                                                      "MembraneModel": 1, "MembraneMap": 2,
                                                                      "CellDetection": 2}


def svg_count(page, table: str, state: str) -> int:
    """The count the graph's SVG node of ``table`` shows for ``state``."""
    return int(page.get_attribute(f'a[data-table="{table}"] .count-{state}', "data-count"))


def open_the_error(page, base: str) -> str:
    """From the table's failed jobs, open the broken import's job: its message and traceback; return its URL."""
    page.goto(f"{base}/table/Volume?status=error")
    assert page.locator("[data-live] p").first.inner_text().startswith("1 job(s) with status error")
    (key, status, message), = page.evaluate(JOBS_JS)
    assert (key, status) == ("broken", "error") and message.startswith("BadInputError: source 'file://"), message
    page.locator("tr.job.error a.open").click()
    page.wait_for_url("**/job/Volume?key=*")
    assert page.locator("b.status").inner_text() == "error"
    message = page.locator("#error-message")
    assert message.is_visible() and XSS_SCRIPT in message.inner_text() and "does not exist" in message.inner_text()
    traceback = page.locator("#traceback")
    assert traceback.is_visible() and traceback.inner_text().startswith("Traceback")
    assert "BadInputError" in traceback.inner_text()
    assert page.locator("main script").count() == 0  # the message's <script> is text, not an element
    return page.url


def check_read_only(page, base: str, read_only: str, key_text: str) -> None:
    """The read-only dashboard shows the plan without a form and refuses the POST; a wrong token is refused too."""
    page.goto(f"{read_only}/action/retry?table=Volume&key={quote(key_text)}")
    assert page.locator("#readonly").is_visible() and "Send the failed job" in page.locator("#plan").inner_text()
    assert page.locator("form#confirm").count() == 0 and page.locator("#token").count() == 0
    for target, offered in ((read_only, TOKEN), (base, "wrong"), (base, "")):
        refused = page.request.post(f"{target}/action/retry", form={"table": "Volume", "key": key_text,
                                                                    "token": offered}, max_redirects=0)
        assert refused.status == 403 and "nothing was changed" in refused.text(), (target, offered)


def retry_with_the_token(page, job_url: str) -> None:
    """On the job's page (still failed: nothing was changed), retry it through the form, with the token."""
    page.goto(job_url)
    assert page.locator("b.status").inner_text() == "error"
    page.locator("#retry").click()
    page.wait_for_url("**/action/retry?*")
    assert "Send the failed job" in page.locator("#plan").inner_text()
    page.locator("#token").fill(TOKEN)
    page.locator("#do-it").click()
    page.wait_for_url("**/table/Volume?done=retry&changed=1")


def watch_the_retried_job(table_page, graph, folder: Path) -> list[str]:
    """Follow the broken import's status on the live table page until done; return each status seen."""
    seen = []

    def done():
        status = {key: status for key, status, _ in table_page.evaluate(JOBS_JS)}["broken"]
        if not seen or seen[-1] != status:
            seen.append(status)
        counts = graph.evaluate(COUNTS_JS)["Volume"]
        return status == "success" and counts["done"] == 3 and counts["error"] == 0

    poll(table_page, done, 120, "the retried job to be made", folder)
    return seen


def check_escaped_dataset(page, base: str) -> None:
    """The broken dataset's description, an <img onerror>, shows as text on the Dataset table's page."""
    page.goto(f"{base}/table/Dataset")
    cell = page.get_by_role("cell", name=XSS_IMG, exact=True)
    assert cell.is_visible() and page.locator("main img").count() == 0


def watched(page, problems: list, dialogs: list):
    """Return ``page``, its console errors, uncaught errors and dialogs noted in ``problems`` and ``dialogs``."""
    page.on("console", lambda message: problems.append(f"{message.text} ({message.location.get('url')})")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    def dialog(opened):
        dialogs.append(opened.message)
        opened.dismiss()

    page.on("dialog", dialog)
    return page


def keep_screenshots(shots: dict) -> None:
    """Copy the screenshots into the documentation, where asked (``NEUROPIPE_KEEP_SCREENSHOTS=1``)."""
    if os.environ.get("NEUROPIPE_KEEP_SCREENSHOTS") != "1":
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, path in shots.items():
        shutil.copyfile(path, RESULTS / f"{name}.png")


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_the_live_dashboard_in_chromium(environment, settings, tmp_path):
    sync_playwright = _playwright()
    pipeline = environment
    plan = demo.sample_plan(tmp_path / "samples", iterations=2, minutes=0.5)
    plan.training.update(width=8)  # the smallest budget: two steps of a narrow net
    demo.register(plan)
    missing = tmp_path / f"{XSS_SCRIPT}.npy"  # a file script>.npy in a folder named <script>alert(1)<
    pipeline.volume.Dataset.insert1(dict(dataset="broken", source=f"file://{missing}", description=XSS_IMG))
    key_text = json.dumps({"dataset": "broken"})
    problems, dialogs, workers, shots = [], [], [], {}
    with serving(create_app([pipeline], token=TOKEN), create_app([pipeline], token=None)) as (base, read_only), \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1400, "height": 900})
        try:
            graph, other = (watched(browser.new_page(), problems, dialogs) for _ in range(2))
            graph.goto(base + "/")
            loaded = graph.evaluate(MARK_JS)

            # The graph open while two workers make the chain: its counts rise, the page never reloads.
            workers += [start_worker(tmp_path / f"worker{n}.log") for n in (1, 2)]
            readings = watch_the_chain(graph, tmp_path)
            check_rising(readings)
            assert graph.evaluate("() => window.__loadedOnce") == loaded
            assert svg_count(graph, "MembraneMap", "done") == 2 and svg_count(graph, "Volume", "error") == 1
            assert graph.locator("#updated").inner_text().startswith("updated ")
            shots["graph"] = tmp_path / "graph.png"
            graph.screenshot(path=str(shots["graph"]), full_page=True)

            other.goto(base + "/workers")
            poll(other, lambda: other.locator("tr.alive").count() == 2, 20, "two live workers", tmp_path)
            shots["workers"] = tmp_path / "workers.png"
            other.screenshot(path=str(shots["workers"]), full_page=True)
            assert [stop(process) for process in workers] == [0, 0], worker_logs(tmp_path)
            poll(other, lambda: other.locator("[data-live] p").first.inner_text().startswith("0 alive of 2"), 20,
                 "the stopped workers shown stopped", tmp_path)

            other.goto(base + "/table/Volume")
            shots["table"] = tmp_path / "table.png"
            other.screenshot(path=str(shots["table"]), full_page=True)
            job_url = open_the_error(other, base)
            check_read_only(other, base, read_only, key_text)
            assert graph.evaluate(COUNTS_JS)["Volume"]["error"] == 1  # nothing changed

            # The file appears; the retried job waits, pending, until a worker is there to make it.
            missing.parent.mkdir()
            np.save(missing, np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16))
            retry_with_the_token(other, job_url)
            table_loaded = other.evaluate(MARK_JS)
            assert {key: status for key, status, _ in other.evaluate(JOBS_JS)}["broken"] == "pending"
            workers.append(start_worker(tmp_path / "worker3.log", "--tables", "Volume", "--max-idle", "0"))
            seen = watch_the_retried_job(other, graph, tmp_path)
            assert seen[0] == "pending" and seen[-1] == "success" and set(seen) <= {"pending", "reserved", "success"}
            assert other.evaluate("() => window.__loadedOnce") == table_loaded
            assert graph.evaluate("() => window.__loadedOnce") == loaded
            assert workers[-1].wait(timeout=60) == 0, worker_logs(tmp_path)

            check_escaped_dataset(other, base)
        finally:
            browser.close()
            for process in workers:
                stop(process)
    assert dialogs == [] and problems == []
    assert len(pipeline.volume.Volume & {"dataset": "broken"}) == 1
    assert (pipeline.volume.Volume().jobs & {"dataset": "broken"}).fetch1("status") == "success"
    keep_screenshots(shots)
