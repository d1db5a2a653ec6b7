"""``neuropipe report`` and ``neuropipe view`` on a real run of the chain, and the report in a real Chromium.

One run of the demo chain on the synthetic sample (20 training steps), with a sweep of three
detection thresholds and one dataset whose file is missing (an error), made by two real
workers: a ``neuropipe worker`` process imports the volumes, a worker in this process does the
rest.  The report is then checked against the database, served layers against the stored
arrays, and the HTML file is opened in headless Chromium (Debian's, driven by Playwright).
"""

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from neuropipe import demo, provenance
from neuropipe.cli import main
from neuropipe.errors import BadInputError
from neuropipe.io.stored import open_stored
from neuropipe.pipeline import pipeline_tables
from neuropipe.reports import viewer
from neuropipe.worker import run_worker

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
THRESHOLDS = (0.3, 0.5, 0.7)  # the sample plan's detection threshold is 0.5
SECTIONS = ("progress", "timeline", "resources", "errors", "scores", "images", "neuroglancer")



def run_chain(pipeline, folder: Path) -> int:
    """Register the sample, a detection sweep and a broken dataset; populate with two workers.

    Returns the pid of the ``neuropipe worker`` process.
    """
    plan = demo.sample_plan(folder, iterations=20, minutes=1.0)
    plan.training.update(width=8, learning_rate=3e-3)  # a quarter of the default net's work; maps still fair
    demo.register(plan)
    for threshold in THRESHOLDS:
        pipeline.detection.DetectionParams.insert_params({**plan.detection, "threshold": threshold}, "sweep")
    pipeline.volume.Dataset.insert1(dict(dataset="broken", source=f"file://{folder}/missing.npy"))
    child = subprocess.run([sys.executable, "-m", "neuropipe.cli", "worker", "--tables", "Volume", "--tables",
                            "VolumeBlocks", "--tables", "AnnotationVolume", "--max-idle", "0", "--heartbeat", "1",
                            "--poll", "0.5"], capture_output=True, text=True, timeout=180)
    assert child.returncode == 0, child.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steady on a busy machine, where two threads spinning against other work take 10x longer
    try:
        tally = run_worker(pipeline_tables(pipeline.CHAIN), max_idle=0)
    finally:
        torch.set_num_threads(threads)
    assert not any(t.errors for t in tally.values()), {name: t.errors for name, t in tally.items() if t.errors}
    pids = set((provenance.of(pipeline.volume.Volume)).to_arrays("pid")) - {os.getpid()}
    assert len(pids) == 1
    return int(pids.pop())


def made_by(pipeline, pid: int) -> int:
    """Return how many rows of the chain the process ``pid`` made, by their provenance records."""
    return sum(len(provenance.of(table) & f"pid={pid}") for table in pipeline_tables(pipeline.CHAIN))


class Tags(HTMLParser):
    """Collects the attributes of every tag, the text of every table cell by row, and ids."""

    def __init__(self):
        super().__init__()
        self.tags, self.rows, self.ids, self.h3 = [], [], set(), []
        self._cell, self._in = None, None

    def handle_starttag(self, tag, attrs):
        """Record the tag and open a row, cell or heading."""
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "h3":
            self._in = ""

    def handle_endtag(self, tag):
        """Close a cell or heading."""
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None
        elif tag == "h3" and self._in is not None:
            self.h3.append(self._in.strip())
            self._in = None

    def handle_data(self, data):
        """Add text to the open cell or heading."""
        if self._cell is not None:
            self._cell += data
        if self._in is not None:
            self._in += data

    def row(self, *first) -> list[str]:
        """Return the first table row whose leading cells are ``first``."""
        found = [row for row in self.rows if tuple(row[:len(first)]) == first]
        assert found, f"no table row starts with {first}; rows: {self.rows}"
        return found[0]


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_report_and_viewer_on_a_real_run(environment, settings, tmp_path):
    """The report holds the database's numbers and nothing external; view serves the stored arrays."""
    pipeline = environment
    started = time.perf_counter()
    child_pid = run_chain(pipeline, tmp_path / "sample")
    volume, detection, metrics = pipeline.volume, pipeline.detection, pipeline.metrics

    report = tmp_path / "out" / "report.html"
    assert main(["report", "-o", str(report), "--port", "8765"]) == 0
    document = report.read_text()
    parsed = Tags()
    parsed.feed(document)

    # One file that needs nothing else: no script, stylesheet, image or icon from anywhere but itself.
    for tag, attrs in parsed.tags:
        if tag in ("script", "link", "img", "iframe", "source", "embed"):
            for name in ("src", "href"):
                assert not re.match(r"\s*(https?:)?//", attrs.get(name) or ""), (tag, attrs)
    assert not any(tag == "script" for tag, _ in parsed.tags)
    assert "@import" not in document and "url(" not in document
    assert set(SECTIONS) <= parsed.ids

    # Progress, from the job tables: the broken dataset's import failed, everything else is done.
    assert parsed.row("Volume")[1:5] == ["2", "0", "0", "1"]  # done, pending, running, error
    assert parsed.row("CellDetection")[1:5] == ["6", "0", "0", "0"]  # 2 datasets x 3 thresholds
    assert parsed.row("DetectionMetrics")[1:5] == ["6", "0", "0", "0"]
    assert parsed.row("DetectionBlock", "sample_eval")[2] == "3/3"

    # The error, with the message the database holds.
    message = (volume.Volume().jobs & {"dataset": "broken"}).fetch1("error_message")
    assert "missing.npy" in message
    errors = parsed.row("Volume", json.dumps({"dataset": "broken"}))
    assert errors[2].startswith(message) and errors[3] == "1"

    # Timeline and resources: both workers, with the jobs their provenance records hold.
    host = platform.node()
    assert made_by(pipeline, child_pid) == 6  # 2 volumes, 2 block grids, 2 annotations
    assert parsed.row(f"{host}:{child_pid}")[1] == "6"
    assert parsed.row(f"{host}:{os.getpid()}")[1] == str(made_by(pipeline, os.getpid())) == "25"
    duration = provenance.of(pipeline.membrane.MembraneModel).fetch1("duration")
    parsed.row("MembraneModel", "1", f"{duration:.3f} / {duration:.3f}")  # jobs, wall s (median / max)

    # Scores against the swept threshold, each F1 as in the database.
    scored = (metrics.DetectionMetrics * detection.DetectionParams).to_dicts()
    assert len(scored) == 6
    for row in scored:
        threshold = row["params"]["threshold"]
        assert parsed.row(row["dataset"], f"{threshold:.4f}")[-1] == f"{row['f1']:.3f}"
    assert "DetectionMetrics (6 rows)" in parsed.h3 and "MembraneMetrics (2 rows)" in parsed.h3

    # Image panels of both datasets, and every image an inline PNG.
    assert {"sample_train", "sample_eval"} <= set(parsed.h3)
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 6  # timeline, resources, 2 score plots, 2 panels
    assert all(attrs["src"].startswith("data:image/png;base64,") for attrs in images)
    best = (metrics.DetectionMetrics & {"dataset": "sample_eval"}).to_dicts(order_by="f1 DESC", limit=1)[0]
    cells = (detection.CellDetection & best).fetch1("cell_count")
    assert f"{cells} cells detected (CellDetection), detection F1 {best['f1']:.3f}" in document

    # Neuroglancer links to what `neuropipe view` serves.
    links = [attrs["href"] for tag, attrs in parsed.tags if tag == "a" and "neuroglancer" in attrs.get("href", "")]
    state = json.loads(urllib.parse.unquote(links[-1].split("#!", 1)[1]))
    assert [layer["source"] for layer in state["layers"]] == [
        f"precomputed://http://127.0.0.1:8765/sample_train/{name}" for name in ("image", "probability", "labels")]
    assert state["layers"][2]["type"] == "segmentation"

    check_viewer(pipeline, tmp_path / "cache", best)
    check_view_command(settings)
    print(f"run, report and viewer: {time.perf_counter() - started:.1f} s")
    server, url = viewer.serve_dataset("sample_eval", pipeline_tables(pipeline.CHAIN), tmp_path / "cache", port=0)
    try:
        open_in_chromium(report, tmp_path, served=f"{url}/sample_eval/labels/info")
    finally:
        server.stop()


def check_viewer(pipeline, cache: Path, best: dict) -> None:
    """Serve sample_eval; its layers' info and chunks are the stored arrays, with CORS open."""
    tables = pipeline_tables(pipeline.CHAIN)
    server, url = viewer.serve_dataset("sample_eval", tables, cache, port=0)
    try:
        info, headers = _get_json(f"{url}/sample_eval/image/info")
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert info["type"] == "image" and info["data_type"] == "uint8"
        (scale,) = info["scales"]
        assert scale["size"] == [128, 128, 24] and scale["resolution"] == [1, 1, 1] and scale["encoding"] == "raw"
        image = np.asarray(pipeline.volume.Volume.open_image({"dataset": "sample_eval"}))
        chunk = _get(f"{url}/sample_eval/image/{scale['key']}/0-128_0-128_0-16")
        np.testing.assert_array_equal(np.frombuffer(chunk, np.uint8).reshape(16, 128, 128), image[:16])

        labels_info, _ = _get_json(f"{url}/sample_eval/labels/info")
        assert labels_info["type"] == "segmentation" and labels_info["data_type"] == "uint32"
        labels = np.asarray(open_stored((pipeline.detection.CellDetection & best).fetch1("labels")))
        chunk = _get(f"{url}/sample_eval/labels/{labels_info['scales'][0]['key']}/0-128_0-128_16-24")
        np.testing.assert_array_equal(np.frombuffer(chunk, np.uint32).reshape(8, 128, 128), labels[16:])
        probability_info, _ = _get_json(f"{url}/sample_eval/probability/info")
        assert probability_info["data_type"] == "float32"

        preflight = urllib.request.urlopen(urllib.request.Request(f"{url}/sample_eval/image/info", method="OPTIONS"))
        assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "precomputed%3A%2F%2Fhttp%3A%2F%2F127.0.0.1" in server.link
    finally:
        server.stop()
    stamp = cache / "sample_eval" / "labels" / viewer.STAMP
    written = stamp.stat().st_mtime_ns
    server, _ = viewer.serve_dataset("sample_eval", tables, cache, port=0)  # the cached layers are kept
    server.stop()
    assert stamp.stat().st_mtime_ns == written


def check_view_command(settings) -> None:
    """`neuropipe view` serves from the store's cache, prints the link, and stops on Ctrl-C."""
    process = subprocess.Popen([sys.executable, "-m", "neuropipe.cli", "view", "sample_train", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # SIGABRT prints every thread
    watchdog = threading.Timer(120, process.kill)  # a hung command fails the test instead of stalling it
    watchdog.start()
    try:
        serving = process.stdout.readline()
        link = process.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+)/sample_train/", serving)
        assert match, (serving, process.stderr.read() if process.poll() is not None else "")
        assert link.startswith("Neuroglancer: https://neuroglancer-demo.appspot.com/#!")
        info, headers = _get_json(f"{match.group(1)}/sample_train/labels/info")
        assert info["type"] == "segmentation" and headers["Access-Control-Allow-Origin"] == "*"
        assert (viewer.cache_folder(settings) / "sample_train" / "probability" / "info").is_file()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            status = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=30)
            pytest.fail("`neuropipe view` did not stop within 60 s of Ctrl-C; its threads:\n"
                        + process.stderr.read()[-6000:])
        finally:
            watchdog.cancel()
    assert status == 0, process.stderr.read()[-3000:]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read()), response.headers


def _unavailable(reason: str):
    message = f"report not opened in a browser: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def open_in_chromium(report: Path, tmp_path: Path, served: str) -> None:
    """Open the report in headless Chromium: no console errors, no request leaves the file, every plot drawn.

    Then, from the report's page (another origin), fetch a layer's ``info`` from the viewer
    at ``served``, as Neuroglancer does: the browser lets the page read it only under CORS.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        _unavailable(f"playwright cannot be imported ({error}); pip install playwright")
    if not CHROMIUM.is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    problems, requests = [], []
    with sync_playwright() as playwright:
        # A fresh profile: Playwright passes it to Chromium as --user-data-dir.
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1280, "height": 900})
        try:
            page = browser.new_page()
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            drawn = page.eval_on_selector_all(
                "img", "images => images.map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.width, i.alt])")
            title = page.title()
            page.screenshot(path=str(tmp_path / "report-screenshot.png"), full_page=True)
            loaded = list(requests)
            cross_origin = page.evaluate("async url => { const r = await fetch(url); return [r.status, "
                                         "(await r.json()).type]; }", served)
        finally:
            browser.close()
    assert problems == []
    assert all(url.startswith(("file:", "data:")) for url in loaded), loaded
    assert cross_origin == [200, "segmentation"]
    assert title == "neuropipe report" and len(drawn) == 6
    for complete, width, height, shown, alt in drawn:
        assert complete and width > 100 and height > 100 and shown > 100, alt
    if os.environ.get("NEUROPIPE_SCREENSHOT"):  # a copy where the caller wants it (never into the repository)
        shutil.copyfile(tmp_path / "report-screenshot.png", os.environ["NEUROPIPE_SCREENSHOT"])


@pytest.mark.parametrize("settings", ["mysql"], indirect=True)
def test_report_and_viewer_of_volumes_alone(pipeline, tmp_path):
    """Before any map or score, without provenance records: the sections say so; the image alone is served."""
    np.save(tmp_path / "stack.npy", (np.arange(20 * 40 * 50) % 251).astype(np.uint16).reshape(20, 40, 50))
    pipeline.volume.Dataset.insert1(dict(dataset="stack", source=f"file://{tmp_path}/stack.npy", voxel_z_nm=30,
                                         voxel_y_nm=4, voxel_x_nm=4))
    tables = pipeline_tables(pipeline.CHAIN)
    run_worker(tables, max_idle=0, provenance=False)

    from neuropipe.reports import write_report

    document = write_report(tmp_path / "report.html", tables, port=9000).read_text()
    parsed = Tags()
    parsed.feed(document)
    assert parsed.row("Volume")[1:5] == ["1", "0", "0", "0"]
    assert "No scores yet (no metrics rows)." in document and "No failed jobs." in document
    assert "No dataset has a membrane map or detections yet." in document
    assert "From job tables (server clock; no provenance records)." in document
    assert parsed.row(f"{platform.node()}:{os.getpid()}")[1] == "2"  # Volume and VolumeBlocks
    assert parsed.row("stack")[1:3] == ["20 x 40 x 50", "image"]
    assert "precomputed%3A%2F%2Fhttp%3A%2F%2F127.0.0.1%3A9000%2Fstack%2Fimage" in document

    server, url = viewer.serve_dataset("stack", tables, tmp_path / "cache", port=0)
    try:
        info, _ = _get_json(f"{url}/stack/image/info")
        assert info["data_type"] == "uint16" and info["scales"][0]["resolution"] == [4, 4, 30]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(f"{url}/stack/labels/info")
    finally:
        server.stop()
    with pytest.raises(BadInputError, match="'nothing' has no imported volume"):
        viewer.serve_dataset("nothing", tables, tmp_path / "cache", port=0)


def test_layers_are_written_block_by_block(tmp_path, monkeypatch):
    """A layer is copied one block at a time (never the whole volume), lands exactly, and is kept when unchanged."""
    import tensorstore

    monkeypatch.setattr(viewer, "WRITE_BLOCK", (16, 128, 128))
    volume = np.random.default_rng(1).integers(0, 70000, (40, 200, 300)).astype(np.uint32)

    class Counted:  # an array that records the size of every read
        shape, dtype, reads = volume.shape, volume.dtype, []

        def __getitem__(self, box):
            self.reads.append(volume[box].size)
            return volume[box]

    source = Counted()
    stamp = {"key": {"dataset": "x"}, "path": "a"}
    assert viewer.write_layer(tmp_path / "labels", source, kind="segmentation", voxel_size=(30, 4, 4), stamp=stamp)
    assert len(source.reads) == 3 * 2 * 3 and max(source.reads) == 16 * 128 * 128
    stored = tensorstore.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{tmp_path}/labels"}).result()
    np.testing.assert_array_equal(np.transpose(stored[..., 0].read().result(), (2, 1, 0)), volume)
    info = json.loads((tmp_path / "labels" / "info").read_text())
    assert info["type"] == "segmentation" and info["scales"][0]["resolution"] == [4, 4, 30]
    assert not viewer.write_layer(tmp_path / "labels", source, kind="segmentation", voxel_size=(30, 4, 4),
                                  stamp=stamp)  # the same source: kept
    assert viewer.write_layer(tmp_path / "labels", source, kind="segmentation", voxel_size=(30, 4, 4),
                              stamp={**stamp, "path": "b"})  # a new version: written again
    assert not list(tmp_path.glob(".*partial"))
