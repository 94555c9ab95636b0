"""Image-quality metrics for susceptibility maps (see algorithms.md section 3).

Two families, each reproducing one reference implementation exactly; label every number
with the family it came from (the same name means different things in each).

**QSM-CI family** (PyPI ``qsm-ci`` 0.6.2 ``qsm_eval.score_arrays``, itself a port of QSM.rs
``tests/common``). Scored over a mask. Before any metric, the reconstruction is set to 0
outside the mask and wherever it is not finite (NaN/inf count as a missing voxel, i.e. as
error), and the reference is set to 0 outside the mask:

* :func:`nrmse` -- 100*||(r - mean r) - (t - mean t)|| / ||t - mean t|| over the mask (%).
* :func:`nrmse_detrend` -- NRMSE after undoing an OLS fit r = a*t + b of the demeaned values.
* :func:`correlation` -- Pearson r in the mask.
* :func:`xsim_qsmci` -- SSIM with a 5x5x5 box window truncated at the volume edges,
  C1 = 1e-4, C2 = 1e-6 (L = 1 ppm, K = 0.01/0.001), mean over mask voxels with a positive
  denominator.
* :func:`hfen_qsmci` -- Laplacian of Gaussian (sigma 1.5, truncate 5: 17^3 support, mirror
  boundary as :func:`scipy.ndimage.gaussian_laplace`) of the whole volumes, norms over the mask,
  100*||LoG r - LoG t|| / ||LoG t||; not demeaned.
* With a segmentation in the head-model scheme (1-6 DGM, 7 thalamus, 8 WM, 9 GM, 11 blood,
  16 calcification): :func:`nrmse_tissue`, :func:`nrmse_blood`, :func:`nrmse_dgm`,
  :func:`dgm_linearity`, :func:`calcification_metrics` (Challenge 2.0's region metrics).

**2016-challenge family** (the MATLAB ``compute_*.m`` shipped with ISDU-QSMNet/SpiNet-QSM,
isdu_qsmnet_spec.md section 6; x = reconstruction, y = reference). Whole arrays, no mask
except where stated; the maps are expected to be 0 outside the brain:

* :func:`rmse_2016` -- 100*||x - y|| / ||y|| (%), not demeaned.
* :func:`psnr_2016` -- challenge rescale to 0..255, then 10*log10(255^2 / mean((x - y)^2)).
* :func:`ssim_2016` -- challenge rescale, 5^3 Gaussian window (sigma 1.5) with zero padding,
  K = (0.01, 0.03), L = 255, mean over voxels where the rescaled x is non-zero.
* :func:`hfen_2016` -- 15^3 LoG (sigma 1.5, zero-mean kernel), zero-padded correlation, then
  :func:`rmse_2016` of the filtered maps.
* :func:`xsim` -- XSIM of QSM Challenge 2.0 / FANSI ``compute_xsim`` (Milovic 2022): no
  rescale, L = 1, K = (0.01, 0.001), Gaussian sigma 1.5 in a 7^3 window with replicate
  padding, mean over the mask (default: y != 0).

All computations run in float64. 3-D filters are applied as exactly equivalent sequences of
1-D correlations (every kernel used here is separable or a sum of separable terms).
:func:`score` computes both families (plus ROI statistics when labels are given).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError

__all__ = [
    "DGM_LABELS",
    "TISSUE_LABELS",
    "BLOOD_LABEL",
    "CALCIFICATION_LABEL",
    "qsmci_preprocess",
    "nrmse",
    "nrmse_detrend",
    "correlation",
    "xsim_qsmci",
    "hfen_qsmci",
    "nrmse_tissue",
    "nrmse_blood",
    "nrmse_dgm",
    "dgm_linearity",
    "calcification_metrics",
    "challenge_rescale",
    "rmse_2016",
    "psnr_2016",
    "ssim_2016",
    "hfen_2016",
    "xsim",
    "score",
    "FAMILY_DESCRIPTIONS",
]

#: Head-model labels used by the QSM-CI / Challenge 2.0 region metrics.
DGM_LABELS = (1, 2, 3, 4, 5, 6)
TISSUE_LABELS = (7, 8, 9)
BLOOD_LABEL = 11
CALCIFICATION_LABEL = 16

#: One-line provenance of each family (printed by the CLI and stored in the JSON).
FAMILY_DESCRIPTIONS = {
    "qsmci": (
        "QSM-CI score_arrays (qsm-ci 0.6.2 / QSM.rs): recon zeroed outside the mask and where "
        "non-finite, truth zeroed outside the mask; nrmse/nrmse_detrend/hfen in %, demeaned "
        "nrmse, xsim with 5^3 box window (L=1 ppm), hfen LoG sigma 1.5 (17^3, norms in mask)"
    ),
    "challenge": (
        "2016 QSM challenge compute_*.m (rmse/hfen in %, psnr in dB, ssim with 0..255 rescale, "
        "5^3 Gaussian, mean where recon != 0; hfen 15^3 LoG) and Challenge 2.0 / FANSI "
        "compute_xsim (no rescale, L=1 ppm, 7^3 Gaussian, replicate padding, mean over mask); "
        "evaluated on the masked maps"
    ),
}


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _as_float64(a: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise QSMInputError(f"cannot convert to a numeric array ({exc})", name) from exc
    if arr.ndim == 0 or arr.size == 0:
        raise QSMInputError(f"expected a non-empty array, got shape {arr.shape}", name)
    return arr


def _check_same_shape(ref: np.ndarray, other: np.ndarray, ref_name: str, name: str) -> None:
    if other.shape != ref.shape:
        raise QSMInputError(
            f"shape {other.shape} does not match {ref_name} shape {ref.shape}", name
        )


def _as_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Boolean mask (``mask > 0``); ``None`` means every voxel. Raises on empty/NaN masks."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.shape != shape:
        raise QSMInputError(f"shape {m.shape} does not match recon shape {shape}", name)
    if m.dtype != bool:
        if m.dtype.kind == "f" and not np.all(np.isfinite(m)):
            raise QSMInputError("mask contains NaN or inf", name)
        m = m > 0
    if not m.any():
        raise QSMInputError("mask is empty (no voxel > 0)", name)
    return m


def _require_3d(a: np.ndarray, name: str) -> None:
    if a.ndim != 3:
        raise QSMInputError(f"expected a 3-D volume, got shape {a.shape}", name)


def qsmci_preprocess(
    recon: Any, truth: Any, mask: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Validate and preprocess inputs as QSM-CI ``score_arrays`` does.

    Returns ``(r, t, m, n_nonfinite)``: float64 recon set to 0 outside the mask and where not
    finite, float64 truth set to 0 outside the mask, the boolean mask, and the number of
    non-finite recon voxels inside the mask. A non-finite reference voxel inside the mask is
    an input error (QSM-CI would propagate NaN).
    """
    r = _as_float64(recon, "recon")
    t = _as_float64(truth, "truth")
    _check_same_shape(r, t, "recon", "truth")
    m = _as_mask(mask, r.shape)
    finite = np.isfinite(r)
    n_nonfinite = int(np.count_nonzero(m & ~finite))
    r = np.where(m & finite, r, 0.0)
    if not np.all(np.isfinite(t[m])):
        raise QSMInputError("reference contains NaN or inf inside the mask", "truth")
    t = np.where(m, t, 0.0)
    return r, t, m, n_nonfinite


# --------------------------------------------------------------------------------------------
# 1-D kernels and separable filters
# --------------------------------------------------------------------------------------------


def _gauss1d(sigma: float, radius: int) -> np.ndarray:
    """Sampled Gaussian exp(-x^2 / 2 sigma^2), x = -radius..radius, normalised to sum 1."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _gauss1d_d2(sigma: float, radius: int) -> np.ndarray:
    """Second derivative of the normalised sampled Gaussian: (x^2/sigma^4 - 1/sigma^2) g(x)."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    s2 = sigma * sigma
    return (x * x / (s2 * s2) - 1.0 / s2) * _gauss1d(sigma, radius)


def _sep(vol: np.ndarray, kernels: tuple[np.ndarray, ...], mode: str) -> np.ndarray:
    """Correlate ``vol`` with the separable kernel k0(a) k1(b) k2(c) (one 1-D pass per axis).

    For zero ('constant'), 'nearest' (replicate) and 'reflect' boundaries this equals the 3-D
    correlation of the padded volume with the outer-product kernel, because each padding rule
    acts on each axis independently.
    """
    out = vol
    for axis, k in enumerate(kernels):
        out = ndimage.correlate1d(out, k, axis=axis, mode=mode, cval=0.0)
    return out


def _log_sum(vol: np.ndarray, g: np.ndarray, g2: np.ndarray, mode: str) -> np.ndarray:
    """sum_i (g2 along axis i, g along the other axes) applied to ``vol`` in 7 1-D passes."""
    c1d = ndimage.correlate1d
    tz = c1d(vol, g, axis=2, mode=mode)
    tz2 = c1d(vol, g2, axis=2, mode=mode)
    u = c1d(tz, g, axis=1, mode=mode)  # g_y g_z
    u2 = c1d(tz, g2, axis=1, mode=mode) + c1d(tz2, g, axis=1, mode=mode)  # g2_y g_z + g_y g2_z
    return c1d(u, g2, axis=0, mode=mode) + c1d(u2, g, axis=0, mode=mode)


# --------------------------------------------------------------------------------------------
# QSM-CI family: cores on preprocessed float64 arrays
# --------------------------------------------------------------------------------------------


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares line y = slope*x + intercept from raw sums (QSM-CI/QSM.rs ``linear_fit``)."""
    n = x.size
    sx, sy = float(x.sum()), float(y.sum())
    den = n * float(np.dot(x, x)) - sx * sx
    if abs(den) < 1e-30:
        return 0.0, 0.0
    slope = (n * float(np.dot(x, y)) - sx * sy) / den
    return slope, (sy - slope * sx) / n


def _nrmse_pair(r: np.ndarray, t: np.ndarray, sel: np.ndarray) -> tuple[float, float]:
    """(demeaned NRMSE, detrended NRMSE) in % over ``sel``; NaN when undefined."""
    if not sel.any():
        return math.nan, math.nan
    rv = r[sel]
    tv = t[sel]
    rv = rv - rv.mean()
    tv = tv - tv.mean()
    norm_t = math.sqrt(float(np.dot(tv, tv)))
    if norm_t < 1e-30:
        return math.nan, math.nan
    d = rv - tv
    value = 100.0 * math.sqrt(float(np.dot(d, d))) / norm_t
    slope, intercept = _ols(tv, rv)
    if abs(slope) < 1e-30:
        return value, value
    d = (rv - intercept) / slope - tv
    return value, 100.0 * math.sqrt(float(np.dot(d, d))) / norm_t


def _correlation(r: np.ndarray, t: np.ndarray, m: np.ndarray) -> float:
    a = r[m]
    b = t[m]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    n = a.size
    sa, sb = float(a.sum()), float(b.sum())
    num = n * float(np.dot(a, b)) - sa * sb
    den = (n * float(np.dot(a, a)) - sa * sa) * (n * float(np.dot(b, b)) - sb * sb)
    if den <= 0.0:
        return math.nan
    return num / math.sqrt(den)


def _box_counts(n: int, radius: int) -> np.ndarray:
    """Number of in-bounds positions of a (2*radius+1)-window centred at each of n positions."""
    i = np.arange(n)
    return (np.minimum(i + radius, n - 1) - np.maximum(i - radius, 0) + 1).astype(np.float64)


def _xsim_qsmci(r: np.ndarray, t: np.ndarray, m: np.ndarray, size: int = 5) -> float:
    c1, c2 = 1e-4, 1e-6
    radius = size // 2
    ones = np.ones(size)
    box = (ones, ones, ones)
    nx, ny, nz = r.shape
    cnt = (
        _box_counts(nx, radius)[:, None, None]
        * _box_counts(ny, radius)[None, :, None]
        * _box_counts(nz, radius)[None, None, :]
    )
    mu_r = _sep(r, box, "constant") / cnt
    mu_t = _sep(t, box, "constant") / cnt
    var_r = _sep(r * r, box, "constant") / cnt - mu_r * mu_r
    var_t = _sep(t * t, box, "constant") / cnt - mu_t * mu_t
    cov = _sep(r * t, box, "constant") / cnt - mu_r * mu_t
    num = (2.0 * mu_r * mu_t + c1) * (2.0 * cov + c2)
    den = (mu_r * mu_r + mu_t * mu_t + c1) * (var_r + var_t + c2)
    valid = m & (den > 0.0)
    if not valid.any():
        return math.nan
    return float(np.mean(num[valid] / den[valid]))


def _log_qsmci(vol: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * float(sigma) + 0.5)
    return _log_sum(vol, _gauss1d(sigma, radius), _gauss1d_d2(sigma, radius), "reflect")


def _hfen_qsmci(
    r: np.ndarray, t: np.ndarray, m: np.ndarray, sigma: float = 1.5, truncate: float = 5.0
) -> float:
    lr = _log_qsmci(r, sigma, truncate)[m]
    lt = _log_qsmci(t, sigma, truncate)[m]
    den = math.sqrt(float(np.dot(lt, lt)))
    if den < 1e-30:
        return math.nan
    d = lr - lt
    value = 100.0 * math.sqrt(float(np.dot(d, d))) / den
    return value if math.isfinite(value) else math.nan


def _as_labels(labels: Any, shape: tuple[int, ...], name: str = "labels") -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != shape:
        raise QSMInputError(f"shape {lab.shape} does not match recon shape {shape}", name)
    if lab.dtype.kind in "iub":
        return lab.astype(np.int64, copy=False)
    lab = np.asarray(lab, dtype=np.float64)
    if not np.all(np.isfinite(lab)):
        raise QSMInputError("label map contains NaN or inf", name)
    rounded = np.rint(lab)
    if np.max(np.abs(lab - rounded)) > 1e-3:
        raise QSMInputError("label map is not integer-valued", name)
    return rounded.astype(np.int64)


def _blood_region(m: np.ndarray, seg: np.ndarray) -> np.ndarray:
    # 3x3x3 dilation of the in-mask blood voxels; QSM-CI does not intersect the result with
    # the mask again (voxels just outside it score as 0 vs 0 after preprocessing).
    return ndimage.binary_dilation(m & (seg == BLOOD_LABEL), structure=np.ones((3, 3, 3), bool))


def _dgm_linearity(r: np.ndarray, t: np.ndarray, seg: np.ndarray) -> float:
    t_means, r_means = [], []
    for lab in DGM_LABELS:
        sel = seg == lab
        if sel.any():
            t_means.append(float(t[sel].mean()))
            r_means.append(float(r[sel].mean()))
    if len(t_means) < 2:
        return math.nan
    slope, _ = _ols(np.asarray(t_means), np.asarray(r_means))
    return abs(1.0 - slope)


def _grow(lo_hi: tuple[int, int], by: int, n: int) -> tuple[int, int]:
    return max(lo_hi[0] - by, 0), min(lo_hi[1] + by, n)


def _calcification(r: np.ndarray, t: np.ndarray, seg: np.ndarray) -> tuple[float, float]:
    calc = seg == CALCIFICATION_LABEL
    if not calc.any():
        return math.nan, math.nan
    t_calc = t[calc]
    gt_moment = t_calc.size * float(t_calc.mean())
    idx = np.nonzero(calc)
    shape = seg.shape
    # bounding box of the calcification (half-open), grown by 3 (cube), 4 more (rim), 4 more
    cube = [_grow((int(i.min()), int(i.max()) + 1), 3, n) for i, n in zip(idx, shape, strict=True)]
    rim = [_grow(c, 4, n) for c, n in zip(cube, shape, strict=True)]
    outer = [_grow(c, 4, n) for c, n in zip(rim, shape, strict=True)]

    def box(b: list[tuple[int, int]]) -> np.ndarray:
        out = np.zeros(shape, bool)
        out[b[0][0] : b[0][1], b[1][0] : b[1][1], b[2][0] : b[2][1]] = True
        return out

    cube_m = box(cube)
    no_cube = box(outer) & ~cube_m
    rim_m = no_cube & box(rim)
    r_cube = r[cube_m]
    r_no_cube = r[no_cube]
    # least-negative threshold -i/100 (i = 0..350) that no voxel outside the cube falls below
    lowest = float(r_no_cube.min()) if r_no_cube.size else math.inf
    threshold = -3.5
    for i in range(351):
        if lowest >= -i * 0.01:
            threshold = -i * 0.01
            break
    segmented = r_cube[r_cube < threshold]
    if segmented.size == 0:
        return abs(gt_moment), math.nan
    calc_mean = float(segmented.mean())
    moment_dev = abs(gt_moment - segmented.size * calc_mean)
    rim_r = r[rim_m]
    rim_t = t[rim_m]
    if rim_r.size < 2:
        return moment_dev, math.nan
    slope, intercept = _ols(rim_t, rim_r)
    res = rim_r - (slope * rim_t + intercept)
    std_res = float(np.sqrt(np.mean((res - res.mean()) ** 2)))
    streak = std_res / abs(calc_mean) if abs(calc_mean) > 1e-30 else math.nan
    return moment_dev, streak


def _qsmci_segmentation(r: np.ndarray, t: np.ndarray, m: np.ndarray, seg: np.ndarray) -> dict:
    calc_dev, calc_streak = _calcification(r, t, seg)
    return {
        "nrmse_tissue": _nrmse_pair(r, t, m & np.isin(seg, TISSUE_LABELS))[1],
        "nrmse_blood": _nrmse_pair(r, t, _blood_region(m, seg))[1],
        "nrmse_dgm": _nrmse_pair(r, t, m & np.isin(seg, DGM_LABELS))[1],
        "dgm_linearity": _dgm_linearity(r, t, seg),
        "calc_moment_dev": calc_dev,
        "calc_streak": calc_streak,
    }


# --------------------------------------------------------------------------------------------
# QSM-CI family: public functions
# --------------------------------------------------------------------------------------------


def nrmse(
    recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *, demean: bool = True
) -> float:
    """Normalised RMSE in percent over ``mask``: 100*||r - t|| / ||t||.

    With ``demean=True`` (QSM-CI ``nrmse``, qsm-ci 0.6.2 ``nrmse_challenge``) both maps are
    demeaned inside the mask first. Inputs are preprocessed as in QSM-CI (see
    :func:`qsmci_preprocess`); ``mask=None`` scores every voxel. NaN when the reference has
    zero norm (after demeaning).
    """
    r, t, m, _ = qsmci_preprocess(recon, truth, mask)
    if demean:
        return _nrmse_pair(r, t, m)[0]
    rv, tv = r[m], t[m]
    norm_t = math.sqrt(float(np.dot(tv, tv)))
    if norm_t < 1e-30:
        return math.nan
    d = rv - tv
    return 100.0 * math.sqrt(float(np.dot(d, d))) / norm_t


def nrmse_detrend(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Detrended NRMSE (%) of QSM-CI (qsm-ci 0.6.2 / QSM.rs ``nrmse_challenge``, 2nd value).

    Demean both maps in the mask, fit r = a*t + b by least squares, then
    100*||(r - b)/a - t|| / ||t||. Equals the demeaned NRMSE when |a| < 1e-30.
    """
    r, t, m, _ = qsmci_preprocess(recon, truth, mask)
    return _nrmse_pair(r, t, m)[1]


def correlation(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation in the mask (QSM-CI ``correlation``, after its preprocessing).

    NaN when either map is constant in the mask (qsm-ci returns 0.0 there).
    """
    r, t, m, _ = qsmci_preprocess(recon, truth, mask)
    return _correlation(r, t, m)


def xsim_qsmci(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """QSM-CI XSIM (qsm-ci 0.6.2 ``xsim`` / QSM.rs): SSIM with a 5x5x5 box window.

    Local means/variances/covariance over the in-bounds part of the window (windows are
    truncated at the volume edges, not padded), C1 = 1e-4, C2 = 1e-6, no rescaling; the map is
    averaged over mask voxels whose denominator is > 0. Inputs preprocessed as in QSM-CI.
    """
    r, t, m, _ = qsmci_preprocess(recon, truth, mask)
    _require_3d(r, "recon")
    return _xsim_qsmci(r, t, m)


def hfen_qsmci(
    recon: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    sigma: float = 1.5,
    truncate: float = 5.0,
) -> float:
    """QSM-CI HFEN (%) (qsm-ci 0.6.2 ``hfen``).

    LoG = sum over axes of the separable Gaussian second derivative, sigma 1.5, radius
    int(truncate*sigma + 0.5) = 8 (17^3 support), mirror ('reflect', as
    :func:`scipy.ndimage.gaussian_laplace`) boundary, applied to the whole preprocessed
    volumes; then 100*||LoG r - LoG t|| / ||LoG t|| with norms over the mask. Not demeaned.
    """
    r, t, m, _ = qsmci_preprocess(recon, truth, mask)
    _require_3d(r, "recon")
    return _hfen_qsmci(r, t, m, sigma, truncate)


def _seg_inputs(recon, truth, mask, labels):
    r, t, m, _ = qsmci_preprocess(recon, truth, mask)
    return r, t, m, _as_labels(labels, r.shape)


def nrmse_tissue(recon, truth, mask, labels) -> float:
    """Detrended NRMSE (%) over mask & labels in {7, 8, 9} (thalamus, WM, GM), QSM-CI."""
    r, t, m, seg = _seg_inputs(recon, truth, mask, labels)
    return _nrmse_pair(r, t, m & np.isin(seg, TISSUE_LABELS))[1]


def nrmse_blood(recon, truth, mask, labels) -> float:
    """Detrended NRMSE (%) over (mask & label 11) dilated by a 3^3 cube, QSM-CI."""
    r, t, m, seg = _seg_inputs(recon, truth, mask, labels)
    return _nrmse_pair(r, t, _blood_region(m, seg))[1]


def nrmse_dgm(recon, truth, mask, labels) -> float:
    """Detrended NRMSE (%) over mask & labels 1-6 (deep grey matter), QSM-CI."""
    r, t, m, seg = _seg_inputs(recon, truth, mask, labels)
    return _nrmse_pair(r, t, m & np.isin(seg, DGM_LABELS))[1]


def dgm_linearity(recon, truth, mask, labels) -> float:
    """|1 - slope| of the OLS fit of recon ROI means on reference ROI means, labels 1-6 (QSM-CI).

    ROI means over every voxel of each label (after preprocessing); NaN with < 2 ROIs.
    """
    r, t, _m, seg = _seg_inputs(recon, truth, mask, labels)
    return _dgm_linearity(r, t, seg)


def calcification_metrics(recon, truth, mask, labels) -> tuple[float, float]:
    """(moment deviation, streak level) around the calcification (label 16), QSM-CI/QSM.rs.

    Boxes: the calcification's bounding box grown by 3 voxels (cube), 4 more (rim box), 4 more
    (outer box). Threshold = the least-negative -i/100 (i <= 350, else -3.5) that no recon voxel
    of outer-minus-cube falls below; calcification = cube voxels below it. Moment deviation =
    |n_true*mean_true - n_seg*mean_seg| (ppm*voxels); streak = SD of the residuals of an OLS
    fit recon ~ truth over rim-box-minus-cube, divided by |mean_seg|. NaN where undefined.
    """
    r, t, _m, seg = _seg_inputs(recon, truth, mask, labels)
    _require_3d(r, "recon")
    return _calcification(r, t, seg)


# --------------------------------------------------------------------------------------------
# 2016-challenge family
# --------------------------------------------------------------------------------------------


def _challenge_inputs(x: Any, y: Any, need_3d: bool = True) -> tuple[np.ndarray, np.ndarray]:
    xx = _as_float64(x, "recon")
    yy = _as_float64(y, "truth")
    _check_same_shape(xx, yy, "recon", "truth")
    if need_3d:
        _require_3d(xx, "recon")
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
    mu1 = _sep(x, w, mode)
    mu2 = _sep(y, w, mode)
    mu1_sq = mu1 * mu1
    mu2_sq = mu2 * mu2
    mu1_mu2 = mu1 * mu2
    s1 = _sep(x * x, w, mode) - mu1_sq
    s2 = _sep(y * y, w, mode) - mu2_sq
    s12 = _sep(x * y, w, mode) - mu1_mu2
    return ((2 * mu1_mu2 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))


def ssim_2016(recon: np.ndarray, truth: np.ndarray) -> float:
    """2016 challenge ``compute_ssim`` (``ssim_index3d``).

    Challenge rescale (:func:`challenge_rescale`); window = Gaussian sigma 1.5 on a 5^3 grid
    normalised to sum 1; K = (0.01, 0.03), L = 255; local statistics by zero-padded 'same'
    convolution; standard SSIM map, averaged over the voxels where the rescaled x != 0 (so the
    voxel holding the global minimum drops out too). NaN if there is no such voxel.
    """
    x, y = _challenge_inputs(recon, truth)
    xs, ys = challenge_rescale(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        smap = _ssim_map(xs, ys, _gauss1d(1.5, 2), (0.01, 0.03), 255.0, "constant")
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
    g = _gauss1d(sigma, radius)
    g2 = _gauss1d_d2(sigma, radius)
    full = (
        g2[:, None, None] * g[None, :, None] * g[None, None, :]
        + g[:, None, None] * g2[None, :, None] * g[None, None, :]
        + g[:, None, None] * g[None, :, None] * g2[None, None, :]
    )
    return g, g2, float(full.mean())


def _log_2016(vol: np.ndarray) -> np.ndarray:
    g, g2, c = _log_2016_kernels()
    ones = np.ones(g.size)
    return _log_sum(vol, g, g2, "constant") - c * _sep(vol, (ones, ones, ones), "constant")


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
    m = _as_mask(y != 0 if mask is None else mask, x.shape, "mask" if mask is not None else "truth")
    return _xsim_fansi(x, y, m)


def _xsim_fansi(x: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    smap = _ssim_map(x, y, _gauss1d(1.5, 3), (0.01, 0.001), 1.0, "nearest")
    return float(smap[m].sum() / np.count_nonzero(m))


# --------------------------------------------------------------------------------------------
# the whole table
# --------------------------------------------------------------------------------------------


def score(
    recon: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    label_names: Mapping[int, str] | None = None,
    segmentation_metrics: bool | None = None,
) -> dict[str, Any]:
    """Every metric of both families, plus ROI statistics when ``labels`` is given.

    Both families see the QSM-CI preprocessing (:func:`qsmci_preprocess`): recon zeroed outside
    the mask and where non-finite, truth zeroed outside the mask. The 2016 functions then run on
    these masked whole arrays, and the FANSI XSIM is averaged over ``mask``.

    ``segmentation_metrics`` (default: True when ``label_names`` is None, i.e. the labels follow
    the head-model scheme) adds QSM-CI's nrmse_tissue/blood/dgm, dgm_linearity, calc_*.

    Returns ``{"qsmci": {...}, "challenge": {...}, "info": {...}, "rois": [...]}`` (``rois``
    and ``roi_summary`` only with labels). Units: nrmse*/rmse/hfen in %, psnr in dB,
    correlation/ssim/xsim dimensionless, calc_moment_dev in ppm*voxels, ROI values in ppm.
    """
    r, t, m, n_nonfinite = qsmci_preprocess(recon, truth, mask)
    _require_3d(r, "recon")
    seg = None if labels is None else _as_labels(labels, r.shape)

    n_pair = _nrmse_pair(r, t, m)
    qsmci: dict[str, float] = {
        "nrmse": n_pair[0],
        "nrmse_detrend": n_pair[1],
        "correlation": _correlation(r, t, m),
        "xsim": _xsim_qsmci(r, t, m),
        "hfen": _hfen_qsmci(r, t, m),
    }
    if segmentation_metrics is None:
        segmentation_metrics = label_names is None
    if seg is not None and segmentation_metrics:
        qsmci.update(_qsmci_segmentation(r, t, m, seg))
    n_mask = int(np.count_nonzero(m))
    qsmci["coverage"] = float(np.count_nonzero((r != 0) & m) / n_mask)

    xs, ys = challenge_rescale(r, t)
    with np.errstate(divide="ignore", invalid="ignore"):
        smap = _ssim_map(xs, ys, _gauss1d(1.5, 2), (0.01, 0.03), 255.0, "constant")
    sel = xs != 0
    challenge = {
        "rmse": _rmse(r, t),
        "psnr": _psnr(xs, ys),
        "ssim": float(np.mean(smap[sel])) if sel.any() else math.nan,
        "hfen": _rmse(_log_2016(r), _log_2016(t)),
        "xsim": _xsim_fansi(r, t, m),
    }
    out: dict[str, Any] = {
        "qsmci": qsmci,
        "challenge": challenge,
        "info": {
            "shape": list(r.shape),
            "n_mask": n_mask,
            "n_nonfinite_recon": n_nonfinite,
            "definitions": dict(FAMILY_DESCRIPTIONS),
        },
    }
    if seg is not None:
        from .rois import roi_mean_agreement, roi_stats

        rows = roi_stats(r, t, seg, m, label_names=label_names)
        out["rois"] = rows
        out["roi_summary"] = roi_mean_agreement(rows)
    return out
