"""Image-quality metrics for susceptibility maps (see algorithms.md section 3).

Two families, each reproducing one reference implementation exactly; label every number
with the family it came from (the same name means different things in each):

* **QSM-CI family** (:mod:`qsmflow.evaluation.qsmci`): PyPI ``qsm-ci`` 0.6.2
  ``qsm_eval.score_arrays`` over a mask, after QSM-CI's preprocessing.
* **2016-challenge family** (:mod:`qsmflow.evaluation.challenge2016`): the MATLAB
  ``compute_*.m`` of the 2016 challenge on whole arrays, and the Challenge 2.0 / FANSI XSIM.

All computations run in float64. 3-D filters are applied as exactly equivalent sequences of
1-D correlations (:mod:`qsmflow.evaluation._filters`). :func:`score` computes both families
(plus ROI statistics when labels are given). Every metric function is importable from
:mod:`qsmflow.evaluation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._checks import as_labels, require_3d
from .challenge2016 import challenge_table
from .qsmci import qsmci_preprocess, qsmci_table
from .rois import roi_mean_agreement, roi_stats

__all__ = ["FAMILY_DESCRIPTIONS", "score"]


#: One-line provenance of each family (printed by the CLI and stored in the JSON).
FAMILY_DESCRIPTIONS = {
    "qsmci": (
        "QSM-CI score_arrays (qsm-ci 0.6.2 / QSM.rs): recon zeroed outside the mask and where "
        "non-finite, truth zeroed outside the mask; nrmse/nrmse_detrend/hfen in %, demeaned "
        "nrmse, xsim with 5^3 box window (L=1 ppm), hfen LoG sigma 1.5 (17^3, norms in mask)"
    ),
    "challenge": (
        "2016 QSM challenge compute_*.m (rmse/hfen in %, psnr in dB, ssim with 0..255 rescale, "
        "5^3 Gaussian, mean where recon != 0; hfen 15^3 LoG) and Challenge 2.0 / FANSI "
        "compute_xsim (no rescale, L=1 ppm, 7^3 Gaussian, replicate padding, mean over mask); "
        "evaluated on the masked maps"
    ),
}


def score(
    recon: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    label_names: Mapping[int, str] | None = None,
    segmentation_metrics: bool | None = None,
) -> dict[str, Any]:
    """Every metric of both families, plus ROI statistics when ``labels`` is given.

    Both families see the QSM-CI preprocessing (:func:`qsmci_preprocess`): recon zeroed outside
    the mask and where non-finite, truth zeroed outside the mask. The 2016 functions then run on
    these masked whole arrays, and the FANSI XSIM is averaged over ``mask``.

    ``segmentation_metrics`` (default: True when ``label_names`` is None, i.e. the labels follow
    the head-model scheme) adds QSM-CI's nrmse_tissue/blood/dgm, dgm_linearity, calc_*.

    Returns ``{"qsmci": {...}, "challenge": {...}, "info": {...}, "rois": [...]}`` (``rois``
    and ``roi_summary`` only with labels). Units: nrmse*/rmse/hfen in %, psnr in dB,
    correlation/ssim/xsim dimensionless, calc_moment_dev in ppm*voxels, ROI values in ppm.
    """
    r, t, m, n_nonfinite = qsmci_preprocess(recon, truth, mask)
    require_3d(r, "recon")
    seg = None if labels is None else as_labels(labels, r.shape)
    if segmentation_metrics is None:
        segmentation_metrics = label_names is None
    out: dict[str, Any] = {
        "qsmci": qsmci_table(r, t, m, seg, segmentation_metrics=segmentation_metrics),
        "challenge": challenge_table(r, t, m),
        "info": {
            "shape": list(r.shape),
            "n_mask": int(np.count_nonzero(m)),
            "n_nonfinite_recon": n_nonfinite,
            "definitions": dict(FAMILY_DESCRIPTIONS),
        },
    }
    if seg is not None:
        rows = roi_stats(r, t, seg, m, label_names=label_names)
        out["rois"] = rows
        out["roi_summary"] = roi_mean_agreement(rows)
    return out
