"""Image panels: the middle z-slice of a volume, its membrane probability and the detected cells.

Only the plane drawn is read (``[z]`` of the lazily sliced stored arrays), and planes wider
than :data:`MAX_PIXELS` are drawn every n-th pixel.
"""

from __future__ import annotations

import numpy as np

from neuropipe.io.stored import open_stored
from neuropipe.reports.plots import data_uri, figure

MAX_PIXELS = 768  # the longest side drawn, in pixels


def planes(result, classes: dict) -> dict:
    """Read the middle plane of a :class:`~neuropipe.reports.results.Result`'s image, map and labels.

    Returns
    -------
    dict
        ``z`` (the plane's index), ``step`` (pixels skipped), ``image`` and, where the result
        has them, ``probability`` and ``labels`` (2D arrays of the same shape).
    """
    z = result.shape[0] // 2
    step = max(1, -(-max(result.shape[1:]) // MAX_PIXELS))
    found = dict(z=z, step=step, image=_plane(classes["Volume"].open_image(result.volume), z, step))
    if result.probability is not None:
        found["probability"] = _plane(_stored(classes["MembraneMap"], result.probability, "probability"), z, step)
    if result.labels is not None:
        found["labels"] = _plane(_stored(classes[result.detection_table], result.labels, "labels"), z, step)
    return found


def _stored(table, key: dict, attribute: str):
    return open_stored((table & key).fetch1(attribute))


def _plane(array, z: int, step: int) -> np.ndarray:
    return np.asarray(array[z])[::step, ::step]


def panel(result, classes: dict) -> str:
    """Draw the image, the membrane probability and the cells over the image; return a PNG data URI."""
    found = planes(result, classes)
    image = found["image"].astype(np.float32)
    low, high = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    aspect = result.voxel_size[1] / result.voxel_size[2]
    shown = [("image", None)] + [(name, found[name]) for name in ("probability", "labels") if name in found]
    fig = figure(4.0 * len(shown) + 0.6, 4.2)
    panels = fig.subplots(1, len(shown), squeeze=False)[0]
    step = found["step"]
    placed = dict(aspect=aspect, interpolation="nearest",  # axes in the volume's voxels, however many are drawn
                  extent=(0, image.shape[1] * step, image.shape[0] * step, 0))
    for axes, (name, values) in zip(panels, shown):
        if name == "probability":
            drawn = axes.imshow(values, cmap="magma", vmin=0, vmax=1, **placed)
            fig.colorbar(drawn, ax=axes, shrink=0.8, label="P(membrane)")
        else:
            axes.imshow(image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), **placed)
        if name == "labels":
            axes.imshow(label_overlay(values), **placed)
        axes.set_title(_title(name, result, values))
        axes.set_xlabel("x (voxels)")
        axes.set_ylabel("y (voxels)")
    every = f"; 1 voxel in {step} drawn" if step > 1 else ""
    size = " x ".join(f"{v:g}" for v in result.voxel_size)
    separator = " " if len(shown) > 1 else "\n"
    fig.suptitle(f"{result.dataset}: z = {found['z']} of {result.shape[0]}{separator}({size} nm voxels{every})")
    return data_uri(fig)


def _title(name: str, result, values) -> str:
    if name == "image":
        return "image"
    if name == "probability":
        return "membrane probability"
    shown = len(np.unique(values[values > 0])) if values is not None else 0
    learned = " (learned)" if result.detection_table == "NucleiDetection" else ""
    return f"cells{learned}: {shown} in this plane, {result.cell_count} in all"


def label_overlay(labels: np.ndarray, *, fill: float = 0.35) -> np.ndarray:
    """Return an RGBA image: each label a colour, translucent inside and opaque on its outline."""
    labels = np.asarray(labels)
    rgba = np.zeros(labels.shape + (4,), np.float32)
    inside = labels > 0
    if not inside.any():
        return rgba
    rgba[inside, :3] = _colours(labels[inside])
    rgba[inside, 3] = fill
    edge = np.zeros_like(inside)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    rgba[edge & inside, 3] = 1.0
    return rgba


def _colours(values: np.ndarray) -> np.ndarray:
    """Return a bright colour per label id, scattered over the hues by a multiplicative hash."""
    from matplotlib.colors import hsv_to_rgb

    hue = ((values.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(1000)).astype(np.float32) / 1000
    hsv = np.stack([hue, np.full_like(hue, 0.85), np.full_like(hue, 1.0)], axis=-1)
    return hsv_to_rgb(hsv)
