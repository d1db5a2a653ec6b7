"""Membrane segmentation with a small 2-D U-Net: training, tiled prediction (whole or block by block), storage.

Z slices of a ZYX stack are treated as independent 2-D images.  The trained
network is wrapped in :class:`MembraneModel`, which carries the intensity
normalisation and hyperparameters and serialises to bytes for a database.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ._network import UNet2d, pad_to_multiple
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
from ._validate import (
    as_volume,
    check_nonnegative,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
    check_same_shape,
)
from .grid import Box, Piece, slices

__all__ = ["UNet2d", "MembraneModel", "MembraneTiling", "train_membrane", "predict_membrane", "predict_membrane_block"]

logger = logging.getLogger(__name__)

_FORMAT = "neuropipe.membrane_unet"
_FORMAT_VERSION = 1
_LOG_SECONDS = 5.0


@dataclass
class MembraneModel(TrainedModel):
    """A trained membrane U-Net together with what is needed to apply it.

    Attributes
    ----------
    network : UNet2d
        The torch module, in eval mode.
    hyperparameters : dict
        Plain python values: ``width``, ``depth``, ``norm``, ``upsample``,
        ``mean`` and ``std`` (intensity normalisation of the training images)
        and, for the record, the training settings, ``device`` and
        ``seconds``.
    history : list of float
        Training loss per iteration.
    """

    @property
    def mean(self):
        """Training-set intensity mean used for normalisation (float)."""
        return float(self.hyperparameters["mean"])

    @property
    def std(self):
        """Training-set intensity standard deviation used for normalisation (float)."""
        return float(self.hyperparameters["std"])

    @property
    def context(self):
        """Neighbouring slices on each side the network sees (int; 0 for models saved before it was one)."""
        return int(self.hyperparameters.get("context", 0))

    def to_bytes(self):
        """Serialise weights, hyperparameters and history with :func:`torch.save`.

        Returns
        -------
        bytes
            Loadable with ``torch.load(..., weights_only=True)`` and by
            :meth:`from_bytes`.
        """
        return model_bytes(_FORMAT, _FORMAT_VERSION, self.network, self.hyperparameters, self.history)

    @classmethod
    def from_bytes(cls, data):
        """Rebuild a model serialised by :meth:`to_bytes`, on the CPU in eval mode.

        Parameters
        ----------
        data : bytes
            Output of :meth:`to_bytes`.

        Returns
        -------
        MembraneModel

        Raises
        ------
        ValueError
            If ``data`` is not a serialised membrane model of a known version.
        """
        payload = load_model_bytes(data, _FORMAT, _FORMAT_VERSION, cls.__name__)
        hp = payload["hyperparameters"]
        net = UNet2d(width=hp["width"], depth=hp["depth"], norm=hp["norm"], upsample=hp["upsample"],
                     in_channels=2 * hp.get("context", 0) + 1)
        net.load_state_dict(payload["state_dict"])
        net.eval()
        return cls(network=net, hyperparameters=dict(hp), history=list(payload["history"]))


SCHEDULES = ("constant", "cosine")
NORMALISATIONS = ("stack", "slice")
DEFAULT_VALIDATION = 2  # slices held out to choose the checkpoint, by default ...
MIN_SLICES_TO_VALIDATE = 10  # ... where the stack has at least this many


def _training_data(images, labels):
    """Validate the training stack; return (normalised float32 images, bool labels, mean, std)."""
    images = as_volume(images, "images", allow_bool=False)
    labels = as_volume(labels, "labels")
    check_same_shape(images, labels, "images", "labels")
    if labels.dtype != np.bool_:
        values = np.unique(labels)
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(
                f"labels must be boolean (True = membrane); got dtype {labels.dtype} "
                f"with values {values[:5].tolist()}"
            )
        labels = labels.astype(bool)
    n_pos = int(np.count_nonzero(labels))
    if n_pos in (0, labels.size):
        raise ValueError(
            f"labels must contain both classes; got {n_pos} membrane voxels out of {labels.size}"
        )
    mean = float(images.mean(dtype=np.float64))
    std = float(images.std(dtype=np.float64))
    if std == 0.0:
        raise ValueError(f"images are constant (every voxel is {mean}); cannot normalise them")
    return images, labels, mean, std


def _normalise(images, mean, std, per_slice, slice_stats=None):
    """Zero mean, unit variance: with the stack's ``mean``/``std``, or each slice with its own.

    ``slice_stats`` (means, stds per slice) stand in for the slices' own where ``images`` is
    a part of the slices (a block).

    Serial sections differ in staining and thickness, so their brightness and contrast
    drift (ISBI 2012: slice standard deviations from 34 to 51 grey levels); per-slice
    normalisation takes that drift out before the network sees it.
    """
    images = np.array(images, np.float32)  # a copy, normalised in place: one volume of float32, not three
    if not per_slice:
        images -= np.float32(mean)
        images /= np.float32(std)
        return images
    if slice_stats is not None:
        means, stds = (np.asarray(values, np.float32).reshape(-1, 1, 1) for values in slice_stats)
    else:
        means = images.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
        stds = images.std(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
    images -= means
    images /= np.where(stds > 0, stds, np.float32(std))
    return images


def _context(z, depth, context):
    """Return the indices of slice ``z`` and its ``context`` neighbours on each side, mirrored at the ends."""
    indices = np.abs(np.arange(z - context, z + context + 1))
    indices = np.where(indices > depth - 1, 2 * (depth - 1) - indices, indices)
    return np.clip(indices, 0, depth - 1)


def _sample_batch(rng, images, labels, slices, batch_size, side, context):
    """Random square crops from random training ``slices``, each under a random dihedral transform.

    The input of a crop is its slice and ``context`` neighbouring slices on each side, as channels.
    """
    _, ny, nx = images.shape
    xb = np.empty((batch_size, 2 * context + 1, side, side), np.float32)
    yb = np.empty((batch_size, 1, side, side), np.float32)
    for b in range(batch_size):
        z = int(slices[rng.integers(len(slices))])
        y, x, k = (int(rng.integers(n)) for n in (ny - side + 1, nx - side + 1, 8))
        rows, columns = slice(y, y + side), slice(x, x + side)
        xb[b] = _dihedral(images[_context(z, len(images), context), rows, columns], k)
        yb[b, 0] = _dihedral(labels[z, rows, columns], k)
    return torch.from_numpy(xb), torch.from_numpy(yb)


def train_membrane(images, labels, *, iterations=None, minutes=None, device=None, seed=0, progress=True,
                   width=16, depth=4, crop=128, batch_size=8, learning_rate=2e-3, norm="batch",
                   upsample="bilinear", num_threads=None, schedule="cosine", validation=None, balance=0.0,
                   precision="auto", warp=0.0, average=0.0, context=0, normalise="slice", warmup=0.0):
    """Train a 2-D U-Net to predict membrane probability.

    Each iteration draws ``batch_size`` random square crops (side
    ``min(crop, Y, X)``) from random Z slices, applies one of the 8 dihedral
    flips/rotations to each, and takes an Adam step on a binary
    cross-entropy (plain by default, so the probabilities are calibrated;
    see ``balance``).  Training stops after ``iterations`` steps or
    ``minutes`` of wall time, whichever comes first; at least one step
    always runs.

    The defaults are the settings measured best on ISBI 2012 (README,
    "Kernels and their quality"): depth 4, learning rate 2e-3 decayed along
    a cosine, plain cross-entropy, per-slice normalisation, and the
    checkpoint chosen on two held-out slices.

    Parameters
    ----------
    images : array_like of shape (Z, Y, X), uint8 or float
        Training images; each Z slice is an independent 2-D image.
        Normalised to zero mean and unit standard deviation over the stack.
    labels : array_like of shape (Z, Y, X), bool
        True on membrane voxels; must contain both classes.
    iterations : int, optional
        Maximum number of optimisation steps.
    minutes : float, optional
        Maximum wall-clock training time. Give ``iterations``, ``minutes``
        or both.
    device : str or torch.device, optional
        Default ``'cuda'`` when available, else ``'cpu'``.
    seed : int, optional
        Seeds weight initialisation (torch's global RNG state is restored
        afterwards) and crop sampling; CPU training is deterministic.
        Default 0.
    progress : bool, optional
        Log progress at INFO level about every 10 % of ``iterations``, or
        every 5 s when only ``minutes`` is given. Default True.
    width, depth, norm, upsample : optional
        Network hyperparameters, see :class:`UNet2d`. Default 16 channels,
        4 levels (a receptive field of about 140 pixels), batch norm,
        bilinear upsampling.
    crop : int, optional
        Side of the square training crops, clipped to the image. Default 128.
    batch_size : int, optional
        Crops per step. Default 8.
    learning_rate : float, optional
        Adam learning rate (its peak, under the cosine schedule). Default 2e-3.
    num_threads : int, optional
        If given, torch's intra-op thread count during training (restored
        afterwards). By default global torch settings are left alone.
    schedule : {'constant', 'cosine'}, optional
        Learning rate over the budget: constant, or decayed to zero along a
        half cosine (progress measured against ``iterations`` or
        ``minutes``, whichever is nearer). Default 'cosine'.
    warmup : float, optional
        Fraction of the budget, in [0, 0.5), over which the learning rate
        first rises linearly from zero to its peak (then follows
        ``schedule``). Default 0 (no warm-up: 0.05 measured no better on
        ISBI 2012, README).
    balance : float, optional
        Class balancing of the loss, in [0, 1]: each class is weighted by
        ``(0.5 / its frequency) ** balance``. 0 (default) is plain
        cross-entropy, whose probabilities are calibrated, so thresholding
        them at 0.5 minimises pixel error; 1 balances membrane and
        background fully (more membrane recall, more false membrane).
    validation : int, optional
        Slices held out of training (evenly spaced) to choose the checkpoint:
        the network is scored on them about every 10 % of the budget and the
        weights with the lowest pixel error are kept; 0 keeps the last
        weights. Default: 2 where the stack has at least
        :data:`MIN_SLICES_TO_VALIDATE` slices, else 0 (a small stack keeps
        every slice for training).
    precision : {'auto', 'float32', 'bfloat16'}, optional
        Arithmetic of the forward pass. 'bfloat16' runs it under autocast
        (weights, optimiser and loss stay float32); 'auto' (default) takes
        bfloat16 where the device computes it natively (CUDA GPUs with
        bf16, CPUs with AVX512-BF16 or AMX) and float32 elsewhere.
    warp : float, optional
        Strength of random geometric augmentation on top of the dihedral
        transforms, >= 0: each crop is rotated by a random angle, scaled by
        up to ``10 * warp`` % and elastically deformed by a smooth random
        field (displacements of about ``8 * warp`` pixels), the same for
        image and labels, as in the U-Net paper. Default 0 (off).
    average : float, optional
        Decay in [0, 1) of an exponential moving average of the weights,
        which is what is validated and returned (smoother than the last
        step's weights); 0 (default) keeps the raw weights. 0.99 to 0.999
        are typical.
    context : int, optional
        Neighbouring slices on each side given to the network with each
        slice, as extra input channels (mirrored at the ends of the stack):
        membranes continue across thin sections, so neighbours disambiguate
        faint or oblique ones. Default 0 (each slice alone).
    normalise : {'stack', 'slice'}, optional
        Intensity normalisation to zero mean and unit variance: with the
        training stack's statistics, applied to every later input too
        ('stack'), or each slice with its own ('slice', default: robust to
        sections that differ in brightness and contrast).

    Returns
    -------
    MembraneModel
        The trained model (eval mode, on ``device``) with its loss history.

    Raises
    ------
    ValueError
        On shape mismatch, NaNs, labels with a single class, constant
        images, missing or non-positive stopping criteria, or invalid
        hyperparameters.

    Notes
    -----
    On Linux with glibc, the first call raises the allocator's mmap and trim
    thresholds for the whole process (see ``_keep_freed_memory``), so the
    activation buffers of every step are reused instead of being returned to
    the kernel and faulted in again.

    Examples
    --------
    >>> lab = np.random.default_rng(0).random((1, 16, 16)) > 0.7
    >>> img = np.where(lab, 50, 200).astype(np.uint8)
    >>> m = train_membrane(img, lab, iterations=2, width=4, depth=2, crop=16, batch_size=2,
    ...                    progress=False)
    >>> m.iterations
    2
    """
    data, labels, mean, std = _training_data(images, labels)
    balance, average = _check_choices(schedule, normalise, balance, average)
    warmup = _check_warmup(warmup)
    data = _normalise(data, mean, std, normalise == "slice")
    max_steps, max_seconds = _stopping(iterations, minutes)
    train_z, held_z = _hold_out(data.shape[0], validation)
    context = check_nonnegative_int("context", context)
    side = min(check_positive_int("crop", crop), *data.shape[1:])
    batch_size = check_positive_int("batch_size", batch_size)
    learning_rate = check_positive("learning_rate", learning_rate)
    device = _resolve_device(device)
    precision = _resolve_precision(precision, device)
    _keep_freed_memory()
    frac = float(np.count_nonzero(labels[train_z])) / labels[train_z].size
    w_pos, w_neg = (0.5 / frac) ** balance, (0.5 / (1.0 - frac)) ** balance
    warp = check_nonnegative("warp", warp)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNet2d(width=width, depth=depth, norm=norm, upsample=upsample, in_channels=2 * context + 1)
    net = net.to(device=device, memory_format=torch.channels_last).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
    kept = copy.deepcopy(net) if average else net  # the network validated and returned
    rng = np.random.default_rng(seed)
    log_every = max(1, iterations // 10) if iterations is not None else None
    history, checkpoints = [], []
    held_input = np.stack([data[_context(z, len(data), context)] for z in held_z]) if len(held_z) else None
    best = (math.inf, None)
    start = last_log = time.perf_counter()
    with _threads(num_threads):
        while not history or (len(history) < max_steps and time.perf_counter() - start < max_seconds):
            done = max(len(history) / max_steps, (time.perf_counter() - start) / max_seconds)
            for group in optimiser.param_groups:
                group["lr"] = learning_rate * _rate_factor(done, schedule, warmup)
            if len(held_z) and done >= 0.1 * (len(checkpoints) + 1):
                best = _checkpoint(kept, held_input, labels[held_z], device, precision, best, checkpoints)
            xb, yb = _sample_batch(rng, data, labels, train_z, batch_size, side, context)
            xb, yb = xb.to(device), yb.to(device)
            if warp:
                xb, yb = _warp_batch(xb, yb, rng, warp)
            xb = xb.contiguous(memory_format=torch.channels_last)
            with _autocast(device, precision):
                logits = net(pad_to_multiple(xb, 2**depth))[..., :side, :side].float()
            loss = F.binary_cross_entropy_with_logits(logits, yb, weight=yb * (w_pos - w_neg) + w_neg)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if average:
                _update_average(kept, net, average)
            history.append(float(loss.detach()))
            now = time.perf_counter()
            due = len(history) % log_every == 0 if log_every else now - last_log >= _LOG_SECONDS
            if progress and due:
                last_log = now
                logger.info("train_membrane: iteration %d loss %.4f elapsed %.1f s",
                            len(history), history[-1], now - start)
    if len(held_z):
        best = _checkpoint(kept, held_input, labels[held_z], device, precision, best, checkpoints)
        kept.load_state_dict(best[1])
        logger.info("train_membrane: kept the checkpoint with validation pixel error %.4f", best[0])
    hp = {"width": int(width), "depth": int(depth), "norm": str(norm), "upsample": str(upsample),
          "mean": mean, "std": std, "crop": int(side), "batch_size": batch_size,
          "learning_rate": learning_rate, "seed": int(seed), "membrane_fraction": frac, "precision": precision,
          "device": str(device), "seconds": float(time.perf_counter() - start), "schedule": schedule,
          "validation_errors": [float(error) for error in checkpoints],
          "warp": warp, "average": average, "context": context, "normalise": normalise, "warmup": warmup}
    return MembraneModel(network=kept.eval(), hyperparameters=hp, history=history)


def _rate_factor(done, schedule, warmup):
    """Return the learning rate over its peak after ``done`` of the budget: a linear warm-up, then ``schedule``."""
    factor = 0.5 * (1 + math.cos(math.pi * min(done, 1.0))) if schedule == "cosine" else 1.0
    return factor * min(1.0, done / warmup) if warmup else factor


def _check_warmup(warmup):
    """Refuse a warm-up fraction outside [0, 0.5); return it as a float."""
    if not isinstance(warmup, (int, float)) or not 0.0 <= float(warmup) < 0.5:
        raise ValueError(f"warmup must be a fraction of the budget in [0, 0.5); got {warmup!r}")
    return float(warmup)


def _warp_batch(images, labels, rng, strength):
    """Rotate, scale and elastically deform each crop of a batch (one field for image and label)."""
    batch, _, height, width = images.shape
    angle = rng.uniform(-math.pi, math.pi, batch)
    zoom = 1.0 + rng.uniform(-0.1, 0.1, batch) * strength
    cos, sin, zero = np.cos(angle) / zoom, np.sin(angle) / zoom, np.zeros(batch)
    theta = torch.from_numpy(np.stack([np.stack([cos, -sin, zero], 1), np.stack([sin, cos, zero], 1)], 1))
    grid = F.affine_grid(theta.float().to(images.device), [batch, 1, height, width], align_corners=False)
    pixels = 2.0 / max(height, width)  # one pixel in grid units
    coarse = rng.normal(0.0, 8.0 * strength * pixels, (batch, 2, 4, 4)).astype(np.float32)
    field = F.interpolate(torch.from_numpy(coarse).to(images.device), size=(height, width), mode="bicubic",
                          align_corners=True)
    grid = grid + field.permute(0, 2, 3, 1)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return warped, F.grid_sample(labels, grid, mode="nearest", padding_mode="reflection", align_corners=False)


@torch.no_grad()
def _update_average(average, net, decay):
    """Move the averaged network's weights towards ``net``'s; copy its normalisation statistics."""
    torch._foreach_lerp_(list(average.parameters()), list(net.parameters()), 1.0 - decay)
    for kept, current in zip(average.buffers(), net.buffers()):
        kept.copy_(current)


def _check_choices(schedule, normalise, balance, average):
    """Refuse unknown ``schedule``/``normalise``, out-of-range ``balance``/``average``; return those two as floats."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be 'constant' or 'cosine'; got {schedule!r}")
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be 'stack' or 'slice'; got {normalise!r}")
    balance, average = float(balance), float(average)
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"balance must be in [0, 1]; got {balance!r}")
    if not 0.0 <= average < 1.0:
        raise ValueError(f"average must be in [0, 1); got {average!r}")
    return balance, average


def _hold_out(depth, validation):
    """Split the slice indices into training and ``validation`` evenly spaced held-out ones."""
    if validation is None:
        validation = DEFAULT_VALIDATION if depth >= MIN_SLICES_TO_VALIDATE else 0
    if validation == 0:
        return np.arange(depth), np.arange(0)
    count = check_positive_int("validation", validation)
    if count >= depth:
        raise ValueError(f"validation={count} leaves no slice to train on (the stack has {depth})")
    held = np.unique(np.linspace(depth - 1, 0, count, endpoint=False).round().astype(int))
    return np.setdiff1d(np.arange(depth), held), held


def _checkpoint(net, images, labels, device, precision, best, errors):
    """Score the network on held-out slices; return the better of it and ``best`` (error, weights)."""
    net.eval()
    with torch.inference_mode(), _autocast(device, precision):
        x = torch.from_numpy(images).to(device)
        logits = net(pad_to_multiple(x, 2**net.depth).contiguous(memory_format=torch.channels_last))
        predicted = (logits[:, 0, :images.shape[2], :images.shape[3]] > 0).cpu().numpy()
    net.train()
    error = float(np.mean(predicted != labels))
    errors.append(error)
    if error < best[0]:
        best = (error, {name: value.detach().clone() for name, value in net.state_dict().items()})
    return best


def _window_1d(length, overlap):
    """Blending weights: a raised-cosine ramp over ``overlap`` pixels at both ends, 1 inside."""
    w = np.ones(length, np.float32)
    ramp = min(overlap, length // 2)
    if ramp > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        w[:ramp] = edge
        w[length - ramp:] = edge[::-1]
    return w


def _tile_starts(size, tile, step):
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def predict_membrane(model, volume, *, device=None, tile=256, overlap=32, batch_size=4, augment=False,
                     precision="auto", frame=None, slice_stats=None):
    """Predict the membrane probability of every voxel, slice by slice.

    Each Z slice is cut into ``tile`` x ``tile`` tiles (clipped to the
    slice) that overlap by ``overlap`` pixels; tile predictions are blended
    with a raised-cosine window so seams do not show.  Tiles whose sides are
    not multiples of ``2**depth`` are reflect-padded before the network and
    cropped after it.  Runs under :func:`torch.inference_mode`.  How slices are
    normalised and how many neighbouring slices the network sees are the model's
    own, fixed when it was trained.

    Parameters
    ----------
    model : MembraneModel
        A trained model; its network is moved to ``device``.
    volume : array_like of shape (Z, Y, X), uint8 or float
        Images on the same intensity scale as the training images.
    device : str or torch.device, optional
        Default ``'cuda'`` when available, else ``'cpu'``.
    tile : int, optional
        Tile side in pixels. Default 256.
    overlap : int, optional
        Overlap of neighbouring tiles, ``0 <= overlap < tile``. Default 32.
    batch_size : int, optional
        Tiles per forward pass. Default 4.
    augment : bool, optional
        Test-time augmentation: average the predictions of the 8 flips and
        rotations of each tile (8 times the work). Default False.
    precision : {'auto', 'float32', 'bfloat16'}, optional
        Arithmetic of the network, as in :func:`train_membrane`; 'auto'
        (default) takes bfloat16 where the device computes it natively.
    frame : tuple of 4 int, optional
        ``(y0, x0, height, width)``: where ``volume`` lies in the slices it was cut from.
        Tiles are then placed as on the whole slices and only those wholly inside
        ``volume`` are computed, so a block read with a halo of ``min(tile, height) - 1``
        pixels (and the model's ``context`` slices along z) predicts its core exactly as the
        whole volume would.  Pixels that no such tile covers are NaN.
        :func:`predict_membrane_block` does the same computing each tile of a map once.
    slice_stats : tuple of two arrays, optional
        Intensity mean and standard deviation of each whole slice, for a model trained with
        ``normalise='slice'`` applied to a block of the slices.

    Returns
    -------
    ndarray of shape (Z, Y, X), float32
        Membrane probability in [0, 1].

    Raises
    ------
    ValueError
        If ``model`` is not a MembraneModel, ``volume`` is not a finite
        numeric 3-D array, or the tiling parameters are invalid.
    """
    if not isinstance(model, MembraneModel):
        raise ValueError(f"model must be a MembraneModel; got {type(model).__name__}")
    volume = as_volume(volume, "volume", allow_bool=False)
    tile = check_positive_int("tile", tile)
    batch_size = check_positive_int("batch_size", batch_size)
    overlap = _check_overlap(overlap, tile)
    device = _resolve_device(device)
    precision = _resolve_precision(precision, device)
    net = model.network.to(device=device, memory_format=torch.channels_last).eval()
    per_slice = model.hyperparameters.get("normalise") == "slice"
    volume = _normalise(volume, model.mean, model.std, per_slice, slice_stats if per_slice else None)
    nz, ny, nx = volume.shape
    y0, x0, height, width = (0, 0, ny, nx) if frame is None else tuple(int(v) for v in frame)
    th, tw = min(tile, height), min(tile, width)
    ys = _tiles_inside(y0, ny, height, th, max(1, th - overlap))
    xs = _tiles_inside(x0, nx, width, tw, max(1, tw - overlap))
    weight = _tile_weight(th, tw, overlap)
    norm = _weight_sums(((0, ny), (0, nx)), ys, xs, weight)
    probability = np.empty(volume.shape, np.float32)
    for z, sums in _tile_sums(net, model, volume, range(nz), ys, xs, weight, device=device, batch_size=batch_size,
                              precision=precision, augment=bool(augment)):
        _blend(sums, norm, out=probability[z])
    return probability


def _check_overlap(overlap, tile):
    """Refuse an overlap that is not an integer in [0, tile); return it."""
    if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < tile:
        raise ValueError(f"overlap must be an integer in [0, tile={tile}); got {overlap!r}")
    return overlap


def _dihedral(tiles, k, inverse=False):
    """Apply dihedral transform ``k`` (0..7: 4 rotations, optionally mirrored) to the last two axes, or undo it."""
    if inverse:
        tiles = tiles[..., ::-1] if k >= 4 else tiles
        return np.rot90(tiles, -(k % 4), axes=(-2, -1))
    tiles = np.rot90(tiles, k % 4, axes=(-2, -1))
    return tiles[..., ::-1] if k >= 4 else tiles


def _tiles_inside(start: int, size: int, whole: int, tile: int, step: int) -> list[int]:
    """Return the starts, relative to ``start``, of the whole slice's tiles within ``[start, start + size)``."""
    starts = _tile_starts(whole, tile, step)
    return [first - start for first in starts if start <= first and first + tile <= start + size]


def _tile_weight(th, tw, overlap):
    """Return a tile's blending weights (float32): the outer product of the two ramps."""
    return np.outer(_window_1d(th, overlap), _window_1d(tw, overlap))


def _weight_sums(box, ys, xs, weight):
    """Return the summed weights (float64) over ``box`` ((y0, y1), (x0, x1)) of the tiles at ``ys`` x ``xs``.

    Tiles are added in raster order, as :func:`_tile_sums` adds their predictions, so any
    part of a slice sums its weights exactly as the whole slice does.
    """
    (y0, y1), (x0, x1) = box
    th, tw = weight.shape
    norm = np.zeros((y1 - y0, x1 - x0))
    for y in ys:
        for x in xs:
            rows, cols = slice(max(y, y0), min(y + th, y1)), slice(max(x, x0), min(x + tw, x1))
            if rows.start < rows.stop and cols.start < cols.stop:
                norm[rows.start - y0:rows.stop - y0, cols.start - x0:cols.stop - x0] += \
                    weight[rows.start - y:rows.stop - y, cols.start - x:cols.stop - x]
    return norm


def _blend(sums, norm, out=None):
    """Return the blended probability (float32, clipped to [0, 1]; NaN where no tile weighs) of summed predictions.

    With ``out`` (float32), the probability is written there and ``sums`` is overwritten.
    """
    if out is None:
        sums = sums / norm
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(sums, norm, out=sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.clip(sums, 0.0, 1.0, out=sums)
    if out is None:
        return sums.astype(np.float32)
    out[...] = sums
    return out


def _tile_sums(net, model, volume, planes, ys, xs, weight, *, device, batch_size, precision, augment):
    """Yield ``(z, sums)`` for each of ``planes``: the weighted predictions of the tiles at ``ys`` x ``xs``, summed.

    ``sums`` is float64 over the volume's y-x extent; each tile's prediction times its weight
    (float32) is added in raster order of the tiles, so a pixel's sum does not depend on
    which tiles were computed together or in which block: float64 holds the few float32
    terms of a pixel exactly, whatever their grouping (up to a range of 2**27 between them).
    The network always sees whole batches (the last one padded with copies of its last
    tile): the CPU kernels for a smaller batch round differently, in the last bit.  Planes
    are summed and handed over one at a time, in order.
    """
    nz = volume.shape[0]
    th, tw = weight.shape
    jobs = [(z, y, x) for z in planes for y in ys for x in xs]
    per_plane = len(ys) * len(xs)
    if not per_plane:
        for z in planes:
            yield z, np.zeros(volume.shape[1:])
        return
    views = range(8) if augment else range(1)
    sums, added, spare = {}, {}, []  # spare: planes handed over and done with, to sum the next ones in
    with torch.inference_mode(), _autocast(device, precision):
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i:i + batch_size]
            padded = chunk + chunk[-1:] * (batch_size - len(chunk))  # always whole batches: see above
            xb = np.stack([volume[_context(z, nz, model.context), y:y + th, x:x + tw] for z, y, x in padded])
            prob = np.zeros((len(padded), th, tw), np.float32)
            for k in views:
                view = np.ascontiguousarray(_dihedral(xb, k))
                xt = pad_to_multiple(torch.from_numpy(view).to(device), 2**net.depth)
                out = torch.sigmoid(net(xt.contiguous(memory_format=torch.channels_last))[:, 0, :view.shape[-2],
                                                                                           :view.shape[-1]])
                prob += _dihedral(out.float().cpu().numpy(), k, inverse=True)
            prob /= len(views)
            for (z, y, x), p in zip(chunk, prob):
                if z not in sums:
                    sums[z], added[z] = spare.pop() if spare else np.empty(volume.shape[1:]), 0
                    sums[z].fill(0.0)
                sums[z][y:y + th, x:x + tw] += np.multiply(p, weight, out=p)
                added[z] += 1
                if added[z] == per_plane:
                    del added[z]
                    done = sums.pop(z)
                    yield z, done
                    spare.append(done)


class _Axis:
    """The tiles of whole slices along one axis and the faces of the blocks across it.

    Parameters
    ----------
    size : int
        The slices' extent along the axis.
    tile, overlap : int
        As :func:`predict_membrane` takes them (the tile clipped to ``size``).
    block : int
        The blocks' extent along the axis.
    """

    def __init__(self, size, tile, overlap, block):
        self.size, self.block = int(size), int(block)
        self.tile = min(int(tile), self.size)
        self.starts = tuple(_tile_starts(self.size, self.tile, max(1, self.tile - overlap)))
        self.edges = (*range(0, self.size, self.block), self.size)
        inner = self.edges[1:-1]
        self.seamed = all(sum(s < face < s + self.tile for face in inner) <= 1 for s in self.starts)

    def covering(self, start, stop):
        """Return the starts of the tiles that overlap ``[start, stop)``."""
        return [s for s in self.starts if s < stop and s + self.tile > start]

    def owned(self, start):
        """Return the starts of the tiles that start in the block beginning at ``start``."""
        return [s for s in self.starts if start <= s < start + self.block]

    def reach(self, start):
        """Return where the tiles of the block beginning at ``start`` end (at least where the block does)."""
        return max([min(start + self.block, self.size)] + [s + self.tile for s in self.owned(start)])

    def lead(self, start):
        """Return the end of the seam at ``start``: what tiles of earlier blocks cover (``start`` itself where none)."""
        return max([start] + [s + self.tile for s in self.starts if s < start])

    @property
    def band(self):
        """The widest seam: how far tiles reach across a face (0 where none crosses one)."""
        return max(self.lead(start) - start for start in self.edges[:-1])


class MembraneTiling:
    """Where the tiles of whole slices fall on the blocks of a membrane map (pure geometry).

    Every pixel of a map is the weighted blend of the tiles that cover it, laid out on the
    whole slice (:func:`predict_membrane`).  A block computes the tiles that *start* in its
    core, so each tile is computed once.  A tile that reaches across a block face leaves a
    *seam* in the next block: the rows (or columns) from the face to where the tile ends
    (at least ``overlap`` wide; exactly that where the blocks are multiples of the tile step,
    ``tile - overlap``), whose pixels blend tiles of both blocks.  Each block keeps its tiles'
    summed predictions over its seams and over the seams it reaches into (:meth:`pieces`),
    and :meth:`fill` blends them once every block is done.  Where a tile would cross two
    faces (blocks narrower than a tile), each block computes every tile over its core
    instead, and there are no seams.

    Parameters
    ----------
    volume_shape, block_shape : tuple of int
        ZYX extents of the volume and of its blocks.
    tile, overlap : int
        As :func:`predict_membrane` takes them.
    context : int, optional
        The model's neighbouring slices on each side (read around each block along z).
    """

    PIECES = ("seams_y", "seams_x")

    def __init__(self, volume_shape, block_shape, *, tile, overlap, context=0):
        self.shape, self.block = tuple(int(v) for v in volume_shape), tuple(int(v) for v in block_shape)
        self.overlap, self.context = int(overlap), int(context)
        self.axes = tuple(_Axis(size, tile, overlap, block) for size, block in zip(self.shape[1:], self.block[1:]))
        self.seamed = all(axis.seamed for axis in self.axes)
        self.bands = tuple(axis.band if self.seamed else 0 for axis in self.axes)
        self.weight = _tile_weight(self.axes[0].tile, self.axes[1].tile, self.overlap)

    def tiles(self, core: Box) -> tuple:
        """Return the starts (y, x; whole slice) of the tiles the block of ``core`` computes."""
        if self.seamed:
            return tuple(axis.owned(start) for axis, (start, _) in zip(self.axes, core[1:]))
        return tuple(axis.covering(start, stop) for axis, (start, stop) in zip(self.axes, core[1:]))

    def read_box(self, core: Box) -> Box:
        """Return the box the block of ``core`` reads: its tiles and core, and the context slices along z."""
        (z0, z1) = core[0]
        extents = []
        for axis, (start, stop), starts in zip(self.axes, core[1:], self.tiles(core)):
            extents.append((min([start, *starts]), max([stop, *(s + axis.tile for s in starts)])))
        return ((max(0, z0 - self.context), min(self.shape[0], z1 + self.context)), *extents)

    def leads(self, core: Box) -> tuple:
        """Return where the seams of ``core`` end, y and x (its start along an axis without one)."""
        if not self.seamed:
            return tuple(start for start, _ in core[1:])
        return tuple(axis.lead(start) for axis, (start, _) in zip(self.axes, core[1:]))

    def norm(self, box) -> np.ndarray:
        """Return the summed blending weights of the whole slice's tiles over ``box`` ((y0, y1), (x0, x1))."""
        return _weight_sums(box, *(axis.covering(start, stop) for axis, (start, stop) in zip(self.axes, box)),
                            self.weight)

    def has_seams(self, core: Box) -> bool:
        """Return True where tiles of earlier blocks reach into ``core``."""
        return any(lead > start for lead, (start, _) in zip(self.leads(core), core[1:]))

    def _slots(self, core: Box) -> tuple:
        """Return the block's grid coordinates (y, x) and the strides of its slots (rows of seams_y, of seams_x)."""
        index = tuple(start // block for (start, _), block in zip(core[1:], self.block[1:]))
        return index, self.block[2] + self.bands[1], self.block[1] + self.bands[0]

    def pieces(self, core: Box, sums_y, sums_x) -> list:
        """Return the seam sums a block keeps, as :class:`~neuropipe.ops.grid.Piece` s of two arrays.

        ``seams_y`` holds, per block, its tiles' sums over the rows of its own seam and of
        the seam it reaches into below (``2 * band`` rows, over its read columns);
        ``seams_x`` the same for columns.  ``sums_y`` and ``sums_x`` are those slots, as
        :func:`predict_membrane_block` fills them; one chunk per block.
        """
        (i, j), width, height = self._slots(core)
        (wy, wx), (z0, z1) = self.bands, core[0]
        (ny, nx) = (len(axis.edges) - 1 for axis in self.axes)
        found = []
        if wy:
            found.append(Piece("seams_y", (self.shape[0], ny * 2 * wy, nx * width), (self.block[0], 2 * wy, width),
                               ((z0, z1), (i * 2 * wy, (i + 1) * 2 * wy), (j * width, j * width + sums_y.shape[2])),
                               sums_y))
        if wx:
            found.append(Piece("seams_x", (self.shape[0], ny * height, nx * 2 * wx), (self.block[0], height, 2 * wx),
                               ((z0, z1), (i * height, i * height + sums_x.shape[1]), (j * 2 * wx, (j + 1) * 2 * wx)),
                               sums_x))
        return found

    def fill(self, probability: np.ndarray, core: Box, read) -> float:
        """Blend the seams of a block from the sums its blocks kept; fill them in ``probability``, in place.

        Parameters
        ----------
        probability : ndarray of float32
            The map over ``core`` (NaN on the seams until filled).
        core : Box
            The block's core.
        read : callable
            ``read(name, box)`` returns the pieces array ``name`` (``seams_y``, ``seams_x``)
            inside ``box``.

        Returns
        -------
        float
            The sum of the probabilities filled in.
        """
        (z0, z1), (top, bottom), (left, right) = core
        (lead_y, lead_x), (wy, wx) = self.leads(core), self.bands
        (i, j), width, height = self._slots(core)
        planes, filled = (z0, z1), 0.0
        if lead_y > top:  # the rows that tiles of the blocks above reach: own, above, left, above-left
            rows, cols, seam = lead_y - top, right - left, lead_x - left
            sums = read("seams_y", (planes, (i * 2 * wy, i * 2 * wy + rows), (j * width, j * width + cols)))
            below = (i - 1) * 2 * wy + wy  # where the block above keeps the rows it reaches into
            sums += read("seams_y", (planes, (below, below + rows), (j * width, j * width + cols)))
            if seam > 0:
                right_of = (j - 1) * 2 * wx + wx
                sums[:, :, :seam] += read("seams_x", (planes, (i * height, i * height + rows),
                                                      (right_of, right_of + seam)))
                corner = (j - 1) * width + self.block[2]
                sums[:, :, :seam] += read("seams_y", (planes, (below, below + rows), (corner, corner + seam)))
            probability[:, :rows] = _blend(sums, self.norm(((top, lead_y), (left, right))))
            filled += float(probability[:, :rows].sum(dtype=np.float64))
        if lead_x > left and bottom > lead_y:  # the columns below those that tiles of the block left reach
            skip, rows, seam = lead_y - top, bottom - lead_y, lead_x - left
            below_seam = (i * height + skip, i * height + skip + rows)
            sums = read("seams_x", (planes, below_seam, (j * 2 * wx, j * 2 * wx + seam)))
            right_of = (j - 1) * 2 * wx + wx
            sums += read("seams_x", (planes, below_seam, (right_of, right_of + seam)))
            probability[:, skip:, :seam] = _blend(sums, self.norm(((lead_y, bottom), (left, lead_x))))
            filled += float(probability[:, skip:, :seam].sum(dtype=np.float64))
        return filled


def predict_membrane_block(model, image, *, read, core, volume_shape, block_shape, device=None, tile=256, overlap=32,
                           batch_size=4, augment=False, precision="auto", slice_stats=None):
    """Predict one block of a volume's membrane map exactly as :func:`predict_membrane` predicts the whole.

    The block computes the tiles of the whole slices that start in its core
    (:class:`MembraneTiling`), each tile once in the whole map; the pixels that tiles of
    earlier blocks also cover (the block's seams) are left NaN, and the sums the block's
    tiles add to its own seams and to those of the blocks it reaches into are returned as
    pieces, for :meth:`MembraneTiling.fill` to blend once all blocks are done.

    Parameters
    ----------
    model : MembraneModel
    image : array_like of shape (Z, Y, X)
        The volume inside ``read`` (:meth:`MembraneTiling.read_box` of ``core``, or more).
    read, core : Box
        The block's read box and core, ZYX volume voxels, half-open.
    volume_shape, block_shape : tuple of int
        ZYX extents of the volume and of its blocks.
    device, tile, overlap, batch_size, augment, precision, slice_stats
        As for :func:`predict_membrane`; ``slice_stats`` for the slices inside ``read``.

    Returns
    -------
    probability : ndarray of float32, the core's shape
        Membrane probability, NaN on the block's seams.
    pieces : list of Piece
        The seam sums to store (none where the blocks have no seams).
    """
    if not isinstance(model, MembraneModel):
        raise ValueError(f"model must be a MembraneModel; got {type(model).__name__}")
    image = as_volume(image, "image", allow_bool=False)
    tiling = MembraneTiling(volume_shape, block_shape, tile=check_positive_int("tile", tile),
                            overlap=_check_overlap(overlap, tile), context=model.context)
    batch_size = check_positive_int("batch_size", batch_size)
    device = _resolve_device(device)
    precision = _resolve_precision(precision, device)
    net = model.network.to(device=device, memory_format=torch.channels_last).eval()
    per_slice = model.hyperparameters.get("normalise") == "slice"
    volume = _normalise(image, model.mean, model.std, per_slice, slice_stats if per_slice else None)
    origin = [start for start, _ in read]
    ys, xs = ([s - first for s in starts] for starts, first in zip(tiling.tiles(core), origin[1:]))
    inside = slices(core, read)
    (lead_y, lead_x), (wy, wx) = tiling.leads(core), tiling.bands
    (top, bottom), (left, right) = core[1:]
    reach_y, reach_x = (axis.reach(start) for axis, (start, _) in zip(tiling.axes, core[1:]))
    rows = (top - origin[1], reach_y - origin[1])  # the block's tiles and core, in the read box
    cols = (left - origin[2], reach_x - origin[2])
    norm = tiling.norm(core[1:])
    probability = np.empty(tuple(stop - start for start, stop in core), np.float32)
    depth = core[0][1] - core[0][0]
    sums_y = np.zeros((depth, 2 * wy, cols[1] - cols[0])) if wy else None
    sums_x = np.zeros((depth, rows[1] - rows[0], 2 * wx)) if wx else None
    for z, sums in _tile_sums(net, model, volume, range(inside[0].start, inside[0].stop), ys, xs, tiling.weight,
                              device=device, batch_size=batch_size, precision=precision, augment=bool(augment)):
        plane = z - inside[0].start
        if wy:
            sums_y[plane, :lead_y - top] = sums[rows[0]:rows[0] + lead_y - top, cols[0]:cols[1]]
            sums_y[plane, wy:wy + reach_y - bottom] = sums[rows[0] + bottom - top:rows[1], cols[0]:cols[1]]
        if wx:
            sums_x[plane, :, :lead_x - left] = sums[rows[0]:rows[1], cols[0]:cols[0] + lead_x - left]
            sums_x[plane, :, wx:wx + reach_x - right] = sums[rows[0]:rows[1], cols[0] + right - left:cols[1]]
        _blend(sums[inside[1:]], norm, out=probability[plane])
        probability[plane, :lead_y - top] = np.nan
        probability[plane, :, :lead_x - left] = np.nan
    return probability, tiling.pieces(core, sums_y, sums_x)
