"""A small 2-D U-Net for membrane segmentation, with training and tiled prediction.

Z slices of a ZYX stack are treated as independent 2-D images.  The trained
network is wrapped in :class:`MembraneModel`, which carries the intensity
normalisation and hyperparameters and serialises to bytes for database
storage.
"""

from __future__ import annotations

import io
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._validate import as_volume, check_positive, check_positive_int, check_same_shape

__all__ = ["UNet2d", "MembraneModel", "train_membrane", "predict_membrane"]

logger = logging.getLogger(__name__)

_FORMAT = "neuropipe.membrane_unet"
_FORMAT_VERSION = 1
_NORMS = ("batch", "group")
_UPSAMPLES = ("bilinear", "transpose")


def _norm_layer(kind, channels):
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(min(8, channels), channels)


class _DoubleConv(nn.Sequential):
    def __init__(self, cin, cout, norm):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            _norm_layer(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            _norm_layer(norm, cout),
            nn.ReLU(inplace=True),
        )


class UNet2d(nn.Module):
    """Small 2-D U-Net with 'same' convolutions (one input and one output channel).

    Parameters
    ----------
    width : int, optional
        Channels of the first level; each of the ``depth`` down-sampling
        steps doubles them.
    depth : int, optional
        Number of 2x down-sampling steps; inputs must have Y and X divisible
        by ``2**depth`` (see :func:`predict_membrane` for arbitrary sizes).
    norm : {'batch', 'group'}, optional
        BatchNorm or GroupNorm (up to 8 groups) after every convolution.
    upsample : {'bilinear', 'transpose'}, optional
        Bilinear interpolation followed by a 1x1 convolution, or a 2x2
        transposed convolution.

    Raises
    ------
    ValueError
        On invalid hyperparameters.

    Examples
    --------
    >>> net = UNet2d(width=4, depth=2)
    >>> net(torch.zeros(1, 1, 16, 16)).shape
    torch.Size([1, 1, 16, 16])
    """

    def __init__(self, *, width=16, depth=3, norm="batch", upsample="bilinear"):
        super().__init__()
        width = check_positive_int("width", width)
        depth = check_positive_int("depth", depth)
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}; got {norm!r}")
        if upsample not in _UPSAMPLES:
            raise ValueError(f"upsample must be one of {_UPSAMPLES}; got {upsample!r}")
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = 1
        for c in chans[:-1]:
            self.down.append(_DoubleConv(cin, c, norm))
            cin = c
        self.bottom = _DoubleConv(chans[-2], chans[-1], norm)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for level in reversed(range(depth)):
            c_hi, c = chans[level + 1], chans[level]
            if upsample == "transpose":
                self.up.append(nn.ConvTranspose2d(c_hi, c, 2, stride=2))
            else:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                        nn.Conv2d(c_hi, c, 1),
                    )
                )
            self.merge.append(_DoubleConv(2 * c, c, norm))
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, x):
        """Return logits of shape (B, 1, Y, X) for input of shape (B, 1, Y, X)."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@dataclass
class MembraneModel:
    """A trained membrane U-Net together with what is needed to apply it.

    Attributes
    ----------
    network : UNet2d
        The torch module (kept in eval mode after training).
    hyperparameters : dict
        Plain python values: ``width``, ``depth``, ``norm``, ``upsample``,
        ``mean`` and ``std`` (intensity normalisation of the training
        images), plus training settings for the record.
    history : list of float
        Training loss per iteration.
    """

    network: UNet2d
    hyperparameters: dict
    history: list = field(default_factory=list)

    @property
    def mean(self):
        """Training-set intensity mean used for normalisation (float)."""
        return float(self.hyperparameters["mean"])

    @property
    def std(self):
        """Training-set intensity standard deviation used for normalisation (float)."""
        return float(self.hyperparameters["std"])

    def to_bytes(self):
        """Serialise weights, hyperparameters and history with :func:`torch.save`.

        Returns
        -------
        bytes
            Loadable with ``torch.load(..., weights_only=True)`` and
            :meth:`from_bytes`.
        """
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        payload = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "hyperparameters": dict(self.hyperparameters),
            "history": [float(h) for h in self.history],
            "state_dict": state,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data):
        """Rebuild a model serialised by :meth:`to_bytes` (on the CPU, eval mode).

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
            If ``data`` is not a serialised membrane model.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"data must be bytes; got {type(data).__name__}")
        try:
            payload = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unrelated types here
            raise ValueError(f"data is not a serialised MembraneModel ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError("data is not a serialised MembraneModel (missing format tag)")
        if payload.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"unsupported MembraneModel format version {payload.get('version')!r}; "
                f"expected {_FORMAT_VERSION}"
            )
        hp = payload["hyperparameters"]
        net = UNet2d(width=hp["width"], depth=hp["depth"], norm=hp["norm"], upsample=hp["upsample"])
        net.load_state_dict(payload["state_dict"])
        net.eval()
        return cls(network=net, hyperparameters=dict(hp), history=list(payload["history"]))


def _resolve_device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, (str, torch.device)):
        return torch.device(device)
    raise ValueError(f"device must be None, a str or a torch.device; got {device!r}")


@contextmanager
def _threads(num_threads):
    """Temporarily set torch's intra-op thread count if asked to."""
    if num_threads is None:
        yield
        return
    num_threads = check_positive_int("num_threads", num_threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _pad_to_multiple(x, multiple):
    """Pad (B, C, Y, X) on the bottom/right to multiples of ``multiple``."""
    ph = (-x.shape[-2]) % multiple
    pw = (-x.shape[-1]) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _dihedral(array, k):
    """Apply dihedral transform ``k`` in 0..7 to the last two axes."""
    out = np.rot90(array, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return out


def train_membrane(
    images,
    labels,
    *,
    iterations=None,
    minutes=None,
    device=None,
    seed=0,
    progress=True,
    width=16,
    depth=3,
    crop=128,
    batch_size=8,
    learning_rate=1e-3,
    norm="batch",
    upsample="bilinear",
    num_threads=None,
):
    """Train a 2-D U-Net to predict membrane probability.

    Each iteration draws ``batch_size`` random square crops (side
    ``min(crop, Y, X)``) from random Z slices, applies one of the 8 dihedral
    flips/rotations to each, and takes an Adam step on a class-balanced
    binary cross-entropy (each class weighted by the inverse of its frequency
    in ``labels``, weights normalised to average 1 over the voxels).
    Training stops after ``iterations`` steps or ``minutes`` of wall time,
    whichever comes first.

    Parameters
    ----------
    images : array_like, shape (Z, Y, X), uint8 or float
        Training images; each Z slice is an independent 2-D image.  Normalised
        to zero mean and unit standard deviation over the whole stack.
    labels : array_like, shape (Z, Y, X), bool
        True on membrane voxels.  Must contain both classes.
    iterations : int, optional
        Maximum number of optimisation steps.
    minutes : float, optional
        Maximum wall-clock training time.  At least one of ``iterations`` and
        ``minutes`` is required.
    device : str or torch.device, optional
        Defaults to ``'cuda'`` when available, else ``'cpu'``.
    seed : int, optional
        Seeds weight initialisation (without touching torch's global RNG
        state) and crop sampling; CPU training is deterministic.
    progress : bool, optional
        Log progress at INFO level about every 10 % of ``iterations`` (every
        5 s when only ``minutes`` is given).
    width, depth, norm, upsample : optional
        Network hyperparameters, see :class:`UNet2d`.
    crop : int, optional
        Side of the square training crops (clipped to the image size).
    batch_size : int, optional
        Crops per step.
    learning_rate : float, optional
        Adam learning rate.
    num_threads : int, optional
        If given, torch's intra-op thread count during training (restored
        afterwards); by default global torch settings are left alone.

    Returns
    -------
    MembraneModel
        Trained model (eval mode, on ``device``) with its loss history.

    Raises
    ------
    ValueError
        On shape mismatch, NaNs, labels with a single class, or missing or
        non-positive stopping criteria or hyperparameters.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> lab = rng.random((1, 16, 16)) > 0.7
    >>> img = np.where(lab, 50, 200).astype(np.uint8)
    >>> m = train_membrane(img, lab, iterations=2, width=4, depth=2, crop=16, batch_size=2, progress=False)
    >>> len(m.history)
    2
    """
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
    if iterations is None and minutes is None:
        raise ValueError("give iterations and/or minutes to bound training; got neither")
    if iterations is not None:
        iterations = check_positive_int("iterations", iterations)
    if minutes is not None:
        minutes = check_positive("minutes", minutes)
    crop = check_positive_int("crop", crop)
    batch_size = check_positive_int("batch_size", batch_size)
    learning_rate = check_positive("learning_rate", learning_rate)
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError(
            f"labels must contain both classes; got {n_pos} membrane voxels out of {labels.size}"
        )
    mean = float(images.mean(dtype=np.float64))
    std = float(images.std(dtype=np.float64))
    if std == 0.0:
        raise ValueError(f"images are constant (value {mean}); cannot normalise")
    device = _resolve_device(device)

    frac = n_pos / labels.size
    w_pos, w_neg = 0.5 / frac, 0.5 / (1.0 - frac)
    norm_images = ((images.astype(np.float32) - mean) / std).astype(np.float32)
    nz, ny, nx = images.shape
    side = min(crop, ny, nx)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNet2d(width=width, depth=depth, norm=norm, upsample=upsample)
    net.to(device)
    multiple = 2**depth
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
    history = []
    hp = {
        "width": int(width), "depth": int(depth), "norm": str(norm), "upsample": str(upsample),
        "mean": mean, "std": std, "crop": int(side), "batch_size": int(batch_size),
        "learning_rate": float(learning_rate), "seed": int(seed),
        "membrane_fraction": float(frac),
    }

    log_every = max(1, iterations // 10) if iterations is not None else None
    start = time.perf_counter()
    last_log = start
    deadline = start + 60.0 * minutes if minutes is not None else math.inf
    net.train()
    with _threads(num_threads):
        step = 0
        while (iterations is None or step < iterations) and time.perf_counter() < deadline:
            zs = rng.integers(0, nz, batch_size)
            ys = rng.integers(0, ny - side + 1, batch_size)
            xs = rng.integers(0, nx - side + 1, batch_size)
            ks = rng.integers(0, 8, batch_size)
            xb = np.empty((batch_size, 1, side, side), np.float32)
            yb = np.empty((batch_size, 1, side, side), np.float32)
            for b in range(batch_size):
                window = (zs[b], slice(ys[b], ys[b] + side), slice(xs[b], xs[b] + side))
                xb[b, 0] = _dihedral(norm_images[window], ks[b])
                yb[b, 0] = _dihedral(labels[window], ks[b])
            xt = torch.from_numpy(xb).to(device)
            yt = torch.from_numpy(yb).to(device)
            weight = yt * (w_pos - w_neg) + w_neg
            logits = net(_pad_to_multiple(xt, multiple))[..., :side, :side]
            loss = F.binary_cross_entropy_with_logits(logits, yt, weight=weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            history.append(float(loss.detach()))
            if progress:
                now = time.perf_counter()
                due = (step % log_every == 0) if log_every else (now - last_log >= 5.0)
                if due or step == iterations:
                    last_log = now
                    logger.info(
                        "train_membrane: iteration %d%s loss %.4f elapsed %.1fs",
                        step, f"/{iterations}" if iterations else "", history[-1], now - start,
                    )
    net.eval()
    hp["iterations"] = len(history)
    hp["seconds"] = float(time.perf_counter() - start)
    return MembraneModel(network=net, hyperparameters=hp, history=history)


def _window_1d(length, overlap):
    """Blending weights: a raised-cosine ramp over ``overlap`` at both ends, 1 inside."""
    w = np.ones(length, np.float64)
    ramp = min(overlap, length // 2)
    if ramp > 0:
        t = (np.arange(ramp) + 0.5) / ramp
        edge = 0.5 - 0.5 * np.cos(np.pi * t)
        w[:ramp] = edge
        w[length - ramp:] = edge[::-1]
    return w


def _tile_starts(size, tile, step):
    starts = list(range(0, max(size - tile, 0) + 1, step))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def predict_membrane(model, volume, *, device=None, tile=256, overlap=32, batch_size=4):
    """Predict membrane probability for every voxel, slice by slice.

    Each Z slice is cut into ``tile`` x ``tile`` tiles (clipped to the slice)
    overlapping by ``overlap`` pixels; tile predictions are blended with a
    raised-cosine window so seams do not show.  Tiles whose size is not a
    multiple of ``2**depth`` are reflect-padded before the network and
    cropped after it.

    Parameters
    ----------
    model : MembraneModel
        Trained model; its network is moved to ``device`` and set to eval mode.
    volume : array_like, shape (Z, Y, X), uint8 or float
        Images to segment, on the same intensity scale as the training images.
    device : str or torch.device, optional
        Defaults to ``'cuda'`` when available, else ``'cpu'``.
    tile : int, optional
        Tile side in pixels.
    overlap : int, optional
        Overlap between neighbouring tiles, ``0 <= overlap < tile``.
    batch_size : int, optional
        Tiles per forward pass.

    Returns
    -------
    numpy.ndarray, shape (Z, Y, X), float32
        Membrane probability in [0, 1].

    Raises
    ------
    ValueError
        If ``model`` is not a MembraneModel, ``volume`` is not a finite
        numeric 3-D array, or tiling parameters are invalid.
    """
    if not isinstance(model, MembraneModel):
        raise ValueError(f"model must be a MembraneModel; got {type(model).__name__}")
    volume = as_volume(volume, "volume", allow_bool=False)
    tile = check_positive_int("tile", tile)
    batch_size = check_positive_int("batch_size", batch_size)
    if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < tile:
        raise ValueError(f"overlap must be an integer in [0, tile={tile}); got {overlap!r}")
    device = _resolve_device(device)
    net = model.network.to(device).eval()
    multiple = 2 ** net.depth

    nz, ny, nx = volume.shape
    th, tw = min(tile, ny), min(tile, nx)
    step_y, step_x = max(1, th - overlap), max(1, tw - overlap)
    weight = np.outer(_window_1d(th, overlap), _window_1d(tw, overlap)).astype(np.float32)
    jobs = [
        (z, y0, x0)
        for z in range(nz)
        for y0 in _tile_starts(ny, th, step_y)
        for x0 in _tile_starts(nx, tw, step_x)
    ]
    total = np.zeros(volume.shape, np.float32)
    norm = np.zeros(volume.shape, np.float32)
    mean, std = model.mean, model.std
    with torch.inference_mode():
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i:i + batch_size]
            xb = np.stack([volume[z, y0:y0 + th, x0:x0 + tw] for z, y0, x0 in chunk])
            xb = ((xb.astype(np.float32) - mean) / std)[:, None]
            xt = _pad_to_multiple(torch.from_numpy(xb).to(device), multiple)
            prob = torch.sigmoid(net(xt)[:, 0, :th, :tw]).float().cpu().numpy()
            for (z, y0, x0), p in zip(chunk, prob):
                total[z, y0:y0 + th, x0:x0 + tw] += p * weight
                norm[z, y0:y0 + th, x0:x0 + tw] += weight
    out = total / norm
    return np.clip(out, 0.0, 1.0, out=out)
