"""A lone CWL CommandLineTool as tables: its files from the input table, its outputs, logs and failures."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("cwltool", reason="CWL support is the cwl extra (pip install 'neuropipe[cwl]')")

from neuropipe.cli import main  # noqa: E402
from neuropipe.errors import BadInputError  # noqa: E402
from neuropipe.provenance.code import code_hash  # noqa: E402
from neuropipe.worker import run_worker  # noqa: E402

SHOUT = """\
#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
doc: The text in capitals, in a file and on standard output.
baseCommand: python3
arguments:
  - -c
  - |
    import sys
    text = open(sys.argv[1]).read().upper() * int(sys.argv[2])
    open("shout.txt", "w").write(text)
    print(text)
    print("shouted", len(text), "characters", file=sys.stderr)
inputs:
  text: {type: File, inputBinding: {position: 1}}
  times: {type: int, default: 1, inputBinding: {position: 2}}
  output_name: {type: string, default: shout.txt}
outputs:
  shouted:
    type: File
    outputBinding: {glob: $(inputs.output_name)}
"""


@pytest.fixture
def shout(environment, settings, tmp_path, monkeypatch):
    """The tool imported as a module (schema of the test's own) with one dataset's text in its input table."""
    tool = tmp_path / "shout.cwl"
    tool.write_text(SHOUT)
    name = f"shout_{settings.schema_prefix.strip('_')}"
    assert main(["cwl", "import", str(tool), "-o", str(tmp_path / f"{name}.py"), "--schema", "shout"]) == 0
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    (tmp_path / "words.txt").write_text("quiet words\n")
    environment.volume.Dataset.insert1(dict(dataset="words", source=f"file://{tmp_path}/words.npy",
                                            voxel_z_nm=1, voxel_y_nm=1, voxel_x_nm=1))
    module.ShoutInput.insert1(dict(dataset="words", text=str(tmp_path / "words.txt")))
    module.tool = tool
    yield module
    module.schema.drop(prompt=False)
    sys.modules.pop(name, None)


def test_a_tool_run_stores_its_file_output_its_stdout_and_stderr(shout):
    assert shout.Shout.primary_key == ["dataset", "shout_id"] and shout.Shout.resources == {}
    twice = shout.ShoutParams.insert_params({"times": 2})
    tally = run_worker([shout.Shout], max_idle=0)
    assert tally["Shout"].made == 2  # the tool's defaults, and twice
    row = (shout.Shout & twice).fetch1()
    assert Path(row["shouted"].full_path).read_text() == "QUIET WORDS\nQUIET WORDS\n"
    assert bytes(row["stdout"]).decode().startswith("QUIET WORDS\nQUIET WORDS")
    assert bytes(row["stderr"]).decode().strip() == "shouted 24 characters"
    assert row["ran_in"] == "host"


def test_an_output_glob_that_matches_nothing_is_a_clear_error_and_no_row(shout):
    shout.ShoutParams.insert_params({"output_name": "elsewhere.txt"})
    run_worker([shout.Shout], max_idle=0)
    assert len(shout.Shout()) == 1  # the defaults' set made; the other
    error = (shout.Shout.jobs & {"status": "error"}).to_dicts()[0]["error_message"]
    assert "shout.cwl failed (permanentFail)" in error
    assert "Did not find output file with glob pattern: ['elsewhere.txt']" in error


def test_settings_are_checked_against_their_cwl_types(shout):
    with pytest.raises(BadInputError, match="times='2' is invalid; it must be an integer"):
        shout.ShoutParams.insert_params({"times": "2"})
    with pytest.raises(BadInputError, match="unknown parameter.*volume"):
        shout.ShoutParams.insert_params({"volume": 1})


def test_editing_the_tool_changes_its_code_hash(shout):
    before = code_hash.__wrapped__(shout.Shout)
    shout.tool.write_text(SHOUT.replace("* int(sys.argv[2])", "* int(sys.argv[2]) + '!'"))
    assert code_hash.__wrapped__(shout.Shout) != before


def test_a_required_setting_without_default_must_be_given(environment, settings, tmp_path, monkeypatch):
    tool = tmp_path / "greet.cwl"
    tool.write_text(textwrap.dedent("""\
        cwlVersion: v1.0
        class: CommandLineTool
        baseCommand: echo
        inputs:
          name: {type: string, inputBinding: {position: 1}}
        outputs: []
        """))
    module_name = f"greet_{settings.schema_prefix.strip('_')}"
    assert main(["cwl", "import", str(tool), "-o", str(tmp_path / f"{module_name}.py"), "--schema", "greet"]) == 0
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(module_name)
    try:
        assert len(module.GreetParams()) == 0  # no defaults' set: `name` has no default
        with pytest.raises(BadInputError, match="step greet needs name"):
            module.GreetParams.insert_params({})
        environment.volume.Dataset.insert1(dict(dataset="d", source="file:///x.npy", voxel_z_nm=1, voxel_y_nm=1,
                                                voxel_x_nm=1))
        module.GreetParams.insert_params({"name": "neuropipe"})
        run_worker([module.Greet], max_idle=0)
        assert bytes(module.Greet.fetch1("stdout")).decode() == "neuropipe\n"
    finally:
        module.schema.drop(prompt=False)
        sys.modules.pop(module_name, None)
