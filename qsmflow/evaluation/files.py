"""File-level evaluation: score NIfTI susceptibility maps against a reference NIfTI.

What ``qsmflow evaluate`` (and the demo through it) runs: every input is loaded and checked
(grid, affine within :data:`qsmflow.physics.validation.AFFINE_ATOL_MM`, mask, reference,
integer labels) before any map is scored, so a bad file fails fast and is named.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import QSMInputError
from ..io.nifti import Volume, load_volume
from ..physics.validation import check_same_affine
from ._checks import as_labels, as_mask
from .metrics import score
from .rois import load_label_names

__all__ = ["RESULT_UNITS", "evaluate_files"]

#: The units of every number in a result (stored with it in the JSON).
RESULT_UNITS = {
    "susceptibility": "ppm",
    "nrmse, nrmse_*, rmse, hfen": "percent",
    "psnr": "dB",
    "correlation, xsim, ssim, coverage, dgm_linearity, calc_streak": "dimensionless",
    "calc_moment_dev": "ppm*voxel",
}


def _check_on_recon_grid(vol: Volume, recon: Volume, what: str, path: str, recon_path: str) -> None:
    if vol.data.shape != recon.data.shape:
        raise QSMInputError(
            f"{what} grid {vol.data.shape} does not match RECON grid {recon.data.shape} "
            f"({recon_path})",
            path,
        )
    check_same_affine(
        vol.affine,
        recon.affine,
        f"{what} vs RECON ({recon_path}); resample onto one grid first",
        path,
    )


def evaluate_files(
    recons: Sequence[str | os.PathLike],
    reference: str | os.PathLike,
    mask: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    label_names: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Score each RECON map (NIfTI, ppm) against ``reference`` (ppm) inside ``mask`` (> 0).

    ``labels`` (integer label map) adds ROI statistics; ``label_names`` (a file, see
    :func:`qsmflow.evaluation.rois.load_label_names`) names them and leaves out the head-model
    region metrics. All files must share one grid (shape and affine). Returns one
    :func:`qsmflow.evaluation.metrics.score` result per RECON, with ``files`` (the input
    paths) and ``units`` (:data:`RESULT_UNITS`) added.
    """
    others = {"reference": reference, "mask": mask}
    if labels is not None:
        others["labels"] = labels
    vols = {
        what: load_volume(path, dtype=None if what == "labels" else np.float64)
        for what, path in others.items()
    }
    maps = []
    for path in recons:  # check every input before scoring any
        recon = load_volume(path, dtype=np.float64)
        for what, vol in vols.items():
            _check_on_recon_grid(vol, recon, what, str(others[what]), str(path))
        maps.append(recon.data)
    shape = vols["reference"].data.shape
    mask_data = as_mask(vols["mask"].data, shape, name=str(mask))
    ref = vols["reference"].data
    if not np.all(np.isfinite(ref[mask_data])):
        raise QSMInputError("reference contains NaN or inf inside the mask", str(reference))
    seg = None if labels is None else as_labels(vols["labels"].data, shape, name=str(labels))
    names = load_label_names(label_names) if label_names else None

    results = []
    for path, recon_data in zip(recons, maps, strict=True):
        result = score(recon_data, ref, mask_data, seg, label_names=names)
        result["files"] = {
            "recon": str(path),
            "reference": str(reference),
            "mask": str(mask),
            "labels": str(labels) if labels else None,
        }
        result["units"] = dict(RESULT_UNITS)
        results.append(result)
    return results
