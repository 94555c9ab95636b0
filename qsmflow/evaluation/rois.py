"""Region-of-interest statistics of susceptibility maps (ppm).

The ISDU-QSMNet supplement reports, per ROI, mean +- SD (ppm) of each reconstruction and of
the reference (COSMOS), and the Pearson correlation with the reference. No code is shipped for
it, so the definitions here are ours:

* per label (non-zero labels present inside the mask): voxel count, mean and SD (``ddof``,
  default 1 as MATLAB ``std``) of recon and reference, the mean difference, and the voxelwise
  Pearson r between recon and reference inside the ROI (NaN when either is constant there,
  e.g. a piecewise-constant phantom);
* across ROIs (:func:`roi_mean_agreement`): Pearson r and the OLS line of the recon ROI means
  on the reference ROI means.

Label names default to the head model's (:data:`qsmflow.simulate.head_model.LABEL_NAMES`);
pass a mapping (or a file, see :func:`load_label_names`) for other segmentations.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QSMInputError
from ._checks import as_labels, check_same_shape

__all__ = ["default_label_names", "load_label_names", "roi_stats", "roi_mean_agreement"]


def default_label_names() -> dict[int, str]:
    """The head model's label names (``qsmflow.simulate.head_model.LABEL_NAMES``)."""
    from ..simulate.head_model import LABEL_NAMES

    return {int(k): str(v) for k, v in LABEL_NAMES.items()}


def load_label_names(path: str | os.PathLike) -> dict[int, str]:
    """Read a label-name mapping from a file.

    Accepted: a JSON object ``{"1": "caudate", ...}``, or a text/TSV/CSV file with lines
    ``<label> <name>`` (whitespace, tab or comma separated; ``#`` starts a comment; a header
    line whose first field is not an integer is skipped).
    """
    p = Path(path)
    if not p.is_file():
        raise QSMInputError("label-name file not found", str(p))
    text = p.read_text()
    out: dict[int, str] = {}
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
            out = {int(k): str(v) for k, v in obj.items()}
        except (ValueError, AttributeError) as exc:
            raise QSMInputError(f"expected a JSON object of label -> name ({exc})", str(p)) from exc
        return out
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").replace("\t", " ").split(None, 1)
        try:
            key = int(parts[0])
        except ValueError:
            if not out:  # header line
                continue
            raise QSMInputError(
                f"line {lineno}: label {parts[0]!r} is not an integer", str(p)
            ) from None
        if len(parts) < 2:
            raise QSMInputError(f"line {lineno}: missing name for label {key}", str(p))
        out[key] = parts[1].strip()
    if not out:
        raise QSMInputError("no '<label> <name>' lines found", str(p))
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    da = a - a.mean()
    db = b - b.mean()
    den = math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db)))
    if den == 0.0:
        return math.nan
    return float(np.dot(da, db)) / den


def _sd(v: np.ndarray, ddof: int) -> float:
    return float(v.std(ddof=ddof)) if v.size > ddof else math.nan


def roi_stats(
    recon: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    label_names: Mapping[int, str] | None = None,
    ddof: int = 1,
    min_voxels: int = 1,
) -> list[dict[str, Any]]:
    """Per-label statistics (ppm) of ``recon`` and ``reference`` inside ``mask``.

    Returns one dict per non-zero label with at least ``min_voxels`` voxels in the mask, sorted
    by label: ``label, name, n, recon_mean, recon_sd, ref_mean, ref_sd, diff_mean, pearson_r``.
    Non-finite values propagate into the statistics: pass preprocessed maps (as
    :func:`qsmflow.evaluation.metrics.score` does) if the recon may contain NaN.
    """
    r = np.asarray(recon, dtype=np.float64)
    t = np.asarray(reference, dtype=np.float64)
    check_same_shape(r, t, "recon", "reference")
    lab = as_labels(labels, r.shape)
    m = np.ones(r.shape, bool) if mask is None else np.asarray(mask) > 0
    check_same_shape(r, m, "recon", "mask")
    names = default_label_names() if label_names is None else dict(label_names)
    in_mask = lab[m]
    r_m = r[m]
    t_m = t[m]
    order = np.argsort(in_mask, kind="stable")
    sorted_lab = in_mask[order]
    uniq, starts, counts = np.unique(sorted_lab, return_index=True, return_counts=True)
    rows: list[dict[str, Any]] = []
    for value, start, count in zip(uniq, starts, counts, strict=True):
        if value == 0 or count < min_voxels:
            continue
        idx = order[start : start + count]
        rv = r_m[idx]
        tv = t_m[idx]
        key = int(value)
        rows.append(
            {
                "label": key,
                "name": names.get(key, f"label-{key}"),
                "n": int(count),
                "recon_mean": float(rv.mean()),
                "recon_sd": _sd(rv, ddof),
                "ref_mean": float(tv.mean()),
                "ref_sd": _sd(tv, ddof),
                "diff_mean": float(rv.mean() - tv.mean()),
                "pearson_r": _pearson(rv, tv),
            }
        )
    return rows


def roi_mean_agreement(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Across ROIs: Pearson r, OLS slope and intercept (ppm) of recon means vs reference means.

    NaN for fewer than 2 ROIs or constant reference means.
    """
    out = {"n_rois": len(rows), "pearson_r": math.nan, "slope": math.nan, "intercept": math.nan}
    if len(rows) < 2:
        return out
    x = np.array([row["ref_mean"] for row in rows], dtype=np.float64)
    y = np.array([row["recon_mean"] for row in rows], dtype=np.float64)
    out["pearson_r"] = _pearson(y, x)
    dx = x - x.mean()
    sxx = float(np.dot(dx, dx))
    if sxx > 0.0:
        slope = float(np.dot(dx, y - y.mean())) / sxx
        out["slope"] = slope
        out["intercept"] = float(y.mean() - slope * x.mean())
    return out
