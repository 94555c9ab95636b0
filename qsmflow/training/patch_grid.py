"""Training patches: the regular patch grid, patch extraction and normalisation statistics.

numpy only (no torch import), pure functions; the on-disk format is
:mod:`qsmflow.training.patch_store`.

Patch grid (LPCNN style, isdu_qsmnet_spec.md section 8)
-------------------------------------------------------
Along each axis of length ``n`` the patch starts are ``0, stride, 2*stride, ...`` as long as the
patch fits, and a last start ``n - patch_size`` is added (clamped) so that the final patch ends
exactly at the edge; the grid therefore covers every voxel when ``stride <= patch_size``. An
axis shorter than the patch has the single start 0 and its patches are zero-padded at the high
end (those padded voxels count as outside the mask). Of the Cartesian product of the starts,
only patches whose mask fraction ``mask voxels in the patch / patch_size**3`` is strictly
greater than ``min_mask_fraction`` are kept (default 1/8, i.e. LPCNN's ``mask sum > 32768`` for
64^3 patches).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import QSMInputError

#: Smallest patch edge (voxels) the grid and the patch-set format accept.
MIN_PATCH_SIZE = 8

#: Grid defaults (LPCNN's): 64^3 patches every 32 voxels, kept when > 1/8 inside the mask.
PATCH_SIZE = 64
STRIDE = 32
MIN_MASK_FRACTION = 0.125


def _check_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise QSMInputError(f"{name} must be 3 integers, got {shape!r}") from exc
    if len(out) != 3 or any(s < 1 for s in out):
        raise QSMInputError(f"{name} must be 3 positive integers, got {tuple(shape)!r}")
    return out[0], out[1], out[2]


def check_grid_params(patch_size: int, stride: int, min_mask_fraction: float) -> None:
    if isinstance(patch_size, bool) or int(patch_size) != patch_size:
        raise QSMInputError(f"patch_size must be an integer, got {patch_size!r}")
    if patch_size < MIN_PATCH_SIZE:
        raise QSMInputError(f"patch_size must be >= {MIN_PATCH_SIZE}, got {patch_size}")
    if isinstance(stride, bool) or int(stride) != stride:
        raise QSMInputError(f"stride must be an integer, got {stride!r}")
    if not 1 <= stride <= patch_size:
        raise QSMInputError(
            f"stride must be in [1, patch_size={patch_size}] so the grid covers the volume, "
            f"got {stride}"
        )
    mmf = float(min_mask_fraction)
    if not (np.isfinite(mmf) and 0.0 <= mmf < 1.0):
        raise QSMInputError(f"min_mask_fraction must be in [0, 1), got {min_mask_fraction!r}")


def axis_starts(n: int, patch_size: int, stride: int) -> np.ndarray:
    """Patch start indices along one axis of length ``n`` (voxels), ascending, unique.

    ``0, stride, ...`` while ``start + patch_size <= n``, plus the clamped last start
    ``n - patch_size``; ``[0]`` when ``n <= patch_size`` (the patch is zero-padded).
    """
    if n <= patch_size:
        return np.zeros(1, dtype=np.int64)
    last = n - patch_size
    starts = np.arange(0, last + 1, stride, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def _window_sums(a: np.ndarray, axis: int, starts: np.ndarray, patch_size: int) -> np.ndarray:
    """Sums of ``a`` over ``[s, min(s + P, n))`` along ``axis`` for each start ``s``."""
    n = a.shape[axis]
    c = np.cumsum(a, axis=axis, dtype=np.int64)
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 0)
    c = np.pad(c, pad)
    ends = np.minimum(starts + patch_size, n)
    return np.take(c, ends, axis=axis) - np.take(c, starts, axis=axis)


def mask_fractions(mask: np.ndarray, origins: np.ndarray, patch_size: int) -> np.ndarray:
    """Fraction of each patch's ``patch_size**3`` voxels inside ``mask`` (padding counts as out).

    ``mask``: 3-D array (non-zero = inside); ``origins``: (N, 3) patch corners. Returns (N,)
    float64.
    """
    m = np.asarray(mask) != 0
    origins = _check_origins(origins, m.shape)
    counts = np.empty(len(origins), dtype=np.int64)
    for i, o in enumerate(origins):
        sl = tuple(slice(int(a), int(a) + patch_size) for a in o)
        counts[i] = np.count_nonzero(m[sl])
    return counts / float(patch_size) ** 3


def patch_origins(
    shape: Sequence[int],
    patch_size: int = PATCH_SIZE,
    stride: int = STRIDE,
    mask: np.ndarray | None = None,
    min_mask_fraction: float = MIN_MASK_FRACTION,
) -> np.ndarray:
    """Corners of the patches of a regular grid over a volume of ``shape`` (voxels).

    The grid is the Cartesian product of :func:`axis_starts` along the three axes, in C order
    (axis 0 slowest). Axes shorter than ``patch_size`` get the single start 0; those patches
    must be zero-padded on extraction (:func:`extract_patches` does so). With a ``mask`` (same
    shape; non-zero = inside) only patches whose mask fraction (mask voxels / ``patch_size**3``,
    padded voxels counting as outside) is strictly greater than ``min_mask_fraction`` are
    kept; ``min_mask_fraction=0`` keeps every patch touching the mask. Without a mask all grid
    patches are returned.

    Returns an (N, 3) int64 array of voxel indices (possibly N = 0).
    """
    shape = _check_shape(shape)
    check_grid_params(patch_size, stride, min_mask_fraction)
    patch_size, stride = int(patch_size), int(stride)
    starts = [axis_starts(n, patch_size, stride) for n in shape]
    grid = np.stack(np.meshgrid(*starts, indexing="ij"), axis=-1).reshape(-1, 3)
    if mask is None:
        return grid
    m = np.asarray(mask)
    if m.shape != shape:
        raise QSMInputError(f"mask grid {m.shape} does not match the volume shape {shape}")
    if m.dtype != bool:
        if np.issubdtype(m.dtype, np.floating) and not np.all(np.isfinite(m)):
            raise QSMInputError("mask contains NaN/inf")
        m = m != 0
    # separable box sums evaluated only at the grid starts: (n0, n1, n2) counts
    sums = m.astype(np.uint8)
    for axis in range(3):
        sums = _window_sums(sums, axis, starts[axis], patch_size)
    fractions = sums.reshape(-1) / float(patch_size) ** 3
    return grid[fractions > float(min_mask_fraction)]


def _check_origins(origins: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    o = np.asarray(origins)
    if o.ndim != 2 or o.shape[1] != 3:
        raise QSMInputError(f"origins must have shape (N, 3), got {o.shape}")
    if o.size and not np.issubdtype(o.dtype, np.integer):
        if not np.all(np.isfinite(o)) or np.any(o != np.round(o)):
            raise QSMInputError("origins must be integer voxel indices")
    o = o.astype(np.int64)
    if o.size and (np.any(o < 0) or np.any(o >= np.asarray(shape))):
        raise QSMInputError(f"origins must lie inside the volume {tuple(shape)}")
    return o


def extract_patches(volume: np.ndarray, origins: np.ndarray, patch_size: int) -> np.ndarray:
    """Cubes ``volume[o0:o0+P, o1:o1+P, o2:o2+P]`` for each origin, zero-padded past the edge.

    ``volume``: 3-D array (any dtype, kept); ``origins``: (N, 3) integer voxel indices inside
    the volume; returns (N, P, P, P) with the dtype of ``volume`` (voxels beyond the volume are
    0).
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise QSMInputError(f"volume must be 3-D, got shape {vol.shape}")
    if isinstance(patch_size, bool) or int(patch_size) != patch_size or patch_size < 1:
        raise QSMInputError(f"patch_size must be a positive integer, got {patch_size!r}")
    p = int(patch_size)
    o = _check_origins(origins, vol.shape)
    out = np.zeros((len(o), p, p, p), dtype=vol.dtype)
    for i, (a, b, c) in enumerate(o):
        sub = vol[a : a + p, b : b + p, c : c + p]
        out[i, : sub.shape[0], : sub.shape[1], : sub.shape[2]] = sub
    return out


class RunningStats:
    """Mean and population variance over chunks (Chan et al. pairwise update, float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, values: np.ndarray, mask: np.ndarray) -> None:
        x = np.asarray(values)[np.asarray(mask) != 0].astype(np.float64)
        nb = x.size
        if nb == 0:
            return
        mb = float(x.mean())
        m2b = float(np.sum((x - mb) ** 2))
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    def result(self) -> dict[str, float | int]:
        if self.n == 0:
            raise QSMInputError("no mask voxel to compute normalisation statistics over")
        return {"mean": self.mean, "std": float(np.sqrt(self.m2 / self.n)), "count": self.n}


def normalisation_stats(
    values: np.ndarray | Iterable[np.ndarray], mask: np.ndarray | Iterable[np.ndarray]
) -> dict[str, float | int]:
    """Mean and population std (ddof 0) of ``values`` over voxels where ``mask`` is non-zero.

    ``values`` and ``mask`` are arrays of equal shape, or equally long iterables of such arrays
    (chunks, combined exactly). Computed in float64; units those of ``values``. Returns
    ``{"mean", "std", "count"}``; raises :class:`QSMInputError` when no voxel is selected.
    """
    if isinstance(values, np.ndarray) or isinstance(mask, np.ndarray):
        pairs: Iterable[tuple[Any, Any]] = [(values, mask)]
    else:
        pairs = zip(values, mask, strict=True)
    acc = RunningStats()
    for v, m in pairs:
        v, m = np.asarray(v), np.asarray(m)
        if v.shape != m.shape:
            raise QSMInputError(f"values {v.shape} and mask {m.shape} differ in shape")
        acc.add(v, m)
    return acc.result()


__all__ = [
    "MIN_MASK_FRACTION",
    "MIN_PATCH_SIZE",
    "PATCH_SIZE",
    "STRIDE",
    "RunningStats",
    "axis_starts",
    "check_grid_params",
    "extract_patches",
    "mask_fractions",
    "normalisation_stats",
    "patch_origins",
]
