"""The dashboard's pages and actions over HTTP (Starlette's test client), against a real database.

A small pipeline module of plain DataJoint tables is declared in a schema of the test's own:
items, their squares (item 13 fails, with markup in its message), and a worker makes them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from neuropipe.dashboard import data
from neuropipe.dashboard.app import create_app
from neuropipe.database import import_datajoint
from neuropipe.worker import run_worker

dj = import_datajoint()
TOKEN = "a-long-random-token-for-tests"
XSS = "<script>alert(1)</script>"
LAB = '''
import datajoint as dj

schema = None


def declare(target):
    global schema
    schema = target

    @target
    class Item(dj.Manual):
        definition = """
        item : int32
        ---
        label : varchar(64)
        """

    @target
    class Square(dj.Computed):
        definition = """
        -> Item
        ---
        square : int64
        """

        def make(self, key):
            if key["item"] == 13:
                raise ValueError("item 13 is unlucky: <script>alert(1)</script>")
            self.insert1(dict(key, square=key["item"] ** 2))

    globals().update(Item=Item, Square=Square)
'''


@pytest.fixture
def lab(pipeline, settings, tmp_path):
    """The lab module bound to a fresh schema, its items made by a worker (13 failed)."""
    path = tmp_path / "dash_lab.py"
    path.write_text(textwrap.dedent(LAB))
    spec = importlib.util.spec_from_file_location("dash_lab", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dash_lab"] = module
    spec.loader.exec_module(module)
    schema = dj.Schema(settings.schema_prefix + "dashlab", connection=pipeline.volume.Dataset.connection)
    module.declare(schema)
    module.Item.insert([dict(item=n, label=XSS if n == 2 else f"item {n}") for n in range(1, 21)])
    run_worker([module.Square], max_idle=0)
    yield module
    schema.drop(prompt=False)
    sys.modules.pop("dash_lab", None)


@pytest.fixture
def client(lab):
    return TestClient(create_app([lab], token=TOKEN))


def key_url(table: str, key: dict) -> str:
    return f"/job/{table}?key={quote(json.dumps(key))}"


def test_the_graph_counts_done_and_failed_jobs_per_table(lab, client):
    found = {node["name"]: node for node in data.graph([lab.Item, lab.Square])["nodes"]}
    assert found["Square"]["done"] == 19 and found["Square"]["error"] == 1 and found["Item"]["done"] == 20
    assert data.graph([lab.Item, lab.Square])["edges"] == [("Item", "Square")]
    page = client.get("/").text
    assert 'data-table="Square"' in page and '<tspan class="count-done" data-count="19">' in page
    assert 'data-live="/fragment/graph"' in page and client.get("/fragment/graph").status_code == 200


def test_a_table_page_filters_by_status_and_opens_the_error_with_its_traceback(lab, client):
    errors = client.get("/table/Square?status=error").text
    assert "1 job(s) with status error" in errors and "item 13 is unlucky" in errors
    detail = client.get(key_url("Square", {"item": 13})).text
    assert "ValueError" in detail and 'id="traceback"' in detail and "item 13 is unlucky" in detail
    made = client.get(key_url("Square", {"item": 4})).text
    assert "code hash" in made and "(current)" in made  # its provenance record, not stale
    assert client.get("/table/Square?status=error&k.item=4").text.count('class="job error"') == 0


def test_every_value_from_the_database_is_escaped(lab, client):
    for url in ("/table/Square?status=error", key_url("Square", {"item": 13}), "/table/Item", "/timeline"):
        page = client.get(url).text
        assert XSS not in page, url
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get(key_url("Square", {"item": 13})).text


def test_retry_is_shown_first_and_done_only_with_the_token(lab, client):
    preview = client.get("/action/retry?table=Square").text
    assert "Send all 1 failed job(s) of Square back to the queue" in preview and 'name="token"' in preview
    for offered in ({}, {"token": "wrong"}):
        refused = client.post("/action/retry", data={"table": "Square", "key": "{}", **offered},
                              follow_redirects=False)
        assert refused.status_code == 403 and "nothing was changed" in refused.text
        assert len(lab.Square().jobs & {"status": "error"}) == 1
    done = client.post("/action/retry", data={"table": "Square", "key": "{}", "token": TOKEN}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith("/table/Square?done=retry&changed=1")
    assert len(lab.Square().jobs & {"status": "error"}) == 0
    assert all(TOKEN not in client.get(url).text for url in ("/", "/table/Square", "/action/retry?table=Square"))


def test_ignore_needs_a_whole_key_and_a_read_only_dashboard_refuses_every_action(lab):
    read_only = TestClient(create_app([lab], token=None))
    assert 'id="readonly"' in read_only.get(f"/action/ignore?table=Square&key={quote(json.dumps({'item': 13}))}").text
    refused = read_only.post("/action/ignore", data={"table": "Square", "key": json.dumps({"item": 13}),
                                                     "token": TOKEN})
    assert refused.status_code == 403 and len(lab.Square().jobs & {"status": "ignore"}) == 0
    acting = TestClient(create_app([lab], token=TOKEN))
    assert acting.get("/action/ignore?table=Square").status_code == 400  # no key: which job?
    acting.post("/action/ignore", data={"table": "Square", "key": json.dumps({"item": 13}), "token": TOKEN})
    assert len(lab.Square().jobs & {"status": "ignore", "item": 13}) == 1


def test_unknown_tables_and_malformed_keys_are_answered_plainly(client):
    assert client.get("/table/Nope").status_code == 404
    answer = client.get("/job/Square?key=not-json")
    assert answer.status_code == 400 and "the key must be JSON" in answer.text


def test_workers_and_timeline_show_who_made_what(lab, client):
    timeline = client.get("/timeline").text
    assert "<svg" in timeline and "Square" in timeline
    assert [row["table"] for row in data.costs([lab.Square])] == ["Square"]
    assert client.get("/workers").status_code == 200


def test_large_counts_are_the_servers_estimate_and_page_totals_are_capped(lab):
    assert data.row_count(lab.Square) == (19, False)
    estimate, approximate = data.row_count(lab.Square, exact_below=10)
    assert approximate and estimate >= 10  # at least what was counted before giving up
    assert data.capped_count(lab.Square(), cap=5) == (5, True)
    assert data.capped_count(lab.Square(), cap=50) == (19, False)
    page = data.jobs_page(lab.Square, per_page=7, page=1)
    assert len(page["rows"]) == 7 and page["has_next"] and page["total"] == 20 and page["pages"] == 3
    assert [row["item"] for row in page["rows"]] == list(range(13, 6, -1))  # newest key first
