"""The padded FFT set-up every dipole inversion shares (:class:`PaddedField`).

The field is validated, set to 0 outside the mask and centred in a zero-padded grid of fast FFT
size (``pad`` voxels per side at least, then rounded up to an even 5-smooth length; ``pad=0``
keeps the grid, i.e. periodic boundaries), with the half-spectrum dipole kernel of that grid.
Units: field in ppm (or any unit: every method here is linear in it unless it says otherwise),
voxel size in mm, B0 direction in array-axis coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft

from ..errors import QSMInputError
from . import _fft
from .kernel import check_voxel_size, dipole_kernel, normalise_b0_dir
from .validation import check_finite, check_mask, check_volume

__all__ = [
    "DEFAULT_PAD",
    "PaddedField",
    "centre_crop",
    "check_dtype",
    "irfftn_owned",
    "padded_shape",
    "sign_plus",
]

DEFAULT_PAD = 12


def check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise QSMInputError(f"dtype must be float32 or float64, got {dt}")
    return dt


def padded_shape(shape: Sequence[int], pad: int | Sequence[int] = DEFAULT_PAD) -> tuple[int, ...]:
    """Grid used for the FFTs: ``shape`` plus at least ``pad`` zero voxels on each side of each
    axis, rounded up to an even 5-smooth (fast) FFT length; ``pad=0`` keeps ``shape`` as is."""
    pads = np.broadcast_to(np.asarray(pad, dtype=int), (len(shape),))
    if np.any(pads < 0):
        raise QSMInputError(f"padding must be >= 0 voxels, got {pad!r}")
    if not np.any(pads):
        return tuple(int(n) for n in shape)
    return _fft.fast_shape(shape, pads)


class PaddedField:
    """The padded, masked inversion set-up shared by every method: the validated field, set
    to 0 outside the mask and centred in a zero-padded FFT grid, with its kernel and crop."""

    def __init__(
        self,
        field: np.ndarray,
        mask: np.ndarray,
        voxel_size: Sequence[float],
        b0_dir: Sequence[float],
        pad: int | Sequence[int],
        dtype,
        name: str = "local field",
    ):
        field = check_volume(field, name)
        self.mask = check_mask(mask, field.shape)
        field = check_finite(field, name, mask=self.mask)
        self.voxel_size = check_voxel_size(voxel_size)
        self.b0_dir = normalise_b0_dir(b0_dir)
        self.dtype = check_dtype(dtype)
        self.shape = tuple(field.shape)
        self.pshape = padded_shape(self.shape, pad)
        self.crop = centre_crop(self.shape, self.pshape)
        self.field = np.zeros(self.pshape, dtype=self.dtype)
        np.copyto(self.field[self.crop], field, where=self.mask, casting="same_kind")

    @property
    def pmask(self) -> np.ndarray:
        """The mask on the padded grid."""
        out = np.zeros(self.pshape, dtype=bool)
        out[self.crop] = self.mask
        return out

    def kernel(self) -> np.ndarray:
        """Half-spectrum dipole kernel on the padded grid (D(0) = 0; Nyquist planes averaged
        over both signs, so the kernel is Hermitian, see :mod:`.kernel`)."""
        return dipole_kernel(self.pshape, self.voxel_size, self.b0_dir, half=True, dtype=self.dtype)

    def apply(self, k: np.ndarray) -> np.ndarray:
        """F^-1[k . F field], cropped to the input grid and masked."""
        spec = _fft.rfftn(self.field)
        spec *= k
        return self.finish(irfftn_owned(spec, self.pshape))

    def finish(self, chi_padded: np.ndarray) -> np.ndarray:
        out = np.zeros(self.shape, dtype=self.dtype)
        np.copyto(out, chi_padded[self.crop], where=self.mask, casting="same_kind")
        return out


def irfftn_owned(spec: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse real 3-D FFT of the half spectrum ``spec``, which is overwritten.

    The same transform as ``scipy.fft.irfftn(spec, s=shape)``, done as an in-place complex
    inverse FFT over the leading axes followed by a complex-to-real FFT of the last axis:
    measured about 1.5x faster for float32 volumes of 6-10 M voxels (scipy 1.17).
    """
    tmp = sfft.ifftn(spec, axes=tuple(range(spec.ndim - 1)), workers=_fft.WORKERS, overwrite_x=True)
    return sfft.irfft(tmp, n=int(shape[-1]), axis=-1, workers=_fft.WORKERS)


def centre_crop(shape: Sequence[int], pshape: Sequence[int]) -> tuple[slice, ...]:
    """Slices of an array of ``shape`` placed as :func:`qsmflow.physics._fft.pad_to` does."""
    before = [(p - n) // 2 for p, n in zip(pshape, shape, strict=True)]
    return tuple(slice(b, b + n) for b, n in zip(before, shape, strict=True))


def sign_plus(d: np.ndarray) -> np.ndarray:
    """sign(d) with sign(0) = +1 (as Rust's f64::signum used by QSM.rs)."""
    return np.where(d < 0, -1.0, 1.0).astype(d.dtype, copy=False)
