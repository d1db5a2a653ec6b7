"""The notebooks run top to bottom in a real Jupyter kernel (nbclient), against the embedded server.

Each notebook gets schemas of its own (a prefix per notebook) and a fresh store; its
outputs must be stripped in git, so a notebook that was saved with outputs fails here.
"""

import time
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_are_there_with_outputs_stripped():
    import nbformat

    assert [path.name for path in NOTEBOOKS] == ["01_quickstart.ipynb", "02_provenance.ipynb", "03_sweep.ipynb"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and all(not cell.outputs and cell.execution_count is None for cell in code), path.name


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(notebook, embedded_server, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    info = embedded_server.ensure_running()
    prefix = f"nbtest_{notebook.stem}_"
    for variable, value in {"DJ_HOST": info.host, "DJ_PORT": str(info.port), "DJ_USER": info.user,
                            "DJ_BACKEND": "postgresql", "NEUROPIPE_SCHEMA_PREFIX": prefix,
                            "NEUROPIPE_STORE": str(tmp_path / "store")}.items():
        monkeypatch.setenv(variable, value)  # the kernel inherits this process's environment
    document = nbformat.read(notebook, as_version=4)
    started = time.perf_counter()
    try:
        NotebookClient(document, kernel_name="python3", timeout=600,
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        _drop_schemas(prefix, info)
    seconds = time.perf_counter() - started
    errors = [output for cell in document.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors, errors
    pictures = [output for cell in document.cells if cell.cell_type == "code" for output in cell.outputs
                if "image/png" in output.get("data", {})]
    assert pictures or notebook.stem == "02_provenance", f"{notebook.name} shows no picture"
    print(f"{notebook.name}: {seconds:.1f} s")


def _drop_schemas(prefix: str, info) -> None:
    """Drop whatever the notebook's kernel declared under ``prefix``."""
    import schemas
    from neuropipe.config import load_settings
    from neuropipe.database import connect
    from neuropipe.worker import registry

    settings = load_settings()
    connection = connect(settings)
    schemas.activate(prefix, connection)
    registry.activate(prefix, connection)
    schemas.drop()
    registry.drop()
