"""The notebook's way in: ``neuropipe.connect()`` and ``neuropipe.populate()``, and the worker options declared once."""

import dataclasses

import numpy as np
import pytest

import neuropipe
import schemas
from neuropipe import cli, provenance
from neuropipe.worker import WorkerOptions, registry


@pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)
def test_connect_binds_the_configured_prefix_and_populate_runs_the_worker_loop(environment, settings, tmp_path,
                                                                               capsys):
    """One call binds what the configuration names; one call fills the tables, with progress and tallies."""
    schemas.volume.schema.database = None  # as in a fresh notebook: nothing bound yet
    neuropipe.connect()
    assert schemas.volume.schema.database == settings.schema_prefix + "volume"
    assert registry.Worker.database == settings.schema_prefix + "workers"

    for name in ("first", "second"):
        np.save(tmp_path / f"{name}.npy", np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6))
        schemas.volume.Dataset.insert1(dict(dataset=name, source=f"file://{tmp_path}/{name}.npy"))
    tally = neuropipe.populate({"dataset": "first"}, tables="Volume")
    assert tally["Volume"].made == 1 and set(schemas.volume.Volume.to_arrays("dataset")) == {"first"}
    out = capsys.readouterr().out
    assert "done in" in out and "Volume  1 made" in out
    assert len(provenance.of(schemas.volume.Volume)) == 1  # the worker's own records

    tally = neuropipe.populate(tables=[schemas.volume.Volume], progress=False)
    assert tally["Volume"].made == 1 and capsys.readouterr().out == ""
    assert neuropipe.populate(tables="Volume")["Volume"].made == 0
    assert "nothing to make" in capsys.readouterr().out

    with pytest.raises(TypeError, match="unknown worker option.*max_idel"):
        neuropipe.populate(max_idel=0)


def test_activate_defaults_to_the_configured_prefix(monkeypatch):
    """``schemas.activate()`` without a prefix binds the one the configuration names."""
    captured = []
    monkeypatch.setenv("NEUROPIPE_SCHEMA_PREFIX", "lab7_")
    monkeypatch.setattr(schemas, "bind_schema", lambda schema, name, connection: captured.append(name))
    schemas.activate(connection=object())  # nothing is bound: only the names are looked at
    assert captured == [f"lab7_{module.__name__.rsplit('.', 1)[-1]}" for module in schemas.MODULES]


def test_worker_flags_come_from_the_options_declaration():
    """Every option is a flag with its declared default; a supervisor's child gets the same options."""
    parser = cli._parser()
    assert cli._worker_options(parser.parse_args(["worker"])) == WorkerOptions()
    assert not hasattr(parser.parse_args(["worker"]), "restrictions")

    changed = WorkerOptions(heartbeat=2.5, max_idle=0.0, max_jobs=7, batch=4, provenance=False, retry_backoff=0.5)
    args = parser.parse_args(["worker", *changed.argv()])
    assert cli._worker_options(args) == changed
    assert cli._child_argv(args) == changed.argv()
    assert WorkerOptions().argv() == []
    assert {option.name for option in dataclasses.fields(WorkerOptions)} - {o.name for o in WorkerOptions.flags()} \
        == {"restrictions"}
