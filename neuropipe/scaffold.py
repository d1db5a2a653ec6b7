"""A starting point: ``neuropipe new NAME`` writes a pipeline module with one step, its test and a notebook.

The three files run as written against the configured database (``dj_local_conf.json`` and
the environment, as every neuropipe command): the module declares its step in a schema of its
own beside the bundled pipeline, the test makes the step on a small volume and compares it
with the function called directly, and the notebook does the same step by step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from neuropipe.errors import BadInputError

MODULE = '''"""{name}: a step of our own, beside neuropipe's bundled pipeline (see docs/steps.md).

Importing this module connects as configured (dj_local_conf.json, the environment) and
declares its tables in the schema ``<prefix>{name}``.
"""

import datajoint as dj
import numpy as np
import scipy.ndimage

import neuropipe
from neuropipe import steps
from neuropipe.config import load_settings

neuropipe.connect()
schema = dj.Schema(load_settings().schema_prefix + "{name}")


@steps.step(schema)
def smoothed(image, *, sigma: float = 1.0) -> np.ndarray:
    """The image smoothed by a 3-D Gaussian of ``sigma`` voxels."""
    return scipy.ndimage.gaussian_filter(np.asarray(image, np.float32), sigma)
'''

TEST = '''"""The step of {name}, made by neuropipe's worker loop on a small volume, against the configured database."""

import uuid

import numpy as np
import scipy.ndimage

import neuropipe
import {name}
from neuropipe.steps import outputs
from schemas import volume


def test_smoothed_is_the_gaussian_of_each_volume(tmp_path):
    image = np.random.default_rng(0).random((4, 24, 24)).astype(np.float32)
    np.save(tmp_path / "stack.npy", image)
    dataset = "{name}_test_" + uuid.uuid4().hex[:8]
    volume.Dataset.insert1(dict(dataset=dataset, source=f"file://{{tmp_path}}/stack.npy",
                                voxel_z_nm=40, voxel_y_nm=4, voxel_x_nm=4))
    try:
        key = {name}.SmoothedParams.insert_params({{"sigma": 2.0}})
        neuropipe.populate({{"dataset": dataset}}, tables=[volume.Volume, {name}.Smoothed], progress=False)
        stored = outputs.open_output({name}.Smoothed, {{"dataset": dataset, **key}}, "smoothed")
        np.testing.assert_allclose(np.asarray(stored), scipy.ndimage.gaussian_filter(image, 2.0), rtol=1e-6)
    finally:
        (volume.Dataset & {{"dataset": dataset}}).delete(prompt=False)
'''

NOTEBOOK_CELLS = [
    ("markdown", "# {name}\n\nOne step of our own (`{name}.py`): a function whose `image` parameter is each "
                 "volume, whose `sigma` is a setting, and whose array result neuropipe stores."),
    ("code", "import numpy as np\nimport matplotlib.pyplot as plt\n\nimport neuropipe\nimport {name}\n"
             "from neuropipe.steps import outputs\nfrom schemas import volume"),
    ("markdown", "A small volume to work on (any source URI works: files, zarr, HDF5, precomputed, BossDB)."),
    ("code", "np.save(\"{name}_sample.npy\", np.random.default_rng(0).random((4, 64, 64)).astype(np.float32))\n"
             "volume.Dataset.insert1(dict(dataset=\"{name}_sample\", source=\"file://\" + "
             "__import__(\"os\").path.abspath(\"{name}_sample.npy\"),\n"
             "                            voxel_z_nm=40, voxel_y_nm=4, voxel_x_nm=4), skip_duplicates=True)"),
    ("markdown", "Two parameter sets (the defaults' set is there already), then the workers' loop, here."),
    ("code", "{name}.SmoothedParams.insert_params({{\"sigma\": 3.0}})\n"
             "neuropipe.populate({{\"dataset\": \"{name}_sample\"}}, tables=[volume.Volume, {name}.Smoothed])\n"
             "{name}.Smoothed()"),
    ("code", "figure, axes = plt.subplots(1, 3, figsize=(9, 3))\n"
             "axes[0].imshow(np.asarray(volume.Volume.open_image({{\"dataset\": \"{name}_sample\"}}))[2], "
             "cmap=\"gray\")\n"
             "for axis, key in zip(axes[1:], ({name}.Smoothed & {{\"dataset\": \"{name}_sample\"}}).keys()):\n"
             "    axis.imshow(np.asarray(outputs.open_output({name}.Smoothed, key, \"smoothed\"))[2], cmap=\"gray\")\n"
             "for axis in axes:\n    axis.set_axis_off()"),
]


def write(name: str, folder: Path) -> list[Path]:
    """Write ``<name>.py``, ``test_<name>.py`` and ``<name>.ipynb`` into ``folder``; return their paths.

    Raises
    ------
    BadInputError
        If ``name`` is not a Python module name, or a file would be overwritten.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or name in ("schemas", "neuropipe", "test"):
        raise BadInputError(f"neuropipe new: {name!r} is not a usable module name (lower-case letters, digits, _)")
    folder = Path(folder)
    files = {folder / f"{name}.py": MODULE.format(name=name), folder / f"test_{name}.py": TEST.format(name=name),
             folder / f"{name}.ipynb": _notebook(name)}
    taken = [str(path) for path in files if path.exists()]
    if taken:
        raise BadInputError(f"neuropipe new: {', '.join(taken)} exist(s); nothing was written")
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    return list(files)


def _notebook(name: str) -> str:
    cells = [{"cell_type": kind, "metadata": {}, "source": text.format(name=name),
              **({"outputs": [], "execution_count": None} if kind == "code" else {})}
             for kind, text in NOTEBOOK_CELLS]
    return json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                   "language": "python"}},
                       "nbformat": 4, "nbformat_minor": 4}, indent=1) + "\n"
