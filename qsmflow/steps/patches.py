"""Training-patches step: COSMOS chi + mask + each orientation's local field -> a patch set.

The inputs are NIfTI files on one reference grid (the COSMOS frame): the susceptibility (ppm),
its mask and, per orientation, the local field (ppm of B0) resampled onto that grid with its B0
direction in the grid's array axes. The output is a ``qsmflow-patches`` folder
(:mod:`qsmflow.training.patch_store`), written atomically; its ``patches.json`` is the step's
sidecar, with the input files as ``sources["Sources"]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import QSMInputError
from ..io.nifti import load_volume
from ..physics.validation import check_same_affine
from ..training.patch_grid import MIN_MASK_FRACTION, PATCH_SIZE, STRIDE
from ..training.patch_store import write_patch_set
from . import StepResult, sources

PathLike = str | os.PathLike


def training_patches(
    local_fields: Sequence[PathLike],
    chi: PathLike,
    mask: PathLike,
    b0_dirs: Sequence[Sequence[float]],
    out_dir: PathLike,
    *,
    patch_size: int = PATCH_SIZE,
    stride: int = STRIDE,
    min_mask_fraction: float = MIN_MASK_FRACTION,
    source_files: Sequence[PathLike] | None = None,
    overwrite: bool = False,
) -> StepResult:
    """Cut the training pairs of one subject into ``patch_size``^3 patches in ``out_dir``.

    ``local_fields``: one NIfTI per orientation, ppm, on ``chi``'s grid (same affine);
    ``b0_dirs``: one unit 3-vector per orientation in that grid's array axes; ``chi``: COSMOS
    susceptibility, ppm; ``mask``: voxels > 0.5 are inside. ``stride`` (voxels) and
    ``min_mask_fraction`` define the grid (:func:`~qsmflow.training.patch_grid.patch_origins`).
    ``source_files`` replace the inputs as the recorded ``Sources`` (the pipeline records the
    raw BIDS files). An existing non-empty ``out_dir`` is replaced only with ``overwrite``.

    Returns outputs ``{"patches": out_dir}``, the ``patches.json`` metadata as sidecar and
    values ``{"count": N}`` (patches of all orientations).
    """
    if len(b0_dirs) != len(local_fields):
        raise QSMInputError(
            f"{len(b0_dirs)} B0 directions for {len(local_fields)} local fields (one each)"
        )
    chi_vol = load_volume(chi, ndim=3)
    mask_vol = load_volume(mask, ndim=3)
    fields = [load_volume(f, ndim=3) for f in local_fields]
    for vol in [mask_vol, *fields]:
        check_same_affine(vol.affine, chi_vol.affine, f"not on {chi_vol.path}'s grid", vol.path)
    recorded = source_files if source_files is not None else [*local_fields, chi, mask]
    meta = write_patch_set(
        out_dir,
        field_ppm=[f.data for f in fields],
        chi_ppm=chi_vol.data,
        mask=mask_vol.data > 0.5,
        b0_dirs=[[float(x) for x in b] for b in b0_dirs],
        voxel_size=chi_vol.voxel_size,
        patch_size=patch_size,
        stride=stride,
        min_mask_fraction=min_mask_fraction,
        sources={"Sources": sources(*recorded)},
        overwrite=overwrite,
    )
    return StepResult(
        outputs={"patches": Path(out_dir)}, sidecar=meta, values={"count": int(meta["count"])}
    )


__all__ = ["training_patches"]
