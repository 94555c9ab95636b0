"""The QSM Challenge 2.0 head model as a phantom source in any head orientation.

:class:`HeadModelSource` resamples each orientation straight from the native 0.64 mm
segmentation (see :mod:`qsmflow.simulate.head_model` for loading it), so a rotated orientation
is not blurred by an extra interpolation of the reference one. Frames as in
:mod:`qsmflow.simulate.head`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ..physics.kernel import check_voxel_size
from .head import (
    TEXTURED_LABELS,
    SimulatedHead,
    as_rotation,
    exterior_mask,
    grid_coords,
    smooth_random_field,
)
from .head_model import NATIVE_VOXEL_MM
from .sampling import check_supersample


@lru_cache(maxsize=2)
def _native_head(directory: str):
    """Native 0.64 mm labels with exterior air relabelled 0, brain mask and chiref (cached)."""
    from .head_model import _load_native

    labels, brain, chiref = _load_native(directory)
    labels = labels.copy()
    labels[exterior_mask(labels)] = 0
    return labels, brain, chiref


@dataclass(frozen=True)
class HeadModelSource:
    """The Challenge 2.0 head model (see :mod:`qsmflow.simulate.head_model`) as a phantom source.

    Each orientation is resampled straight from the native 0.64 mm segmentation (labels and
    brain mask nearest neighbour, chi = chiref[label] linearly interpolated) onto a grid of
    ``voxel_size`` mm centred on the native volume's centre. Exterior air (air connected to the
    array border, 9.2 ppm in the model) becomes label 0 with chi 0, so the box of air around the
    head does not act as a field source. ``margin_mm`` enlarges the grid on every side so that a
    rotated head stays in the field of view.
    """

    directory: str | os.PathLike | None = None
    voxel_size: float | Sequence[float] = 2.0
    margin_mm: float = 0.0
    seed: int = 0
    texture: bool = False
    texture_level: float = 0.05
    chiref: Sequence[float] | None = None

    def realise(self, rotation=None, *, supersample: int = 1) -> SimulatedHead:
        """The head model with the head rotated by ``rotation`` (canonical -> array frame).

        ``supersample=s`` resamples it onto the grid ``s`` times finer (voxel
        ``voxel_size / s``, shape exactly ``s`` times the target shape, same centre), so that
        :func:`block_average` of the result lines up exactly with the target grid.
        """
        from .head_model import default_head_model_dir

        s = check_supersample(supersample)
        rot = as_rotation(rotation)
        d = Path(self.directory) if self.directory is not None else default_head_model_dir()
        labels0, brain0, chiref0 = _native_head(str(d))
        ref = np.asarray(self.chiref if self.chiref is not None else chiref0, dtype=np.float64)
        if ref.shape != (17,):
            raise QSMInputError(f"chiref must have 17 entries (label 0..16), got {ref.shape}")
        ref = ref.copy()
        ref[0] = 0.0
        vox = check_voxel_size(np.broadcast_to(np.asarray(self.voxel_size, dtype=float), (3,)))
        n_in = np.asarray(labels0.shape)
        pad = np.ceil(self.margin_mm / vox).astype(int)
        shape = np.round(n_in * NATIVE_VOXEL_MM / vox).astype(int) + 2 * pad
        shape = tuple(int(s * n) for n in shape)
        vox = vox / s
        c_in = (n_in - 1) / 2.0
        c_out = (np.asarray(shape) - 1) / 2.0
        # native index = (R^T V (o - c_out)) / 0.64 + c_in
        matrix = (rot.T * vox[None, :]) / NATIVE_VOXEL_MM
        offset = c_in - matrix @ c_out
        kw = dict(output_shape=shape, mode="constant", cval=0.0)
        labels = ndimage.affine_transform(labels0, matrix, offset, order=0, **kw).astype(np.uint8)
        brain = ndimage.affine_transform(brain0.astype(np.uint8), matrix, offset, order=0, **kw) > 0
        chi = ndimage.affine_transform(
            ref.astype(np.float32)[labels0], matrix, offset, order=1, prefilter=False, **kw
        ).astype(np.float32)
        texture_field = None
        if self.texture and self.texture_level > 0:
            rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), 0x4EAD]))
            s1, s2 = rng.integers(0, 2**31, size=2)
            head = labels > 0
            p = grid_coords(shape, vox, rot)[:, head]
            t = np.zeros(shape, np.float32)
            t[head] = smooth_random_field(p, seed=s1, correlation_mm=4.0)
            amp = self.texture_level * np.maximum(np.abs(ref), 0.1) * TEXTURED_LABELS
            chi += (amp[labels] * t).astype(np.float32)
            texture_field = np.zeros(shape, np.float32)
            texture_field[head] = smooth_random_field(p, seed=s2, correlation_mm=5.0)
        return SimulatedHead(
            chi=chi,
            labels=labels,
            brain_mask=brain,
            voxel_size=tuple(float(v) for v in vox),
            chiref=ref,
            rotation=rot.copy(),
            tissue_texture=texture_field,
            texture_level=float(self.texture_level if self.texture else 0.0),
            description="QSM Challenge 2.0 head model (Marques et al. 2021)",
        )
