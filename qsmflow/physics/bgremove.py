"""Background field removal with spherical mean value (SMV) filters: SHARP and V-SHARP.

Conventions (algorithms.md section 2.3)
---------------------------------------
* The SMV kernel s_r is a binary sphere of radius r mm (voxel-size aware: the offsets d with
  |d| <= r in mm), normalised to sum 1 and stored with its centre at index 0; in k-space it is
  S_r(k) with S_r(0) = 1. The high-pass filter is C_r = 1 - S_r, which removes harmonic
  (background) fields because a harmonic function equals its spherical mean.
* A voxel belongs to the mask eroded by r when the whole sphere of radius r around it lies in the
  mask (the SMV of the mask is 1 there, i.e. > 1 - sqrt(eps) in floating point).
* V-SHARP (Wu 2012): each voxel keeps the high-passed value of the LARGEST radius whose eroded
  mask contains it; the assembled field is deconvolved once with the largest kernel's truncated
  inverse (1/C where |C| >= threshold, 0 elsewhere); the output mask is the erosion by r_min.
  ``deconvolution="per_radius"`` is a variant (not in the references): every voxel takes the
  SHARP result of its own radius instead, which is more accurate at the brain edge.

The filters are linear, so any field unit works: ppm in gives ppm out (Hz or rad likewise).
Fields are masked (set to 0 outside the mask) before filtering, so values outside the mask
never reach the result.

Implementation notes (speed, not maths): the volume is cropped to the mask's bounding box plus a
zero margin (at least r_max, so the periodic FFT never wraps a sphere around the box), transforms
are real (rfft) in float32 by default, the transform of each even-symmetric sphere kernel is
computed with a DCT-I of one octant (1/8 of the work of a full FFT), and the erosions for all radii
come from one Euclidean distance transform: "the sphere of radius r around x lies in the mask" is
exactly "every voxel outside the mask is farther than r from x", so it gives the same masks as
thresholding the FFT convolution of the mask with each sphere (the tests check this).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ..errors import QSMInputError
from . import _fft
from .kernel import check_voxel_size
from .validation import check_finite, check_mask, check_volume

#: Default V-SHARP radii in mm (QSM.rs): 12, 11, ..., 1.
DEFAULT_RADII_MM: tuple[float, ...] = tuple(float(r) for r in range(12, 0, -1))

#: Default deconvolution cut-off on |1 - S| of :func:`vsharp`.
DEFAULT_THRESHOLD = 0.05

#: Deconvolution variants of :func:`vsharp` (the first is the default).
DECONVOLUTIONS = ("per_radius", "largest")

# Offsets exactly on the sphere's surface belong to the sphere; the same relative tolerance is
# used when building kernels and when comparing distances, so ties are treated consistently.
_TIE = 1.0 + 1e-9


def _sphere_octant(radius_mm: float, voxel_size: np.ndarray, n_max: Sequence[int]) -> np.ndarray:
    """Binary sphere restricted to non-negative offsets: shape (min(R_i, n_max_i) + 1,)."""
    reach = [
        int(min(np.floor(radius_mm * _TIE / v), n)) for v, n in zip(voxel_size, n_max, strict=True)
    ]
    axes = np.ogrid[tuple(slice(0, r + 1) for r in reach)]
    d2 = sum((a * v) ** 2 for a, v in zip(axes, voxel_size, strict=True))
    return d2 <= (radius_mm * _TIE) ** 2


def sphere_voxel_count(radius_mm: float, voxel_size: Sequence[float]) -> int:
    """Number of voxels in the binary sphere of ``radius_mm`` mm (centre included)."""
    vox = check_voxel_size(voxel_size)
    octant = _sphere_octant(float(radius_mm), vox, [10**9] * 3)
    # Each octant voxel stands for 2 mirror images per axis where its offset is nonzero.
    weight = np.ones(octant.shape)
    for axis in range(3):
        w = np.full(octant.shape[axis], 2.0)
        w[0] = 1.0
        shape = [1, 1, 1]
        shape[axis] = -1
        weight = weight * w.reshape(shape)
    return int(round(float((octant * weight).sum())))


def smv_kernel(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    radius_mm: float,
    half: bool = True,
    *,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """k-space SMV kernel S_r(k) of a binary sphere of ``radius_mm`` mm on a ``shape`` grid.

    The image-space kernel is the sphere {d : |d| <= r mm} centred at index 0 (periodic), divided
    by its voxel count so that it sums to 1; its transform is real (the sphere is even), with
    S(0) = 1. Returns the rfft half-spectrum, shape ``(X, Y, Z // 2 + 1)``, when ``half`` (the
    default), else the full spectrum ``shape``. Every axis length must be even and larger than
    twice the sphere's reach, so that the sphere does not overlap itself through the periodic
    boundary; :func:`qsmflow.physics._fft.fast_shape` sizes are even.
    """
    shape = tuple(int(n) for n in shape)
    vox = check_voxel_size(voxel_size)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise QSMInputError(f"SMV kernel needs a 3-D grid shape, got {shape}")
    if not np.isfinite(radius_mm) or radius_mm <= 0:
        raise QSMInputError(f"SMV radius must be positive (mm), got {radius_mm!r}")
    half_n = [n // 2 for n in shape]
    reach = [radius_mm * _TIE / v for v in vox]
    if any(r >= (n - 1) / 2 for r, n in zip(reach, shape, strict=True)):
        raise QSMInputError(
            f"SMV radius {radius_mm} mm does not fit in grid {shape} with voxel {tuple(vox)} mm"
        )
    if any(n % 2 for n in shape):
        return _smv_kernel_direct(shape, vox, radius_mm, half, dtype)
    # The kernel is even along every axis, so its DFT (real) is a DCT-I of the octant of
    # non-negative offsets: X[k] = x[0] + (-1)^k x[N/2] + 2 sum_{n=1}^{N/2-1} x[n] cos(2 pi k n/N).
    work = np.float32 if np.dtype(dtype) == np.float32 else np.float64
    octant = np.zeros([h + 1 for h in half_n], dtype=work)
    sphere = _sphere_octant(radius_mm, vox, half_n)
    octant[tuple(slice(0, s) for s in sphere.shape)] = sphere
    spec = sfft.dctn(octant, type=1, workers=_fft.WORKERS)
    spec /= spec[0, 0, 0]  # = voxel count of the sphere: normalise the kernel to sum 1
    # Unfold to the (r)fft layout: k = N/2+1..N-1 mirror k = N/2-1..1 (S[N-k] = S[k]).
    hx, hy, hz = half_n
    nz = hz + 1 if half else shape[2]
    out = np.empty((shape[0], shape[1], nz), dtype=dtype)
    out[: hx + 1, : hy + 1, : hz + 1] = spec
    out[hx + 1 :, : hy + 1, : hz + 1] = spec[hx - 1 : 0 : -1]
    out[:, hy + 1 :, : hz + 1] = out[:, hy - 1 : 0 : -1, : hz + 1]
    if not half:
        out[:, :, hz + 1 :] = out[:, :, hz - 1 : 0 : -1]
    return out


def _smv_kernel_direct(shape, vox, radius_mm, half, dtype) -> np.ndarray:
    """Any grid: place the sphere around index 0 (periodic) and transform it."""
    sphere = _sphere_octant(radius_mm, vox, [n // 2 for n in shape])
    kernel = np.zeros(shape, dtype=np.float64)
    # Mirror the octant into all 8 sign combinations of the offsets (negative = wrapped).
    idx = [np.concatenate([np.arange(m), -np.arange(1, m)]) for m in sphere.shape]
    src = [np.concatenate([np.arange(m), np.arange(1, m)]) for m in sphere.shape]
    kernel[np.ix_(*idx)] = sphere[np.ix_(*src)]
    kernel /= kernel.sum()
    spectrum = _fft.rfftn(kernel) if half else _fft.fftn(kernel)
    return np.ascontiguousarray(spectrum.real, dtype=dtype)


def smv_erode(mask: np.ndarray, voxel_size: Sequence[float], radius_mm: float) -> np.ndarray:
    """Erode ``mask`` by the SMV sphere: keep voxels whose whole sphere of ``radius_mm`` mm lies
    inside the mask (the array border counts as outside). Equals thresholding the convolution of
    the mask with the normalised sphere at 1 - sqrt(eps)."""
    mask = np.asarray(mask, dtype=bool)
    vox = check_voxel_size(voxel_size)
    return _outside_distance(mask, vox) > radius_mm * _TIE


def _outside_distance(mask: np.ndarray, vox: np.ndarray) -> np.ndarray:
    """Distance (mm) from each voxel to the nearest voxel outside ``mask`` (border = outside)."""
    padded = np.pad(mask, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=vox)
    return dist[1:-1, 1:-1, 1:-1]


def _prepare(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    radii: np.ndarray,
    pad: int | Sequence[int] | None,
    dtype,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[slice, ...], tuple[slice, ...]]:
    """Validate inputs; crop to the mask's bounding box and zero-pad to an FFT-fast grid.

    Returns (masked field on the padded grid, distance to the outside of the mask in mm on the
    padded grid, voxel size, the bounding box in the input, the box inside the padded grid).
    """
    field = check_volume(field, "field")
    if mask is None:
        raise QSMInputError("background field removal needs a brain mask")
    mask = check_mask(mask, field.shape, name="mask")
    field = check_finite(field, "field", mask=mask)
    vox = check_voxel_size(voxel_size)
    coords = np.nonzero(mask)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    # A zero margin of r_max + 1 voxels keeps every sphere off the periodic boundary.
    min_margin = np.ceil(radii.max() * _TIE / vox).astype(int) + 1
    margin = min_margin
    if pad is not None:
        margin = np.maximum(np.broadcast_to(np.asarray(pad, dtype=int), (3,)), min_margin)
    m_box = mask[box]
    shape = _fft.fast_shape(m_box.shape, margin)
    f_pad, inner = _fft.pad_to(np.where(m_box, field[box], 0).astype(dtype), shape)
    dist = np.zeros(shape, dtype=np.float64)
    dist[inner] = _outside_distance(m_box, vox)  # the margin lies outside the mask: distance 0
    return f_pad, dist, vox, box, inner


def _truncated_inverse(s_hat: np.ndarray, threshold: float) -> np.ndarray:
    """1/C with C = 1 - S, set to 0 where |C| < threshold (SHARP's truncated deconvolution)."""
    c = 1.0 - s_hat
    small = np.abs(c) < threshold
    inv = 1.0 / np.where(small, 1.0, c)
    inv[small] = 0.0
    return inv.astype(s_hat.dtype, copy=False)


def vsharp_radii(
    radii_mm: Sequence[float] | None, voxel_size: Sequence[float]
) -> tuple[float, ...]:
    """Return the SMV radii (mm, largest first, no repeats) that :func:`vsharp` uses.

    ``None`` means :data:`DEFAULT_RADII_MM` less the radii whose sphere is a single voxel at
    ``voxel_size`` (mm); such radii given explicitly are an error, as are radii that are not
    positive finite numbers.
    """
    radii = np.asarray(DEFAULT_RADII_MM if radii_mm is None else radii_mm, dtype=float)
    radii = np.unique(radii.reshape(-1))[::-1]
    if radii.size == 0 or np.any(radii <= 0) or not np.all(np.isfinite(radii)):
        raise QSMInputError(f"SMV radii must be positive numbers in mm, got {radii.tolist()}")
    # A sphere holding only its centre voxel is no filter (S = 1, C = 0): the default radii
    # skip such radii on coarse grids (12..2 mm at 2 mm voxels); given explicitly, error.
    useful = np.array([sphere_voxel_count(r, voxel_size) > 1 for r in radii])
    if radii_mm is None:
        radii = radii[useful]
    elif not useful.all():
        raise QSMInputError(
            f"SMV radii {radii[~useful].tolist()} mm are smaller than the voxel size "
            f"{[round(float(v), 4) for v in voxel_size]} mm: the sphere is a single voxel"
        )
    if radii.size == 0:
        raise QSMInputError(
            f"every default SMV radius is a single voxel at voxel size "
            f"{[round(float(v), 4) for v in voxel_size]} mm; give radii in mm"
        )
    return tuple(float(r) for r in radii)


def vsharp(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    radii_mm: Sequence[float] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    pad: int | Sequence[int] | None = None,
    deconvolution: str = DECONVOLUTIONS[0],
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """V-SHARP background field removal (Wu et al. 2012), as in QSM.rs / QSM.jl / STI Suite.

    For each radius r (large to small) the field is high-passed, f - s_r * f, and every voxel
    keeps the value of the LARGEST radius whose eroded mask contains it. The assembled field is
    deconvolved once with the largest kernel's truncated inverse and masked by the erosion by
    the smallest radius.

    Parameters
    ----------
    field : (X, Y, Z) unwrapped total field in any unit (ppm, Hz or rad); the output has the
        same unit. Values outside ``mask`` are ignored (NaN/inf there is allowed; inside the mask
        it is an error).
    mask : (X, Y, Z) brain mask (bool or 0/1) on the field's grid.
    voxel_size : mm per array axis.
    radii_mm : SMV radii in mm, any order; default 12, 11, ..., 1 (QSM.rs), leaving out radii
        whose sphere is a single voxel (e.g. 1 mm at 2 mm voxels). :func:`vsharp_radii` gives
        the radii actually used.
    threshold : deconvolution cut-off: 1/C is set to 0 where |C| = |1 - S| < threshold.
    pad : zero margin in voxels around the mask's bounding box (int or per axis); default and
        minimum r_max + 1 voxels, which keeps the periodic FFT from wrapping any sphere.
    deconvolution : ``"per_radius"`` (default) or ``"largest"`` (the classic algorithm above,
        algorithms.md 2.3, as QSM.rs). With ``"per_radius"`` every voxel takes the SHARP
        result of its own radius,
        F^-1[C_r^+ F(M_r (f - s_r * f))], so the attenuated high-pass values of thin rims are no
        longer deconvolved with the largest kernel's inverse; C_r^+ is truncated at
        ``threshold * sqrt(r_max / r)``. About twice the FFTs; more accurate at the brain
        edge on the head model (tests/test_bgremove.py measures both).
    dtype : float32 (default) or float64 arithmetic and output.

    Returns
    -------
    local_field : (X, Y, Z) local field in the unit of ``field``, 0 outside ``eroded_mask``.
    eroded_mask : (X, Y, Z) bool, the mask eroded by the smallest radius.

    Raises
    ------
    QSMInputError : on a mask of another grid, an empty mask, a mask with no voxel left after
        erosion by the smallest radius, NaN/inf inside the mask, or bad radii/threshold.
    """
    radii = np.asarray(vsharp_radii(radii_mm, voxel_size))
    if not (0 < threshold < 1):
        raise QSMInputError(f"SMV deconvolution threshold must lie in (0, 1), got {threshold!r}")
    if deconvolution not in DECONVOLUTIONS:
        raise QSMInputError(
            f"unknown V-SHARP deconvolution {deconvolution!r} (use "
            f"{' or '.join(repr(d) for d in DECONVOLUTIONS)})"
        )
    shape_in = np.shape(field)
    f_pad, dist, vox, box, inner = _prepare(field, mask, voxel_size, radii, pad, dtype)
    shape = f_pad.shape
    if not np.any(dist > radii[-1] * _TIE):
        raise QSMInputError(
            f"the mask has no voxel left after erosion by the smallest SMV radius "
            f"({radii[-1]:g} mm); it is too thin, or use smaller radii"
        )
    f_hat = _fft.rfftn(f_pad)
    spectrum = np.empty_like(f_hat)
    local = np.zeros(shape, dtype=dtype)
    done = np.zeros(shape, dtype=bool)
    inverse = None
    for r in radii:
        inside = dist > r * _TIE  # the sphere of radius r around the voxel lies in the mask
        take = inside & ~done
        if not take.any():
            continue
        s_hat = smv_kernel(shape, vox, r, dtype=dtype)
        if inverse is None and deconvolution == "largest":
            inverse = _truncated_inverse(s_hat, threshold)
        np.multiply(f_hat, 1 - s_hat, out=spectrum)
        high = _fft.irfftn(spectrum, shape)  # f - s_r * f
        if deconvolution == "per_radius":
            high *= inside
            # Smaller spheres leave a wider band of k where |1 - S_r| is small, so a fixed
            # cut-off amplifies rim errors (e.g. of unwrapping); sqrt(r_max / r) balances that
            # against accuracy (measured on the head model, see tests/test_bgremove.py).
            cutoff = min(threshold * float(np.sqrt(radii[0] / r)), 0.5)
            high = _fft.irfftn(_fft.rfftn(high) * _truncated_inverse(s_hat, cutoff), shape)
        np.copyto(local, high, where=take, casting="unsafe")
        done |= take
    if deconvolution == "largest":
        local = _fft.irfftn(_fft.rfftn(local) * inverse, shape)
    out = np.zeros(shape_in, dtype=dtype)
    eroded = np.zeros(shape_in, dtype=bool)
    eroded[box] = done[inner]
    out[box] = np.where(eroded[box], local[inner], 0)
    return out, eroded


def sharp(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    radius_mm: float = 6.0,
    threshold: float = 0.05,
    pad: int | Sequence[int] | None = None,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """SHARP background field removal (Schweser et al. 2011) with one SMV radius.

    local = F^-1[ C^+ . F( M_r . F^-1[C . F f] ) ] on M_r, with C = 1 - S_r, C^+ = 1/C where
    |C| >= threshold and 0 elsewhere, and M_r the mask eroded by ``radius_mm`` (default 6 mm,
    QSM.rs). Same units, conventions and checks as :func:`vsharp`, which it equals for a single
    radius. Returns (local_field, eroded_mask).
    """
    return vsharp(
        field, mask, voxel_size, radii_mm=[radius_mm], threshold=threshold, pad=pad, dtype=dtype
    )
