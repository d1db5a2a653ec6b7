"""Reading CWL files: what each input becomes, and every refusal naming its line or feature (no database)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest.importorskip("cwltool", reason="CWL support is the cwl extra (pip install 'neuropipe[cwl]')")

from neuropipe.cli import main  # noqa: E402
from neuropipe.cwl import document  # noqa: E402
from neuropipe.cwl.document import MISSING, CWLError  # noqa: E402

SABER = Path(__file__).resolve().parent / "saber"
TOOL = """\
cwlVersion: {version}
class: CommandLineTool
baseCommand: cat
requirements:
  ResourceRequirement: {{ramMin: 2048, coresMin: 2}}
hints:
  cwltool:CUDARequirement: {{cudaVersionMin: "11.4", cudaComputeCapability: "3.0"}}
$namespaces:
  cwltool: http://commonwl.org/cwltool#
inputs:
  text: {{type: File, inputBinding: {{position: 1}}}}
  mode: {{type: {{type: enum, symbols: [fast, exact]}}, default: fast}}
  repeats: int?
outputs:
  copy: stdout
stdout: copy.txt
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_workflow_step_reads_files_from_upstream_and_settings_with_their_defaults():
    flow = document.load(SABER / "workflow.cwl")
    assert list(flow.steps) == ["boss_pull", "cell_detect", "score"]
    detect = flow.step("cell_detect")
    assert [(item.name, item.source) for item in detect.files] == [("volume", ("step", "boss_pull", "cutout"))]
    settings = {item.name: item for item in detect.settings}
    assert settings["threshold"].default == 0.5  # the workflow input's default
    assert settings["min_voxels"].default == 8 and settings["min_voxels"].optional  # the step's `in` default
    assert "script" not in settings  # the tool's own file, passed as declared
    pull = flow.step("boss_pull")
    host = next(item for item in pull.settings if item.name == "host")
    assert "host" not in settings and host.default is MISSING  # each step its own settings; host: no default
    assert pull.resources == {"memory_gb": 0.5, "cpus": 1} and pull.container == "python:3.11-slim"
    score = flow.step("score")
    assert score.score_format == "F1: {score}" and score.upstream == ["cell_detect"] and score.reads_workflow_files
    assert [item.name for item in flow.file_inputs] == ["annotation"]
    assert {path.name for path in score.source_files()} == {"score.cwl", "score.py"}


@pytest.mark.parametrize("version", ["v1.0", "v1.1", "v1.2"])
def test_a_lone_tool_is_one_step_whose_files_come_from_its_input_table(tmp_path, version):
    tool = document.load(write(tmp_path, f"copy-{version[-1]}.cwl", TOOL.format(version=version)))
    step = tool.step(f"copy_{version[-1]}")
    assert [(item.name, item.source) for item in step.files] == [("text", ("input", "text"))]
    assert [(item.name, item.type, item.symbols, item.default) for item in step.settings] == [
        ("mode", "enum", ("fast", "exact"), "fast"), ("repeats", "int", (), MISSING)]
    assert step.resources == {"memory_gb": 2.0, "cpus": 2, "gpu": True}
    assert [(item.name, item.type) for item in step.outputs] == [("copy", "stdout")]


REFUSED = {
    "an ExpressionTool": ("""\
        cwlVersion: v1.2
        class: ExpressionTool
        requirements: {InlineJavascriptRequirement: {}}
        expression: "${return {};}"
        inputs: []
        outputs: []
        """, "an ExpressionTool is not supported"),
    "JavaScript": ("""\
        cwlVersion: v1.2
        class: CommandLineTool
        requirements: {InlineJavascriptRequirement: {}}
        baseCommand: echo
        inputs: []
        outputs: []
        """, "InlineJavascriptRequirement is not supported"),
    "scatter": ("""\
        cwlVersion: v1.2
        class: Workflow
        requirements: {ScatterFeatureRequirement: {}}
        inputs: {volumes: "File[]"}
        outputs: []
        steps:
          detect:
            run: detect.cwl
            scatter: volume
            in: {volume: volumes}
            out: [cells]
        """, "step detect uses scatter"),
    "a merge of sources": ("""\
        cwlVersion: v1.2
        class: Workflow
        requirements: {MultipleInputFeatureRequirement: {}}
        inputs: {a: File, b: File}
        outputs: []
        steps:
          detect:
            run: detect.cwl
            in: {volume: [a, b]}
            out: [cells]
        """, "merges 2 sources"),
    "a workflow-level requirement": ("""\
        cwlVersion: v1.2
        class: Workflow
        requirements: {DockerRequirement: {dockerPull: "python:3.11"}}
        inputs: {a: File}
        outputs: []
        steps:
          detect:
            run: detect.cwl
            in: {volume: a}
            out: [cells]
        """, "the workflow declares DockerRequirement"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_an_unsupported_feature_is_refused_at_import_by_name(tmp_path, case, capsys):
    for name in ("detect.cwl", "detect.py"):
        (tmp_path / name).write_bytes((SABER / name).read_bytes())
    text, message = REFUSED[case]
    path = write(tmp_path, "flow.cwl", text)
    with pytest.raises(CWLError, match=message):
        document.load(path)
    assert main(["cwl", "import", str(path), "-o", str(tmp_path / "flow.py")]) == 2
    assert message.split()[-1] in capsys.readouterr().err and not (tmp_path / "flow.py").exists()


def test_a_malformed_file_is_refused_naming_its_line(tmp_path):
    broken = write(tmp_path, "broken.cwl", """\
        cwlVersion: v1.2
        class: CommandLineTool
        baseCommand: cat
        inputs:
          text:
            type: Filez
        outputs: []
        """)
    with pytest.raises(CWLError, match=r"broken.cwl:6:\d+: +Field 'type' references unknown identifier 'Filez'"):
        document.load(broken)
    unparsable = write(tmp_path, "unparsable.cwl", "cwlVersion: v1.2\nclass: CommandLineTool\ninputs: [\n  a: 1\n")
    with pytest.raises(CWLError, match=r"unparsable.cwl:\d+:\d+"):
        document.load(unparsable)
    with pytest.raises(CWLError, match="no CWL file at"):
        document.load(tmp_path / "absent.cwl")
