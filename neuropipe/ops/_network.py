"""The 2-D U-Net module used by :mod:`neuropipe.ops.unet`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._validate import check_positive_int

__all__ = ["UNet2d", "pad_to_multiple"]

NORMS = ("batch", "group")
UPSAMPLES = ("bilinear", "transpose")


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


def _upsampler(kind, cin, cout):
    if kind == "transpose":
        return nn.ConvTranspose2d(cin, cout, 2, stride=2)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(cin, cout, 1),
    )


class UNet2d(nn.Module):
    """Small 2-D U-Net with 'same' convolutions, one input and one output channel.

    Parameters
    ----------
    width : int, optional
        Channels of the first level; each of the ``depth`` down-sampling
        steps doubles them. Default 16.
    depth : int, optional
        Number of 2x down-sampling steps. Inputs must have rows and columns
        divisible by ``2**depth`` (:func:`pad_to_multiple` does that).
        Default 3.
    norm : {'batch', 'group'}, optional
        BatchNorm, or GroupNorm with up to 8 groups, after every
        convolution. Default 'batch'.
    upsample : {'bilinear', 'transpose'}, optional
        Bilinear interpolation followed by a 1x1 convolution, or a 2x2
        transposed convolution. Default 'bilinear'.
    in_channels : int, optional
        Input channels, e.g. a slice and its neighbours. Default 1.

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

    def __init__(self, *, width=16, depth=3, norm="batch", upsample="bilinear", in_channels=1):
        super().__init__()
        width = check_positive_int("width", width)
        depth = check_positive_int("depth", depth)
        in_channels = check_positive_int("in_channels", in_channels)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}; got {upsample!r}")
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            _DoubleConv(cin, cout, norm) for cin, cout in zip([in_channels] + chans[:-2], chans[:-1])
        )
        self.bottom = _DoubleConv(chans[-2], chans[-1], norm)
        levels = list(reversed(range(depth)))
        self.up = nn.ModuleList(_upsampler(upsample, chans[i + 1], chans[i]) for i in levels)
        self.merge = nn.ModuleList(_DoubleConv(2 * chans[i], chans[i], norm) for i in levels)
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, x):
        """Return logits of shape (B, 1, Y, X) for an input of shape (B, in_channels, Y, X)."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def pad_to_multiple(x, multiple):
    """Pad a (B, C, Y, X) tensor at the bottom and right to multiples of ``multiple``.

    Reflect padding is used where the image is large enough, replicate
    padding otherwise.

    Parameters
    ----------
    x : torch.Tensor of shape (B, C, Y, X)
        Batch of images.
    multiple : int
        Required divisor of Y and X.

    Returns
    -------
    torch.Tensor of shape (B, C, Y', X')
        ``x`` itself when no padding is needed.

    Examples
    --------
    >>> pad_to_multiple(torch.zeros(1, 1, 5, 8), 4).shape
    torch.Size([1, 1, 8, 8])
    """
    ph = (-x.shape[-2]) % multiple
    pw = (-x.shape[-1]) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)
