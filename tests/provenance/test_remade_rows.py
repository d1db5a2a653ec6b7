"""A provenance record describes only the row it was written with: deleted and remade rows never inherit one.

On both servers and the embedded one, rows of the chain (``conftest.py``) made by a real
worker are deleted in each way a user would (``delete()``, DataJoint's cascade from an edited
Lookup row, plain SQL) and made again in each way (stock ``populate()``, by hand, a worker
without provenance, a worker with it).  After each, the provenance join, ``neuropipe stale``'s
finding and the report are checked.
"""

from __future__ import annotations

import os

from neuropipe import provenance
from neuropipe.provenance import stale
from neuropipe.reports import collect, report
from neuropipe.worker import run_worker


def recorded_keys(table) -> set:
    """Return the keys of ``table``'s rows that show a record when joined with their provenance."""
    return {tuple(row.values()) for row in (table.proj() * provenance.of(table).proj()).to_dicts()}


def stale_counts(tables) -> dict:
    """Return what ``neuropipe stale`` finds: per table with stale rows, how many for each reason."""
    return {rows.name: rows.counts() for rows in stale.find_stale(tables) if rows.keys}


def report_of(tables, tmp_path) -> tuple[dict, str]:
    """Write the report of ``tables``; return its "no record" counts per table and its HTML."""
    path = report.write_report(tmp_path / "report.html", tables)
    gathered = report.gather(tables)
    return {row["table"]: row["no_record"] for row in gathered["progress"]}, path.read_text()


def raw_records(table) -> int:
    """Every record in the sidecar, void ones included (what a plain ``SELECT COUNT(*)`` sees)."""
    sidecar = provenance.Sidecar(table)
    return table.connection.query(f"SELECT COUNT(*) FROM {sidecar.full_table_name}").fetchone()[0]


def test_deleted_rows_made_again_by_stock_populate_have_no_record(chain, tmp_path):
    """Deleted by DataJoint, made again by stock populate(): no record; then recomputed by a worker: a fresh one."""
    (product, doubled), _, _ = chain
    run_worker([product, doubled], max_idle=0)
    deleted = {"sample": 0}
    old = {tuple(key.values()): record for key, record in provenance.records(product & deleted)}
    assert len(old) == 2 and all(old.values())

    (product & deleted).delete(prompt=False)  # DataJoint's delete, cascading to Doubled
    assert len(product()) == 4 and len(recorded_keys(product)) == 4 and len(recorded_keys(doubled)) == 4
    product.populate(reserve_jobs=True)  # stock DataJoint, as in a notebook
    doubled.populate()
    assert len(product()) == 6 and len(doubled()) == 6

    assert all((0, factor) not in recorded_keys(product) for factor in (1, 2))
    assert [record for _, record in provenance.records(product & deleted)] == [None, None]
    assert stale_counts([product, doubled]) == {"Product": {"no record": 2}, "Doubled": {"no record": 2}}
    no_record, html = report_of([product, doubled], tmp_path)
    assert no_record == {"Product": 2, "Doubled": 2}
    assert "4 row(s) have no provenance record" in html
    assert len(collect.job_records([product, doubled])) == 8

    # recompute: the rows without a record go, their void records with them, and a worker makes them again
    found = stale.find_stale([product, doubled])
    assert stale.recompute(found) == {"Product": 2, "Doubled": 2}
    assert raw_records(product) == 4 and raw_records(doubled) == 4
    run_worker([product, doubled], max_idle=0)
    fresh = dict((tuple(key.values()), record) for key, record in provenance.records(product & deleted))
    for key, record in fresh.items():
        assert record is not None and record["pid"] == os.getpid()
        assert record["row_id"] != old[key]["row_id"] and record["start_time"] > old[key]["end_time"]
        assert record["code_hash"] == provenance.code_hash(product)
    assert (product & deleted & {"factor_id": 2}).fetch1("product") == 0.0
    assert stale_counts([product, doubled]) == {}
    no_record, html = report_of([product, doubled], tmp_path)
    assert no_record == {"Product": 0, "Doubled": 0} and "have no provenance record" not in html
    assert len(collect.job_records([product, doubled])) == 12


def test_rows_deleted_by_cascade_from_an_edited_lookup_row_have_no_record(chain, tmp_path):
    """A parameter set deleted (cascading to its results), edited, re-inserted, its rows remade by stock DataJoint."""
    (product, doubled), _, factor = chain
    run_worker([product, doubled], max_idle=0)
    (factor & {"factor_id": 2}).delete(prompt=False)  # cascades: three Product and three Doubled rows
    factor.insert1(dict(factor_id=2, factor=5.0, note="quintuple"))
    product.populate()
    doubled.populate()

    assert {key[1] for key in recorded_keys(product)} == {1}
    assert stale_counts([product, doubled]) == {"Product": {"no record": 3}, "Doubled": {"no record": 3}}
    assert report_of([product, doubled], tmp_path)[0] == {"Product": 3, "Doubled": 3}

    stale.recompute(stale.find_stale([product, doubled]))
    run_worker([product, doubled], max_idle=0)
    assert len(recorded_keys(product)) == 6 and len(recorded_keys(doubled)) == 6
    assert (doubled & {"sample": 2, "factor_id": 2}).fetch1("doubled") == 20.0
    assert stale_counts([product, doubled]) == {}  # the new records carry the edited parameter set's hash
    assert report_of([product, doubled], tmp_path)[0] == {"Product": 0, "Doubled": 0}


def test_rows_made_again_without_provenance_have_no_record(chain, tmp_path):
    """Rows remade by a worker run with ``--no-provenance`` do not take over the records of the rows before them."""
    (product, doubled), _, _ = chain
    run_worker([product, doubled], max_idle=0)
    (product & {"sample": 1}).delete(prompt=False)
    tally = run_worker([product, doubled], max_idle=0, provenance=False)
    assert tally["Product"].made == 2 and tally["Doubled"].made == 2

    assert {key[0] for key in recorded_keys(product)} == {0, 2}
    assert [record for _, record in provenance.records(doubled & {"sample": 1})] == [None, None]
    assert stale_counts([product, doubled]) == {"Product": {"no record": 2}, "Doubled": {"no record": 2}}
    no_record, html = report_of([product, doubled], tmp_path)
    assert no_record == {"Product": 2, "Doubled": 2} and "4 row(s) have no provenance record" in html


def test_rows_deleted_and_inserted_in_plain_sql_have_no_record(chain):
    """Plain SQL deletes and an insert by hand: the old records void, then purged."""
    (product, doubled), _, _ = chain
    run_worker([product, doubled], max_idle=0)
    connection = product.connection
    for table in (doubled, product):  # children first: the foreign key restricts
        connection.query(f"DELETE FROM {table.full_table_name} WHERE sample=2")
    product.insert1(dict(sample=2, factor_id=1, product=4.0), allow_direct_insert=True)  # by hand

    assert (2, 1) not in recorded_keys(product) and len(recorded_keys(product)) == 4
    assert provenance.records(product & {"sample": 2}) == [({"sample": 2, "factor_id": 1}, None)]
    assert stale_counts([product, doubled])["Product"] == {"no record": 1}
    assert provenance.coverage(product) == dict(rows=5, recorded=4, no_record=1)
    provenance.Sidecar(product).purge()  # the two records of the deleted rows are reclaimed
    assert raw_records(product) == 4 and len(recorded_keys(product)) == 4


def test_records_written_before_rows_had_ids_do_not_count(chain):
    """A sidecar and table of an older neuropipe (no ``row_id``, no ``_row_id``): its records cannot be trusted."""
    (product, doubled), sample, _ = chain
    run_worker([product], max_idle=0)
    quote = product.connection.adapter.quote_identifier
    sidecar = provenance.Sidecar(product)
    product.connection.query(f"ALTER TABLE {sidecar.full_table_name} DROP COLUMN {quote('row_id')}")
    product.connection.query(f"ALTER TABLE {product.full_table_name} DROP COLUMN {quote('_row_id')}")

    assert len(provenance.of(product)) == 0 and raw_records(product) == 6  # kept, but none counts
    assert stale_counts([product]) == {"Product": {"no record": 6}}
    sample.insert1((3, 3.0))
    run_worker([product], max_idle=0)  # gives the table its ids again; the new rows have records
    assert {key[0] for key in recorded_keys(product)} == {3}
    assert provenance.Sidecar(product).purge() == 6 and raw_records(product) == 2
