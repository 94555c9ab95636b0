"""COSMOS step: N local-field files in one reference frame -> susceptibility map and common mask."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import QSMInputError
from ..io.bids import MIN_ORIENTATIONS
from ..io.nifti import Volume, load_volume, save_volume
from ..physics.cosmos import (
    COSMOS_ITERATIONS,
    COSMOS_METHODS,
    COSMOS_REGULARISERS,
    check_distinct_b0_dirs,
    common_mask,
    solve_cosmos,
)
from ..physics.inversion import DEFAULT_PAD
from ..physics.kernel import normalise_b0_dir
from ..physics.validation import (
    AFFINE_ATOL_MM,
    check_finite,
    check_same_affine,
    check_same_grid,
)
from . import StepResult, sources

PathLike = str | os.PathLike

#: Fewest head orientations COSMOS accepts (3 or more well spread are recommended).
MIN_COSMOS_ORIENTATIONS = MIN_ORIENTATIONS["cosmos"]


def _directions(
    fields: list[Volume],
    masks: list[Volume],
    b0_dirs: Sequence[Sequence[float]] | None,
    b0_dir_files: Sequence[PathLike] | None,
) -> tuple[np.ndarray, str]:
    """The B0 direction of every field in the reference array axes, and where it came from."""
    n = len(fields)
    if b0_dirs is None and b0_dir_files is None:
        # from the affines: the head-fixed grids may differ by a rotation only
        for vol in fields[1:]:
            if not np.allclose(vol.voxel_size, fields[0].voxel_size, atol=AFFINE_ATOL_MM):
                raise QSMInputError(
                    f"voxel size {vol.voxel_size.tolist()} differs from {fields[0].path}'s",
                    vol.path,
                )
        dirs = np.stack([v.b0_dir for v in fields])
        check_distinct_b0_dirs(dirs, "give them with --b0-dirs or --b0-dir-files")
        return dirs, "affine"
    # given directions refer to one frame: every field and mask must share its affine
    for vol in [*fields[1:], *masks]:
        check_same_affine(
            vol.affine,
            fields[0].affine,
            f"not in {fields[0].path}'s frame (resample all fields and masks onto one grid)",
            vol.path,
        )
    if b0_dirs is not None:
        if len(b0_dirs) != n:
            raise QSMInputError(f"b0_dirs has {len(b0_dirs)} entries for {n} fields")
        return np.stack([normalise_b0_dir(b) for b in b0_dirs]), "given"
    from ..simulate.orientations import read_b0_dir_txt

    if len(b0_dir_files) != n:
        raise QSMInputError(f"b0_dir_files has {len(b0_dir_files)} files for {n} fields")
    return np.stack([read_b0_dir_txt(p) for p in b0_dir_files]), "files"


def cosmos_files(
    local_fields: Sequence[PathLike],
    masks: Sequence[PathLike],
    chi_file: PathLike,
    mask_file: PathLike | None = None,
    *,
    b0_dirs: Sequence[Sequence[float]] | None = None,
    b0_dir_files: Sequence[PathLike] | None = None,
    method: str = COSMOS_METHODS[0],
    lam: float | None = None,
    regulariser: str = COSMOS_REGULARISERS[0],
    weights: Sequence[PathLike] | None = None,
    iterations: int = COSMOS_ITERATIONS,
    tol: float = 1e-3,
    pad: int = DEFAULT_PAD,
    float64: bool = False,
) -> StepResult:
    """COSMOS (:func:`qsmflow.physics.cosmos.solve_cosmos`) of N local fields (ppm of B0), all
    on one reference grid.

    ``masks``: one common mask or one per field; COSMOS runs in their intersection
    (:func:`qsmflow.physics.cosmos.common_mask`). B0 directions (reference array axes): given
    (``b0_dirs``, N 3-vectors), read from text files (``b0_dir_files``), or, with neither, from
    each field's affine (head-fixed grids whose affines carry each acquisition's pose). With
    given directions every field and mask must share field 1's affine. ``weights``: one
    ``lsq`` data-weight map per field. ``pad``: zero voxels per side; ``float64``: compute in
    double precision.

    Writes ``chi_file`` (ppm, 0 outside the mask) with its sidecar and, when given,
    ``mask_file`` (the common mask, uint8). Sidecar: ``Units``, ``InversionMethod`` (COSMOS),
    ``CosmosSolver``, ``Regularisation`` (lambda used), ``Regulariser``, ``CosmosIterations``
    (PCG iterations run), ``B0Directions``, ``B0DirectionSource`` (given, files, affine),
    ``NumberOfOrientations``, ``VoxelSizeMM``, ``DipoleKernelK0``.
    """
    n = len(local_fields)
    if n < MIN_COSMOS_ORIENTATIONS:
        raise QSMInputError(
            f"COSMOS needs at least {MIN_COSMOS_ORIENTATIONS} local fields (3 or more well "
            f"spread), got {n}"
        )
    if len(masks) not in (1, n):
        raise QSMInputError(f"give one common mask or one per field: {len(masks)} for {n} fields")
    if pad < 0:
        raise QSMInputError(f"pad must be >= 0, got {pad}")
    if iterations < 1:
        raise QSMInputError(f"iterations must be >= 1, got {iterations}")
    fields = [load_volume(p, ndim=3) for p in local_fields]
    mask_vols = [load_volume(p, ndim=3) for p in masks]
    shape = fields[0].data.shape
    for vol in fields[1:]:
        check_same_grid(vol.data.shape, shape, f"field vs {fields[0].path}", vol.path)
    mask = common_mask([m.data for m in mask_vols], shape, [m.path for m in mask_vols])
    dirs, dir_source = _directions(fields, mask_vols, b0_dirs, b0_dir_files)
    data = [check_finite(f.data, "field", f.path, mask=mask) for f in fields]
    weight_maps = None
    if weights is not None:
        if len(weights) != n:
            raise QSMInputError(f"weights has {len(weights)} files for {n} fields")
        weight_maps = [load_volume(p, ndim=3) for p in weights]
        for w in weight_maps:
            check_same_grid(w.data.shape, shape, "weights vs the fields", w.path)
        weight_maps = np.stack([w.data for w in weight_maps])
    dtype = np.float64 if float64 else np.float32
    result = solve_cosmos(
        data,
        dirs,
        fields[0].voxel_size,
        mask,
        method=method,
        lam=lam,
        regulariser=regulariser,
        weights=weight_maps,
        iterations=iterations,
        tol=tol,
        pad=pad,
        dtype=dtype,
    )
    sidecar: dict[str, Any] = {
        "Sources": sources(*local_fields, *masks, *(b0_dir_files or ()), *(weights or ())),
        "Units": "ppm",
        "InversionMethod": "COSMOS",
        "CosmosSolver": method,
        "Regularisation": result.lam,
        "Regulariser": regulariser,
        "CosmosIterations": result.iterations,
        "B0Directions": result.b0_dirs.tolist(),
        "B0DirectionSource": dir_source,
        "NumberOfOrientations": n,
        "VoxelSizeMM": [float(x) for x in fields[0].voxel_size],
        "DipoleKernelK0": 0.0,
    }
    affine = fields[0].affine
    outputs = {"chi": save_volume(chi_file, result.chi, affine, dtype=dtype, sidecar=sidecar)}
    if mask_file is not None:
        outputs["mask"] = save_volume(mask_file, mask.astype(np.uint8), affine, dtype=np.uint8)
    return StepResult(outputs=outputs, sidecar=sidecar, values={"b0_dirs": result.b0_dirs})
