"""Neuroglancer links to the layers ``neuropipe view`` serves.

A link carries the whole viewer state in its fragment (``#!{json}``): the layers are
``precomputed://http://HOST:PORT/<dataset>/image`` (and ``probability``, ``labels``), read by
the browser from the local server, so opening one needs the Neuroglancer page from the
network and ``neuropipe view <dataset>`` running.
"""

from __future__ import annotations

import json
import urllib.parse

VIEWER = "https://neuroglancer-demo.appspot.com/"
DEFAULT_PORT = 8765
#: A red overlay whose opacity is the membrane probability.
PROBABILITY_SHADER = ("#uicontrol invlerp normalized(range=[0, 1])\n"
                      "void main() { emitRGBA(vec4(1.0, 0.15, 0.1, normalized())); }")


def layer_url(base_url: str, dataset: str, layer: str) -> str:
    """Return the ``precomputed://`` source of one served layer."""
    return f"precomputed://{base_url.rstrip('/')}/{urllib.parse.quote(dataset)}/{layer}"


def state(base_url: str, dataset: str, layers, shape, voxel_size) -> dict:
    """Return a Neuroglancer state showing ``layers`` of ``dataset``, centred on the volume.

    Parameters
    ----------
    base_url : str
        Where the layers are served, e.g. ``http://127.0.0.1:8765``.
    dataset : str
    layers : sequence of str
        Among ``image``, ``probability`` and ``labels``.
    shape, voxel_size : tuple
        ZYX voxels and nanometres.
    """
    specs = {
        "image": dict(type="image", name="image"),
        "probability": dict(type="image", name="probability", opacity=0.6, shader=PROBABILITY_SHADER),
        "labels": dict(type="segmentation", name="labels", selectedAlpha=0.35),
    }
    return {
        "dimensions": {axis: [size * 1e-9, "m"] for axis, size in zip("xyz", voxel_size[::-1])},
        "position": [extent / 2 for extent in shape[::-1]],
        "layers": [dict(specs[name], source=layer_url(base_url, dataset, name)) for name in layers],
        "layout": "4panel",
    }


def link(base_url: str, dataset: str, layers, shape, voxel_size, *, viewer: str = VIEWER) -> str:
    """Return the Neuroglancer URL of :func:`state`."""
    text = json.dumps(state(base_url, dataset, layers, shape, voxel_size), separators=(",", ":"))
    return f"{viewer}#!{urllib.parse.quote(text, safe='')}"


def base_url(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> str:
    """Return the address ``neuropipe view`` serves at."""
    return f"http://{host}:{port}"
