"""Total-variation (TV) dipole inversion by ADMM (Bilgic et al. 2014) with optional MEDI-style
magnitude edge weights (Liu et al. 2012). Conventions (units, padding, mask, float32 default) as
:mod:`.inversion`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import QSMInputError
from . import _fft
from .kernel import check_voxel_size
from .masks import magnitude_weights
from .padded import DEFAULT_PAD, PaddedField, irfftn_owned
from .validation import check_finite, check_mask, check_volume

__all__ = ["DATA_PENALTY", "RHO_PER_LAMBDA", "data_weights", "edge_weights", "tv"]

#: ADMM penalty of the data split (mu; W <= 1) and of the TV split per unit lambda (rho / lam).
#: Any positive values converge to the same minimiser; these converge evenly on the benchmark
#: (mu = 1, rho = 100 lam, the FANSI / QSM.rs values, oscillated by +-1 NRMSE point and +-0.02
#: XSIM between 30 and 120 iterations).
DATA_PENALTY = 0.3
RHO_PER_LAMBDA = 30.0


def _axis_slices(axis: int, ndim: int = 3) -> tuple[tuple[slice, ...], ...]:
    """Index tuples for x[1:], x[:-1], x[:1] and x[-1:] along ``axis``."""

    def along(s: slice) -> tuple[slice, ...]:
        index = [slice(None)] * ndim
        index[axis] = s
        return tuple(index)

    return along(slice(1, None)), along(slice(None, -1)), along(slice(0, 1)), along(slice(-1, None))


# --------------------------------------------------------------------------------------------
# edge weights
# --------------------------------------------------------------------------------------------


def _check_edge_fraction(edge_fraction: float) -> None:
    if not (np.isfinite(edge_fraction) and 0 <= edge_fraction < 1):
        raise QSMInputError(f"TV edge_fraction must be in [0, 1), got {edge_fraction!r}")


def edge_weights(
    magnitude: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    edge_fraction: float = 0.3,
) -> np.ndarray:
    """MEDI-style gradient weights G (Liu et al. 2012): 0 on magnitude edges, 1 elsewhere.

    For every voxel n and axis i the forward difference of the magnitude,
    g_i(n) = (m(n + e_i) - m(n)) / voxel_i (per mm), is taken where both voxels lie in ``mask``
    (0 otherwise, so the mask boundary itself is not an edge; no wrap-around). The voxels inside
    the mask with the largest |g(n)| = sqrt(sum_i g_i(n)^2), round(``edge_fraction`` x the
    number of mask voxels) of them (ties broken arbitrarily), get G = 0; every other voxel,
    inside or outside the mask, gets G = 1. One weight per voxel applies to all three gradient
    components of chi at that voxel (MEDI weights each component separately; its 0.9 "percentage"
    over 3 components is about ``edge_fraction`` 0.3). Only the ranking matters, so the
    magnitude's unit and scale do not.

    Parameters
    ----------
    magnitude : (X, Y, Z) magnitude image (any unit), finite and >= 0 inside ``mask``.
    mask : (X, Y, Z) brain mask (bool or 0/1).
    voxel_size : mm per array axis.
    edge_fraction : fraction of mask voxels marked as edges, in [0, 1).

    Returns
    -------
    (X, Y, Z) float32 array of 0 (edge, not penalised) and 1.
    """
    _check_edge_fraction(edge_fraction)
    mag = check_volume(magnitude, "magnitude (TV edge weights)")
    mask = check_mask(mask, mag.shape, name="TV edge-weight mask")
    vox = check_voxel_size(voxel_size)
    mag = check_finite(mag, "magnitude (TV edge weights)", mask=mask)
    if np.any(mag[mask] < 0):
        raise QSMInputError("magnitude (TV edge weights) must be >= 0 inside the mask")
    mag = mag.astype(np.float64, copy=False)
    grad2 = np.zeros(mag.shape, dtype=np.float64)
    for axis, h in enumerate(vox):
        hi, lo, _, _ = _axis_slices(axis)
        both = mask[hi] & mask[lo]
        diff = np.where(both, (mag[hi] - mag[lo]) / h, 0.0)
        grad2[lo] += diff * diff
    weights = np.ones(mag.shape, dtype=np.float32)
    inside = np.flatnonzero(mask)
    n_edges = int(round(edge_fraction * inside.size))
    if n_edges == 0:
        return weights
    values = grad2.ravel()[inside]
    if not np.any(values > 0):
        raise QSMInputError("magnitude (TV edge weights) has no contrast inside the mask")
    largest = np.argpartition(values, values.size - n_edges)[values.size - n_edges :]
    weights.ravel()[inside[largest]] = 0
    return weights


# --------------------------------------------------------------------------------------------
# TV-ADMM
# --------------------------------------------------------------------------------------------


def _check_tv_options(lam, rho, iterations, tol, edge_fraction) -> None:
    if not (np.isfinite(lam) and lam > 0):
        raise QSMInputError(f"TV regularisation weight lam must be finite and > 0, got {lam!r}")
    if rho is not None and not (np.isfinite(rho) and rho > 0):
        raise QSMInputError(f"TV ADMM penalty rho must be finite and > 0 (or None), got {rho!r}")
    try:
        whole = not isinstance(iterations, bool) and int(iterations) == iterations
    except (TypeError, ValueError):
        whole = False
    if not (whole and iterations >= 1):
        raise QSMInputError(f"TV iterations must be an integer >= 1, got {iterations!r}")
    if not (np.isfinite(tol) and tol >= 0):
        raise QSMInputError(f"TV tol must be finite and >= 0, got {tol!r}")
    _check_edge_fraction(edge_fraction)


def data_weights(magnitude: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """W in [0, 1] for the data term: the mask, or the magnitude divided by its 99th
    percentile inside the mask, capped at 1 and 0 outside the mask (:func:`magnitude_weights`,
    the same weights as NDI's)."""
    return magnitude_weights(magnitude, mask, "TV weights (magnitude)")


def tv(
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    lam: float = 2e-4,
    rho: float | None = None,
    iterations: int = 60,
    tol: float = 1e-3,
    weights: np.ndarray | None = None,
    edge_fraction: float = 0.3,
    pad: int | Sequence[int] = DEFAULT_PAD,
    dtype=np.float32,
) -> np.ndarray:
    """Total-variation regularised dipole inversion by ADMM with a weighted data term.

    Minimises, on the zero-padded periodic grid,

        1/2 ||W (D chi - f)||^2 + lam sum_i ||G . K_i chi||_1

    with f the local field (ppm), D the dipole convolution (D(0) = 0), K_i the forward
    difference along axis i divided by the voxel size (ppm/mm, periodic on the padded grid),
    W the data weights and G the edge weights:

    * without ``weights``: W = the mask (no data outside it) and G = 1;
    * with ``weights`` (a magnitude image): W = magnitude / its 99th percentile in the mask,
      capped at 1, 0 outside the mask (:func:`data_weights`: low-signal voxels, e.g. dephased
      near air or in veins, count less, as MEDI's noise weighting) and G = :func:`edge_weights`
      (MEDI's gradient mask: the ``edge_fraction`` of mask voxels with the largest magnitude
      gradient are not penalised).

    The TV is *anisotropic* (l1 norm of each gradient component, as QSM.rs). The masked data
    term is what makes this hold up on measured-like fields: fields that are 0 outside the
    mask only because the data stop there are not fitted (the unmasked formulation of Bilgic
    2014 / QSM.rs scored 62.5-64 % on the benchmark below, this one 58-60 %).

    ADMM (the weighted-linear split of FANSI, Milovic et al. 2018): z1_i = K_i chi (TV) and
    z2 = D chi (data), scaled duals s1, s2, penalties rho (TV) and mu = :data:`DATA_PENALTY`
    (data, W <= 1):

    * chi: (mu D^2 + rho |K|^2) chi^ = mu D F[z2 - s2] + rho F[K^T (z1 - s1)], exact in k-space
      (|K|^2 = sum_i 4 sin^2(pi k_i voxel_i) / voxel_i^2; k = 0 set to 0);
    * z1_i = shrink(K_i chi + s1_i, G lam / rho), s1_i += K_i chi - z1_i;
    * z2 = (W^2 f + mu (D chi + s2)) / (W^2 + mu), s2 += D chi - z2,

    started at chi = z = s = 0. 4 real FFTs per iteration (2 forward, 2 inverse). Stops when
    ||chi_k - chi_(k-1)|| / ||chi_k|| (padded grid) < ``tol`` or after ``iterations``; with
    a weighted data term the early stop is part of the regularisation.

    **Defaults**, chosen on the realistic-acquisition benchmark (``benchmarks/realistic.py``:
    3 T and 7 T, 1 mm, 0.9 x 0.9 x 1.8 mm and 2 mm, V-SHARP fields of our chain; README
    "Which inversion"): lam = 2e-4, rho = 30 lam, 60 iterations, tol 1e-3, edge_fraction 0.3.

    Parameters
    ----------
    field_ppm, mask, voxel_size, b0_dir, pad, dtype : as :func:`qsmflow.physics.inversion.tkd`.
    lam : TV weight, ppm x mm (field ppm^2 per ppm/mm of gradient), > 0.
    rho : ADMM penalty of the TV split, mm^2; None = :data:`RHO_PER_LAMBDA` x lam.
    iterations : maximum number of chi updates (>= 1).
    tol : stop at a relative change of chi <= this (>= 0).
    weights : optional (X, Y, Z) magnitude on the field's grid (data and edge weights).
    edge_fraction : fraction of mask voxels left unpenalised as edges when ``weights`` is given.

    Returns
    -------
    (X, Y, Z) susceptibility in ppm (0 outside the mask).
    """
    _check_tv_options(lam, rho, iterations, tol, edge_fraction)
    p = PaddedField(field_ppm, mask, voxel_size, b0_dir, pad, dtype)
    edges = None
    magnitude = None
    if weights is not None:
        magnitude = check_volume(weights, "TV weights (magnitude)")
        if magnitude.shape != p.shape:
            raise QSMInputError(
                f"TV weights (magnitude) grid {magnitude.shape} does not match the field grid "
                f"{p.shape}"
            )
        edges = edge_weights(magnitude, p.mask, p.voxel_size, edge_fraction) == 0
    w = np.zeros(p.pshape, dtype=p.dtype)
    w[p.crop] = data_weights(magnitude, p.mask)
    rho_used = RHO_PER_LAMBDA * lam if rho is None else rho
    chi, _ = _tv_admm(p, w, lam, rho_used, int(iterations), tol, edges)
    return p.finish(chi)


def _tv_admm(
    p: PaddedField,
    w: np.ndarray,
    lam: float,
    rho: float,
    iterations: int,
    tol: float,
    edges: np.ndarray | None = None,
    mu: float = DATA_PENALTY,
) -> tuple[np.ndarray, int]:
    """The ADMM iterations of :func:`tv` on a prepared :class:`PaddedField`.

    ``w`` : data weights on the padded grid; ``edges`` : optional (X, Y, Z) bool, True where
    G = 0 (input grid). Returns the padded chi (ppm, shape ``p.pshape``) and the number of chi
    updates run.
    """
    # Imported here: inversion imports this module for its method table.
    from .inversion import gradient_symbol

    ft = p.dtype.type
    shape = p.pshape
    vox = p.voxel_size
    # Unscaled differences delta_i = voxel_i K_i are used in image space, with duals scaled by
    # voxel_i, so the per-axis 1/voxel_i^2 of K^T K is a multiply only for anisotropic voxels.
    h_ref = float(vox.min())
    thresholds = [ft(h * lam / rho) for h in vox]
    axis_scale = [ft((h_ref / h) ** 2) for h in vox]

    d = p.kernel()
    inverse = gradient_symbol(shape, vox, dtype=p.dtype)
    inverse *= ft(rho)
    inverse += ft(mu) * d * d
    np.divide(ft(1), inverse, out=inverse, where=inverse > 0)  # k = 0: D = |K| = 0 -> chi^ = 0
    data_kernel = d * ft(mu)  # mu D, applied to F[z2 - s2], then with `inverse`
    tv_scale = ft(rho / h_ref**2)  # rho / h_ref^2 acts on F[sum delta^T ...]

    w2 = w * w
    w2f = w2 * p.field
    inv_w = np.reciprocal(w2 + ft(mu))  # (W^2 + mu)^-1
    del w2

    chi = np.zeros(shape, dtype=p.dtype)
    dchi = np.zeros(shape, dtype=p.dtype)  # D chi in image space
    duals = [np.zeros(shape, dtype=p.dtype) for _ in range(3)]
    s2 = np.zeros(shape, dtype=p.dtype)
    work = np.empty(shape, dtype=p.dtype)
    div = np.empty(shape, dtype=p.dtype)
    slices = [_axis_slices(axis) for axis in range(3)]

    n_run = 0
    while n_run < iterations:
        # TV split: z1 = shrink(delta chi + s1), s1 <- clip(...), div = sum delta^T (z1 - s1).
        # Last axis first: initialising div is cheaper than accumulating into it.
        for axis in (2, 1, 0):
            hi, lo, first, last = slices[axis]
            u = duals[axis]
            # work = delta chi + u; u <- clip(work) = work - shrink(work); work <- z - u
            np.subtract(chi[hi], chi[lo], out=work[lo])
            np.subtract(chi[first], chi[last], out=work[last])
            work += u
            np.clip(work, -thresholds[axis], thresholds[axis], out=u)
            if edges is not None:
                np.copyto(u[p.crop], 0, where=edges)  # G = 0: z = work, no shrinkage
            work -= u
            work -= u
            if axis_scale[axis] != 1:
                work *= axis_scale[axis]
            # div (+)= delta^T work, i.e. work[n - 1] - work[n] (periodic)
            if axis == 2:
                np.subtract(work[lo], work[hi], out=div[hi])
                np.subtract(work[last], work[first], out=div[first])
            else:
                div -= work
                div[hi] += work[lo]
                div[first] += work[last]
        # data split: v = D chi + s2, z2 = (W^2 f + mu v) / (W^2 + mu), s2 <- v - z2;
        # work <- z2 - s2
        s2 += dchi
        np.multiply(s2, ft(mu), out=work)
        work += w2f
        work *= inv_w
        s2 -= work
        work -= s2
        spec = _fft.rfftn(work)
        spec *= data_kernel
        tv_spec = _fft.rfftn(div)
        tv_spec *= tv_scale
        spec += tv_spec
        del tv_spec
        spec *= inverse
        previous = chi
        chi = irfftn_owned(spec.copy(), shape)
        spec *= d
        dchi = irfftn_owned(spec, shape)
        del spec
        n_run += 1
        np.subtract(previous, chi, out=previous)
        # "<=" also ends at once on a zero field (chi stays 0)
        if float(np.linalg.norm(previous.ravel())) <= tol * float(np.linalg.norm(chi.ravel())):
            break
    return chi, n_run
