"""Evaluation of susceptibility maps: QSM-CI and 2016-challenge metrics, ROI statistics.

* :mod:`.qsmci` and :mod:`.challenge2016` - the two metric families, each matching one
  reference implementation; :mod:`.metrics` - :func:`score`, both families at once;
* :mod:`.rois` - per-ROI statistics (ppm);
* :mod:`.files` - :func:`evaluate_files`, the checked file-level entry of ``qsmflow evaluate``.
"""

from .challenge2016 import (
    challenge_rescale,
    hfen_2016,
    psnr_2016,
    rmse_2016,
    ssim_2016,
    xsim,
)
from .files import evaluate_files
from .metrics import FAMILY_DESCRIPTIONS, score
from .qsmci import (
    calcification_metrics,
    correlation,
    dgm_linearity,
    hfen_qsmci,
    nrmse,
    nrmse_blood,
    nrmse_detrend,
    nrmse_dgm,
    nrmse_tissue,
    qsmci_preprocess,
    xsim_qsmci,
)
from .rois import default_label_names, load_label_names, roi_mean_agreement, roi_stats

__all__ = [
    "FAMILY_DESCRIPTIONS",
    "calcification_metrics",
    "challenge_rescale",
    "correlation",
    "default_label_names",
    "dgm_linearity",
    "evaluate_files",
    "hfen_2016",
    "hfen_qsmci",
    "load_label_names",
    "nrmse",
    "nrmse_blood",
    "nrmse_detrend",
    "nrmse_dgm",
    "nrmse_tissue",
    "psnr_2016",
    "qsmci_preprocess",
    "rmse_2016",
    "roi_mean_agreement",
    "roi_stats",
    "score",
    "ssim_2016",
    "xsim",
    "xsim_qsmci",
]
