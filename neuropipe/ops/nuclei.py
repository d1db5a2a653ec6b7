"""Nuclei learned from annotated cells: a small 3-D U-Net that predicts where nuclei are and where their centres lie.

Where a lab has labelled nuclei, a network trained on them separates touching nuclei that
no unsupervised map can: in a packed cluster of fluorescent nuclei there is no dark seam
between them, but there is a shape.  In the spirit of StarDist (Schmidt et al., MICCAI
2018) and Cellpose (Stringer et al., Nature Methods 2021), the network predicts two maps:

- *foreground*: the probability that a voxel lies in a nucleus (binary cross-entropy);
- *centres*: each voxel's distance to the boundary of its own nucleus, divided by the
  largest such distance in that nucleus, so 1 at every nucleus's centre whatever its
  size, falling to 0 at its border (mean squared error; :func:`centre_map`).

``detect_cells(foreground, method="learned", centres=centres)`` then takes one cell per
peak of the centre map.  Intensities are normalised per volume (percentiles 1 and 99.8), as
fluorescence brightness varies between acquisitions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from ._network3d import UNet3d, pool_factors
from ._runtime import (
    TrainedModel,
    _autocast,
    _keep_freed_memory,
    _resolve_device,
    _resolve_precision,
    _stopping,
    _threads,
    load_model_bytes,
    model_bytes,
)
from ._validate import as_volume, check_positive, check_positive_int, check_same_shape, check_voxel_size

__all__ = ["NucleiMaps", "NucleiModel", "centre_map", "predict_nuclei", "train_nuclei"]

logger = logging.getLogger(__name__)

_FORMAT = "neuropipe.nuclei_unet"
_FORMAT_VERSION = 1
_LOG_SECONDS = 5.0
_PERCENTILES = (1.0, 99.8)
_MARGIN = 16  # voxels of the finest axis each prediction tile overlaps its neighbours by


@dataclass
class NucleiModel(TrainedModel):
    """A trained nuclei U-Net (see :class:`~neuropipe.ops._runtime.TrainedModel`).

    ``hyperparameters`` holds ``width``, ``factors`` (pooling per level), ``spacing`` (the
    training voxel size relative to its finest axis) and the training settings.
    """

    @property
    def multiple(self):
        """Input sides must be multiples of these (ZYX; tuple of int)."""
        return tuple(int(np.prod([level[axis] for level in self.hyperparameters["factors"]])) for axis in range(3))

    def to_bytes(self):
        """Serialise weights, hyperparameters and history (see :meth:`from_bytes`)."""
        return model_bytes(_FORMAT, _FORMAT_VERSION, self.network, self.hyperparameters, self.history)

    @classmethod
    def from_bytes(cls, data):
        """Rebuild a model serialised by :meth:`to_bytes`, on the CPU in eval mode.

        Raises
        ------
        ValueError
            If ``data`` is not a serialised nuclei model of a known version.
        """
        payload = load_model_bytes(data, _FORMAT, _FORMAT_VERSION, cls.__name__)
        hp = payload["hyperparameters"]
        net = UNet3d(width=hp["width"], factors=hp["factors"])
        net.load_state_dict(payload["state_dict"])
        return cls(network=net.eval(), hyperparameters=dict(hp), history=list(payload["history"]))


@dataclass(frozen=True)
class NucleiMaps:
    """What a nuclei model sees in a volume.

    Attributes
    ----------
    foreground : ndarray of shape (Z, Y, X), float32
        Probability that each voxel lies in a nucleus.
    centres : ndarray of shape (Z, Y, X), float32
        Predicted :func:`centre_map`: about 1 at nucleus centres, 0 at borders and outside.
    """

    foreground: np.ndarray
    centres: np.ndarray


def centre_map(cells, voxel_size=None):
    """Distance of each voxel to its own nucleus's boundary, divided by the largest in that nucleus.

    Parameters
    ----------
    cells : array_like of shape (Z, Y, X), int
        Instance labels, 0 = background.  Touching nuclei are told apart by their labels.
    voxel_size : sequence of 3 float, optional
        Physical voxel size, so distances are measured in physical space.

    Returns
    -------
    ndarray of float32
        In [0, 1]: 1 at the innermost voxels of every nucleus, 0 outside nuclei.

    Examples
    --------
    >>> cells = np.zeros((1, 1, 7), int); cells[0, 0, 1:6] = 1
    >>> centre_map(cells).astype(float).round(2).tolist()
    [[[0.0, 0.33, 0.67, 1.0, 0.67, 0.33, 0.0]]]
    """
    cells = as_volume(cells, "cells")
    spacing = check_voxel_size(voxel_size)
    boundary = np.zeros(cells.shape, bool)  # voxels touching another nucleus
    for axis in range(3):
        here = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        there = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        touching = (cells[here] != cells[there]) & (cells[here] != 0) & (cells[there] != 0)
        boundary[here] |= touching
        boundary[there] |= touching
    inside = (cells != 0) & ~boundary
    if inside.all():  # no boundary in view to measure from
        return np.ones(cells.shape, np.float32)
    # The volume border is no boundary (distances run to the nearest zero in the array),
    # so a nucleus cut by the border peaks at the border, where its centre lies nearest.
    distance = ndimage.distance_transform_edt(inside, sampling=spacing)
    largest = ndimage.maximum(distance, cells, index=np.arange(int(cells.max()) + 1))
    return (distance / np.maximum(np.asarray(largest)[cells], 1e-9)).astype(np.float32)


def _normalise(image):
    """Map the volume's 1st and 99.8th intensity percentiles to 0 and 1 (float32)."""
    lo, hi = np.percentile(image, _PERCENTILES)
    if not hi > lo:
        raise ValueError(f"image is (nearly) constant: its {_PERCENTILES} percentiles are both {lo}")
    return ((np.asarray(image, np.float32) - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)


def _crop_shape(side, spacing, multiple):
    """Return a box of ``side`` voxels of the finest axis (fewer along coarser ones), in multiples of ``multiple``."""
    return tuple(max(m, int(round(side * min(spacing) / step)) // m * m) for step, m in zip(spacing, multiple))


def _pad_to(array, shape):
    """Mirror-pad ``array`` at its end to at least ``shape``."""
    widths = [(0, max(0, want - have)) for have, want in zip(array.shape, shape)]
    return np.pad(array, widths, mode="symmetric") if any(w for _, w in widths) else array


def _sample_batch(rng, image, targets, shape, batch_size, swap_yx):
    """Random crops under random flips (and y/x transposes where pixels are square), with intensity jitter."""
    images, foregrounds, centres = [], [], []
    for _ in range(batch_size):
        start = [int(rng.integers(n - s + 1)) for n, s in zip(image.shape, shape)]
        region = tuple(slice(a, a + s) for a, s in zip(start, shape))
        crop = [image[region], targets[0][region], targets[1][region]]
        flips = tuple(axis for axis in range(3) if rng.random() < 0.5)
        crop = [np.flip(c, flips) if flips else c for c in crop]
        if swap_yx and rng.random() < 0.5:
            crop = [c.transpose(0, 2, 1) for c in crop]
        gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
        images.append(crop[0] * np.float32(gain) + np.float32(offset))
        foregrounds.append(crop[1])
        centres.append(crop[2])
    as_batch = lambda arrays: torch.from_numpy(np.ascontiguousarray(np.stack(arrays)[:, None], np.float32))  # noqa: E731
    return as_batch(images), as_batch(foregrounds), as_batch(centres)


def train_nuclei(image, cells, *, iterations=None, minutes=None, voxel_size=None, device=None, seed=0,
                 progress=True, width=16, levels=2, crop=48, batch_size=2, learning_rate=2e-3,
                 precision="auto", num_threads=None):
    """Train a 3-D U-Net to predict nuclei and their centres from annotated cells.

    Each iteration draws ``batch_size`` random crops, flips them along random axes
    (and swaps y and x where pixels are square), jitters their brightness and contrast
    by up to 20 % and takes an Adam step on binary cross-entropy of the foreground plus
    the mean squared error of the centre map (see the module docstring); the learning
    rate decays to zero along a half cosine over the budget.

    Parameters
    ----------
    image : array_like of shape (Z, Y, X)
        The annotated volume (any real dtype); normalised by its own percentiles.
    cells : array_like of shape (Z, Y, X), int
        Instance labels of the nuclei, 0 = background; at least one nucleus.
    iterations : int, optional
        Maximum number of optimisation steps.
    minutes : float, optional
        Maximum wall-clock training time. Give ``iterations``, ``minutes`` or both.
    voxel_size : sequence of 3 float, optional
        Physical (z, y, x) voxel size.  Thick sections are pooled in y and x first
        (:func:`~neuropipe.ops._network3d.pool_factors`) and crops are shallower in z.
    device : str or torch.device, optional
        Default ``'cuda'`` when available, else ``'cpu'``.
    seed : int, optional
        Seeds weights and crop sampling (torch's global RNG state is restored).
    progress : bool, optional
        Log the loss at INFO level about every 10 % of ``iterations`` (or every 5 s).
    width : int, optional
        Channels of the first level (doubling per level). Default 16.
    levels : int, optional
        Poolings. Default 2 (a receptive field of about 40 voxels: a nucleus and its
        neighbours).
    crop : int, optional
        Crop side along the finest axis, in voxels. Default 48.
    batch_size : int, optional
        Crops per step. Default 2.
    learning_rate : float, optional
        Peak Adam learning rate. Default 2e-3.
    precision : {'auto', 'float32', 'bfloat16'}, optional
        As for :func:`~neuropipe.ops.train_membrane`: bfloat16 autocast where native.
    num_threads : int, optional
        Torch intra-op threads during training (restored afterwards).

    Returns
    -------
    NucleiModel

    Raises
    ------
    ValueError
        On shapes that differ, NaNs, a constant image, no nucleus, or bad settings.

    Examples
    --------
    >>> from neuropipe.ops import make_nuclei
    >>> sample = make_nuclei((16, 32, 32), seed=0)
    >>> model = train_nuclei(sample.image, sample.nuclei, iterations=2, crop=16, width=4, progress=False)
    >>> model.iterations
    2
    """
    image = as_volume(image, "image", allow_bool=False)
    cells = as_volume(cells, "cells")
    check_same_shape(image, cells, "image", "cells")
    if not np.issubdtype(cells.dtype, np.integer) or not cells.any() or cells.min() < 0:
        raise ValueError("cells must be non-negative integer labels with at least one nucleus (0 = background)")
    spacing = np.asarray(check_voxel_size(voxel_size), float)
    spacing = spacing / spacing.min()
    levels = check_positive_int("levels", levels)
    factors = pool_factors(spacing, levels)
    multiple = [int(np.prod([level[axis] for level in factors])) for axis in range(3)]
    shape = _crop_shape(check_positive_int("crop", crop), spacing, multiple)
    batch_size = check_positive_int("batch_size", batch_size)
    learning_rate = check_positive("learning_rate", learning_rate)
    max_steps, max_seconds = _stopping(iterations, minutes)
    device = _resolve_device(device)
    precision = _resolve_precision(precision, device)
    _keep_freed_memory()
    normalised = _pad_to(_normalise(image), shape)
    targets = [_pad_to((cells != 0).astype(np.float32), shape), _pad_to(centre_map(cells, spacing), shape)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNet3d(width=check_positive_int("width", width), factors=factors)
    net = net.to(device).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    log_every = max(1, iterations // 10) if iterations is not None else None
    history = []
    start = last_log = time.perf_counter()
    with _threads(num_threads):
        while not history or (len(history) < max_steps and time.perf_counter() - start < max_seconds):
            done = max(len(history) / max_steps, (time.perf_counter() - start) / max_seconds)
            for group in optimiser.param_groups:
                group["lr"] = learning_rate * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
            xb, fg, centres = (tensor.to(device) for tensor in
                               _sample_batch(rng, normalised, targets, shape, batch_size, spacing[1] == spacing[2]))
            with _autocast(device, precision):
                logits = net(xb).float()
            loss = (F.binary_cross_entropy_with_logits(logits[:, :1], fg)
                    + F.mse_loss(torch.sigmoid(logits[:, 1:]), centres))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            history.append(float(loss.detach()))
            now = time.perf_counter()
            due = len(history) % log_every == 0 if log_every else now - last_log >= _LOG_SECONDS
            if progress and due:
                last_log = now
                logger.info("train_nuclei: iteration %d loss %.4f elapsed %.1f s", len(history), history[-1],
                            now - start)
    hp = {"width": int(width), "factors": [list(level) for level in factors], "spacing": spacing.tolist(),
          "crop": list(shape), "batch_size": batch_size, "learning_rate": learning_rate, "seed": int(seed),
          "precision": precision, "device": str(device), "seconds": float(time.perf_counter() - start)}
    return NucleiModel(network=net.eval(), hyperparameters=hp, history=history)


@torch.no_grad()
def predict_nuclei(model, image, *, tile=96, device=None, precision="auto"):
    """Predict the foreground and centre maps of a volume, tile by tile.

    Tiles overlap by 16 voxels of the finest axis on each side and only their inner part is
    kept, so the tiling barely shows in the maps (the network sees about 20 voxels each
    way; tiles of 40 and 96 differ by under 0.02 in the tests); the volume is mirrored at its border.

    Parameters
    ----------
    model : NucleiModel
    image : array_like of shape (Z, Y, X)
        Normalised by its own percentiles, as in training.
    tile : int, optional
        Tile side along the finest axis, in voxels (fewer along coarser axes). Default 96.
    device : str or torch.device, optional
        Default ``'cuda'`` when available, else ``'cpu'``.
    precision : {'auto', 'float32', 'bfloat16'}, optional
        Arithmetic of the forward pass.

    Returns
    -------
    NucleiMaps

    Raises
    ------
    ValueError
        On a non-finite, empty or constant image, or a ``model`` that is not a NucleiModel.
    """
    if not isinstance(model, NucleiModel):
        raise ValueError(f"model must be a NucleiModel; got {type(model).__name__}")
    image = _normalise(as_volume(image, "image", allow_bool=False))
    spacing = np.asarray(model.hyperparameters["spacing"], float)
    multiple = model.multiple
    margin = [int(math.ceil(_MARGIN / step)) for step in spacing]
    shape = _crop_shape(check_positive_int("tile", tile), spacing, multiple)
    core = [max(1, s - 2 * g) for s, g in zip(shape, margin)]
    shape = [c + 2 * g for c, g in zip(core, margin)]
    shape = [-(-s // m) * m for s, m in zip(shape, multiple)]
    padded = np.pad(image, [(g, s) for g, s in zip(margin, shape)], mode="symmetric")
    device = _resolve_device(device)
    precision = _resolve_precision(precision, device)
    net = model.network.to(device).eval()
    maps = np.zeros((2, *image.shape), np.float32)
    for start in np.ndindex(*[-(-n // c) for n, c in zip(image.shape, core)]):
        lo = [i * c for i, c in zip(start, core)]
        window = padded[tuple(slice(a, a + s) for a, s in zip(lo, shape))]
        with _autocast(device, precision):
            out = torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(window))[None, None].to(device)).float())
        out = out[0].cpu().numpy()
        take = [min(c, n - a) for c, n, a in zip(core, image.shape, lo)]
        maps[(slice(None), *(slice(a, a + t) for a, t in zip(lo, take)))] = \
            out[(slice(None), *(slice(g, g + t) for g, t in zip(margin, take)))]
    return NucleiMaps(foreground=maps[0], centres=maps[1])
