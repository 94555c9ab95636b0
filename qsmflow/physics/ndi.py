"""Nonlinear dipole inversion (NDI; Polak et al. 2020). Conventions as :mod:`.inversion`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import QSMInputError
from . import _fft
from .padded import DEFAULT_PAD, PaddedField, irfftn_owned
from .validation import check_finite, check_volume


def _ndi_weights(weights: np.ndarray | None, mask: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """W in [0, 1]: the mask, or ``weights`` / (99th percentile inside the mask), capped at 1."""
    if weights is None:
        return mask.astype(dtype)
    w = check_volume(weights, "NDI weights")
    if w.shape != mask.shape:
        raise QSMInputError(f"NDI weights grid {w.shape} does not match the field {mask.shape}")
    w = check_finite(w, "NDI weights", mask=mask)
    if np.any(w[mask] < 0):
        raise QSMInputError("NDI weights must be >= 0 (e.g. the magnitude image)")
    scale = float(np.percentile(w[mask], 99))
    if scale <= 0:
        raise QSMInputError("NDI weights are zero inside the mask")
    return np.where(mask, np.minimum(w / scale, 1.0), 0).astype(dtype)


def ndi(
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    iterations: int = 200,
    step: float = 2.0,
    alpha: float = 1e-5,
    weights: np.ndarray | None = None,
    field_scale: float = 1.0,
    tol: float | None = None,
    pad: int | Sequence[int] = DEFAULT_PAD,
    dtype=np.float32,
) -> np.ndarray:
    """Nonlinear dipole inversion (NDI; Polak et al. 2020) by gradient descent.

    Minimises ||W (exp(i D chi) - exp(i phi))||^2 + alpha ||chi||^2 with the update
    chi <- chi - step * (D^T[W^2 sin(D chi - phi)] + alpha chi), chi_0 = 0 and a fixed number
    of iterations (stopping early is the regularisation). Here phi = ``field_scale`` *
    ``field_ppm`` is the phase in radians and the returned chi is converted back to ppm, i.e.
    in ppm variables the update is chi <- chi - step (D^T[W^2 sin(s (D chi - f)) / s] + alpha chi).

    **Unit scale.** With the default ``field_scale=1`` the field is taken as given in ppm and the
    sine is almost linear for ppm-sized residuals, so NDI is Landweber iteration (the behaviour
    of QSM.rs and SEPIA, which also feed ppm). To get the phase-wrapping-robust nonlinear
    behaviour of the paper, pass the factor that turns ppm into radians at the echo time used,
    ``field_scale = 2 pi TE gamma_bar B0 1e-6`` (:func:`qsmflow.physics.units.ppm_to_rad` of 1;
    e.g. 16.05 rad/ppm at 3 T, TE 20 ms). Output is ppm either way.

    Implementation: every operator except the sine is diagonal in k-space, so the iterate is
    kept as its half spectrum and each iteration costs 2 real FFTs (not 4): the result is the
    same as the image-space update.

    Parameters
    ----------
    field_ppm, mask, voxel_size, b0_dir, pad, dtype : as :func:`tkd`.
    iterations : number of gradient steps (QSM.rs 200, FANSI 100).
    step : tau, the gradient step (2 in FANSI / QSM.rs; stable below 2/max(D^2 W^2) = 4.5).
    alpha : Tikhonov weight on chi (1e-5 in FANSI / QSM.rs).
    weights : optional (X, Y, Z) data weights W, e.g. the magnitude; rescaled by their 99th
        percentile inside the mask and capped at 1 (as SEPIA). Default: W = mask.
    field_scale : radians per ppm of the data term (see above), > 0.
    tol : optional early stop when the relative change of the iterate (half-spectrum norm)
        falls below ``tol``; default None runs all ``iterations``.

    Returns
    -------
    (X, Y, Z) susceptibility in ppm (0 outside the mask).
    """
    if int(iterations) < 1:
        raise QSMInputError(f"NDI needs at least 1 iteration, got {iterations!r}")
    if not (np.isfinite(step) and step > 0):
        raise QSMInputError(f"NDI step must be > 0, got {step!r}")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise QSMInputError(f"NDI alpha must be >= 0, got {alpha!r}")
    if not (np.isfinite(field_scale) and field_scale > 0):
        raise QSMInputError(f"NDI field_scale (rad per ppm) must be > 0, got {field_scale!r}")
    p = PaddedField(field_ppm, mask, voxel_size, b0_dir, pad, dtype)
    ft = p.dtype.type
    w2, _ = _fft.pad_to(_ndi_weights(weights, p.mask, p.dtype) ** 2, p.pshape)
    s = ft(field_scale)
    if field_scale != 1.0:
        w2 /= s  # sin(s r) / s
    d = p.kernel()
    neg_step_d = d * ft(-step)  # -tau D
    decay = ft(1.0 - step * alpha)
    scaled_field = p.field * s if field_scale != 1.0 else p.field
    spec = np.zeros(d.shape, dtype=np.result_type(p.dtype, np.complex64))  # F chi
    tmp = np.empty_like(spec)
    for _ in range(int(iterations)):
        np.multiply(spec, d, out=tmp)
        r = irfftn_owned(tmp, p.pshape)  # D chi (ppm)
        if field_scale != 1.0:
            r *= s
        r -= scaled_field
        np.sin(r, out=r)
        r *= w2  # W^2 sin(s (D chi - f)) / s
        grad = _fft.rfftn(r)
        grad *= neg_step_d
        if tol is not None:
            norm_before = float(np.linalg.norm(spec.ravel()))
        if decay != 1:
            spec *= decay
        spec += grad
        if tol is not None and norm_before > 0:
            change = float(np.linalg.norm(grad.ravel())) / norm_before
            if change < tol:
                break
    return p.finish(irfftn_owned(spec, p.pshape))
