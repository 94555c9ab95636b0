"""Figures of susceptibility maps: three orthogonal views, method comparisons, QC panels.

A library for reports: plain numpy arrays (or NIfTI files) in, a
:class:`matplotlib.figure.Figure` out. Figures are built on ``Figure`` objects directly, never
through ``pyplot`` state, so they are safe in threads and worker processes and nothing is ever
shown; :func:`save_figure` writes PNG or SVG atomically.

Display conventions
-------------------
* **Orientation.** The array functions expect volumes in RAS+ voxel order (axis 0 -> patient
  right, 1 -> anterior, 2 -> superior); give ``affine=`` instead of ``voxel_size=`` (or use
  :func:`reorient_to_ras`) and they are brought there by the closest axis permutation and
  flips (``nibabel.orientations.io_orientation``; an oblique affine is shown without
  resampling, along its closest axes). The file helpers (``*_files``) always reorient.
* **Views** (:func:`three_views`, the one source of every panel): sagittal = the x slice,
  anterior on the left; coronal = the y slice and axial = the z slice, both neurological
  (the patient's right on the viewer's right); superior (sagittal, coronal) and anterior
  (axial) up. Each panel is returned in reading order - row 0 is the top of the picture,
  column 0 its left - and drawn with ``imshow(origin="upper")``.
* **Aspect.** Each panel's ``imshow`` aspect is the ratio of the voxel sizes along its rows
  and columns (sagittal vz/vy, coronal vz/vx, axial vy/vx), so anisotropic voxels keep their
  physical shape; panel widths follow the physical extent.
* **Units.** Susceptibility and local field in ppm, total field in Hz or ppm (``units=``);
  windows are in the map's unit.

Reading a figure back
---------------------
Every figure carries a :class:`FigureLayout` as ``fig.qsmflow_layout`` (also returned by
:func:`figure_layout`): the row labels (top to bottom), the panel axes ``[row][view]``, the
slice point, the colour bars, the metric text under each method row and the contour sets.
The row label is also the first panel's y label (``panels[r][0].get_ylabel()``) and the metric
text is a figure text (in ``fig.texts``) centred under its row.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colorbar import Colorbar
from matplotlib.contour import QuadContourSet
from matplotlib.figure import Figure
from matplotlib.text import Text

from ..errors import QSMInputError
from ..io.atomic import atomic_path
from ..io.nifti import Volume, load_first_volume, load_volume
from ..physics.geometry import voxel_size_from_affine
from ..physics.validation import check_finite
from ._checks import as_mask, check_same_grid

__all__ = [
    "DEFAULT_METRIC_KEYS",
    "FigureLayout",
    "VIEW_NAMES",
    "checkerboard",
    "comparison_figure",
    "comparison_figure_files",
    "field_qc_figure",
    "field_qc_figure_files",
    "figure_layout",
    "flatten_metrics",
    "intensity_window",
    "mask_qc_figure",
    "mask_qc_figure_files",
    "metric_label",
    "normalise_intensity",
    "ras_point",
    "registration_qc_figure",
    "registration_qc_figure_files",
    "reorient_to_ras",
    "save_figure",
    "slice_point",
    "symmetric_window",
    "three_view_figure",
    "three_view_figure_files",
    "three_views",
]

#: The three views, in column order.
VIEW_NAMES = ("sagittal", "coronal", "axial")

#: Column titles (first row) with the orientation of each view.
_VIEW_TITLES = ("sagittal (anterior left)", "coronal (R right)", "axial (R right)")

#: The supplement's metrics under each method row (2016-challenge SSIM, PSNR, HFEN).
DEFAULT_METRIC_KEYS = ("ssim", "psnr", "hfen")

#: key -> (label, format of the value, unit suffix) for :func:`metric_label`.
_METRIC_FORMATS: dict[str, tuple[str, str, str]] = {
    "ssim": ("SSIM", "{:.3f}", ""),
    "xsim": ("XSIM", "{:.3f}", ""),
    "psnr": ("PSNR", "{:.1f}", " dB"),
    "hfen": ("HFEN", "{:.1f}", " %"),
    "rmse": ("RMSE", "{:.1f}", " %"),
    "nrmse": ("NRMSE", "{:.1f}", " %"),
    "nrmse_detrend": ("NRMSE detrended", "{:.1f}", " %"),
    "correlation": ("r", "{:.3f}", ""),
}

#: Metric families of a :func:`qsmflow.evaluation.metrics.score` result, in lookup order of a
#: bare key (the 2016-challenge family first: the supplement's SSIM/PSNR/HFEN are its).
_FAMILIES = ("challenge", "qsmci")
_FAMILY_TAGS = {"challenge": "", "qsmci": " (QSM-CI)"}

# Layout, in inches.
_PANEL_H_IN = 2.0
_LEFT_IN = 0.45
_GAP_IN = 0.06
_ROW_GAP_IN = 0.12
_TEXT_H_IN = 0.3
_TOP_IN = 0.35
_TITLE_IN = 0.35
_CBAR_GAP_IN = 0.12
_CBAR_W_IN = 0.14
_CBAR_TEXT_IN = 0.8
_MARGIN_IN = 0.1


# --------------------------------------------------------------------------------------------
# What a figure holds
# --------------------------------------------------------------------------------------------


@dataclass
class FigureLayout:
    """What a figure of this module shows, for tests and reports (``fig.qsmflow_layout``).

    Attributes
    ----------
    rows : row labels, top to bottom.
    keys : the mapping key of each row (equal to ``rows`` unless ``row_labels`` was given).
    panels : axes ``[row][view]``, view 0 sagittal, 1 coronal, 2 axial.
    point : the slice point, RAS voxel indices (x, y, z).
    voxel_size : RAS voxel sizes (mm).
    windows : display window (vmin, vmax) of each row, in the row's unit.
    colorbars : the colour bars (one for the figure, or one per row).
    metric_labels : row key -> the metric text under that row (comparison figures).
    metric_texts : row key -> its :class:`matplotlib.text.Text`.
    contours : ``[row][view]`` contour sets (mask and registration QC), else empty.
    """

    rows: list[str]
    keys: list[str]
    panels: list[list[Axes]]
    point: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    windows: list[tuple[float, float]] = field(default_factory=list)
    colorbars: list[Colorbar] = field(default_factory=list)
    metric_labels: dict[str, str] = field(default_factory=dict)
    metric_texts: dict[str, Text] = field(default_factory=dict)
    contours: list[list[QuadContourSet]] = field(default_factory=list)


def figure_layout(fig: Figure) -> FigureLayout:
    """The :class:`FigureLayout` of a figure made by this module."""
    layout = getattr(fig, "qsmflow_layout", None)
    if not isinstance(layout, FigureLayout):
        raise QSMInputError("not a figure made by qsmflow.evaluation.figures", "fig")
    return layout


# --------------------------------------------------------------------------------------------
# Orientation and slicing
# --------------------------------------------------------------------------------------------


def _orientation(affine: Any, name: str = "affine") -> np.ndarray:
    import nibabel as nib

    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise QSMInputError(f"expected a finite 4x4 affine, got shape {a.shape}", name)
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise QSMInputError("affine is singular", name)
    return nib.orientations.io_orientation(a)


def reorient_to_ras(data: np.ndarray, affine: Any) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``data`` (3-D, voxel order of ``affine``) permuted/flipped into RAS+ order.

    Returns the reoriented array and its voxel sizes (mm) along the new axes. Uses the axes
    closest to RAS (``nibabel.orientations.io_orientation``); no resampling.
    """
    import nibabel as nib

    arr = np.asarray(data)
    if arr.ndim != 3:
        raise QSMInputError(f"expected a 3-D volume, got shape {arr.shape}", "data")
    ornt = _orientation(affine)
    vox = voxel_size_from_affine(np.asarray(affine, dtype=np.float64))
    out_vox = [0.0, 0.0, 0.0]
    for in_axis, (out_axis, _flip) in enumerate(ornt):
        out_vox[int(out_axis)] = float(vox[in_axis])
    ras = nib.orientations.apply_orientation(arr, ornt)
    return np.ascontiguousarray(ras), (out_vox[0], out_vox[1], out_vox[2])


def ras_point(point: Sequence[int], shape: Sequence[int], affine: Any) -> tuple[int, int, int]:
    """The voxel ``point`` of an array of ``shape`` (voxel order of ``affine``) in RAS indices.

    The index into :func:`reorient_to_ras`'s output of the same voxel.
    """
    p = _check_point(point, shape)
    ornt = _orientation(affine)
    out = [0, 0, 0]
    for in_axis, (out_axis, flip) in enumerate(ornt):
        idx = p[in_axis]
        out[int(out_axis)] = idx if flip > 0 else int(shape[in_axis]) - 1 - idx
    return out[0], out[1], out[2]


def _check_point(point: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        p = tuple(int(v) for v in point)
    except (TypeError, ValueError) as exc:
        raise QSMInputError(
            f"expected three integer voxel indices, got {point!r}", "point"
        ) from exc
    if len(p) != 3 or len(shape) != 3:
        raise QSMInputError(f"expected three voxel indices, got {point!r}", "point")
    for i, n in zip(p, shape, strict=True):
        if not 0 <= i < int(n):
            raise QSMInputError(f"{p} lies outside the volume of shape {tuple(shape)}", "point")
    return p[0], p[1], p[2]


def slice_point(
    mask: np.ndarray | None = None, shape: Sequence[int] | None = None
) -> tuple[int, int, int]:
    """The default slice point: the mask's centre of mass (rounded), else the array centre.

    Parameters
    ----------
    mask : 3-D mask (voxels > 0), or None.
    shape : the volume's shape, used when ``mask`` is None (centre = ``n // 2`` per axis).

    Returns
    -------
    (i, j, k) voxel indices, in the mask's (or ``shape``'s) axis order.
    """
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim != 3:
            raise QSMInputError(f"expected a 3-D mask, got shape {m.shape}", "mask")
        m = as_mask(m, m.shape)
        com = np.rint(np.argwhere(m).mean(axis=0)).astype(int)
        com = np.clip(com, 0, np.asarray(m.shape) - 1)
        return int(com[0]), int(com[1]), int(com[2])
    if shape is None or len(shape) != 3:
        raise QSMInputError("give a 3-D mask or a 3-D shape", "slice_point")
    return int(shape[0]) // 2, int(shape[1]) // 2, int(shape[2]) // 2


def three_views(
    volume: np.ndarray, point: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sagittal, coronal and axial slices through ``point`` as displayed.

    ``volume`` is in RAS+ voxel order (see :func:`reorient_to_ras`); ``point`` = (x, y, z)
    indices. Each 2-D array is in reading order (row 0 on top, column 0 on the left; drawn with
    ``imshow(origin="upper")``):

    * sagittal ``volume[x, :, :]``: rows superior -> inferior, columns anterior -> posterior;
    * coronal ``volume[:, y, :]``: rows superior -> inferior, columns left -> right;
    * axial ``volume[:, :, z]``: rows anterior -> posterior, columns left -> right.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise QSMInputError(f"expected a 3-D volume, got shape {vol.shape}", "volume")
    x, y, z = _check_point(point, vol.shape)
    sag = vol[x, :, :].T[::-1, ::-1]
    cor = vol[:, y, :].T[::-1, :]
    axi = vol[:, :, z].T[::-1, :]
    return sag, cor, axi


def _view_aspects(vox: Sequence[float]) -> tuple[float, float, float]:
    """imshow aspect (row spacing / column spacing) of each view."""
    vx, vy, vz = (float(v) for v in vox)
    return vz / vy, vz / vx, vy / vx


def _view_sizes_mm(shape: Sequence[int], vox: Sequence[float]) -> list[tuple[float, float]]:
    """(width, height) in mm of each view."""
    nx, ny, nz = shape
    vx, vy, vz = vox
    return [(ny * vy, nz * vz), (nx * vx, nz * vz), (nx * vx, ny * vy)]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_volume(a: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:  # pragma: no cover - ragged input
        raise QSMInputError(f"cannot convert to an array ({exc})", name) from exc
    if np.iscomplexobj(arr):
        raise QSMInputError(f"expected a real-valued volume, got {arr.dtype}", name)
    if arr.ndim != 3:
        raise QSMInputError(f"expected a 3-D volume, got shape {arr.shape}", name)
    if min(arr.shape) < 1:
        raise QSMInputError(f"volume is empty (shape {arr.shape})", name)
    try:
        return arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise QSMInputError(f"not numeric ({exc})", name) from exc


def _check_voxel_size(voxel_size: Any) -> tuple[float, float, float]:
    try:
        v = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    except (TypeError, ValueError) as exc:
        raise QSMInputError(
            f"expected 3 voxel sizes in mm, got {voxel_size!r}", "voxel_size"
        ) from exc
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise QSMInputError(f"voxel sizes must be finite and > 0, got {v.tolist()}", "voxel_size")
    return float(v[0]), float(v[1]), float(v[2])


def _check_window(window: Any, name: str = "window") -> tuple[float, float]:
    try:
        lo, hi = (float(w) for w in window)
    except (TypeError, ValueError) as exc:
        raise QSMInputError(f"expected (vmin, vmax), got {window!r}", name) from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise QSMInputError(f"expected finite vmin < vmax, got ({lo}, {hi})", name)
    return lo, hi


@dataclass
class _Prepared:
    """Volumes in RAS order on one grid, with their voxel size, mask and slice point."""

    vols: dict[str, np.ndarray]
    vox: tuple[float, float, float]
    mask: np.ndarray | None
    point: tuple[int, int, int]


def _prepare(
    maps: Mapping[str, Any],
    *,
    voxel_size: Any,
    affine: Any,
    mask: Any = None,
    point: Sequence[int] | None = None,
    mask_required: bool = False,
) -> _Prepared:
    """Check the maps (3-D, one shape, finite inside the mask), reorient, pick the point."""
    if not maps:
        raise QSMInputError("no maps to show", "maps")
    vols: dict[str, np.ndarray] = {}
    shape: tuple[int, ...] | None = None
    first = ""
    for name, a in maps.items():
        label = f"map {name!r}"
        arr = _as_volume(a, label)
        if shape is None:
            shape, first = arr.shape, label
        elif arr.shape != shape:
            raise QSMInputError(f"shape {arr.shape} does not match {first} shape {shape}", label)
        vols[str(name)] = arr
    assert shape is not None
    if mask is None:
        if mask_required:
            raise QSMInputError("a mask is required", "mask")
        m = None
    else:
        marr = np.asarray(mask)
        if marr.ndim != 3:
            raise QSMInputError(f"expected a 3-D mask, got shape {marr.shape}", "mask")
        m = as_mask(marr, shape, "mask")
    for name, arr in vols.items():
        vols[name] = check_finite(arr, f"map {name!r}", None, m)
    if affine is not None:
        if voxel_size is not None:
            raise QSMInputError("give voxel_size or affine, not both", "voxel_size")
        ras = {name: reorient_to_ras(arr, affine) for name, arr in vols.items()}
        vox = next(iter(ras.values()))[1]
        vols = {name: r[0] for name, r in ras.items()}
        if point is not None:
            point = ras_point(point, shape, affine)
        if m is not None:
            m = reorient_to_ras(m, affine)[0]
    elif voxel_size is None:
        raise QSMInputError("give voxel_size (mm, RAS arrays) or the affine", "voxel_size")
    else:
        vox = _check_voxel_size(voxel_size)
    ras_shape = next(iter(vols.values())).shape
    p = slice_point(m, ras_shape) if point is None else _check_point(point, ras_shape)
    return _Prepared(vols=vols, vox=vox, mask=m, point=p)


# --------------------------------------------------------------------------------------------
# Windows and intensities
# --------------------------------------------------------------------------------------------


def symmetric_window(
    volume: np.ndarray, mask: np.ndarray | None = None, percentile: float = 99.0
) -> tuple[float, float]:
    """(-w, w) with w the ``percentile`` of |volume| inside ``mask`` (all voxels if None).

    Robust to a few outliers; w = 1 (in the volume's unit) when the volume is 0 there.
    """
    vals = np.abs(np.asarray(volume, dtype=np.float64))
    vals = vals[np.asarray(mask, dtype=bool)] if mask is not None else vals.ravel()
    vals = vals[np.isfinite(vals)]
    w = float(np.percentile(vals, percentile)) if vals.size else 0.0
    if not w > 0.0:
        w = 1.0
    return -w, w


def intensity_window(
    volume: np.ndarray,
    mask: np.ndarray | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> tuple[float, float]:
    """(low, high) percentiles of the finite values (inside ``mask``), for magnitude images.

    high > low always (high = low + 1 for a constant image).
    """
    vals = np.asarray(volume, dtype=np.float64)
    vals = vals[np.asarray(mask, dtype=bool)] if mask is not None else vals.ravel()
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, percentiles))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def normalise_intensity(
    volume: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)
) -> np.ndarray:
    """``volume`` scaled to [0, 1] between its ``percentiles`` (clipped), float64."""
    vol = np.asarray(volume, dtype=np.float64)
    lo, hi = intensity_window(vol, None, percentiles)
    return np.clip((vol - lo) / (hi - lo), 0.0, 1.0)


def checkerboard(a: np.ndarray, b: np.ndarray, tile: int = 8) -> np.ndarray:
    """2-D checkerboard of ``a`` and ``b``: ``a`` where (row // tile + col // tile) is even."""
    a2 = np.asarray(a)
    b2 = np.asarray(b)
    if a2.shape != b2.shape or a2.ndim != 2:
        raise QSMInputError(f"expected two 2-D arrays of one shape, got {a2.shape}, {b2.shape}")
    if int(tile) < 1:
        raise QSMInputError(f"tile must be >= 1, got {tile}", "tile")
    rows, cols = np.indices(a2.shape)
    even = ((rows // int(tile)) + (cols // int(tile))) % 2 == 0
    return np.where(even, a2, b2)


# --------------------------------------------------------------------------------------------
# Metric text
# --------------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """One method's metrics as a flat ``key -> value`` mapping.

    ``metrics`` is either flat (``{"ssim": 0.91, "psnr": 41.3, ...}``) or a
    :func:`qsmflow.evaluation.metrics.score` / ``qsmflow evaluate`` result
    (``{"challenge": {...}, "qsmci": {...}, ...}``). A result gives ``"challenge.ssim"``,
    ``"qsmci.hfen"`` ... and each bare name, taken from the 2016-challenge family first, then
    QSM-CI (so ``"hfen"`` / ``"xsim"`` are the challenge ones, ``"nrmse"`` QSM-CI's).
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            if key in _FAMILIES:
                for name, v in value.items():
                    if _is_number(v):
                        out[f"{key}.{name}"] = float(v)
            continue
        if _is_number(value):
            out[str(key)] = float(value)
    for fam in _FAMILIES:
        fam_values = metrics.get(fam)
        if isinstance(fam_values, Mapping):
            for name in fam_values:
                dotted = f"{fam}.{name}"
                if dotted in out:
                    out.setdefault(str(name), out[dotted])
    return out


def _format_value(key: str, value: float | None) -> str:
    base = key.split(".", 1)[1] if "." in key else key
    family = key.split(".", 1)[0] if "." in key else ""
    name, fmt, unit = _METRIC_FORMATS.get(base, (base, "{:.4g}", ""))
    name += _FAMILY_TAGS.get(family, "")
    if value is None or math.isnan(value):
        return f"{name} n/a"
    if math.isinf(value):
        return f"{name} {'inf' if value > 0 else '-inf'}{unit}"
    return f"{name} {fmt.format(value)}{unit}"


def metric_label(metrics: Mapping[str, Any], keys: Sequence[str] = DEFAULT_METRIC_KEYS) -> str:
    """The text under a method row, e.g. ``"SSIM 0.912  PSNR 41.3 dB  HFEN 35.2 %"``.

    ``metrics`` as for :func:`flatten_metrics`; ``keys`` are bare names (``"ssim"``) or
    family-qualified (``"qsmci.hfen"``, labelled ``"HFEN (QSM-CI)"``). Formats: SSIM, XSIM and
    r (``"correlation"``) 3 decimals; PSNR 1 decimal in dB; HFEN, RMSE, NRMSE 1 decimal in %;
    any other key 4 significant digits. A missing or NaN value reads ``"n/a"``. Parts are
    joined by two spaces.
    """
    flat = flatten_metrics(metrics)
    return "  ".join(_format_value(k, flat.get(k)) for k in keys)


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def _ceil2(x: float) -> float:
    """Round up to 0.01 inch, so that figsize*dpi is a whole number of pixels at dpi 100."""
    return math.ceil(x * 100.0 - 1e-9) / 100.0


def _grid(
    n_rows: int,
    sizes_mm: list[tuple[float, float]],
    *,
    colorbars: str = "one",
    text_rows: bool = False,
    title: str | None = None,
) -> tuple[Figure, list[list[Axes]], list[Axes], list[float], float]:
    """A figure of ``n_rows`` x 3 panels sized physically; returns (fig, panels, colour-bar
    axes, the top (figure fraction) of each row's text, x centre of the panels)."""
    row_mm = max(h for _w, h in sizes_mm)
    scale = _PANEL_H_IN / row_mm  # inches per mm
    widths = [w * scale for w, _h in sizes_mm]
    heights = [h * scale for _w, h in sizes_mm]
    text_h = _TEXT_H_IN if text_rows else 0.0
    top = _TOP_IN + (_TITLE_IN if title else 0.0)
    panels_w = sum(widths) + 2 * _GAP_IN
    right = _CBAR_GAP_IN + _CBAR_W_IN + _CBAR_TEXT_IN if colorbars != "none" else _MARGIN_IN
    width = _ceil2(_LEFT_IN + panels_w + right)
    height = _ceil2(top + n_rows * (_PANEL_H_IN + text_h) + (n_rows - 1) * _ROW_GAP_IN + _MARGIN_IN)
    fig = Figure(figsize=(width, height))
    if title:
        fig.suptitle(title, y=1.0 - 0.08 / height, va="top")

    def rect(x_in: float, top_in: float, w_in: float, h_in: float) -> list[float]:
        return [x_in / width, 1.0 - (top_in + h_in) / height, w_in / width, h_in / height]

    panels: list[list[Axes]] = []
    caxes: list[Axes] = []
    text_tops: list[float] = []
    for r in range(n_rows):
        row_top = top + r * (_PANEL_H_IN + text_h + _ROW_GAP_IN)
        x = _LEFT_IN
        row: list[Axes] = []
        for w, h in zip(widths, heights, strict=True):
            ax = fig.add_axes(rect(x, row_top + (_PANEL_H_IN - h) / 2, w, h))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            row.append(ax)
            x += w + _GAP_IN
        panels.append(row)
        text_tops.append(1.0 - (row_top + _PANEL_H_IN + 0.03) / height)
        if colorbars == "per_row":
            h = 0.85 * _PANEL_H_IN
            cx = _LEFT_IN + panels_w + _CBAR_GAP_IN
            caxes.append(fig.add_axes(rect(cx, row_top + (_PANEL_H_IN - h) / 2, _CBAR_W_IN, h)))
    if colorbars == "one":
        last_bottom = top + (n_rows - 1) * (_PANEL_H_IN + text_h + _ROW_GAP_IN) + _PANEL_H_IN
        span = last_bottom - top
        h = span if n_rows > 1 else 0.85 * _PANEL_H_IN
        cx = _LEFT_IN + panels_w + _CBAR_GAP_IN
        caxes.append(fig.add_axes(rect(cx, top + (span - h) / 2, _CBAR_W_IN, h)))
    x_centre = (_LEFT_IN + panels_w / 2) / width
    return fig, panels, caxes, text_tops, x_centre


def _cmap(name: str) -> Any:
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError as exc:
        raise QSMInputError(f"unknown colour map {name!r}", "cmap") from exc
    return cmap.with_extremes(bad="black")


def _draw_row(
    row: list[Axes],
    slices: Sequence[np.ndarray],
    vox: Sequence[float],
    *,
    window: tuple[float, float],
    cmap: Any,
) -> Any:
    image = None
    for ax, panel, aspect in zip(row, slices, _view_aspects(vox), strict=True):
        image = ax.imshow(
            panel,
            cmap=cmap,
            vmin=window[0],
            vmax=window[1],
            origin="upper",
            interpolation="nearest",
            aspect=aspect,
        )
    return image


def _label_row(row: list[Axes], label: str) -> None:
    row[0].set_ylabel(label, fontsize=10)


def _titles(row: list[Axes]) -> None:
    for ax, text in zip(row, _VIEW_TITLES, strict=True):
        ax.set_title(text, fontsize=8)


def _attach(fig: Figure, layout: FigureLayout) -> Figure:
    # Figure declares no such attribute; the layout rides on it for readers (tests, reports)
    fig.qsmflow_layout = layout  # type: ignore[attr-defined]
    return fig


def _display(vol: np.ndarray, mask: np.ndarray | None, blank_outside: bool) -> np.ndarray:
    if blank_outside and mask is not None:
        return np.where(mask, vol, np.nan)
    return vol


# --------------------------------------------------------------------------------------------
# Map figures
# --------------------------------------------------------------------------------------------


def _row_labels(keys: list[str], row_labels: Sequence[str] | None) -> list[str]:
    if row_labels is None:
        return list(keys)
    labels = [str(s) for s in row_labels]
    if len(labels) != len(keys):
        raise QSMInputError(f"{len(labels)} row labels for {len(keys)} maps", "row_labels")
    return labels


def _maps_figure(
    prep: _Prepared,
    keys: list[str],
    labels: list[str],
    *,
    window: tuple[float, float],
    cmap: str,
    unit: str,
    title: str | None,
    blank_outside: bool,
    metric_texts: Mapping[str, str] | None = None,
) -> Figure:
    shape = next(iter(prep.vols.values())).shape
    fig, panels, caxes, text_tops, x_centre = _grid(
        len(keys),
        _view_sizes_mm(shape, prep.vox),
        colorbars="one",
        text_rows=metric_texts is not None,
        title=title,
    )
    cm = _cmap(cmap)
    image = None
    layout = FigureLayout(
        rows=labels, keys=keys, panels=panels, point=prep.point, voxel_size=prep.vox
    )
    for r, (key, label) in enumerate(zip(keys, labels, strict=True)):
        vol = _display(prep.vols[key], prep.mask, blank_outside)
        image = _draw_row(panels[r], three_views(vol, prep.point), prep.vox, window=window, cmap=cm)
        _label_row(panels[r], label)
        layout.windows.append(window)
        if metric_texts is not None and key in metric_texts:
            text = fig.text(
                x_centre, text_tops[r], metric_texts[key], ha="center", va="top", fontsize=9
            )
            layout.metric_labels[key] = metric_texts[key]
            layout.metric_texts[key] = text
    _titles(panels[0])
    cbar = fig.colorbar(image, cax=caxes[0])
    cbar.set_label(unit)
    layout.colorbars.append(cbar)
    return _attach(fig, layout)


def three_view_figure(
    maps: Mapping[str, np.ndarray],
    *,
    voxel_size: Sequence[float] | float | None = None,
    affine: Any = None,
    point: Sequence[int] | None = None,
    mask: np.ndarray | None = None,
    window: tuple[float, float] = (-0.15, 0.15),
    cmap: str = "gray",
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    unit: str = "ppm",
    blank_outside: bool = False,
) -> Figure:
    """One row per map (label on the left), sagittal / coronal / axial columns.

    Parameters
    ----------
    maps : name -> 3-D map (ppm for susceptibility), all on one grid; RAS+ voxel order unless
        ``affine`` is given.
    voxel_size : voxel sizes (mm) along the RAS array axes; or give ``affine`` (the maps' own
        voxel order; they are reoriented to RAS and the voxel sizes read from it).
    point : slice point, voxel indices of the given arrays (before reorientation); default
        :func:`slice_point` of ``mask``, else the centre.
    mask : optional mask on the maps' grid: gives the default point; non-finite values outside
        it are shown as 0 (inside it they are an error); with ``blank_outside`` the voxels
        outside it are drawn black (NaN, the colour map's "bad" colour).
    window : (vmin, vmax) shared by every row, in ``unit``.
    row_labels : labels shown instead of the mapping's keys (same order).
    unit : the colour bar's label.

    Returns
    -------
    Figure with ``fig.qsmflow_layout`` (:class:`FigureLayout`); one colour bar for all rows.
    """
    prep = _prepare(maps, voxel_size=voxel_size, affine=affine, mask=mask, point=point)
    keys = list(prep.vols)
    return _maps_figure(
        prep,
        keys,
        _row_labels(keys, row_labels),
        window=_check_window(window),
        cmap=cmap,
        unit=unit,
        title=title,
        blank_outside=blank_outside,
    )


def comparison_figure(
    reference: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    reference_name: str = "COSMOS",
    voxel_size: Sequence[float] | float | None = None,
    affine: Any = None,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    metric_keys: Sequence[str] = DEFAULT_METRIC_KEYS,
    point: Sequence[int] | None = None,
    mask: np.ndarray | None = None,
    window: tuple[float, float] = (-0.15, 0.15),
    cmap: str = "gray",
    title: str | None = None,
    unit: str = "ppm",
    blank_outside: bool = False,
) -> Figure:
    """The supplement's comparison: the reference row first, then one row per method.

    Under each method row (when ``metrics`` has it) a line of metrics,
    :func:`metric_label` ``(metrics[method], metric_keys)``, e.g.
    ``"SSIM 0.912  PSNR 41.3 dB  HFEN 35.2 %"``. ``metrics`` maps a method name to a flat
    mapping or to a :func:`qsmflow.evaluation.metrics.score` result (default keys: the
    2016-challenge SSIM, PSNR and HFEN); its keys must be method names. Other arguments as
    for :func:`three_view_figure`; the texts are in ``fig.qsmflow_layout.metric_labels``.
    """
    name = str(reference_name)
    if name in maps:
        raise QSMInputError(f"a method is named like the reference ({name!r})", "maps")
    if not maps:
        raise QSMInputError("no method maps to compare", "maps")
    texts: dict[str, str] = {}
    for method, values in (metrics or {}).items():
        if method not in maps:
            raise QSMInputError(
                f"metrics given for {method!r}, which is not one of the maps {list(maps)}",
                "metrics",
            )
        texts[str(method)] = metric_label(values, metric_keys)
    all_maps = {name: reference, **{str(k): v for k, v in maps.items()}}
    prep = _prepare(all_maps, voxel_size=voxel_size, affine=affine, mask=mask, point=point)
    keys = list(prep.vols)
    return _maps_figure(
        prep,
        keys,
        keys,
        window=_check_window(window),
        cmap=cmap,
        unit=unit,
        title=title,
        blank_outside=blank_outside,
        metric_texts=texts or None,
    )


# --------------------------------------------------------------------------------------------
# QC figures
# --------------------------------------------------------------------------------------------


def _contour_row(row: list[Axes], slices: Sequence[np.ndarray], level: float, color: str) -> list:
    sets = []
    for ax, panel in zip(row, slices, strict=True):
        p = np.asarray(panel, dtype=np.float64)
        if p.min() < level < p.max() and min(p.shape) >= 2:
            sets.append(ax.contour(p, levels=[level], colors=color, linewidths=1.0))
        else:
            sets.append(None)
    return sets


def mask_qc_figure(
    magnitude: np.ndarray,
    mask: np.ndarray,
    *,
    voxel_size: Sequence[float] | float | None = None,
    affine: Any = None,
    point: Sequence[int] | None = None,
    title: str | None = None,
    color: str = "red",
) -> Figure:
    """Brain-mask check: the magnitude in gray with the mask's outline as a contour.

    One row (sagittal, coronal, axial) through ``point`` (default: the mask's centre of mass).
    The magnitude window is its 0.5-99.5 percentiles over the volume; the outline is the 0.5
    iso-line of the mask slice (``fig.qsmflow_layout.contours[0][view]``; None where the slice
    misses the mask).
    """
    m = np.asarray(mask)
    if m.ndim != 3:
        raise QSMInputError(f"expected a 3-D mask, got shape {m.shape}", "mask")
    prep = _prepare(
        {"magnitude": magnitude},
        voxel_size=voxel_size,
        affine=affine,
        mask=m,
        point=point,
    )
    mag = prep.vols["magnitude"]
    assert prep.mask is not None
    fig, panels, _c, _t, _x = _grid(
        1, _view_sizes_mm(mag.shape, prep.vox), colorbars="none", title=title
    )
    window = intensity_window(mag)
    _draw_row(panels[0], three_views(mag, prep.point), prep.vox, window=window, cmap=_cmap("gray"))
    _label_row(panels[0], "magnitude + mask")
    _titles(panels[0])
    outline = three_views(prep.mask.astype(np.float64), prep.point)
    contours = _contour_row(panels[0], outline, 0.5, color)
    layout = FigureLayout(
        rows=["magnitude + mask"],
        keys=["magnitude"],
        panels=panels,
        point=prep.point,
        voxel_size=prep.vox,
        windows=[window],
        contours=[contours],
    )
    return _attach(fig, layout)


def field_qc_figure(
    total_field: np.ndarray,
    local_field: np.ndarray,
    mask: np.ndarray,
    *,
    voxel_size: Sequence[float] | float | None = None,
    affine: Any = None,
    units: tuple[str, str] = ("Hz", "ppm"),
    point: Sequence[int] | None = None,
    percentile: float = 99.0,
    title: str | None = None,
    blank_outside: bool = True,
) -> Figure:
    """Field check: total field (row 1) and local field (row 2), each with its own window.

    Each row's window is :func:`symmetric_window` (the ``percentile`` of |field| inside
    ``mask``) and has its own colour bar labelled with its unit (``units`` = (total, local),
    e.g. ("Hz", "ppm")). The voxels outside the mask are drawn black unless
    ``blank_outside=False``.
    """
    prep = _prepare(
        {"total field": total_field, "local field": local_field},
        voxel_size=voxel_size,
        affine=affine,
        mask=mask,
        point=point,
        mask_required=True,
    )
    assert prep.mask is not None
    if len(units) != 2:
        raise QSMInputError(f"expected (total unit, local unit), got {units!r}", "units")
    keys = ["total field", "local field"]
    shape = prep.vols[keys[0]].shape
    fig, panels, caxes, _t, _x = _grid(
        2, _view_sizes_mm(shape, prep.vox), colorbars="per_row", title=title
    )
    layout = FigureLayout(
        rows=keys, keys=keys, panels=panels, point=prep.point, voxel_size=prep.vox
    )
    cm = _cmap("gray")
    for r, (key, unit) in enumerate(zip(keys, units, strict=True)):
        vol = prep.vols[key]
        window = symmetric_window(vol, prep.mask, percentile)
        shown = _display(vol, prep.mask, blank_outside)
        image = _draw_row(
            panels[r], three_views(shown, prep.point), prep.vox, window=window, cmap=cm
        )
        _label_row(panels[r], key)
        cbar = fig.colorbar(image, cax=caxes[r])
        cbar.set_label(str(unit))
        layout.windows.append(window)
        layout.colorbars.append(cbar)
    _titles(panels[0])
    return _attach(fig, layout)


def registration_qc_figure(
    reference: np.ndarray,
    registered: np.ndarray,
    *,
    voxel_size: Sequence[float] | float | None = None,
    affine: Any = None,
    mode: str = "checkerboard",
    point: Sequence[int] | None = None,
    tile: int = 8,
    contour_level: float = 0.5,
    title: str | None = None,
    color: str = "red",
) -> Figure:
    """Registration check of two magnitudes on one grid.

    Both are scaled to [0, 1] by :func:`normalise_intensity` (1-99 percentiles). ``mode``:

    * ``"checkerboard"`` - each panel is :func:`checkerboard` ``(reference view, registered
      view, tile)``: tiles of ``tile`` x ``tile`` displayed voxels, the reference in the
      top-left one;
    * ``"contour"`` - the reference, with the ``contour_level`` iso-line of the normalised
      registered image (its edges) drawn on it (``fig.qsmflow_layout.contours[0]``).

    Shown in gray, window (0, 1); ``point`` defaults to the centre.
    """
    if mode not in ("checkerboard", "contour"):
        raise QSMInputError(f"mode must be 'checkerboard' or 'contour', got {mode!r}", "mode")
    prep = _prepare(
        {"reference": reference, "registered": registered},
        voxel_size=voxel_size,
        affine=affine,
        point=point,
    )
    ref = normalise_intensity(prep.vols["reference"])
    reg = normalise_intensity(prep.vols["registered"])
    fig, panels, _c, _t, _x = _grid(
        1, _view_sizes_mm(ref.shape, prep.vox), colorbars="none", title=title
    )
    ref_views = three_views(ref, prep.point)
    reg_views = three_views(reg, prep.point)
    label = mode
    contours: list[list] = []
    if mode == "checkerboard":
        shown = [checkerboard(a, b, tile) for a, b in zip(ref_views, reg_views, strict=True)]
        _draw_row(panels[0], shown, prep.vox, window=(0.0, 1.0), cmap=_cmap("gray"))
    else:
        _draw_row(panels[0], ref_views, prep.vox, window=(0.0, 1.0), cmap=_cmap("gray"))
        contours.append(_contour_row(panels[0], reg_views, contour_level, color))
    _label_row(panels[0], label)
    _titles(panels[0])
    layout = FigureLayout(
        rows=[label],
        keys=["reference"],
        panels=panels,
        point=prep.point,
        voxel_size=prep.vox,
        windows=[(0.0, 1.0)],
        contours=contours,
    )
    return _attach(fig, layout)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG or SVG (by the extension) atomically; parents are created.

    The picture is ``fig.get_size_inches() * dpi`` pixels (no tight bounding box; matplotlib
    truncates a fraction of a pixel; the figures of this module are whole hundredths of an
    inch, so exact at dpi 100).
    Returns the path.
    """
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise QSMInputError("figure files must end in .png or .svg", str(p))
    if not int(dpi) > 0:
        raise QSMInputError(f"dpi must be > 0, got {dpi}", "dpi")
    metadata = {"Date": None} if fmt == "svg" else None
    with atomic_path(p, p.suffix) as tmp:
        fig.savefig(tmp, format=fmt, dpi=int(dpi), metadata=metadata)
    return p


# --------------------------------------------------------------------------------------------
# File-level helpers
# --------------------------------------------------------------------------------------------


def _load(path: str | os.PathLike, role: str, *, first_volume: bool = False) -> Volume:
    if first_volume:
        return load_first_volume(path, role)[0]
    return load_volume(path, dtype=np.float64)


def _load_on_one_grid(
    paths: Mapping[str, str | os.PathLike],
    mask_path: str | os.PathLike | None = None,
    *,
    first_volume: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray]:
    """Load NIfTI files that must share one grid; errors name the file.

    Returns (role -> data in the files' voxel order, bool mask or None, the affine).
    """
    if not paths:
        raise QSMInputError("no files given", "paths")
    vols: dict[str, Volume] = {}
    ref_role = ""
    for role, path in paths.items():
        vol = _load(path, role, first_volume=role in first_volume)
        if vols:
            check_same_grid(vol, vols[ref_role], role, ref_role)
        else:
            ref_role = role
        vols[role] = vol
    ref = vols[ref_role]
    mask = None
    if mask_path is not None:
        mvol = _load(mask_path, "mask")
        check_same_grid(mvol, ref, "mask", ref_role)
        mask = as_mask(mvol.data, mvol.data.shape, str(mask_path))
    data = {}
    for role, vol in vols.items():
        data[role] = check_finite(vol.data, role, vol.path, mask)
    return data, mask, ref.affine


def three_view_figure_files(
    paths: Mapping[str, str | os.PathLike],
    *,
    mask_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Figure:
    """:func:`three_view_figure` of NIfTI maps (name -> path) on one grid, shown in RAS.

    Grids (shape and affine) must match; ``mask_path`` (optional) on the same grid. Keyword
    arguments as for :func:`three_view_figure` (not ``voxel_size``/``affine``, read from the
    files; ``point`` in the files' voxel indices).
    """
    data, mask, affine = _load_on_one_grid(paths, mask_path)
    return three_view_figure(data, affine=affine, mask=mask, **kwargs)


def comparison_figure_files(
    reference_path: str | os.PathLike,
    paths: Mapping[str, str | os.PathLike],
    *,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    mask_path: str | os.PathLike | None = None,
    reference_name: str = "COSMOS",
    **kwargs: Any,
) -> Figure:
    """:func:`comparison_figure` of NIfTI maps: reference file and method name -> file.

    ``metrics`` per method as for :func:`comparison_figure` (e.g. the ``qsmflow evaluate``
    results). Grids must match the reference's (errors name the file).
    """
    name = str(reference_name)
    if name in paths:
        raise QSMInputError(f"a method is named like the reference ({name!r})", "paths")
    data, mask, affine = _load_on_one_grid({name: reference_path, **paths}, mask_path)
    ref = data.pop(name)
    return comparison_figure(
        ref,
        data,
        reference_name=name,
        affine=affine,
        metrics=metrics,
        mask=mask,
        **kwargs,
    )


def mask_qc_figure_files(
    magnitude_path: str | os.PathLike, mask_path: str | os.PathLike, **kwargs: Any
) -> Figure:
    """:func:`mask_qc_figure` of NIfTI files (a 4-D magnitude shows its first echo)."""
    data, mask, affine = _load_on_one_grid(
        {"magnitude": magnitude_path}, mask_path, first_volume=("magnitude",)
    )
    return mask_qc_figure(data["magnitude"], mask, affine=affine, **kwargs)


def field_qc_figure_files(
    total_field_path: str | os.PathLike,
    local_field_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    **kwargs: Any,
) -> Figure:
    """:func:`field_qc_figure` of NIfTI files on one grid."""
    data, mask, affine = _load_on_one_grid(
        {"total field": total_field_path, "local field": local_field_path}, mask_path
    )
    return field_qc_figure(data["total field"], data["local field"], mask, affine=affine, **kwargs)


def registration_qc_figure_files(
    reference_path: str | os.PathLike, registered_path: str | os.PathLike, **kwargs: Any
) -> Figure:
    """:func:`registration_qc_figure` of NIfTI files (4-D magnitudes show their first echo)."""
    data, _mask, affine = _load_on_one_grid(
        {"reference": reference_path, "registered": registered_path},
        first_volume=("reference", "registered"),
    )
    return registration_qc_figure(data["reference"], data["registered"], affine=affine, **kwargs)
