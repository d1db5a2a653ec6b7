"""The command line: worker, status, errors and retry on the bundled pipeline."""

import json

import numpy as np
import pytest

from neuropipe.cli import main


@pytest.mark.parametrize("settings", ["mysql"], indirect=True)
def test_worker_status_errors_and_retry(environment, tmp_path, capsys):
    volume = environment.volume
    np.save(tmp_path / "good.npy", np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    volume.Dataset.insert([dict(dataset="good", source=f"file://{tmp_path}/good.npy"),
                           dict(dataset="missing", source=f"file://{tmp_path}/missing.npy")])

    assert main(["worker", "--tables", "Volume", "--max-idle", "0", "--heartbeat", "1"]) == 0
    assert len(volume.Volume()) == 1

    capsys.readouterr()
    assert main(["status", "--tables", "Volume"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("Volume"))
    assert row.split()[1:6] == ["1", "0", "0", "1", "0"]  # done, pending, running, error, ignored
    assert "0 live worker(s)" in out

    assert main(["errors", "--traceback"]) == 0
    out = capsys.readouterr().out
    assert 'Volume {"dataset": "missing"}  (1 attempt(s)' in out  # the key as --key takes it back
    assert "missing.npy does not exist" in out and "Traceback" in out and "1 failed job(s)" in out

    np.save(tmp_path / "missing.npy", np.ones((2, 3, 3), np.uint8) * np.arange(3, dtype=np.uint8))
    assert main(["retry", "--key", json.dumps({"dataset": "missing"})]) == 0
    assert "re-queued 1 failed job(s)" in capsys.readouterr().out
    assert main(["worker", "--tables", "Volume", "--max-idle", "0", "--heartbeat", "1"]) == 0
    assert len(volume.Volume()) == 2 and not volume.Volume().jobs.errors


def test_bad_gpu_spec_is_a_clear_error(capsys):
    assert main(["worker", "--gpus", "first"]) == 2
    assert "expected 'all', 'none' or device indices" in capsys.readouterr().err


@pytest.mark.parametrize("settings", ["mysql"], indirect=True)
def test_stale_lists_and_recomputes_rows_whose_settings_changed(environment, tmp_path, capsys, monkeypatch):
    volume = environment.volume
    np.save(tmp_path / "stack.npy", np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6))
    volume.Dataset.insert1(dict(dataset="stack", source=f"file://{tmp_path}/stack.npy"))
    assert main(["worker", "--tables", "Volume", "--max-idle", "0", "--heartbeat", "1"]) == 0
    capsys.readouterr()
    assert main(["stale", "--tables", "Volume"]) == 0
    assert "0 stale row(s)" in capsys.readouterr().out

    volume.Dataset.update1(dict(dataset="stack", bbox="0:2,0:6,0:6"))  # the dataset edited in place
    assert main(["stale", "--tables", "Volume"]) == 0
    out = capsys.readouterr().out
    assert "Volume" in out and "1 settings changed" in out and "--recompute" in out

    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["stale", "--tables", "Volume", "--recompute"]) == 1
    assert "nothing deleted" in capsys.readouterr().out and len(volume.Volume()) == 1
    assert main(["stale", "--tables", "Volume", "--recompute", "--yes"]) == 0
    assert "deleted 1 from Volume" in capsys.readouterr().out and len(volume.Volume()) == 0
    assert main(["worker", "--tables", "Volume", "--max-idle", "0", "--heartbeat", "1"]) == 0
    assert (volume.Volume & {"dataset": "stack"}).fetch1("depth") == 2
    assert main(["stale", "--tables", "Volume"]) == 0
    assert "0 stale row(s)" in capsys.readouterr().out


def test_provenance_shows_each_rows_record_or_no_record(environment, tmp_path, capsys):
    """A row deleted and made again by stock ``populate()`` shows "no record", in every command that asks."""
    volume = environment.volume
    for name in ("first", "second"):
        np.save(tmp_path / f"{name}.npy", np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6))
        volume.Dataset.insert1(dict(dataset=name, source=f"file://{tmp_path}/{name}.npy"))
    assert main(["worker", "--tables", "Volume", "--max-idle", "0", "--heartbeat", "1"]) == 0
    capsys.readouterr()
    assert main(["provenance", "Volume"]) == 0
    out = capsys.readouterr().out
    assert "2 row(s): 2 with their record, 0 with no record" in out and "(current; neuropipe" in out

    (volume.Volume & {"dataset": "first"}).delete(prompt=False)
    volume.Volume.populate(reserve_jobs=True)  # stock DataJoint remakes it
    assert main(["provenance", "Volume", "--key", json.dumps({"dataset": "first"})]) == 0
    out = capsys.readouterr().out
    assert 'Volume {"dataset": "first"}\n  no record: made outside a neuropipe worker' in out
    assert "1 row(s): 0 with their record, 1 with no record" in out
    assert main(["stale", "--tables", "Volume"]) == 0
    assert "1 stale  (1 no record)" in capsys.readouterr().out
    assert main(["report", "--tables", "Volume", "-o", str(tmp_path / "report.html")]) == 0
    assert "1 row(s) have no provenance record" in (tmp_path / "report.html").read_text()
    assert main(["provenance", "Nothing"]) == 2
    assert "no table 'Nothing' in the pipeline" in capsys.readouterr().err
