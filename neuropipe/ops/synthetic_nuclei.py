"""Synthetic fluorescence-like volumes of packed cell nuclei with known centres.

Real nuclei volumes (light-sheet, two-photon, X-ray) are hard for detectors in a few
recurring ways: nuclei press against each other and merge into one bright blob with
only a shallow neck between them, they vary in size and brightness (some are dim),
they are elongated and irregular rather than round, their chromatin makes them bright
and dark inside, the volume border cuts through many of them, the axial resolution is
worse than the lateral one, and a dim volume has photon (Poisson) noise.
:func:`make_nuclei` renders all of that with exact ground truth, so detectors can be
compared where the real annotated volume is not at hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ._validate import check_positive, check_voxel_size

__all__ = ["NucleiSample", "make_nuclei"]

logger = logging.getLogger(__name__)

_BACKGROUND = 0.12  # grey levels as fractions of the brightest nucleus
_NOISE_SD = 0.05  # camera read noise
_PSF_SIGMA = 1.0  # lateral blur in voxels of the finest axis; axial blur is twice as wide


@dataclass(frozen=True)
class NucleiSample:
    """A synthetic nuclei volume with its ground truth.

    Attributes
    ----------
    image : ndarray of shape (Z, Y, X), uint8
        Rendered image; nuclei are bright.
    nuclei : ndarray of shape (Z, Y, X), uint32
        Instance labels 1..N of the visible part of each nucleus; 0 is background.
    centroids : ndarray of shape (N, 3), float64
        ZYX voxel-coordinate centroid of the visible part of nucleus ``i + 1``
        (where an annotator would click).
    radii : ndarray of shape (N,), float64
        Physical radius of each nucleus.
    voxel_size : tuple of float
        The (z, y, x) voxel size the sample was generated with.
    """

    image: np.ndarray
    nuclei: np.ndarray
    centroids: np.ndarray
    radii: np.ndarray
    voxel_size: tuple


def _place(rng, extent, radius, packing, count):
    """Dart-throw nucleus centres in ``[0, extent)``; neighbours overlap down to ``packing``."""
    centres, radii = np.empty((count, 3)), np.empty(count)
    n = 0
    for _ in range(200 * count):
        centre, r = rng.uniform(0, extent), rng.uniform(*radius)
        if n and np.any(np.linalg.norm(centres[:n] - centre, axis=1) < packing * (radii[:n] + r)):
            continue
        centres[n], radii[n] = centre, r
        n += 1
        if n == count:
            break
    return centres[:n], radii[:n]


def _paint(shape, vs, centres, radii, stretch, rotations=None, roughness=None):
    """Label every voxel with the nucleus whose scaled distance ``|R (x - c)| / semi-axes`` is smallest (< 1).

    Overlapping nuclei thus meet along a flat face, the way pressed nuclei do.  ``rotations``
    (one 3 x 3 matrix per nucleus) turn the ellipsoids; ``roughness`` (a smooth field over
    the volume) scales the distance voxel by voxel, which makes the outlines irregular.
    """
    labels = np.zeros(shape, np.uint32)
    nearest = np.full(shape, np.inf)
    for index, (centre, r, s) in enumerate(zip(centres, radii, stretch), start=1):
        semi = r * s
        reach = semi if rotations is None else np.full(3, semi.max())
        reach = reach if roughness is None else reach / float(roughness.min())  # the farthest a bulge reaches
        lo = np.maximum(np.floor((centre - reach) / vs).astype(int), 0)
        hi = np.minimum(np.ceil((centre + reach) / vs).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        offsets = [np.arange(a, b) * v - c for a, b, v, c in zip(lo, hi, vs, centre)]
        if rotations is None:
            axes = [o / e for o, e in zip(offsets, semi)]
            scaled = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
        else:
            grid = np.stack(np.meshgrid(*offsets, indexing="ij"), axis=-1)
            scaled = np.sqrt(np.sum((grid @ rotations[index - 1].T / semi) ** 2, axis=-1))
        if roughness is not None:
            scaled = scaled * roughness[box]
        closer = (scaled < 1.0) & (scaled < nearest[box])
        labels[box][closer] = index
        nearest[box][closer] = scaled[closer]
    return labels


def _random_rotations(rng, count):
    """``count`` rotation matrices drawn uniformly (QR of Gaussian matrices, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(count, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    return q * np.sign(np.linalg.det(q))[:, None, None]


def _check_options(shape, radius, packing, density, dim, elongation, irregularity, chromatin, photons):
    """Refuse out-of-range options of :func:`make_nuclei`; return the shape and the radius range."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three integers >= 1 (Z, Y, X); got {shape!r}")
    low, high = (check_positive("radius", r) for r in radius)
    if high < low:
        raise ValueError(f"radius must be (low, high) with low <= high; got {radius!r}")
    if not 0 < packing <= 2:
        raise ValueError(f"packing must be in (0, 2]; got {packing!r}")
    if not 0 < density <= 1 or not 0 < dim <= 1:
        raise ValueError(f"density and dim must be in (0, 1]; got {density!r} and {dim!r}")
    if not elongation >= 1:
        raise ValueError(f"elongation must be a ratio >= 1; got {elongation!r}")
    if not irregularity >= 0 or not chromatin >= 0:
        raise ValueError(f"irregularity and chromatin must be >= 0; got {irregularity!r} and {chromatin!r}")
    if photons is not None and not photons > 0:
        raise ValueError(f"photons must be a positive count or None; got {photons!r}")
    return shape, (low, high)


def make_nuclei(shape=(48, 96, 96), *, seed=0, radius=(4.0, 7.0), packing=0.8, density=0.3,
                dim=0.35, voxel_size=(1.0, 1.0, 1.0), elongation=1.0, irregularity=0.0, chromatin=0.15,
                photons=None):
    """Generate a volume of packed, touching, partly dim nuclei and their centres.

    Nucleus centres are dart-thrown inside the volume (in physical units) with
    radii drawn uniformly from ``radius``; two nuclei may overlap until their
    centres are ``packing * (r1 + r2)`` apart, and then meet along a flat face
    with no dark seam, so only the shape of the bright blob tells them apart.
    Each nucleus is a slightly stretched ellipsoid (elongated up to
    ``elongation`` and turned at random, its outline made irregular by
    ``irregularity``) with its own brightness, drawn from ``[dim, 1]``, and a
    chromatin texture.  The image is blurred by an anisotropic point-spread
    function (twice as wide along z) and has background, a slow illumination
    gradient, photon noise where ``photons`` is given, and read noise.  The ground truth is
    the centroid of the visible part of every nucleus, so nuclei cut by the
    border count with the centre an annotator would mark.

    Parameters
    ----------
    shape : tuple of int, optional
        Volume shape (Z, Y, X). Default (48, 96, 96).
    seed : int, optional
        Seed for :func:`numpy.random.default_rng`. Default 0.
    radius : (float, float), optional
        Range of nucleus radii in physical units. Default (4, 7).
    packing : float, optional
        Smallest centre distance of two nuclei as a fraction of the sum of
        their radii, in (0, 2]: below 1 nuclei overlap and touch. Default 0.8.
    density : float, optional
        Target fraction of the volume covered by nuclei, in (0, 1]; fewer are
        placed when the packing rule leaves no room. Default 0.3.
    dim : float, optional
        Brightness of the dimmest nucleus relative to the brightest, in (0, 1].
        Default 0.35.
    voxel_size : sequence of 3 float, optional
        Physical (z, y, x) voxel size. Default isotropic.
    elongation : float, optional
        Largest ratio of a nucleus's long axis to its short ones, >= 1: each
        nucleus draws its own ratio from ``[1, elongation]`` (its volume kept)
        and a random orientation. Default 1 (round, axis-aligned).
    irregularity : float, optional
        Amplitude, >= 0, of a smooth random field (correlated over about half a
        radius) that scales each nucleus's outline: 0.2 dents and bulges it by
        about 20 %. Default 0.
    chromatin : float, optional
        Contrast of the texture inside nuclei (standard deviation relative to
        the nucleus's brightness), >= 0; 0.3-0.5 gives the bright and dark
        patches of real chromatin. Default 0.15.
    photons : float, optional
        Expected photon count of the brightest nucleus per voxel: the image is
        then Poisson-distributed (shot noise; 10-50 is a dim volume). Default
        None (read noise only).

    Returns
    -------
    NucleiSample

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Examples
    --------
    >>> s = make_nuclei((16, 32, 32), seed=1)
    >>> s.image.dtype, s.nuclei.max() == len(s.centroids)
    (dtype('uint8'), True)
    """
    shape, (low, high) = _check_options(shape, radius, packing, density, dim, elongation, irregularity, chromatin,
                                        photons)
    vs = np.asarray(check_voxel_size(voxel_size), float)
    rng = np.random.default_rng(seed)
    extent = np.asarray(shape) * vs
    mean_volume = 4 / 3 * np.pi * ((low + high) / 2) ** 3
    count = max(1, int(round(density * float(np.prod(extent)) / mean_volume)))
    centres, radii = _place(rng, extent, (low, high), packing, count)
    stretch = rng.uniform(0.85, 1.15, size=(len(radii), 3))
    rotations = roughness = None
    if elongation > 1:
        ratio = rng.uniform(1.0, elongation, size=len(radii))
        stretch = stretch * np.stack([ratio ** (2 / 3), ratio ** (-1 / 3), ratio ** (-1 / 3)], axis=1)
        rotations = _random_rotations(rng, len(radii))
    if irregularity > 0:
        field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=0.5 * (low + high) / 2 / vs)
        roughness = np.maximum(1.0 + irregularity * field / max(float(field.std()), 1e-12), 0.5)
    painted = _paint(shape, vs, centres, radii, stretch, rotations, roughness)
    visible = np.unique(painted)[1:]
    lut = np.zeros(len(radii) + 1, np.uint32)
    lut[visible] = np.arange(1, len(visible) + 1, dtype=np.uint32)
    nuclei = lut[painted]
    radii = radii[visible - 1]
    brightness = np.concatenate([[0.0], rng.uniform(dim, 1.0, size=len(visible))])
    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=1.5 / vs * vs.min())
    image = brightness[nuclei] * np.maximum(1 + chromatin * texture / max(float(texture.std()), 1e-12), 0.0)
    gradient = np.linspace(0.7, 1.0, shape[2])[None, None, :]
    image = (image + _BACKGROUND) * gradient
    sigma = _PSF_SIGMA * vs.min() / vs * np.array([2.0, 1.0, 1.0])
    image = ndimage.gaussian_filter(image, sigma)
    if photons is not None:
        image = rng.poisson(image * photons) / photons
    image = image + rng.normal(0, _NOISE_SD, shape)
    image = np.clip(np.rint(200 * image + 20), 0, 255).astype(np.uint8)
    ids = np.arange(1, len(visible) + 1)
    centroids = np.asarray(ndimage.center_of_mass(np.ones(shape), nuclei, ids), float).reshape(-1, 3)
    logger.debug("make_nuclei: %d nuclei in %s", len(visible), shape)
    return NucleiSample(image=image, nuclei=nuclei, centroids=centroids, radii=radii,
                        voxel_size=tuple(float(v) for v in vs))
