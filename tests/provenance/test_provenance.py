"""Provenance sidecars and staleness, on both servers, with tables made by a real worker.

On the small chain of ``conftest.py``: a Manual table with a value and a Lookup parameter
set, and two computed tables, so edits of settings, rows made by other code and rows
downstream of stale ones can all be seen.
"""

import os
import platform

import pytest

from neuropipe import provenance
from neuropipe.provenance import stale
from neuropipe.worker import run_worker

SERVERS = pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)


@SERVERS
def test_every_row_has_its_provenance(chain):
    """Each row a worker makes has its record: code, versions, worker, times, resources, inputs."""
    (product, doubled), _, factor = chain
    tally = run_worker([product, doubled], max_idle=0)
    assert tally["Product"].made == 6 and tally["Doubled"].made == 6
    records = (product * provenance.of(product)).to_dicts()
    assert len(records) == 6
    commit, dirty = provenance.git_state()
    for record in records:
        assert record["code_hash"] == provenance.code_hash(product)
        assert record["git_commit"] == commit and bool(record["git_dirty"]) == dirty
        assert record["host"] == platform.node() and record["pid"] == os.getpid() and record["worker_id"]
        assert record["end_time"] >= record["start_time"] and 0 <= record["duration"] < 60
        assert record["cpu_seconds"] >= 0 and record["peak_rss_mb"] > 10
        assert record["peak_gpu_mb"] is None
        tables = {entry["table"]: entry["key"] for entry in record["inputs"]}
        assert {name.split(".")[-1].strip('`"') for name in tables} == {"sample", "#factor"}
        assert {"sample": record["sample"]} in tables.values()
    # plain SQL sees the same rows
    sidecar = provenance.of(product)
    count = product.connection.query(f"SELECT COUNT(*) FROM {sidecar.full_table_name}").fetchone()[0]
    assert count == 6
    # the make() source and the kernels' modules are in the hash: another table's differs
    assert provenance.code_hash(doubled) != provenance.code_hash(product)


@SERVERS
def test_worker_without_provenance_writes_none(chain):
    """A worker run with ``--no-provenance`` writes no records; its rows are stale for want of one."""
    (product, doubled), _, _ = chain
    run_worker([product], max_idle=0, provenance=False)
    assert len(product()) == 6 and len(provenance.of(product)) == 0
    found = {rows.name: rows for rows in stale.find_stale([product, doubled])}
    assert found["Product"].counts() == {"no record": 6}


@SERVERS
def test_stale_rows_and_recompute(chain):
    """Edited settings and changed code make rows stale, and what depends on them; recompute remakes them."""
    (product, doubled), sample, factor = chain
    run_worker([product, doubled], max_idle=0)
    assert not any(rows.keys for rows in stale.find_stale([product, doubled]))

    factor.update1(dict(factor_id=2, factor=4.0, note="quadruple"))  # a parameter set edited in place
    sidecar = provenance.of(doubled)
    query = f"UPDATE {sidecar.full_table_name} SET code_hash=%s WHERE sample=%s AND factor_id=%s"
    doubled.connection.query(query, args=("0" * 32, 0, 1))  # as if older code made that row
    found = {rows.name: rows for rows in stale.find_stale([product, doubled])}
    assert found["Product"].counts() == {"settings changed": 3}
    assert sorted(key["sample"] for key in found["Product"].keys) == [0, 1, 2]
    assert all(key["factor_id"] == 2 for key in found["Product"].keys)
    assert found["Doubled"].counts() == {"code changed": 1, "upstream: Product": 3}

    deleted = stale.recompute(list(found.values()))
    assert deleted == {"Product": 3, "Doubled": 4}
    assert len(product()) == 3 and len(doubled()) == 2
    run_worker([product, doubled], max_idle=0)
    assert (product & {"sample": 2, "factor_id": 2}).fetch1("product") == 8.0
    assert (doubled & {"sample": 2, "factor_id": 2}).fetch1("doubled") == 16.0
    assert not any(rows.keys for rows in stale.find_stale([product, doubled]))
