"""Input checks shared by both metric families: arrays become float64, masks bool, labels int.

Each check raises :class:`qsmflow.errors.QSMInputError` naming the argument ("recon",
"truth", "mask", "labels").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import QSMInputError
from ..physics.validation import check_mask, check_same_affine

__all__ = ["as_float64", "as_labels", "as_mask", "check_same_shape", "require_3d"]


def as_float64(a: Any, name: str) -> np.ndarray:
    """``a`` as a non-empty float64 array (ppm for susceptibility maps)."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise QSMInputError(f"cannot convert to a numeric array ({exc})", name) from exc
    if arr.ndim == 0 or arr.size == 0:
        raise QSMInputError(f"expected a non-empty array, got shape {arr.shape}", name)
    return arr


def check_same_shape(ref: np.ndarray, other: np.ndarray, ref_name: str, name: str) -> None:
    """Raise unless ``other`` has the shape of ``ref``."""
    if other.shape != ref.shape:
        raise QSMInputError(
            f"shape {other.shape} does not match {ref_name} shape {ref.shape}", name
        )


def as_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Boolean mask of the voxels > 0; ``None`` means every voxel.

    Raises on a wrong grid, NaN/inf or an empty mask
    (:func:`qsmflow.physics.validation.check_mask`).
    """
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool:
        # QSM-CI counts every voxel > 0; check_mask keeps those > 0.5, so lift fractional
        # values to 1 first (NaN stays NaN and is reported).
        m = np.where(m > 0, 1.0, m)
    return check_mask(m, shape, source=name)


def require_3d(a: np.ndarray, name: str) -> None:
    """Raise unless ``a`` is a 3-D volume."""
    if a.ndim != 3:
        raise QSMInputError(f"expected a 3-D volume, got shape {a.shape}", name)


def as_labels(labels: Any, shape: tuple[int, ...], name: str = "labels") -> np.ndarray:
    """Integer (int64) label map on ``shape``; float labels must be integers within 1e-3."""
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


def check_same_grid(vol: Any, ref: Any, role: str, ref_role: str = "reference") -> None:
    """Raise QSMInputError naming ``vol``'s file unless it has ``ref``'s shape and affine.

    ``vol``/``ref`` are :class:`qsmflow.io.nifti.Volume` (``data``, ``affine``, ``path``).
    """
    if vol.data.shape != ref.data.shape:
        raise QSMInputError(
            f"{role} grid {vol.data.shape} does not match the {ref_role} grid "
            f"{ref.data.shape} ({ref.path})",
            vol.path,
        )
    check_same_affine(
        vol.affine, ref.affine, f"{role} vs {ref_role} ({ref.path}); resample first", vol.path
    )
