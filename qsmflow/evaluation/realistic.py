"""Score the inversions on a simulated acquisition run through our whole single-orientation chain.

This is the engine of ``benchmarks/realistic.py`` and of the ranking tests: a simulated
multi-echo GRE acquisition (:class:`qsmflow.simulate.gre.GREData`, e.g. from
:func:`qsmflow.simulate.realism.simulate_realistic`) is written to NIfTI and processed by the
same file-level steps the pipeline runs (:mod:`qsmflow.steps`): our brain mask (Python backend)
on the first-echo magnitude, the multi-echo field fit (Hz), V-SHARP (local field in ppm, eroded
mask), then each inversion of :func:`qsmflow.steps.inversion.invert_file`. Nothing of the truth
is used on the way; the truth only scores the maps.

Scoring: both maps are demeaned inside the scoring mask (the V-SHARP mask; the dipole kernel
leaves the mean undetermined), then QSM-CI's demeaned NRMSE (%), HFEN (%), XSIM and the 2016
challenge SSIM are computed over it, and the mean of each region of interest (ppm, after that
demeaning) is reported beside the truth's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Regions of interest reported by :func:`score_method` (head-model label -> name).
ROI_LABELS = {
    1: "caudate",
    2: "globus_pallidus",
    3: "putamen",
    7: "thalamus",
    8: "white_matter",
    9: "grey_matter",
    11: "blood",
}


@dataclass(frozen=True)
class MethodSpec:
    """One inversion to score: a row of the table.

    name : label in the table (e.g. ``"tkd"`` or ``"tv+mag"``).
    method : inversion method of :func:`qsmflow.steps.inversion.invert_file`.
    options : its keyword options (missing ones take the method's defaults).
    magnitude_weights : pass the echo-combined magnitude as the weights image.
    """

    name: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    magnitude_weights: bool = False


@dataclass
class ProcessedAcquisition:
    """Files and arrays of the chain up to the local field (all on the acquisition grid)."""

    local_field: Path  # ppm
    mask: Path  # V-SHARP (eroded) mask: where the local field and the maps are valid
    magnitude: Path  # 4-D multi-echo magnitude
    brain_mask: np.ndarray
    local_mask: np.ndarray
    local_field_ppm: np.ndarray
    seconds: dict[str, float]


def process_acquisition(gre, workdir: str | os.PathLike) -> ProcessedAcquisition:
    """Run ``gre`` through mask -> field fit -> V-SHARP with the pipeline's step functions."""
    import nibabel as nib

    from ..steps.bgremove import vsharp_file
    from ..steps.fieldmap import fit_field
    from ..steps.masking import brain_mask_file

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    affine = np.asarray(gre.affine, dtype=np.float64)
    files = {
        "magnitude": work / "magnitude.nii.gz",
        "echo1": work / "magnitude_echo1.nii.gz",
        "phase": work / "phase.nii.gz",
    }
    nib.save(nib.Nifti1Image(gre.magnitude.astype(np.float32), affine), files["magnitude"])
    nib.save(nib.Nifti1Image(gre.magnitude[..., 0].astype(np.float32), affine), files["echo1"])
    nib.save(nib.Nifti1Image(gre.phase.astype(np.float32), affine), files["phase"])
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    brain = brain_mask_file(files["echo1"], work / "brain_mask.nii.gz", backend="python")
    seconds["mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = fit_field(
        files["phase"],
        work / "field_hz.nii.gz",
        echo_times=list(gre.te_s),
        magnitude=files["magnitude"],
        mask=brain.outputs["mask"],
    )
    seconds["field"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bg = vsharp_file(
        fit.outputs["field_hz"],
        brain.outputs["mask"],
        work / "local_field.nii.gz",
        field_strength=gre.b0_tesla,
        eroded_mask_output=work / "local_mask.nii.gz",
    )
    seconds["vsharp"] = time.perf_counter() - t0
    local = Path(bg.outputs["local_field"])
    mask = Path(bg.outputs["eroded_mask"])
    return ProcessedAcquisition(
        local_field=local,
        mask=mask,
        magnitude=files["magnitude"],
        brain_mask=np.asarray(nib.load(brain.outputs["mask"]).dataobj) > 0,
        local_mask=np.asarray(nib.load(mask).dataobj) > 0,
        local_field_ppm=np.asarray(nib.load(local).dataobj, dtype=np.float32),
        seconds=seconds,
    )


def score_method(
    chi: np.ndarray, truth: np.ndarray, mask: np.ndarray, labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Metrics of ``chi`` against ``truth`` (ppm) over ``mask``, both demeaned in the mask.

    Returns nrmse (%), hfen (%), xsim (QSM-CI), ssim (2016 challenge), and with ``labels``
    ``rois``: {name: (recon mean, truth mean)} in ppm for :data:`ROI_LABELS`.
    """
    from .challenge2016 import ssim_2016
    from .qsmci import hfen_qsmci, nrmse, xsim_qsmci

    m = np.asarray(mask, bool)
    r = np.where(m, chi - chi[m].mean(), 0.0).astype(np.float64)
    t = np.where(m, truth - truth[m].mean(), 0.0).astype(np.float64)
    out: dict[str, Any] = {
        "nrmse": nrmse(r, t, m),
        "hfen": hfen_qsmci(r, t, m),
        "xsim": xsim_qsmci(r, t, m),
        "ssim": ssim_2016(r, t),
    }
    if labels is not None:
        rois = {}
        for lab, name in ROI_LABELS.items():
            sel = m & (labels == lab)
            if np.count_nonzero(sel) >= 10:
                rois[name] = (float(r[sel].mean()), float(t[sel].mean()))
        out["rois"] = rois
    return out


def score_methods(
    gre,
    methods: Sequence[MethodSpec],
    workdir: str | os.PathLike,
    *,
    processed: ProcessedAcquisition | None = None,
) -> dict[str, dict[str, Any]]:
    """Process ``gre`` (unless ``processed`` is given) and score every method in ``methods``.

    Returns ``{name: {nrmse, hfen, xsim, ssim, rois, seconds}}`` in the order of ``methods``.
    """
    import nibabel as nib

    from ..steps.inversion import invert_file

    work = Path(workdir)
    proc = processed or process_acquisition(gre, work)
    results: dict[str, dict[str, Any]] = {}
    for spec in methods:
        out = work / f"chi_{spec.name.replace('+', '_')}.nii.gz"
        t0 = time.perf_counter()
        invert_file(
            proc.local_field,
            proc.mask,
            out,
            method=spec.method,
            options=dict(spec.options),
            weights_image=proc.magnitude if spec.magnitude_weights else None,
        )
        seconds = time.perf_counter() - t0
        chi = np.asarray(nib.load(out).dataobj, dtype=np.float32)
        row = score_method(chi, gre.chi, proc.local_mask, gre.labels)
        row["seconds"] = seconds
        results[spec.name] = row
    return results
