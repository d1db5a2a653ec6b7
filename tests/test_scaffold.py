"""``neuropipe new``: the module, test and notebook it writes run as written against the configured database."""

import os
import subprocess
import sys

import pytest

from neuropipe.cli import main
from neuropipe.database import import_datajoint


@pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)
def test_new_writes_a_step_its_test_and_a_notebook_that_run_as_written(environment, settings, tmp_path, capsys):
    import nbformat
    from nbclient import NotebookClient

    folder = tmp_path / "lab"
    assert main(["new", "retina", "--dir", str(folder)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(path.name for path in folder.iterdir()) == ["retina.ipynb", "retina.py", "test_retina.py"]
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_retina.py"],
                             cwd=folder, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *sys.path])})
        assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]

        notebook = nbformat.read(folder / "retina.ipynb", as_version=4)
        NotebookClient(notebook, kernel_name="python3", timeout=300,
                       resources={"metadata": {"path": str(folder)}}).execute()
        outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
        assert not [output for output in outputs if output.output_type == "error"]
        assert any("image/png" in output.get("data", {}) for output in outputs)
    finally:
        dj = import_datajoint()
        dj.Schema(settings.schema_prefix + "retina", create_schema=False).drop(prompt=False)


def test_new_refuses_a_bad_name_and_never_overwrites(tmp_path, capsys):
    assert main(["new", "My Lab", "--dir", str(tmp_path)]) == 2
    assert "'My Lab' is not a usable module name" in capsys.readouterr().err
    (tmp_path / "retina.py").write_text("# ours\n")
    assert main(["new", "retina", "--dir", str(tmp_path)]) == 2
    assert "exist(s); nothing was written" in capsys.readouterr().err
    assert (tmp_path / "retina.py").read_text() == "# ours\n" and not (tmp_path / "test_retina.py").exists()
