"""Spatial phase unwrapping: FFT Laplacian unwrapping and masked least-squares unwrapping.

Conventions
-----------
* Input: wrapped phase in rad, (X, Y, Z), in any 2 pi window such as [-pi, pi) or [0, 2 pi)
  (values beyond +-2 pi are rejected as scanner units: convert them with
  :func:`qsmflow.physics.validation.phase_to_radians`). Output: unwrapped phase in rad, same
  shape, 0 outside the mask.
* Unwrapped phase is defined up to a constant; both methods pick the constant that makes the
  result agree with the wrapped input modulo 2*pi on (circular) average inside the mask, so the
  output is close to "input + 2*pi*k".
* ``voxel_size`` is in mm per array axis (it sets the relative weight of the axes).

Methods
-------
:func:`laplacian_unwrap` (Schofield & Zhu 2003; algorithms.md 2.2), an FFT Poisson solve of
    the phase Laplacian on a zero-padded grid, DC set to 0. ``form="sincos"`` (default; MEDI,
    QSM-CI): lap(phi) = cos(phi) lap(sin phi) - sin(phi) lap(cos phi) with the Laplacian applied
    in k-space (6 real FFTs). ``form="wrapped"`` (QSM.rs, QSM.jl): the 7-point Laplacian of
    wrapped neighbour differences inside the mask (2 FFTs). Both are correct only up to a
    function harmonic in the mask, which background field removal takes out.
:func:`lsq_unwrap` (Ghiglia & Romero 1994, with the mask as binary weights):
    the least-squares phase whose finite differences inside the mask best match the wrapped
    differences W(phi_j - phi_i), i.e. a Poisson equation with Neumann conditions on the mask
    boundary, solved by conjugate gradients preconditioned with a DCT Poisson solver. It is exact
    (up to a constant) wherever neighbouring voxels in the mask differ by less than pi, and, with
    ``congruent=True``, the result is snapped to the nearest "wrapped + 2*pi*k" value, which is
    the exact unwrapping wherever the least-squares estimate is within pi of the truth.

Measured on the head model at 1 mm (3 T, brain mask; tests/test_unwrap.py), the demeaned NRMSE
(%) of V-SHARP(unwrapped) against V-SHARP(true phase) at TE 1 / 5 / 15 / 25 ms:

    laplacian_unwrap (sincos, continuous symbol)   3.9 / 18.1 / 25.1 / 28.4
    laplacian_unwrap (sincos, discrete symbol)     1.2 / 16.4 / 30.8 / 51.1
    laplacian_unwrap (wrapped)                     0.5 / 11.5 / 24.4 / 29.2
    lsq_unwrap                                     0.0 / 11.5 / 24.4 / 29.2
    lsq_unwrap (congruent=True)                    0.0 /  0.0 / 23.9 / 36.1

The residual error at long TEs comes from truly aliased regions (neighbour differences > pi
around the calcification and in the rim next to the sinuses), which no single-echo method can
recover; with several echoes, :func:`qsmflow.physics.multiecho.multiecho_field` (temporal
unwrapping from a short first echo) is exact on the same data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft

from ..errors import QSMInputError
from . import _fft
from .kernel import check_voxel_size, kspace_grid
from .validation import check_finite, check_mask, check_volume

#: Default zero padding (voxels per side) of :func:`laplacian_unwrap`, as STI Suite.
DEFAULT_PAD = 12


def wrap_to_pi(x: np.ndarray) -> np.ndarray:
    """Wrap angles (rad) to [-pi, pi)."""
    return (x + np.pi) % (2 * np.pi) - np.pi


def _check_phase(
    phase_rad: np.ndarray, mask: np.ndarray | None, dtype
) -> tuple[np.ndarray, np.ndarray | None]:
    phase = check_volume(phase_rad, "phase")
    if mask is not None:
        mask = check_mask(mask, phase.shape, name="mask")
    phase = check_finite(phase, "phase", mask=mask)
    inside = phase if mask is None else phase[mask]
    lo, hi = float(inside.min()), float(inside.max())
    # Any 2 pi window works ([-pi, pi), [0, 2 pi), ...); far larger values are scanner units.
    if lo < -2 * np.pi - 1e-3 or hi > 2 * np.pi + 1e-3:
        raise QSMInputError(
            f"phase range [{lo:.4g}, {hi:.4g}] is not phase in radians; convert scanner units "
            "with qsmflow.physics.validation.phase_to_radians"
        )
    phase = phase.astype(dtype, copy=False)
    if mask is not None:
        phase = np.where(mask, phase, 0).astype(dtype, copy=False)
    return phase, mask


def _bounding_box(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[slice, ...]:
    if mask is None:
        return tuple(slice(0, n) for n in shape)
    coords = np.nonzero(mask)
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)


def _align_constant(
    unwrapped: np.ndarray, wrapped: np.ndarray, mask: np.ndarray | None
) -> np.ndarray:
    """Shift ``unwrapped`` by the constant making it agree with ``wrapped`` modulo 2 pi on
    (circular) average inside the mask."""
    sel = (slice(None),) if mask is None else mask
    diff = (wrapped[sel] - unwrapped[sel]).astype(np.float64)
    c = np.angle(np.mean(np.exp(1j * diff)))
    return (unwrapped + np.asarray(c, dtype=unwrapped.dtype)).astype(unwrapped.dtype, copy=False)


def laplacian_symbol(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    *,
    kind: str = "continuous",
    half: bool = True,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """k-space symbol of the Laplacian (1/mm^2), DC at index 0.

    ``kind="continuous"``: -4 pi^2 |k|^2 with k = fftfreq(N, d=voxel) in cycles/mm (QSM-CI).
    ``kind="discrete"``: the 7-point stencil, sum_i 2 (cos(2 pi k_i voxel_i) - 1) / voxel_i^2
    (MEDI). ``half`` returns the rfft half-spectrum.
    """
    vox = check_voxel_size(voxel_size)
    axes = kspace_grid(shape, vox, half=half)
    if kind == "continuous":
        sym = sum((-4 * np.pi**2) * k**2 for k in axes)
    elif kind == "discrete":
        sym = sum(
            2 * (np.cos(2 * np.pi * k * d) - 1) / d**2 for k, d in zip(axes, vox, strict=True)
        )
    else:
        raise QSMInputError(f"unknown Laplacian kind {kind!r} (use 'continuous' or 'discrete')")
    return np.asarray(sym, dtype=dtype)


def laplacian_unwrap(
    phase_rad: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    mask: np.ndarray | None = None,
    pad: int | Sequence[int] | None = DEFAULT_PAD,
    symbol: str = "continuous",
    form: str = "sincos",
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Laplacian phase unwrapping (FFT Poisson solve).

    Parameters
    ----------
    phase_rad : (X, Y, Z) wrapped phase in rad. NaN/inf inside the mask is an error
        (outside it they are ignored); without a mask any NaN is an error.
    voxel_size : mm per array axis.
    mask : optional (X, Y, Z) signal mask. The complex signal exp(i phi) and the Laplacian are
        set to 0 outside it (so noise outside does not leak in), the work is cropped to its
        bounding box, and the output is 0 outside it.
    pad : zero padding in voxels per side (int or per axis) against FFT wrap-around; default 12
        (STI Suite); None or 0 for none (periodic boundaries, as MEDI).
    symbol : ``"continuous"`` (-4 pi^2 |k|^2, default: measured better with steep background
        gradients, tests/test_unwrap.py) or ``"discrete"`` (7-point stencil). Used by the
        ``"sincos"`` form; the ``"wrapped"`` form always uses the discrete symbol.
    form : how the Laplacian of the phase is obtained.
        ``"sincos"`` (default; MEDI, QSM-CI): cos(phi) lap(sin phi) - sin(phi) lap(cos phi)
        with the Laplacian applied in k-space (6 FFTs). ``"wrapped"`` (QSM.rs, QSM.jl): the
        7-point Laplacian of wrapped neighbour differences, sum W(phi_j - phi_i) / voxel^2,
        counting only pairs of voxels inside the mask (2 FFTs). The wrapped form is exact
        where neighbours differ by less than pi and has no ringing at the mask edge, so its
        error is harmonic in the mask; on the head model it measured better up to TE 15 ms
        and about equal at 25 ms (V-SHARP NRMSE 0.5 / 11.5 / 24.4 / 29.2 % at TE
        1 / 5 / 15 / 25 ms against 3.9 / 18.1 / 25.1 / 28.4 % for sincos; see the module
        docstring).
    dtype : float32 (default) or float64.

    Returns
    -------
    (X, Y, Z) unwrapped phase in rad (defined up to a constant and a function harmonic in the
    mask, which background field removal removes), 0 outside ``mask``.
    """
    phase, mask = _check_phase(phase_rad, mask, dtype)
    vox = check_voxel_size(voxel_size)
    box = _bounding_box(mask, phase.shape)
    p_box = phase[box]
    m_box = None if mask is None else mask[box]
    shape = _fft.fast_shape(p_box.shape, 0 if pad is None else pad)
    p_pad, inner = _fft.pad_to(p_box, shape)
    if m_box is not None:
        m_pad, _ = _fft.pad_to(m_box, shape)
    else:
        m_pad, _ = _fft.pad_to(np.ones(p_box.shape, dtype=bool), shape)
    if form == "sincos":
        lap = laplacian_symbol(shape, vox, kind=symbol, dtype=dtype)
        # The padding (and the outside of the mask) carries no signal: exp(i phi) = 0 there.
        sin_p = np.sin(p_pad) * m_pad
        cos_p = np.cos(p_pad) * m_pad
        lap_phase = cos_p * _fft.irfftn(_fft.rfftn(sin_p) * lap, shape)
        lap_phase -= sin_p * _fft.irfftn(_fft.rfftn(cos_p) * lap, shape)
        lap_phase *= m_pad
    elif form == "wrapped":
        laplacian_symbol(shape, vox, kind=symbol)  # validates ``symbol``
        lap = laplacian_symbol(shape, vox, kind="discrete", dtype=dtype)
        lap_phase = np.zeros(shape, dtype=dtype)
        for axis in range(3):
            lo, hi = _edge_slices(axis)
            both = m_pad[lo] & m_pad[hi]
            flux = wrap_to_pi(np.diff(p_pad, axis=axis)) * (both / vox[axis] ** 2)
            lap_phase[lo] += flux
            lap_phase[hi] -= flux
    else:
        raise QSMInputError(f"unknown Laplacian form {form!r} (use 'sincos' or 'wrapped')")
    # A periodic Poisson solve needs a zero-mean source; dropping the DC would add a uniform
    # source inside the mask (a quadratic, non-harmonic error). Put the balancing source
    # outside the mask instead: its potential is harmonic inside, like the other errors.
    outside = ~m_pad
    n_out = int(outside.sum())
    if n_out:
        lap_phase[outside] = -float(lap_phase.sum(dtype=np.float64)) / n_out
    inv = np.zeros_like(lap)
    nonzero = np.abs(lap) > 1e-10
    inv[nonzero] = 1.0 / lap[nonzero]  # DC (and numerically zero entries) -> 0
    unwrapped = _fft.irfftn(_fft.rfftn(lap_phase) * inv, shape)[inner]
    out = np.zeros(phase.shape, dtype=dtype)
    out[box] = unwrapped if m_box is None else np.where(m_box, unwrapped, 0)
    out = _align_constant(out, phase, mask)
    if mask is not None:
        out[~mask] = 0
    return out


def _edge_slices(axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    lo = tuple(slice(0, -1) if i == axis else slice(None) for i in range(3))
    hi = tuple(slice(1, None) if i == axis else slice(None) for i in range(3))
    return lo, hi


def _neg_graph_laplacian(u: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """-(weighted graph Laplacian) of ``u``: sum over edges of w (u_i - u_j) at both ends."""
    out = np.zeros_like(u)
    for axis, w in enumerate(weights):
        lo, hi = _edge_slices(axis)
        flux = np.diff(u, axis=axis) * w
        out[lo] -= flux
        out[hi] += flux
    return out


def lsq_unwrap(
    phase_rad: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    mask: np.ndarray | None = None,
    congruent: bool = False,
    tol: float = 1e-5,
    max_iter: int = 200,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Masked least-squares phase unwrapping (Neumann Poisson on the mask), optionally congruent.

    Minimises sum over neighbouring voxel pairs (i, j) both in the mask of
    (u_j - u_i - W(phi_j - phi_i))^2 / voxel_axis^2, W = wrap to [-pi, pi), by preconditioned
    conjugate gradients (preconditioner: the Neumann Poisson solve on the bounding box by DCT;
    each iteration costs 2 DCTs and a few array passes; ~15-40 iterations).

    Parameters
    ----------
    phase_rad : (X, Y, Z) wrapped phase in rad; NaN/inf inside the mask is an error.
    voxel_size : mm per array axis.
    mask : (X, Y, Z) signal mask; default: the whole volume. Pieces of the mask that are not
        connected are each unwrapped up to their own constant.
    congruent : snap the result to phi + 2 pi round((u - phi) / 2 pi): exact wherever the
        least-squares estimate u is within pi of the truth (e.g. moderate echo times), but
        2 pi errors where it is not (strongly aliased regions at long echo times).
    tol : relative residual norm at which CG stops.
    max_iter : CG iteration limit.
    dtype : float32 (default) or float64.

    Returns
    -------
    (X, Y, Z) unwrapped phase in rad, 0 outside the mask.
    """
    phase, mask = _check_phase(phase_rad, mask, dtype)
    vox = check_voxel_size(voxel_size)
    if mask is None:
        mask = np.ones(phase.shape, dtype=bool)
    box = _bounding_box(mask, phase.shape)
    # Work on the bounding box grown to DCT-friendly sizes (the extra voxels are outside the
    # mask, so they carry no edges).
    grown = tuple(sfft.next_fast_len(s.stop - s.start, real=True) for s in box)
    p = np.zeros(grown, dtype=dtype)
    m = np.zeros(grown, dtype=bool)
    inner = tuple(slice(0, s.stop - s.start) for s in box)
    p[inner] = phase[box]
    m[inner] = mask[box]
    # Edge weights: 1/voxel^2 for pairs of neighbours that are both in the mask.
    weights = []
    rhs = np.zeros_like(p)
    for axis in range(3):
        lo, hi = _edge_slices(axis)
        w = ((m[lo] & m[hi]) * (1.0 / vox[axis] ** 2)).astype(dtype)
        weights.append(w)
        flux = wrap_to_pi(np.diff(p, axis=axis)) * w
        rhs[lo] -= flux
        rhs[hi] += flux
    # Normal equations A u = rhs with A = -div(w grad) (positive semidefinite), rhs = -div(w g).
    eig = sum(
        ((2 - 2 * np.cos(np.pi * np.arange(n) / n)) / d**2).reshape(
            [-1 if a == i else 1 for a in range(3)]
        )
        for i, (n, d) in enumerate(zip(p.shape, vox, strict=True))
    ).astype(dtype)
    eig[0, 0, 0] = np.inf  # the constant mode is free: the preconditioner leaves it at 0

    def precondition(r: np.ndarray) -> np.ndarray:
        z = sfft.dctn(r, type=2, workers=_fft.WORKERS)
        z /= eig
        return sfft.idctn(z, type=2, workers=_fft.WORKERS).astype(dtype, copy=False)

    def apply_a(u: np.ndarray) -> np.ndarray:
        return _neg_graph_laplacian(u, weights)

    u = np.zeros_like(p)
    r = rhs.copy()
    norm_rhs = float(np.linalg.norm(r))
    if norm_rhs > 0:
        z = precondition(r)
        d = z.copy()
        rz = float(np.vdot(r, z))
        for _ in range(max_iter):
            ad = apply_a(d)
            alpha = rz / float(np.vdot(d, ad))
            u += alpha * d
            r -= alpha * ad
            if float(np.linalg.norm(r)) <= tol * norm_rhs:
                break
            z = precondition(r)
            rz_new = float(np.vdot(r, z))
            d = z + (rz_new / rz) * d
            rz = rz_new
    out = np.zeros(phase.shape, dtype=dtype)
    out[box] = np.where(m, u, 0)[inner]
    out = _align_constant(out, phase, mask)
    if congruent:
        out = snap_to_wrapped(phase, out)
    out[~mask] = 0
    return out


def snap_to_wrapped(wrapped_rad: np.ndarray, estimate_rad: np.ndarray) -> np.ndarray:
    """phi + 2 pi round((estimate - phi) / 2 pi): the value congruent with the wrapped phase
    nearest to the estimate (exact unwrapping wherever the estimate is within pi of the truth).
    Works element-wise on any shape; both inputs in rad."""
    wrapped = np.asarray(wrapped_rad)
    est = np.asarray(estimate_rad)
    k = np.round((est - wrapped) / (2 * np.pi))
    return (wrapped + (2 * np.pi) * k).astype(np.result_type(wrapped, np.float32), copy=False)


#: Spatial unwrapping methods of :func:`unwrap_echoes` (the first is the default).
SPATIAL_METHODS = ("laplacian", "lsq")


def unwrap_echoes(
    phase_rad: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    mask: np.ndarray | None = None,
    method: str = SPATIAL_METHODS[0],
) -> np.ndarray:
    """Return the spatially unwrapped phase (rad) of a 3-D image, or of each echo of a 4-D one
    (echoes last), each echo on its own with :func:`laplacian_unwrap` or :func:`lsq_unwrap`
    (``method`` from :data:`SPATIAL_METHODS`; voxel size in mm; 0 outside ``mask``)."""
    if method not in SPATIAL_METHODS:
        raise QSMInputError(
            f"unknown spatial unwrapping method {method!r} (use {', '.join(SPATIAL_METHODS)})"
        )
    unwrap_one = laplacian_unwrap if method == "laplacian" else lsq_unwrap
    phase = np.asarray(phase_rad)
    if phase.ndim == 3:
        return unwrap_one(phase, voxel_size, mask=mask)
    return np.stack(
        [unwrap_one(phase[..., n], voxel_size, mask=mask) for n in range(phase.shape[3])], axis=3
    )
