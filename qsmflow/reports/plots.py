"""The report's figures, made with :mod:`qsmflow.evaluation.figures` and saved as PNG.

Each function draws one figure from a subject's files and writes it into ``folder`` under
:func:`qsmflow.reports.naming.figure_name`; it returns a :class:`FigureEntry` (file name,
alternative text, caption). Susceptibility maps share one window (default +-0.15 ppm); fields
get a symmetric window at the 99th percentile of |field| in the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QSMInputError
from ..evaluation.figures import (
    comparison_figure,
    field_qc_figure_files,
    mask_qc_figure_files,
    registration_qc_figure,
    save_figure,
    three_view_figure_files,
)
from ..io.nifti import load_first_volume
from ..registration.files import read_transform
from ..registration.rigid import resample_to_reference
from .analysis import Comparison
from .collect import Orientation, SubjectFiles
from .naming import figure_name

__all__ = [
    "DEFAULT_WINDOW",
    "FigureEntry",
    "chimaps_figure",
    "comparison_plot",
    "cosmos_figure",
    "fields_figure",
    "mask_figure",
    "registration_figures",
]

#: Display window of susceptibility maps (ppm).
DEFAULT_WINDOW = (-0.15, 0.15)


@dataclass
class FigureEntry:
    """A saved figure: file name (in the figures folder), alternative text and caption."""

    name: str
    alt: str
    caption: str


def _save(fig, folder: Path, prefix: str, desc: str, alt: str, caption: str) -> FigureEntry:
    name = figure_name(prefix, desc)
    save_figure(fig, folder / name)
    return FigureEntry(name=name, alt=alt, caption=caption)


def _need(path: Path | None, what: str, where: str) -> Path:
    if path is None:
        raise QSMInputError(f"no {what} found", where)
    return path


def mask_figure(ori: Orientation, folder: Path) -> FigureEntry:
    """Brain-mask outline (red) on the first-echo magnitude (BIDS input) of ``ori``."""
    mag = _need(ori.magnitude1, "first-echo magnitude (BIDS input)", ori.prefix)
    mask = _need(ori.derivatives.get("brain_mask"), "brain mask", ori.prefix)
    fig = mask_qc_figure_files(mag, mask, title=f"{ori.prefix}: brain mask")
    caption = (
        f"{ori.name}: brain mask ({mask.name}) outlined in red on the first-echo magnitude "
        f"({mag.name}; window 0.5-99.5th percentile)."
    )
    return _save(fig, folder, ori.prefix, "brainmask", f"brain mask of {ori.name}", caption)


def fields_figure(ori: Orientation, folder: Path) -> FigureEntry:
    """Total field (Hz) and local field (ppm) of ``ori`` inside its V-SHARP mask."""
    total = _need(ori.derivatives.get("field_hz"), "total field", ori.prefix)
    local = _need(ori.derivatives.get("local_field"), "local field", ori.prefix)
    mask = _need(ori.derivatives.get("local_mask"), "V-SHARP mask", ori.prefix)
    fig = field_qc_figure_files(
        total, local, mask, units=("Hz", "ppm"), title=f"{ori.prefix}: fields"
    )
    caption = (
        f"{ori.name}: total field (Hz, top) and V-SHARP local field (ppm, bottom) inside the "
        "V-SHARP mask (black outside); each row's window is +-99th percentile of |field| there."
    )
    return _save(fig, folder, ori.prefix, "fields", f"fields of {ori.name}", caption)


def chimaps_figure(
    ori: Orientation, methods: Sequence[str], folder: Path, window: tuple[float, float]
) -> FigureEntry:
    """Every susceptibility map of ``ori``, one row per method (``methods`` order)."""
    paths = {m: ori.chi[m] for m in methods}
    fig = three_view_figure_files(
        paths,
        mask_path=ori.derivatives.get("local_mask"),
        window=window,
        title=f"{ori.prefix}: susceptibility (ppm)",
    )
    caption = (
        f"{ori.name}: susceptibility maps ({', '.join(methods)}), window "
        f"{window[0]:g} to {window[1]:g} ppm, slices through the mask's centre."
    )
    return _save(fig, folder, ori.prefix, "chimaps", f"susceptibility maps of {ori.name}", caption)


def cosmos_figure(files: SubjectFiles, folder: Path, window: tuple[float, float]) -> FigureEntry:
    """COSMOS on the reference grid, inside its mask."""
    chi = _need(files.derivatives.get("cosmos_chi"), "COSMOS map", files.label)
    fig = three_view_figure_files(
        {"COSMOS": chi},
        mask_path=files.derivatives.get("cosmos_mask"),
        window=window,
        title=f"{files.label}: COSMOS (ppm)",
    )
    ref = files.reference.name if files.reference else "reference"
    caption = f"COSMOS ({chi.name}) on the {ref} grid, window {window[0]:g} to {window[1]:g} ppm."
    return _save(fig, folder, files.label, "cosmos", "COSMOS map", caption)


def _registered_magnitude(
    moving: Orientation, reference: Orientation
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference magnitude, moving magnitude resampled onto it, reference affine)."""
    xfm = _need(moving.derivatives.get("rigid_xfm"), "rigid transform", moving.prefix)
    ref_mag = _need(reference.magnitude1, "reference magnitude (BIDS input)", reference.prefix)
    mov_mag = _need(moving.magnitude1, "first-echo magnitude (BIDS input)", moving.prefix)
    ref, _n = load_first_volume(ref_mag, "reference magnitude")
    mov, _n = load_first_volume(mov_mag, "moving magnitude")
    moved = resample_to_reference(
        np.nan_to_num(mov.data), mov.affine, ref.data.shape, ref.affine, read_transform(xfm)
    )
    return np.nan_to_num(ref.data), moved, ref.affine


def registration_figures(
    moving: Orientation, reference: Orientation, folder: Path
) -> list[FigureEntry]:
    """Registration check of ``moving`` to ``reference``: its first-echo magnitude resampled
    onto the reference grid through ``desc-rigid_xfm`` (trilinear), shown as a checkerboard
    with the reference magnitude and as its edges (contour) on the reference."""
    ref, moved, affine = _registered_magnitude(moving, reference)
    out = []
    for mode, desc in (("checkerboard", "regcheckerboard"), ("contour", "regcontour")):
        fig = registration_qc_figure(
            ref, moved, affine=affine, mode=mode, title=f"{moving.prefix} -> {reference.name}"
        )
        what = (
            "checkerboard of the reference (top-left tile) and the registered magnitude"
            if mode == "checkerboard"
            else "the registered magnitude's 0.5 iso-line (red) on the reference magnitude"
        )
        caption = (
            f"{moving.name} registered to {reference.name}: {what} (intensities scaled to 0-1 "
            "between their 1st and 99th percentiles)."
        )
        alt = f"registration of {moving.name} ({mode})"
        out.append(_save(fig, folder, moving.prefix, desc, alt, caption))
    return out


def comparison_plot(comp: Comparison, folder: Path, window: tuple[float, float]) -> FigureEntry:
    """The comparison figure: reference row first, one row per map with its 2016-challenge
    SSIM, PSNR and HFEN underneath."""
    plan = comp.plan
    fig = comparison_figure(
        comp.reference,
        comp.maps,
        reference_name=plan.reference_name,
        affine=comp.affine,
        metrics=comp.metrics,
        mask=comp.mask,
        window=window,
        title=f"{plan.orientation.prefix}: maps vs {plan.reference_name}",
    )
    caption = (
        f"{plan.orientation.name}: {', '.join(plan.maps)} against {plan.reference_name} "
        f"({plan.reference.name}), window {window[0]:g} to {window[1]:g} ppm. Under each row: "
        f"2016-challenge SSIM, PSNR and HFEN in the metric mask ({plan.mask_description}, "
        f"{comp.n_mask} voxels)."
    )
    desc = f"vs{plan.reference_name.lower()}"
    alt = f"{plan.orientation.name} compared with {plan.reference_name}"
    return _save(fig, folder, plan.orientation.prefix, desc, alt, caption)
