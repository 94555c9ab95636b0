"""Mask operations in millimetres (voxel-size aware)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


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
