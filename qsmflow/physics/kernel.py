"""The unit dipole kernel in k-space.

D(k) = 1/3 - (k . b)^2 / |k|^2 with k_i = fftfreq(N_i, d=voxel_i) (cycles/mm) and b the unit
B0 direction in array-axis coordinates. The kernel is stored unshifted (DC at index 0), as
scipy.fft/numpy.fft expect. Its range is [-2/3, 1/3]; it vanishes on the 54.7 degree cone.

The value at k = 0 is a convention (algorithms.md section 1): 0 (QSM.rs, QSM.jl, MEDI; the
default here, leaving the mean susceptibility undetermined) or 1/3 (SEPIA, qsm-forward and the
ISDU-QSMNet reference implementation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import QSMInputError


def normalise_b0_dir(b0_dir: Sequence[float]) -> np.ndarray:
    """Return ``b0_dir`` as a float64 unit 3-vector; raise on a zero or non-finite vector."""
    b = np.asarray(b0_dir, dtype=np.float64).reshape(-1)
    if b.shape != (3,) or not np.all(np.isfinite(b)):
        raise QSMInputError(f"B0 direction must be a finite 3-vector, got {b0_dir!r}")
    norm = np.linalg.norm(b)
    if norm < 1e-6:
        raise QSMInputError(f"B0 direction {b0_dir!r} has zero length")
    return b / norm


def check_voxel_size(voxel_size: Sequence[float]) -> np.ndarray:
    """Return ``voxel_size`` (mm) as a float64 3-vector; raise on non-positive entries."""
    v = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise QSMInputError(f"voxel size must be three positive numbers in mm, got {voxel_size!r}")
    return v


def kspace_grid(
    shape: Sequence[int], voxel_size: Sequence[float], half: bool = False
) -> list[np.ndarray]:
    """Broadcastable spatial-frequency axes (cycles/mm), unshifted.

    With ``half=True`` the last axis holds the non-negative frequencies of an rfft.
    """
    shape = tuple(int(n) for n in shape)
    vox = check_voxel_size(voxel_size)
    axes = []
    for i, (n, d) in enumerate(zip(shape, vox, strict=True)):
        if half and i == len(shape) - 1:
            k = np.fft.rfftfreq(n, d=d)
        else:
            k = np.fft.fftfreq(n, d=d)
        view = [1] * len(shape)
        view[i] = k.size
        axes.append(k.reshape(view))
    return axes


def _projection_squared(
    ks: list[np.ndarray], b: np.ndarray, shape: Sequence[int], dtype
) -> np.ndarray:
    """(k . b)^2 on the full grid, averaged over the two signs of every Nyquist frequency.

    On an even axis the Nyquist index stands for both +1/(2 voxel) and -1/(2 voxel). With an
    oblique B0 the two give different (k . b)^2, which makes the kernel non-Hermitian there
    (a complex FFT then leaves an imaginary part that is thrown away, an rfft silently picks one
    sign). Averaging drops the cross terms of the Nyquist components, so the kernel is real and
    even, and full and rfft half spectra agree exactly.
    """
    regular, nyquist = [], []
    for axis, (k, n, bi) in enumerate(zip(ks, shape, b, strict=True)):
        term = (k * bi).astype(dtype)
        nyq = np.zeros_like(term)
        if n % 2 == 0:
            index = [0] * 3
            index[axis] = k.size - 1 if k.size == n // 2 + 1 else n // 2
            index = tuple(index)
            nyq[index], term[index] = term[index], 0
        regular.append(term)
        nyquist.append(nyq * nyq)
    out = regular[0] + regular[1]  # broadcasts to a 2-D plane, then 3-D below
    out = out + regular[2]
    np.multiply(out, out, out=out)
    for nyq in nyquist:
        if nyq.any():
            out += nyq
    return out


def dipole_kernel(
    shape: Sequence[int],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    dc_value: float = 0.0,
    half: bool = False,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Dipole kernel D(k) for a grid of ``shape`` voxels of ``voxel_size`` mm.

    Parameters
    ----------
    shape : the (padded) array shape the kernel multiplies, 3 axes.
    voxel_size : voxel edge lengths in mm, per array axis.
    b0_dir : B0 direction in array-axis coordinates (normalised here).
    dc_value : D at k = 0; 0 (default) or 1/3 for the reference-compatible convention.
    half : return the rfft half-spectrum (last axis ``shape[-1] // 2 + 1``).
    dtype : float32 (default; computed in float32, relative error < 1e-6) or float64 (rounded
        to float32 it reproduces the ISDU reference kernel to 1e-12).

    Returns
    -------
    D with DC at index [0, 0, 0], shape ``shape`` (or the rfft half shape).
    """
    if len(shape) != 3:
        raise QSMInputError(f"dipole kernel needs a 3-D shape, got {tuple(shape)}")
    b = normalise_b0_dir(b0_dir)
    dtype = np.dtype(dtype)
    ks = kspace_grid(shape, voxel_size, half=half)
    d = _projection_squared(ks, b, shape, dtype)  # (k . b)^2, then D in place
    k_sq = (ks[0] ** 2).astype(dtype) + (ks[1] ** 2).astype(dtype)
    k_sq = k_sq + (ks[2] ** 2).astype(dtype)
    k_sq[0, 0, 0] = 1  # DC is set below
    np.divide(d, k_sq, out=d)
    np.subtract(dtype.type(1.0 / 3.0), d, out=d)
    d[0, 0, 0] = dc_value
    return d
