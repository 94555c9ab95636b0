"""Forward model: susceptibility (ppm) -> field (ppm of B0).

field = F^-1[ D(k) . F[chi] ] on a zero-padded grid (default about twice the size on each
axis) so that the periodic FFT does not wrap fields of sources across the box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _fft
from .kernel import dipole_kernel
from .validation import check_finite, check_volume


def forward_field(
    chi: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    pad_factor: float = 2.0,
    dc_value: float = 0.0,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Field (ppm) produced by the susceptibility map ``chi`` (ppm).

    Parameters
    ----------
    chi : (X, Y, Z) susceptibility in ppm.
    voxel_size : mm per array axis.
    b0_dir : B0 direction in array-axis coordinates.
    pad_factor : pad each axis to at least ``pad_factor`` times its size (1 = no padding,
        periodic boundaries).
    dc_value : dipole kernel value at k=0 (0: Lorentz-corrected field whose box mean is 0).
    dtype : float32 (default) or float64 arithmetic.

    Returns
    -------
    (X, Y, Z) field in ppm, in ``dtype``.
    """
    chi = check_finite(check_volume(chi, "susceptibility map"), "susceptibility map")
    chi = chi.astype(dtype, copy=False)
    extra = np.maximum(np.ceil((pad_factor - 1.0) * np.asarray(chi.shape) / 2), 0).astype(int)
    shape = _fft.fast_shape(chi.shape, extra) if pad_factor > 1 else chi.shape
    padded, crop = _fft.pad_to(chi, shape)
    d = dipole_kernel(shape, voxel_size, b0_dir, dc_value=dc_value, half=True, dtype=dtype)
    field = _fft.irfftn(_fft.rfftn(padded) * d, shape)
    return np.ascontiguousarray(field[crop], dtype=dtype)
