"""Supersampling: heads on a grid ``s`` times finer than the target grid, and back.

A source realised with ``supersample=s`` has voxel ``voxel_size / s`` and exactly ``s`` times
the target shape with the same centre, so the ``s^3`` blocks of the fine grid are the target
voxels: :func:`block_average` (values), :func:`block_labels` (labels) and
:func:`downsample_head` bring the truth back; :func:`upsample_head` reads an already resampled
model as uniform sub-voxels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import QSMInputError
from .head import SimulatedHead
from .head_model import HeadModel


def check_supersample(supersample) -> int:
    """``supersample`` as an int >= 1 (refuses fractions, booleans and non-numbers)."""
    if isinstance(supersample, bool) or not isinstance(supersample, int | np.integer):
        raise QSMInputError(f"supersample must be an integer >= 1, got {supersample!r}")
    if not 1 <= supersample <= 8:
        raise QSMInputError(f"supersample must be 1-8, got {supersample}")
    return int(supersample)


def sub_voxel_blocks(a: np.ndarray, s: int) -> np.ndarray:
    """View (X, Y, Z, s, s, s) of ``a`` (shape (s X, s Y, s Z)): the sub-voxels of each voxel."""
    x, y, z = (n // s for n in a.shape)
    if a.shape != (s * x, s * y, s * z):
        raise QSMInputError(f"shape {a.shape} is not a multiple of the supersampling factor {s}")
    return a.reshape(x, s, y, s, z, s).transpose(0, 2, 4, 1, 3, 5)


def block_average(a: np.ndarray, s: int) -> np.ndarray:
    """Mean over ``s x s x s`` blocks: the value of each voxel of the ``s`` times coarser grid.

    With both grids centred alike (voxel ``(shape - 1) / 2`` at the same point) the fine voxels
    ``s i .. s i + s - 1`` are exactly the sub-voxels of coarse voxel ``i``.
    """
    a = np.asarray(a)
    if s == 1:
        return a
    sub_voxel_blocks(a, s)  # checks the shape
    out = a if a.dtype.kind in "fc" else a.astype(np.float32)
    for axis in range(3):  # strided sums along one axis at a time (fast, keeps float32)
        parts = [
            out[tuple(slice(k, None, s) if i == axis else slice(None) for i in range(3))]
            for k in range(s)
        ]
        acc = parts[0].copy()
        for p in parts[1:]:
            acc += p
        out = acc
    out *= out.dtype.type(1.0 / s**3)
    return out


def block_labels(labels: np.ndarray, s: int) -> np.ndarray:
    """Label of each coarse voxel: the most frequent label of its head sub-voxels (label 0 only
    when all sub-voxels are outside the head, so ``labels > 0`` marks every voxel with signal).
    Ties go to the sub-voxel that comes first in array order."""
    labels = np.asarray(labels)
    if s == 1:
        return labels
    b = sub_voxel_blocks(labels, s).reshape(*(n // s for n in labels.shape), s**3)
    counts = np.zeros(b.shape, dtype=np.uint16)
    for j in range(s**3):
        counts += b == b[..., j : j + 1]
    counts[b == 0] = 0
    idx = np.argmax(counts, axis=-1)
    return np.take_along_axis(b, idx[..., None], axis=-1)[..., 0]


def upsample_head(model: HeadModel, s: int) -> SimulatedHead:
    """Nearest-neighbour upsampling by ``s`` (each voxel becomes ``s^3`` equal sub-voxels of
    ``voxel_size / s``): the piecewise-constant 'voxel = box' reading of a resampled model."""
    s = check_supersample(s)

    def rep(a):
        return None if a is None else np.repeat(np.repeat(np.repeat(a, s, 0), s, 1), s, 2)

    base = dict(
        chi=rep(np.asarray(model.chi, dtype=np.float32)),
        labels=rep(np.asarray(model.labels, dtype=np.uint8)),
        brain_mask=rep(np.asarray(model.brain_mask, dtype=bool)),
        voxel_size=tuple(float(v) / s for v in model.voxel_size),
        chiref=np.asarray(model.chiref, dtype=np.float64),
    )
    if isinstance(model, SimulatedHead):
        return replace(model, **base, tissue_texture=rep(model.tissue_texture))
    return SimulatedHead(**base)


def downsample_head(model: SimulatedHead, s: int) -> SimulatedHead:
    """The head on the ``s`` times coarser grid: chi and tissue texture block-averaged (partial
    volume), labels by :func:`block_labels`, brain mask where at least half the sub-voxels are
    brain."""
    s = check_supersample(s)
    if s == 1:
        return model
    tex = model.tissue_texture
    return replace(
        model,
        chi=block_average(model.chi, s).astype(np.float32),
        labels=block_labels(model.labels, s).astype(np.uint8),
        brain_mask=block_average(model.brain_mask.astype(np.float32), s) >= 0.5,
        voxel_size=tuple(float(v) * s for v in model.voxel_size),
        tissue_texture=None if tex is None else block_average(tex, s).astype(np.float32),
    )
