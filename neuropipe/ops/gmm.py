"""Two-component Gaussian-mixture foreground probability.

A 1-D mixture of two Gaussians is fitted to the voxel intensities by
expectation-maximisation and the posterior probability of the foreground
component is returned for every voxel.  This is the unsupervised fallback for
turning a raw (or already smoothed) volume into a probability map.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.special import expit

from ._validate import as_volume, check_positive_int

__all__ = ["gmm_probability"]

logger = logging.getLogger(__name__)

_FOREGROUNDS = ("bright", "dark")
_CHUNK = 1 << 20


def _log_density(x, mean, var, weight):
    return np.log(weight) - 0.5 * np.log(2.0 * np.pi * var) - (x - mean) ** 2 / (2.0 * var)


def _fit(x, *, max_iter, tol):
    """EM for a two-component 1-D mixture; returns (means, variances, weights)."""
    lo, hi = np.percentile(x, [25.0, 75.0])
    if hi <= lo:  # heavy ties: fall back to the extremes
        lo, hi = float(x.min()), float(x.max())
    means = np.array([lo, hi], float)
    total_var = float(x.var())
    floor = max(total_var * 1e-6, 1e-12)
    variances = np.full(2, max(total_var / 4.0, floor))
    weights = np.array([0.5, 0.5])
    previous = -np.inf
    for it in range(max_iter):
        logp = np.stack([_log_density(x, means[k], variances[k], weights[k]) for k in range(2)])
        top = logp.max(axis=0)
        log_norm = top + np.log(np.exp(logp[0] - top) + np.exp(logp[1] - top))
        resp = np.exp(logp - log_norm)
        loglik = float(log_norm.mean())
        nk = resp.sum(axis=1) + 1e-12
        weights = np.clip(nk / x.size, 1e-6, 1.0)
        means = (resp @ x) / nk
        variances = np.maximum((resp * (x[None, :] - means[:, None]) ** 2).sum(axis=1) / nk, floor)
        if abs(loglik - previous) <= tol * max(1.0, abs(loglik)):
            break
        previous = loglik
    logger.debug("gmm: %d EM iterations, means=%s, sd=%s, weights=%s",
                 it + 1, means, np.sqrt(variances), weights)
    return means, variances, weights


def gmm_probability(volume, *, foreground="bright", max_samples=200_000, seed=0,
                    max_iter=200, tol=1e-7):
    """Probability that each voxel belongs to the foreground intensity class.

    A two-component Gaussian mixture is fitted by EM to the intensities
    (a random subsample of ``max_samples`` voxels when the volume is larger),
    initialised deterministically with means at the 25th and 75th
    percentiles, equal weights and a quarter of the total variance each.
    The foreground is the component with the higher (``'bright'``) or lower
    (``'dark'``) mean.  So that the probability is monotonic in intensity,
    intensities are clamped to the interval between the two component means
    before the posterior is evaluated (otherwise a narrow component can lose
    its own far tail to the wider one).

    Parameters
    ----------
    volume : array_like of shape (Z, Y, X), numeric
        Intensities; must not be constant.
    foreground : {'bright', 'dark'}, optional
        Which component is the foreground.
    max_samples : int, optional
        Maximum number of voxels used for fitting.
    seed : int, optional
        Seed of the subsampling (only used when subsampling).
    max_iter : int, optional
        Maximum number of EM iterations.
    tol : float, optional
        Relative change of the mean log-likelihood that stops EM.

    Returns
    -------
    ndarray of shape (Z, Y, X), float32
        Posterior probability of the foreground component, in [0, 1].

    Raises
    ------
    ValueError
        If ``foreground`` is not 'bright' or 'dark', the volume is not a
        finite non-empty 3-D numeric array, or it is constant.

    Examples
    --------
    >>> v = np.zeros((1, 4, 4)); v[0, :2] = 10.0; v += np.linspace(0, 1, 16).reshape(1, 4, 4)
    >>> p = gmm_probability(v)
    >>> bool(p[0, 0, 0] > 0.99 and p[0, 3, 3] < 0.01)
    True
    """
    if foreground not in _FOREGROUNDS:
        raise ValueError(f"foreground must be one of {_FOREGROUNDS}; got {foreground!r}")
    vol = as_volume(volume, "volume")
    max_samples = check_positive_int("max_samples", max_samples)
    max_iter = check_positive_int("max_iter", max_iter)
    flat = vol.reshape(-1)
    vmin, vmax = flat.min(), flat.max()
    if vmin == vmax:
        raise ValueError(
            f"volume is constant (every voxel is {vmin!r}); a two-component mixture cannot be fitted"
        )
    if flat.size > max_samples:
        rng = np.random.default_rng(seed)
        sample = flat[rng.choice(flat.size, size=max_samples, replace=False)].astype(np.float64)
    else:
        sample = flat.astype(np.float64)
    means, variances, weights = _fit(sample, max_iter=max_iter, tol=float(tol))
    order = np.argsort(means)
    fg, bg = (order[1], order[0]) if foreground == "bright" else (order[0], order[1])
    lo, hi = means[order[0]], means[order[1]]

    out = np.empty(flat.size, np.float32)
    for start in range(0, flat.size, _CHUNK):
        x = np.clip(flat[start:start + _CHUNK].astype(np.float64), lo, hi)
        log_odds = (_log_density(x, means[fg], variances[fg], weights[fg])
                    - _log_density(x, means[bg], variances[bg], weights[bg]))
        out[start:start + _CHUNK] = expit(log_odds)
    return out.reshape(vol.shape)
