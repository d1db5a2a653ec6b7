"""DataJoint's internals that neuropipe relies on: all present, all used from one module only."""

import re
from pathlib import Path

import pytest

from neuropipe import compat
from neuropipe.database import connect, import_datajoint

ROOT = Path(__file__).resolve().parents[1]
dj = import_datajoint()


@pytest.mark.parametrize("settings", ["postgresql", "mysql"], indirect=True)
def test_every_internal_neuropipe_uses_is_there(settings):
    """An upgrade of DataJoint that drops one fails here, naming it, before any worker trips on it."""
    missing = compat.missing_internals(connect(settings))
    assert not missing, f"DataJoint {dj.__version__} lacks what neuropipe.compat uses: {', '.join(missing)}"


def test_a_missing_internal_is_named(monkeypatch):
    from datajoint.autopopulate import AutoPopulate

    monkeypatch.delattr(AutoPopulate, "_has_job_metadata_attrs")
    assert compat.missing_internals() == ["datajoint.autopopulate.AutoPopulate._has_job_metadata_attrs"]
    assert compat.missing_internals(connection=object()) == [
        "datajoint.autopopulate.AutoPopulate._has_job_metadata_attrs",
        *(f"datajoint.Connection (instance).{name}" for owner, name in compat.INTERNALS if owner == "connection")]


def test_no_module_but_compat_touches_datajoint_internals():
    """Each private DataJoint name (and private DataJoint module) appears in neuropipe.compat only."""
    private = sorted({name for _, name in compat.INTERNALS if name.startswith("_") and name != "__init__"}
                     | {"_upstream_key", "_upstream", "_make_tuples"})
    attribute = re.compile(r"\.(" + "|".join(map(re.escape, private)) + r")\b")
    modules = re.compile(r"datajoint\.(lineage|hash_registry|user_tables|heading|storage|autopopulate)\b")
    found = []
    for path in sorted([*(ROOT / "neuropipe").rglob("*.py"), *(ROOT / "schemas").rglob("*.py")]):
        if path.name == "compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if attribute.search(line) or modules.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "DataJoint internals outside neuropipe/compat.py:\n" + "\n".join(found)
