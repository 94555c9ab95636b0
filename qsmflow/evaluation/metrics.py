"""Image-quality metrics for susceptibility maps (see algorithms.md section 3)."""

from __future__ import annotations

import numpy as np


def nrmse(
    recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *, demean: bool = True
) -> float:
    """Normalised RMSE in percent over ``mask``: 100*||r - t|| / ||t||.

    With ``demean=True`` (QSM-CI ``nrmse``) both maps are demeaned inside the mask first.
    """
    r = np.asarray(recon, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    m = np.ones(r.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    r, t = r[m], t[m]
    if demean:
        r = r - r.mean()
        t = t - t.mean()
    return float(100.0 * np.linalg.norm(r - t) / np.linalg.norm(t))
