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
    """Add ``qsmflow evaluate`` (RECON..., --reference, --mask, --labels, --json)."""
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
    p.add_argument(
        "--figure",
        metavar="FILE",
        help="write the comparison figure (.png or .svg): the reference row first, then one row "
        "per RECON in sagittal, coronal and axial views through the mask's centre of mass "
        "(+-0.15 ppm), SSIM / PSNR / HFEN (2016 challenge) under each row",
    )
    p.add_argument(
        "--window",
        nargs=2,
        type=float,
        default=(-0.15, 0.15),
        metavar=("LOW", "HIGH"),
        help="grey-scale window of --figure in ppm (default -0.15 0.15)",
    )
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


def run(args: argparse.Namespace) -> int:
    """Score every RECON, print the reports (and a comparison table), write ``--json``."""
    from ..evaluation.files import evaluate_files
    from ..io.atomic import nifti_stem
    from ..io.nifti import write_json

    recons = list(args.recon)
    results = evaluate_files(
        recons, args.reference, args.mask, labels=args.labels, label_names=args.label_names
    )
    for path, result in zip(recons, results, strict=True):
        if len(recons) > 1:
            print(f"== {path}")
        print(format_report(result))
        if len(recons) > 1:
            print()
    if len(recons) > 1:
        print(format_comparison(results, [nifti_stem(p) for p in recons]))
    if args.json:
        payload = results[0] if len(results) == 1 else {"results": results}
        out = write_json(args.json, _clean(payload))
        print(f"\nwrote {out}")
    if args.figure:
        from ..evaluation.figures import comparison_figure_files, save_figure

        names = _unique_names([nifti_stem(p) for p in recons])
        fig = comparison_figure_files(
            args.reference,
            dict(zip(names, recons, strict=True)),
            metrics=dict(zip(names, results, strict=True)),
            mask_path=args.mask,
            reference_name=f"reference ({nifti_stem(args.reference)})",
            window=tuple(args.window),
        )
        print(f"wrote {save_figure(fig, args.figure)}")
    return 0


def _unique_names(names: list[str]) -> list[str]:
    """Row names: the file stems, numbered where two files share one."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n} ({seen[n]})")
    return out
