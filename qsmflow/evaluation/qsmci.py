"""QSM-CI metrics (PyPI ``qsm-ci`` 0.6.2 ``qsm_eval.score_arrays``, a port of QSM.rs).

Scored over a mask. Before any metric, the reconstruction is set to 0 outside the mask and
wherever it is not finite (NaN/inf count as a missing voxel, i.e. as error), and the reference
is set to 0 outside the mask (:func:`qsmci_preprocess`):

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

:func:`qsmci_table` computes the whole family at once on preprocessed arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ._checks import as_float64, as_labels, as_mask, check_same_shape, require_3d
from ._filters import gauss1d, gauss1d_d2, log_sum, separable

__all__ = [
    "BLOOD_LABEL",
    "CALCIFICATION_LABEL",
    "DGM_LABELS",
    "TISSUE_LABELS",
    "calcification_metrics",
    "correlation",
    "dgm_linearity",
    "hfen_qsmci",
    "nrmse",
    "nrmse_blood",
    "nrmse_detrend",
    "nrmse_dgm",
    "nrmse_tissue",
    "qsmci_preprocess",
    "qsmci_table",
    "xsim_qsmci",
]

#: The array arguments of the public functions (maps in ppm, masks, label maps).
Array = np.ndarray

#: Head-model labels used by the QSM-CI / Challenge 2.0 region metrics.
DGM_LABELS = (1, 2, 3, 4, 5, 6)
TISSUE_LABELS = (7, 8, 9)
BLOOD_LABEL = 11
CALCIFICATION_LABEL = 16


def qsmci_preprocess(
    recon: Any, truth: Any, mask: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Validate and preprocess inputs as QSM-CI ``score_arrays`` does.

    Returns ``(r, t, m, n_nonfinite)``: float64 recon set to 0 outside the mask and where not
    finite, float64 truth set to 0 outside the mask, the boolean mask, and the number of
    non-finite recon voxels inside the mask. A non-finite reference voxel inside the mask is
    an input error (QSM-CI would propagate NaN).
    """
    r = as_float64(recon, "recon")
    t = as_float64(truth, "truth")
    check_same_shape(r, t, "recon", "truth")
    m = as_mask(mask, r.shape)
    finite = np.isfinite(r)
    n_nonfinite = int(np.count_nonzero(m & ~finite))
    r = np.where(m & finite, r, 0.0)
    if not np.all(np.isfinite(t[m])):
        raise QSMInputError("reference contains NaN or inf inside the mask", "truth")
    t = np.where(m, t, 0.0)
    return r, t, m, n_nonfinite


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
    mu_r = separable(r, box, "constant") / cnt
    mu_t = separable(t, box, "constant") / cnt
    var_r = separable(r * r, box, "constant") / cnt - mu_r * mu_r
    var_t = separable(t * t, box, "constant") / cnt - mu_t * mu_t
    cov = separable(r * t, box, "constant") / cnt - mu_r * mu_t
    num = (2.0 * mu_r * mu_t + c1) * (2.0 * cov + c2)
    den = (mu_r * mu_r + mu_t * mu_t + c1) * (var_r + var_t + c2)
    valid = m & (den > 0.0)
    if not valid.any():
        return math.nan
    return float(np.mean(num[valid] / den[valid]))


def _log_qsmci(vol: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * float(sigma) + 0.5)
    return log_sum(vol, gauss1d(sigma, radius), gauss1d_d2(sigma, radius), "reflect")


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


def _tissue_region(m: np.ndarray, seg: np.ndarray) -> np.ndarray:
    return m & np.isin(seg, TISSUE_LABELS)


def _dgm_region(m: np.ndarray, seg: np.ndarray) -> np.ndarray:
    return m & np.isin(seg, DGM_LABELS)


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
        "nrmse_tissue": _nrmse_pair(r, t, _tissue_region(m, seg))[1],
        "nrmse_blood": _nrmse_pair(r, t, _blood_region(m, seg))[1],
        "nrmse_dgm": _nrmse_pair(r, t, _dgm_region(m, seg))[1],
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
    require_3d(r, "recon")
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
    require_3d(r, "recon")
    return _hfen_qsmci(r, t, m, sigma, truncate)


def _seg_inputs(
    recon: Any, truth: Any, mask: Any, labels: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r, t, m, _ = qsmci_preprocess(recon, truth, mask)
    return r, t, m, as_labels(labels, r.shape)


def _region_nrmse(
    recon: Array,
    truth: Array,
    mask: Array | None,
    labels: Array,
    region: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> float:
    r, t, m, seg = _seg_inputs(recon, truth, mask, labels)
    return _nrmse_pair(r, t, region(m, seg))[1]


def nrmse_tissue(recon: Array, truth: Array, mask: Array | None, labels: Array) -> float:
    """Detrended NRMSE (%) over mask & labels in {7, 8, 9} (thalamus, WM, GM), QSM-CI."""
    return _region_nrmse(recon, truth, mask, labels, _tissue_region)


def nrmse_blood(recon: Array, truth: Array, mask: Array | None, labels: Array) -> float:
    """Detrended NRMSE (%) over (mask & label 11) dilated by a 3^3 cube, QSM-CI."""
    return _region_nrmse(recon, truth, mask, labels, _blood_region)


def nrmse_dgm(recon: Array, truth: Array, mask: Array | None, labels: Array) -> float:
    """Detrended NRMSE (%) over mask & labels 1-6 (deep grey matter), QSM-CI."""
    return _region_nrmse(recon, truth, mask, labels, _dgm_region)


def dgm_linearity(recon: Array, truth: Array, mask: Array | None, labels: Array) -> float:
    """|1 - slope| of the OLS fit of recon ROI means on reference ROI means, labels 1-6 (QSM-CI).

    ROI means over every voxel of each label (after preprocessing); NaN with < 2 ROIs.
    """
    r, t, _m, seg = _seg_inputs(recon, truth, mask, labels)
    return _dgm_linearity(r, t, seg)


def calcification_metrics(
    recon: Array, truth: Array, mask: Array | None, labels: Array
) -> tuple[float, float]:
    """(moment deviation, streak level) around the calcification (label 16), QSM-CI/QSM.rs.

    Boxes: the calcification's bounding box grown by 3 voxels (cube), 4 more (rim box), 4 more
    (outer box). Threshold = the least-negative -i/100 (i <= 350, else -3.5) that no recon voxel
    of outer-minus-cube falls below; calcification = cube voxels below it. Moment deviation =
    |n_true*mean_true - n_seg*mean_seg| (ppm*voxels); streak = SD of the residuals of an OLS
    fit recon ~ truth over rim-box-minus-cube, divided by |mean_seg|. NaN where undefined.
    """
    r, t, _m, seg = _seg_inputs(recon, truth, mask, labels)
    require_3d(r, "recon")
    return _calcification(r, t, seg)


def qsmci_table(
    r: np.ndarray,
    t: np.ndarray,
    m: np.ndarray,
    seg: np.ndarray | None = None,
    *,
    segmentation_metrics: bool = True,
) -> dict[str, float]:
    """The whole QSM-CI family on arrays already preprocessed by :func:`qsmci_preprocess`.

    ``seg`` (int labels, head-model scheme) with ``segmentation_metrics`` adds the region
    metrics. Units: nrmse*/hfen in %, calc_moment_dev in ppm*voxels, the rest dimensionless;
    ``coverage`` is the fraction of mask voxels where the recon is non-zero.
    """
    n_pair = _nrmse_pair(r, t, m)
    table: dict[str, float] = {
        "nrmse": n_pair[0],
        "nrmse_detrend": n_pair[1],
        "correlation": _correlation(r, t, m),
        "xsim": _xsim_qsmci(r, t, m),
        "hfen": _hfen_qsmci(r, t, m),
    }
    if seg is not None and segmentation_metrics:
        table.update(_qsmci_segmentation(r, t, m, seg))
    table["coverage"] = float(np.count_nonzero((r != 0) & m) / np.count_nonzero(m))
    return table
