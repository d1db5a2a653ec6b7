"""The small 3-D U-Net used by :mod:`neuropipe.ops.nuclei`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet3d", "pool_factors"]


def pool_factors(spacing, levels):
    """Per level, the factor (1 or 2) by which each axis is downsampled.

    An axis is halved only where its voxels are less than twice as coarse as the finest
    axis at that level, so thick sections are pooled in y and x first, until the voxels
    are about as deep as they are wide (the rule nnU-Net uses).

    Examples
    --------
    >>> pool_factors((2.0, 1.0, 1.0), 2)
    [(1, 2, 2), (2, 2, 2)]
    """
    current = [float(step) for step in spacing]
    factors = []
    for _ in range(levels):
        finest = min(current)
        level = tuple(2 if step < 2 * finest else 1 for step in current)
        current = [step * factor for step, factor in zip(current, level)]
        factors.append(level)
    return factors


class _DoubleConv(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(
            nn.Conv3d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
        )


class UNet3d(nn.Module):
    """A 3-D U-Net: ``len(factors)`` poolings, channels doubling per level, trilinear upsampling.

    Batch normalisation (two 48^3 crops hold enough voxels for its statistics, and in eval
    mode it does not depend on the input, so tiles agree).  Input sides must be divisible
    by the product of ``factors`` along each axis.

    Parameters
    ----------
    width : int
        Channels of the first level.
    factors : list of tuple of int
        Pooling factor per axis at each level (see :func:`pool_factors`).
    in_channels, out_channels : int
        Input and output channels.
    """

    def __init__(self, width, factors, in_channels=1, out_channels=2):
        super().__init__()
        self.factors = [tuple(int(f) for f in level) for level in factors]
        channels = [width * 2**level for level in range(len(self.factors) + 1)]
        self.down = nn.ModuleList([_DoubleConv(in_channels, channels[0])])
        self.down.extend(_DoubleConv(channels[i], channels[i + 1]) for i in range(len(self.factors)))
        self.reduce = nn.ModuleList(nn.Conv3d(channels[i + 1], channels[i], 1) for i in range(len(self.factors)))
        self.up = nn.ModuleList(_DoubleConv(2 * channels[i], channels[i]) for i in range(len(self.factors)))
        self.head = nn.Conv3d(channels[0], out_channels, 1)

    def forward(self, x):
        """Return ``out_channels`` logits per voxel, same spatial shape as ``x``."""
        skips = [self.down[0](x)]
        for level, factor in enumerate(self.factors):
            skips.append(self.down[level + 1](F.max_pool3d(skips[-1], factor)))
        x = skips.pop()
        for level in reversed(range(len(self.factors))):
            x = F.interpolate(self.reduce[level](x), scale_factor=self.factors[level], mode="trilinear",
                              align_corners=False)
            x = self.up[level](torch.cat([skips.pop(), x], dim=1))
        return self.head(x)

