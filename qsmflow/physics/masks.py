"""Mask operations in millimetres (voxel-size aware) and magnitude-derived data weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from .validation import check_finite, check_volume


def erode_mm(mask: np.ndarray, radius_mm: float, voxel_size: Sequence[float]) -> np.ndarray:
    """Erode ``mask`` by a ball of ``radius_mm``: keep voxels farther than ``radius_mm`` mm
    from every voxel outside the mask (the array border counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    if radius_mm <= 0:
        return mask.copy()
    padded = np.pad(mask, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=np.asarray(voxel_size, dtype=float))
    return dist[1:-1, 1:-1, 1:-1] > radius_mm


def dilate_mm(mask: np.ndarray, radius_mm: float, voxel_size: Sequence[float]) -> np.ndarray:
    """Dilate ``mask`` by a ball of ``radius_mm``."""
    mask = np.asarray(mask, dtype=bool)
    if radius_mm <= 0:
        return mask.copy()
    dist = ndimage.distance_transform_edt(~mask, sampling=np.asarray(voxel_size, dtype=float))
    return dist <= radius_mm


def magnitude_weights(
    magnitude: np.ndarray | None, mask: np.ndarray, name: str = "weights", dtype=np.float32
) -> np.ndarray:
    """Data weights W in [0, 1] from a magnitude image (as SEPIA's NDI).

    ``magnitude`` None: W = the mask. Otherwise W = magnitude / its 99th percentile inside
    ``mask``, capped at 1, and 0 outside the mask; the magnitude must be on the mask's grid,
    finite and >= 0 inside the mask (any unit: only ratios matter). ``name`` names it in errors.
    """
    mask = np.asarray(mask, bool)
    if magnitude is None:
        return mask.astype(dtype)
    w = check_volume(magnitude, name)
    if w.shape != mask.shape:
        raise QSMInputError(f"{name} grid {w.shape} does not match the field grid {mask.shape}")
    w = check_finite(w, name, mask=mask)
    if np.any(w[mask] < 0):
        raise QSMInputError(f"{name} must be >= 0 inside the mask (e.g. the magnitude image)")
    scale = float(np.percentile(w[mask], 99))
    if not scale > 0:
        raise QSMInputError(f"{name} are zero inside the mask")
    return np.where(mask, np.minimum(w / scale, 1.0), 0).astype(dtype)
