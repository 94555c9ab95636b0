"""``qsmflow evaluate``: score a susceptibility map against a reference.

Prints both metric families of :mod:`qsmflow.evaluation.metrics` (QSM-CI and the
2016-challenge/FANSI MATLAB definitions) and, with ``--labels``, a per-ROI table; ``--json``
writes everything to a file.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from typing import Any

HELP = "score a susceptibility map (ppm) against a reference: QSM-CI and 2016-challenge metrics"

DESCRIPTION = """\
Score RECON against --reference inside --mask (voxels > 0). All three (and --labels) must be
NIfTI files on the same grid (shape and affine). Susceptibility maps are in ppm.

Two families of metrics are reported, each matching one reference implementation:
  qsmci      QSM-CI score_arrays (qsm-ci 0.6.2 / QSM.rs): recon set to 0 outside the mask and
             where NaN/inf, reference set to 0 outside the mask. nrmse (demeaned, %),
             nrmse_detrend (%), correlation (Pearson), xsim (5^3 box window, L = 1 ppm),
             hfen (%; LoG sigma 1.5, 17^3), coverage; with --labels in the head-model scheme
             also nrmse_tissue/blood/dgm, dgm_linearity, calc_moment_dev, calc_streak.
  challenge  2016 QSM challenge compute_*.m on the masked maps: rmse (%, not demeaned),
             psnr (dB, 0..255 rescale), ssim (0..255 rescale, 5^3 Gaussian), hfen (%, 15^3
             LoG); xsim = Challenge 2.0 / FANSI compute_xsim (no rescale, L = 1 ppm, 7^3
             Gaussian, replicate padding, mean over the mask).
With --labels: per-ROI mean and SD (ppm, SD with ddof=1) of recon and reference and the
voxelwise Pearson r inside each ROI, plus the across-ROI correlation/slope of the means.
Demean or reference both maps the same way before comparing raw rmse/psnr/ssim/xsim.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recon", metavar="RECON", help="reconstructed susceptibility map (NIfTI, ppm)")
    p.add_argument(
        "--reference", "-r", required=True, metavar="REF", help="reference map (NIfTI, ppm)"
    )
    p.add_argument(
        "--mask", "-m", required=True, metavar="MASK", help="evaluation mask (NIfTI, voxels > 0)"
    )
    p.add_argument(
        "--labels",
        metavar="LABELS",
        help="integer label map (NIfTI) for ROI statistics; head-model labels by default",
    )
    p.add_argument(
        "--label-names",
        metavar="FILE",
        help='label names: JSON {"1": "caudate", ...} or \'<label> <name>\' lines; when given, '
        "the head-model region metrics (nrmse_tissue/blood/dgm, calc_*) are not computed",
    )
    p.add_argument("--json", metavar="OUT", help="write all metrics to this JSON file")
    p.set_defaults(func=run)
    return p


def _clean(obj: Any) -> Any:
    """Non-finite floats become None (valid JSON)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(v: Any, spec: str = ".6g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a" if v is None or math.isnan(v) else ("inf" if v > 0 else "-inf")
    return format(v, spec)


_UNITS = {
    "nrmse": "%",
    "nrmse_detrend": "%",
    "nrmse_tissue": "%",
    "nrmse_blood": "%",
    "nrmse_dgm": "%",
    "hfen": "%",
    "rmse": "%",
    "psnr": "dB",
    "calc_moment_dev": "ppm*voxel",
}


def format_report(result: dict[str, Any]) -> str:
    """The human-readable metrics table printed by ``qsmflow evaluate``."""
    lines = []
    defs = result["info"]["definitions"]
    for family, title in (("qsmci", "QSM-CI"), ("challenge", "2016 challenge / FANSI XSIM")):
        lines.append(f"{title} metrics")
        lines.extend(
            textwrap.wrap(
                defs[family],
                96,
                initial_indent="  (",
                subsequent_indent="   ",
                break_on_hyphens=False,
            )
        )
        lines[-1] += ")"
        for key, value in result[family].items():
            lines.append(f"  {key:<16s} {_fmt(value):>14s} {_UNITS.get(key, '')}")
        lines.append("")
    info = result["info"]
    lines.append(
        f"mask voxels: {info['n_mask']}; non-finite recon voxels in mask: "
        f"{info['n_nonfinite_recon']}"
    )
    rows = result.get("rois")
    if rows is not None:
        lines.append("")
        lines.append("ROIs (ppm; SD with ddof=1; r = voxelwise Pearson r inside the ROI)")
        lines.append(
            f"  {'label':>5s} {'name':<20s} {'n':>8s} {'recon mean':>11s} {'recon SD':>9s} "
            f"{'ref mean':>9s} {'ref SD':>9s} {'r':>7s}"
        )
        for row in rows:
            lines.append(
                f"  {row['label']:>5d} {row['name'][:20]:<20s} {row['n']:>8d} "
                f"{_fmt(row['recon_mean'], '.5f'):>11s} {_fmt(row['recon_sd'], '.5f'):>9s} "
                f"{_fmt(row['ref_mean'], '.5f'):>9s} {_fmt(row['ref_sd'], '.5f'):>9s} "
                f"{_fmt(row['pearson_r'], '.4f'):>7s}"
            )
        s = result["roi_summary"]
        lines.append(
            f"  ROI means vs reference ({s['n_rois']} ROIs): r = {_fmt(s['pearson_r'], '.4f')}, "
            f"slope = {_fmt(s['slope'], '.4f')}, intercept = {_fmt(s['intercept'], '.5f')} ppm"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import QSMInputError
    from ..evaluation.metrics import score
    from ..evaluation.rois import load_label_names
    from ..io.nifti import load_volume, write_json

    recon = load_volume(args.recon, dtype=np.float64)
    others = [("reference", args.reference), ("mask", args.mask)]
    if args.labels:
        others.append(("labels", args.labels))
    vols = {}
    for what, path in others:
        vol = load_volume(path, dtype=None if what == "labels" else np.float64)
        if vol.data.shape != recon.data.shape:
            raise QSMInputError(
                f"{what} grid {vol.data.shape} does not match RECON grid {recon.data.shape} "
                f"({args.recon})",
                str(path),
            )
        if not np.allclose(vol.affine, recon.affine, rtol=0.0, atol=1e-3):
            raise QSMInputError(
                f"{what} affine differs from RECON's ({args.recon}); resample onto one grid first",
                str(path),
            )
        vols[what] = vol.data

    mask = vols["mask"]
    if not np.all(np.isfinite(mask)):
        raise QSMInputError("mask contains NaN or inf", str(args.mask))
    if not np.any(mask > 0):
        raise QSMInputError("mask is empty (no voxel > 0)", str(args.mask))
    ref = vols["reference"]
    if not np.all(np.isfinite(ref[mask > 0])):
        raise QSMInputError("reference contains NaN or inf inside the mask", str(args.reference))
    labels = vols.get("labels")
    if labels is not None:
        lab = np.asarray(labels)
        if lab.dtype.kind not in "iub":
            lab_f = lab.astype(np.float64)
            if not np.all(np.isfinite(lab_f)) or np.max(np.abs(lab_f - np.rint(lab_f))) > 1e-3:
                raise QSMInputError("label map is not integer-valued", str(args.labels))
            lab = np.rint(lab_f).astype(np.int64)
        labels = lab
    names = load_label_names(args.label_names) if args.label_names else None

    result = score(recon.data, ref, mask, labels, label_names=names)
    result["files"] = {
        "recon": str(args.recon),
        "reference": str(args.reference),
        "mask": str(args.mask),
        "labels": str(args.labels) if args.labels else None,
    }
    result["units"] = {
        "susceptibility": "ppm",
        "nrmse, nrmse_*, rmse, hfen": "percent",
        "psnr": "dB",
        "correlation, xsim, ssim, coverage, dgm_linearity, calc_streak": "dimensionless",
        "calc_moment_dev": "ppm*voxel",
    }
    print(format_report(result))
    if args.json:
        out = write_json(args.json, _clean(result))
        print(f"\nwrote {out}")
    return 0
