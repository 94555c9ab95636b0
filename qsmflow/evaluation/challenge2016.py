"""2016 QSM-challenge metrics and the Challenge 2.0 / FANSI XSIM.

The MATLAB ``compute_*.m`` shipped with ISDU-QSMNet/SpiNet-QSM (isdu_qsmnet_spec.md section 6;
x = reconstruction, y = reference). Whole arrays, no mask except where stated; the maps are
expected to be 0 outside the brain:

* :func:`rmse_2016` -- 100*||x - y|| / ||y|| (%), not demeaned.
* :func:`psnr_2016` -- challenge rescale to 0..255, then 10*log10(255^2 / mean((x - y)^2)).
* :func:`ssim_2016` -- challenge rescale, 5^3 Gaussian window (sigma 1.5) with zero padding,
  K = (0.01, 0.03), L = 255, mean over voxels where the rescaled x is non-zero.
* :func:`hfen_2016` -- 15^3 LoG (sigma 1.5, zero-mean kernel), zero-padded correlation, then
  :func:`rmse_2016` of the filtered maps.
* :func:`xsim` -- XSIM of QSM Challenge 2.0 / FANSI ``compute_xsim`` (Milovic 2022): no
  rescale, L = 1, K = (0.01, 0.001), Gaussian sigma 1.5 in a 7^3 window with replicate
  padding, mean over the mask (default: y != 0).

:func:`challenge_table` computes the whole family at once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import QSMInputError
from ._checks import as_float64, as_mask, check_same_shape, require_3d
from ._filters import gauss1d, gauss1d_d2, log_sum, separable

__all__ = [
    "challenge_rescale",
    "challenge_table",
    "hfen_2016",
    "psnr_2016",
    "rmse_2016",
    "ssim_2016",
    "xsim",
]


def _challenge_inputs(x: Any, y: Any, need_3d: bool = True) -> tuple[np.ndarray, np.ndarray]:
    xx = as_float64(x, "recon")
    yy = as_float64(y, "truth")
    check_same_shape(xx, yy, "recon", "truth")
    if need_3d:
        require_3d(xx, "recon")
    for arr, name in ((xx, "recon"), (yy, "truth")):
        if not np.all(np.isfinite(arr)):
            raise QSMInputError(
                "contains NaN or inf (the 2016-challenge metrics are undefined there; "
                "use score(), which zeroes non-finite reconstruction voxels)",
                name,
            )
    return xx, yy


def _rmse(x: np.ndarray, y: np.ndarray) -> float:
    d = (x - y).ravel()
    yv = y.ravel()
    num = math.sqrt(float(np.dot(d, d)))
    den = math.sqrt(float(np.dot(yv, yv)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(100.0) * num / np.float64(den))


def challenge_rescale(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 2016 challenge rescale used by its SSIM and PSNR.

    mn = min over both maps; mn is subtracted from the non-zero voxels only (zeros stay 0);
    mx = max over both shifted maps; both become 255*(.)/mx.
    """
    x = np.array(x, dtype=np.float64)
    y = np.array(y, dtype=np.float64)
    mn = min(float(x.min()), float(y.min()))
    nzx = x != 0
    nzy = y != 0
    x[nzx] -= mn
    y[nzy] -= mn
    mx = max(float(x.max()), float(y.max()))
    with np.errstate(divide="ignore", invalid="ignore"):
        return 255.0 * x / mx, 255.0 * y / mx


def rmse_2016(recon: np.ndarray, truth: np.ndarray) -> float:
    """2016 challenge ``compute_rmse``: 100*||x - y||_2 / ||y||_2 over the whole arrays (%).

    Not demeaned (score references first, cf. algorithms.md section 6 item 8).
    """
    x, y = _challenge_inputs(recon, truth, need_3d=False)
    return _rmse(x, y)


def _psnr(xs: np.ndarray, ys: np.ndarray) -> float:
    d = (xs - ys).ravel()
    mse = float(np.dot(d, d)) / d.size
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(255.0**2 / np.float64(mse)))


def psnr_2016(recon: np.ndarray, truth: np.ndarray) -> float:
    """ISDU/SpiNet ``compute_psnr`` (dB): challenge rescale, then MATLAB ``psnr(x, y, 255)``.

    10*log10(255^2 / mean((x - y)^2)) with the mean over all voxels (zeros included); inf
    for identical maps.
    """
    x, y = _challenge_inputs(recon, truth, need_3d=False)
    return _psnr(*challenge_rescale(x, y))


def _ssim_map(
    x: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    k: tuple[float, float],
    peak: float,
    mode: str,
) -> np.ndarray:
    c1 = (k[0] * peak) ** 2
    c2 = (k[1] * peak) ** 2
    w = (g, g, g)
    mu1 = separable(x, w, mode)
    mu2 = separable(y, w, mode)
    mu1_sq = mu1 * mu1
    mu2_sq = mu2 * mu2
    mu1_mu2 = mu1 * mu2
    s1 = separable(x * x, w, mode) - mu1_sq
    s2 = separable(y * y, w, mode) - mu2_sq
    s12 = separable(x * y, w, mode) - mu1_mu2
    return ((2 * mu1_mu2 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))


def ssim_2016(recon: np.ndarray, truth: np.ndarray) -> float:
    """2016 challenge ``compute_ssim`` (``ssim_index3d``).

    Challenge rescale (:func:`challenge_rescale`); window = Gaussian sigma 1.5 on a 5^3 grid
    normalised to sum 1; K = (0.01, 0.03), L = 255; local statistics by zero-padded 'same'
    convolution; standard SSIM map, averaged over the voxels where the rescaled x != 0 (so the
    voxel holding the global minimum drops out too). NaN if there is no such voxel.
    """
    x, y = _challenge_inputs(recon, truth)
    return _ssim_rescaled(*challenge_rescale(x, y))


def _ssim_rescaled(xs: np.ndarray, ys: np.ndarray) -> float:
    """The 2016 SSIM of maps already passed through :func:`challenge_rescale`."""
    with np.errstate(divide="ignore", invalid="ignore"):
        smap = _ssim_map(xs, ys, gauss1d(1.5, 2), (0.01, 0.03), 255.0, "constant")
    sel = xs != 0
    if not sel.any():
        return math.nan
    return float(np.mean(smap[sel]))


def _log_2016_kernels(sigma: float = 1.5, size: int = 15) -> tuple[np.ndarray, np.ndarray, float]:
    """1-D pieces of the 2016 LoG: H = sum_i g2_i * g * g - c, c = mean of the raw 3-D LoG.

    h = normalised 3-D Gaussian = g (x) g (x) g with g the normalised 1-D Gaussian, and
    (r^2/sigma^4 - 3/sigma^2) h = sum over axes of (x_i^2/sigma^4 - 1/sigma^2) g(x_i) times g
    along the other two axes; c is taken from the assembled 3-D kernel as the MATLAB code does.
    """
    radius = size // 2
    g = gauss1d(sigma, radius)
    g2 = gauss1d_d2(sigma, radius)
    full = (
        g2[:, None, None] * g[None, :, None] * g[None, None, :]
        + g[:, None, None] * g2[None, :, None] * g[None, None, :]
        + g[:, None, None] * g[None, :, None] * g2[None, None, :]
    )
    return g, g2, float(full.mean())


def _log_2016(vol: np.ndarray) -> np.ndarray:
    g, g2, c = _log_2016_kernels()
    ones = np.ones(g.size)
    return log_sum(vol, g, g2, "constant") - c * separable(vol, (ones, ones, ones), "constant")


def hfen_2016(recon: np.ndarray, truth: np.ndarray) -> float:
    """2016 challenge ``compute_hfen`` (%).

    LoG kernel on a 15^3 grid, sigma 1.5: h = exp(-r^2/2 sigma^2)/sum,
    H = (r^2/sigma^4 - 3/sigma^2) h, H -= mean(H); both maps filtered with MATLAB
    ``imfilter`` defaults (correlation, zero padding, same size); HFEN = :func:`rmse_2016` of
    the filtered maps.
    """
    x, y = _challenge_inputs(recon, truth)
    return _rmse(_log_2016(x), _log_2016(y))


def xsim(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """XSIM of QSM Challenge 2.0 (FANSI ``compute_xsim`` v2.0, Milovic 2022).

    No rescaling (ppm), L = 1, K = (0.01, 0.001); local statistics with MATLAB
    ``imgaussfilt3(., 1.5, 'FilterSize', 7)`` (normalised Gaussian, replicate padding);
    standard SSIM map; XSIM = sum(map*mask)/sum(mask), default mask = truth != 0. The inputs
    themselves are not masked.
    """
    x, y = _challenge_inputs(recon, truth)
    m = as_mask(y != 0 if mask is None else mask, x.shape, "mask" if mask is not None else "truth")
    return _xsim_fansi(x, y, m)


def _xsim_fansi(x: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    smap = _ssim_map(x, y, gauss1d(1.5, 3), (0.01, 0.001), 1.0, "nearest")
    return float(smap[m].sum() / np.count_nonzero(m))


def challenge_table(r: np.ndarray, t: np.ndarray, m: np.ndarray) -> dict[str, float]:
    """The whole 2016 family (plus the FANSI XSIM over ``m``) on finite float64 arrays.

    ``r`` and ``t`` are the recon and reference (ppm), already masked, as
    :func:`qsmflow.evaluation.metrics.score` passes them. Units: rmse/hfen in %, psnr in dB,
    ssim/xsim dimensionless.
    """
    xs, ys = challenge_rescale(r, t)
    return {
        "rmse": _rmse(r, t),
        "psnr": _psnr(xs, ys),
        "ssim": _ssim_rescaled(xs, ys),
        "hfen": _rmse(_log_2016(r), _log_2016(t)),
        "xsim": _xsim_fansi(r, t, m),
    }
