"""Multi-echo phase: echo-time checks, field fitting, phase-offset removal, echo consistency.

Conventions (algorithms.md 2.1)
-------------------------------
* Multi-echo arrays are (X, Y, Z, E) with the echo axis last; echo times ``te_s`` are in
  seconds (BIDS), strictly increasing. Values > 0.5 s are rejected as milliseconds.
* Phase model: phi_n = phi_0 + 2 pi f TE_n, with f the frequency offset in Hz and phi_0 the
  echo-independent phase offset (rad) of the coil combination / receiver.
* Fit weights: the magnitude |S_n| (QSM.rs); without a magnitude all echoes weigh the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from .kernel import check_voxel_size
from .units import _check_te
from .unwrap import lsq_unwrap, snap_to_wrapped, unwrap_echoes, wrap_to_pi
from .validation import check_finite, check_mask

#: Unwrapping methods of :func:`multiecho_field`; "auto" is resolved by
#: :func:`resolve_unwrapping`.
UNWRAPPING_METHODS = ("auto", "laplacian", "lsq", "temporal")


def resolve_unwrapping(method: str, n_echoes: int) -> str:
    """Return the unwrapping method :func:`multiecho_field` runs for ``n_echoes`` echoes.

    ``"auto"`` is ``"temporal"`` with two or more echoes (far more accurate on noisy data with a
    receiver phase offset) and ``"laplacian"`` for one; other names are checked and returned.
    """
    if method not in UNWRAPPING_METHODS:
        raise QSMInputError(f"unknown method {method!r} (use {', '.join(UNWRAPPING_METHODS)})")
    if method == "auto":
        return "temporal" if n_echoes > 1 else "laplacian"
    return method


def check_echo_times(te_s: Sequence[float], n_echoes: int | None = None) -> np.ndarray:
    """Return echo times (s) as float64 after checking them.

    Raises :class:`QSMInputError` if they are not positive and finite, look like milliseconds
    (> 0.5 s), are not strictly increasing (unsorted or duplicate), or their number differs
    from ``n_echoes``.
    """
    te = np.asarray(te_s, dtype=np.float64).reshape(-1)
    if te.size == 0:
        raise QSMInputError("no echo times given")
    _check_te(te.tolist())
    if np.any(np.diff(te) <= 0):
        raise QSMInputError(
            f"echo times {te.tolist()} s must be strictly increasing (sorted, no duplicates)"
        )
    if n_echoes is not None and te.size != n_echoes:
        raise QSMInputError(
            f"{te.size} echo time(s) given for {n_echoes} echo(es) in the data; "
            "pass one echo time (s) per echo"
        )
    return te


def _check_multiecho(
    phase: np.ndarray,
    magnitude: np.ndarray | None,
    te_s: Sequence[float],
    mask: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    phase = np.asarray(phase)
    if phase.ndim == 3:
        phase = phase[..., None]
    if phase.ndim != 4 or np.iscomplexobj(phase):
        raise QSMInputError(
            f"multi-echo phase must be a real (X, Y, Z, E) array, got {phase.shape}"
        )
    te = check_echo_times(te_s, phase.shape[3])
    if mask is not None:
        mask = check_mask(mask, phase.shape[:3], name="mask")
    phase = check_finite(phase, "phase", mask=None if mask is None else mask[..., None])
    if magnitude is not None:
        magnitude = np.asarray(magnitude)
        if magnitude.ndim == 3:
            magnitude = magnitude[..., None]
        if magnitude.shape != phase.shape:
            raise QSMInputError(
                f"magnitude shape {magnitude.shape} does not match phase shape {phase.shape}"
            )
        magnitude = check_finite(
            magnitude, "magnitude", mask=None if mask is None else mask[..., None]
        )
        if np.any(magnitude < 0):
            raise QSMInputError("magnitude has negative values; pass |S| (the modulus)")
    return phase, magnitude, te, mask


def fit_multiecho(
    phase_rad: np.ndarray,
    magnitude: np.ndarray | None,
    te_s: Sequence[float],
    mask: np.ndarray | None = None,
    *,
    intercept: bool = True,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted linear fit of unwrapped phase against echo time.

    With ``intercept`` (default): per voxel, omega = sum w (TE - T)(phi - P) / sum w (TE - T)^2
    with the weighted means T, P, and offset = P - omega T. Without: the fit through the origin,
    omega = sum w TE phi / sum w TE^2, offset = 0. Weights w = |S_n| (``magnitude``) or 1.

    Parameters
    ----------
    phase_rad : (X, Y, Z, E) UNWRAPPED phase in rad, echoes last (a 3-D array is one echo).
        The echoes must be 2 pi-consistent (see :func:`align_echoes`); a constant offset common
        to all echoes is what ``intercept`` absorbs.
    magnitude : (X, Y, Z, E) magnitude (any scale) or None for equal weights.
    te_s : (E,) echo times in seconds, strictly increasing.
    mask : optional (X, Y, Z) mask; outputs are 0 outside it.
    intercept : fit the phase offset (needs >= 2 echoes) or force it to 0.
    dtype : float32 (default) or float64 outputs (the sums are accumulated in float64).

    Returns
    -------
    field_hz : (X, Y, Z) frequency offset in Hz, omega / 2 pi (0 where all weights are 0).
    offset_rad : (X, Y, Z) phase offset at TE = 0 in rad (0 without ``intercept``).
    """
    phase, magnitude, te, mask = _check_multiecho(phase_rad, magnitude, te_s, mask)
    if intercept and te.size < 2:
        raise QSMInputError("a fit with intercept needs at least 2 echoes (or intercept=False)")
    # Work on the voxels that matter only, as (N, E) float64 rows.
    sel = np.ones(phase.shape[:3], dtype=bool) if mask is None else mask
    phi = phase[sel].astype(np.float64)
    w = np.ones_like(phi) if magnitude is None else magnitude[sel].astype(np.float64)
    sw = w.sum(axis=1)
    valid = sw > 0
    safe = np.where(valid, sw, 1.0)
    if intercept:
        t_mean = (w @ te) / safe
        p_mean = (w * phi).sum(axis=1) / safe
        dt = te - t_mean[:, None]
        den = (w * dt**2).sum(axis=1)
        valid &= den > 0
        omega = (w * dt * (phi - p_mean[:, None])).sum(axis=1) / np.where(valid, den, 1.0)
        offset = p_mean - omega * t_mean
    else:
        den = w @ te**2
        omega = ((w * phi) @ te) / np.where(valid, den, 1.0)
        offset = np.zeros_like(omega)
    field_hz = np.zeros(phase.shape[:3], dtype=dtype)
    offset_rad = np.zeros(phase.shape[:3], dtype=dtype)
    field_hz[sel] = np.where(valid, omega / (2 * np.pi), 0)
    offset_rad[sel] = np.where(valid, offset, 0)
    return field_hz, offset_rad


def estimate_phase_offset(
    phase_rad: np.ndarray,
    te_s: Sequence[float],
    magnitude: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    sigma_mm: float | Sequence[float] | None = 4.0,
) -> np.ndarray:
    """Phase offset phi_0 (rad, wrapped) of WRAPPED multi-echo phase from echoes 1 and 2.

    MCPC-3D-S style (Eckstein 2018, the QSMxT default): the Hermitian product of echoes 1 and 2
    has phase dphi = 2 pi f (TE_2 - TE_1) (wrapped); it is unwrapped spatially
    (:func:`qsmflow.physics.unwrap.lsq_unwrap`, exact where the echo difference varies by less
    than pi between neighbours) and phi_0 = phi_1 - dphi TE_1 / (TE_2 - TE_1). Because phi_0
    varies slowly, exp(i phi_0) is smoothed with a Gaussian of ``sigma_mm`` mm (weighted by
    the echo-1 magnitude; None or 0 for no smoothing), which suppresses noise and the errors of
    the unwrapping but bends a varying offset slightly (most within ~2 sigma of the mask edge,
    where the kernel is one-sided: about 0.3 rad for an offset changing by 0.08 rad/mm).

    Parameters
    ----------
    phase_rad : (X, Y, Z, E) wrapped phase in rad, E >= 2.
    te_s : (E,) echo times in s.
    magnitude : optional (X, Y, Z, E) magnitude (smoothing weights).
    mask : optional (X, Y, Z) mask; phi_0 is 0 outside it.
    voxel_size : mm per axis.
    sigma_mm : Gaussian smoothing width in mm.

    Returns
    -------
    (X, Y, Z) float32 phase offset in rad, in [-pi, pi).
    """
    phase, magnitude, te, mask = _check_multiecho(phase_rad, magnitude, te_s, mask)
    if te.size < 2:
        raise QSMInputError("estimating the phase offset needs at least 2 echoes")
    vox = check_voxel_size(voxel_size)
    p1 = phase[..., 0].astype(np.float64)
    diff = wrap_to_pi(phase[..., 1].astype(np.float64) - p1)
    diff_unwrapped = lsq_unwrap(diff, vox, mask=mask).astype(np.float64)
    offset = p1 - diff_unwrapped * (te[0] / (te[1] - te[0]))
    z = np.exp(1j * offset)
    if magnitude is not None:
        z = z * magnitude[..., 0]
    if mask is not None:
        z = z * mask
    if sigma_mm:
        sig = np.broadcast_to(np.asarray(sigma_mm, dtype=float), (3,)) / vox
        z = ndimage.gaussian_filter(z.real, sig) + 1j * ndimage.gaussian_filter(z.imag, sig)
    out = np.angle(z).astype(np.float32)
    if mask is not None:
        out[~mask] = 0
    return out


def remove_phase_offset(phase_rad: np.ndarray, offset_rad: np.ndarray) -> np.ndarray:
    """Wrapped phase minus the offset phi_0 of :func:`estimate_phase_offset`, wrapped to
    [-pi, pi): what remains is 2 pi f TE_n, so echoes scale with TE. Shapes (X, Y, Z, E) and
    (X, Y, Z); rad."""
    phase = np.asarray(phase_rad)
    offset = np.asarray(offset_rad)
    if phase.ndim != 4 or offset.shape != phase.shape[:3]:
        raise QSMInputError(
            f"phase {phase.shape} must be (X, Y, Z, E) and the offset {offset.shape} (X, Y, Z)"
        )
    return wrap_to_pi(phase - offset[..., None]).astype(np.float32)


def temporal_unwrap(
    phase_rad: np.ndarray,
    te_s: Sequence[float],
    first_unwrapped: np.ndarray,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Unwrap echoes 2..E in time from an unwrapped first echo (offset-free phase).

    Each echo n is snapped to the wrapped value nearest to the prediction of the echoes before
    it (:func:`qsmflow.physics.unwrap.snap_to_wrapped`): phi_1 TE_n / TE_1 for echo 2, then a
    through-origin fit of the echoes so far. Exact wherever the prediction is within pi, i.e.
    when the phase offset was removed (:func:`remove_phase_offset`) and the first echo is short.

    Parameters
    ----------
    phase_rad : (X, Y, Z, E) wrapped, offset-free phase in rad.
    te_s : (E,) echo times in s.
    first_unwrapped : (X, Y, Z) unwrapped phase of echo 1 (rad).
    mask : optional (X, Y, Z) mask; output 0 outside.

    Returns
    -------
    (X, Y, Z, E) float32 unwrapped phase in rad; echo 1 is ``first_unwrapped``.
    """
    phase, _, te, mask = _check_multiecho(phase_rad, None, te_s, mask)
    first = np.asarray(first_unwrapped, dtype=np.float64)
    if first.shape != phase.shape[:3]:
        raise QSMInputError(f"first echo {first.shape} does not match phase {phase.shape[:3]}")
    out = np.empty(phase.shape, dtype=np.float64)
    out[..., 0] = first
    num = first * te[0]  # running sums of the through-origin fit: omega = sum TE phi / sum TE^2
    den = te[0] ** 2
    for n in range(1, te.size):
        predicted = (num / den) * te[n]
        out[..., n] = snap_to_wrapped(phase[..., n].astype(np.float64), predicted)
        num = num + out[..., n] * te[n]
        den += te[n] ** 2
    if mask is not None:
        out[~mask] = 0
    return out.astype(np.float32)


def align_echoes(
    unwrapped_rad: np.ndarray,
    te_s: Sequence[float],
    mask: np.ndarray | None = None,
    offset_rad: np.ndarray | None = None,
) -> np.ndarray:
    """Make separately unwrapped echoes 2 pi-consistent with echo 1.

    Spatial unwrapping fixes each echo only up to its own multiple of 2 pi. Echo n is shifted
    by the multiple of 2 pi closest (median over the mask) to the prediction
    offset + (phi_1 - offset) TE_n / TE_1, with ``offset`` the phase offset at TE = 0
    (:func:`estimate_phase_offset`; 0 if None). Shapes (X, Y, Z, E), mask (X, Y, Z); rad.
    """
    phase, _, te, mask = _check_multiecho(unwrapped_rad, None, te_s, mask)
    sel = np.ones(phase.shape[:3], dtype=bool) if mask is None else mask
    off = 0.0 if offset_rad is None else np.asarray(offset_rad, dtype=np.float64)
    out = phase.astype(np.float32).copy()
    first = phase[..., 0].astype(np.float64)
    for n in range(1, te.size):
        predicted = off + (first - off) * (te[n] / te[0])
        k = np.round(np.median((predicted - phase[..., n])[sel]) / (2 * np.pi))
        out[..., n] += np.float32(2 * np.pi * k)
    if mask is not None:
        out[~mask] = 0
    return out


def multiecho_field(
    phase_rad: np.ndarray,
    magnitude: np.ndarray | None,
    te_s: Sequence[float],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    mask: np.ndarray | None = None,
    *,
    method: str = "laplacian",
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Field map (Hz) from WRAPPED multi-echo phase: unwrap, make echoes consistent, fit.

    ``method`` (see :data:`UNWRAPPING_METHODS`):
      * ``"auto"``: :func:`resolve_unwrapping`, temporal for several echoes, else laplacian.
      * ``"laplacian"``: :func:`~qsmflow.physics.unwrap.laplacian_unwrap` per echo, echoes
        aligned to echo 1 by multiples of 2 pi, weighted fit with intercept (QSM-CI style; the
        harmonic errors of the Laplacian method go to background field removal).
      * ``"lsq"``: the same with :func:`~qsmflow.physics.unwrap.lsq_unwrap`.
      * ``"temporal"``: offset removal (:func:`estimate_phase_offset`, needs >= 2 echoes),
        congruent least-squares unwrapping of echo 1, :func:`temporal_unwrap` of the rest, fit
        with intercept: exact wherever echo 1 unwraps exactly, the best choice when the first
        echo is short.

    Shapes (X, Y, Z, E) (a 3-D phase is one echo: then the fit goes through the origin), te in s,
    voxel size in mm. Returns (field_hz, offset_rad), each (X, Y, Z), 0 outside ``mask``.
    """
    phase, magnitude, te, mask = _check_multiecho(phase_rad, magnitude, te_s, mask)
    vox = check_voxel_size(voxel_size)
    n_echoes = te.size
    method = resolve_unwrapping(method, n_echoes)
    if method == "temporal":
        if n_echoes < 2:
            raise QSMInputError("method 'temporal' needs at least 2 echoes")
        offset = estimate_phase_offset(phase, te, magnitude, mask, voxel_size=vox)
        clean = remove_phase_offset(phase, offset)
        first = lsq_unwrap(clean[..., 0], vox, mask=mask, congruent=True)
        unwrapped = temporal_unwrap(clean, te, first, mask)
        field, residual_offset = fit_multiecho(unwrapped, magnitude, te, mask, dtype=dtype)
        total_offset = wrap_to_pi(offset + residual_offset).astype(dtype)
        if mask is not None:
            total_offset[~mask] = 0
        return field, total_offset
    unwrapped = unwrap_echoes(phase, vox, mask=mask, method=method)
    if n_echoes == 1:
        return fit_multiecho(unwrapped, magnitude, te, mask, intercept=False, dtype=dtype)
    offset = estimate_phase_offset(phase, te, magnitude, mask, voxel_size=vox)
    unwrapped = align_echoes(unwrapped, te, mask, offset)
    return fit_multiecho(unwrapped, magnitude, te, mask, dtype=dtype)
