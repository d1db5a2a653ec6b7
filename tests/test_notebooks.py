"""The notebooks run as written: every code cell, in order, against the embedded server."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(notebook, embedded_server, tmp_path, monkeypatch):
    info = embedded_server.ensure_running()
    prefix = f"nbtest_{notebook.stem}_"
    for variable, value in {"DJ_HOST": info.host, "DJ_PORT": str(info.port), "DJ_USER": info.user,
                            "DJ_BACKEND": "postgresql", "NEUROPIPE_SCHEMA_PREFIX": prefix,
                            "NEUROPIPE_STORE": str(tmp_path / "store")}.items():
        monkeypatch.setenv(variable, value)
    namespace = {}
    cells = [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]
    try:
        for number, cell in enumerate(cells, 1):
            exec(compile("".join(cell["source"]), f"{notebook.name} cell {number}", "exec"), namespace)
        tally = namespace.get("tally", {})
        assert all(t.failed == 0 for t in tally.values()), tally
        if "export" in namespace:  # the walkthrough ends by pushing its cells to a precomputed layer
            assert len(namespace["export"].LabelExport()) == tally["LabelExport"].made > 0
    finally:
        import schemas
        from neuropipe import registry

        schemas.drop()
        registry.drop()
