"""Separable filters shared by both metric families (float64).

3-D kernels are applied as exactly equivalent sequences of 1-D correlations (every kernel of
the metrics is separable or a sum of separable terms).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["gauss1d", "gauss1d_d2", "log_sum", "separable"]


def gauss1d(sigma: float, radius: int) -> np.ndarray:
    """Sampled Gaussian exp(-x^2 / 2 sigma^2), x = -radius..radius, normalised to sum 1."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def gauss1d_d2(sigma: float, radius: int) -> np.ndarray:
    """Second derivative of the normalised sampled Gaussian: (x^2/sigma^4 - 1/sigma^2) g(x)."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    s2 = sigma * sigma
    return (x * x / (s2 * s2) - 1.0 / s2) * gauss1d(sigma, radius)


def separable(vol: np.ndarray, kernels: tuple[np.ndarray, ...], mode: str) -> np.ndarray:
    """Correlate ``vol`` with the separable kernel k0(a) k1(b) k2(c) (one 1-D pass per axis).

    For zero ('constant'), 'nearest' (replicate) and 'reflect' boundaries this equals the 3-D
    correlation of the padded volume with the outer-product kernel, because each padding rule
    acts on each axis independently.
    """
    out = vol
    for axis, k in enumerate(kernels):
        out = ndimage.correlate1d(out, k, axis=axis, mode=mode, cval=0.0)
    return out


def log_sum(vol: np.ndarray, g: np.ndarray, g2: np.ndarray, mode: str) -> np.ndarray:
    """sum_i (g2 along axis i, g along the other axes) applied to ``vol`` in 7 1-D passes."""
    c1d = ndimage.correlate1d
    tz = c1d(vol, g, axis=2, mode=mode)
    tz2 = c1d(vol, g2, axis=2, mode=mode)
    u = c1d(tz, g, axis=1, mode=mode)  # g_y g_z
    u2 = c1d(tz, g2, axis=1, mode=mode) + c1d(tz2, g, axis=1, mode=mode)  # g2_y g_z + g_y g2_z
    return c1d(u, g2, axis=0, mode=mode) + c1d(u2, g, axis=0, mode=mode)
