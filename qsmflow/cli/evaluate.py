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
NIfTI files on the same grid (shape and affine). Susceptibility maps are in ppm. With several
RECON files, one comparison table (a row per file, best value per column marked *) follows
the full reports; --json then holds {"results": [one entry per RECON]}.

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
    p.add_argument(
        "recon",
        metavar="RECON",
        nargs="+",
        help="reconstructed susceptibility map(s) (NIfTI, ppm); several: a comparison table",
    )
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


COMPARISON_COLUMNS = (
    ("qsmci", "nrmse", "min"),
    ("qsmci", "hfen", "min"),
    ("qsmci", "xsim", "max"),
    ("qsmci", "correlation", "max"),
    ("challenge", "rmse", "min"),
    ("challenge", "psnr", "max"),
    ("challenge", "ssim", "max"),
    ("challenge", "hfen", "min"),
    ("challenge", "xsim", "max"),
)


def format_comparison(results: list[dict[str, Any]], names: list[str]) -> str:
    """One row per reconstruction, the key metrics of both families; * marks the best."""
    best = {}
    for fam, key, how in COMPARISON_COLUMNS:
        vals = [r[fam].get(key) for r in results]
        finite = [v for v in vals if isinstance(v, float | int) and math.isfinite(v)]
        best[(fam, key)] = (min if how == "min" else max)(finite) if finite else None
    width = max(12, *(len(n) for n in names))
    head1 = f"{'':<{width}s} " + " ".join(
        f"{('QSM-CI' if fam == 'qsmci' else 'challenge'):>12s}" for fam, _, _ in COMPARISON_COLUMNS
    )
    head2 = f"{'recon':<{width}s} " + " ".join(
        f"{key + (' ' + _UNITS[key] if key in _UNITS else ''):>12s}"
        for _, key, _ in COMPARISON_COLUMNS
    )
    lines = ["Comparison (* = best in column)", head1, head2, "-" * len(head2)]
    for name, r in zip(names, results, strict=True):
        cells = []
        for fam, key, _ in COMPARISON_COLUMNS:
            v = r[fam].get(key)
            mark = "*" if v is not None and v == best[(fam, key)] else " "
            cells.append(f"{_fmt(v, '.4f') + mark:>12s}")
        lines.append(f"{name:<{width}s} " + " ".join(cells))
    return "\n".join(lines)


def _load_inputs(args: argparse.Namespace, recon_path: str, cache: dict) -> tuple:
    import numpy as np

    from ..errors import QSMInputError
    from ..io.nifti import load_volume

    recon = load_volume(recon_path, dtype=np.float64)
    others = [("reference", args.reference), ("mask", args.mask)]
    if args.labels:
        others.append(("labels", args.labels))
    vols = {}
    for what, path in others:
        vol = cache.get(what)
        if vol is None:
            vol = load_volume(path, dtype=None if what == "labels" else np.float64)
            cache[what] = vol
        if vol.data.shape != recon.data.shape:
            raise QSMInputError(
                f"{what} grid {vol.data.shape} does not match RECON grid {recon.data.shape} "
                f"({recon_path})",
                str(path),
            )
        if not np.allclose(vol.affine, recon.affine, rtol=0.0, atol=1e-3):
            raise QSMInputError(
                f"{what} affine differs from RECON's ({recon_path}); resample onto one grid first",
                str(path),
            )
        vols[what] = vol.data
    return recon, vols


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import QSMInputError
    from ..evaluation.metrics import score
    from ..evaluation.rois import load_label_names
    from ..io.nifti import write_json

    recons = list(args.recon)
    cache: dict = {}
    # check every input before scoring any (a bad file fails fast, naming it)
    loaded = [_load_inputs(args, path, cache) for path in recons]
    vols = loaded[0][1]

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

    results = []
    for path, (recon, _) in zip(recons, loaded, strict=True):
        result = score(recon.data, ref, mask, labels, label_names=names)
        result["files"] = {
            "recon": str(path),
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
        if len(recons) > 1:
            print(f"== {path}")
        print(format_report(result))
        if len(recons) > 1:
            print()
        results.append(result)
    if len(recons) > 1:
        print(format_comparison(results, [_short_name(p) for p in recons]))
    if args.json:
        payload = results[0] if len(results) == 1 else {"results": results}
        out = write_json(args.json, _clean(payload))
        print(f"\nwrote {out}")
    return 0


def _short_name(path: str) -> str:
    """File name without the NIfTI extension (the comparison table's row label)."""
    from pathlib import Path

    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name
