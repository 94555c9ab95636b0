"""Realistic-acquisition benchmark: every inversion through our whole chain, against the truth.

Run: ``python benchmarks/realistic.py [--quick] [--cases 3t-1mm 7t-1mm 3t-aniso 7t-aniso]
[--methods tkd cfl2 ...] [--json FILE]``

Stands in for measured data (no measured reference is in the test data): the QSM Challenge 2.0
head model (``$QSMFLOW_TEST_DATA/qsm2_head_model``) simulated by
:func:`qsmflow.simulate.realism.simulate_realistic` with what measured data has and clean
simulation lacks (multi-echo GRE at 3 T or 7 T with in-vivo SNR and T2* decay, white-matter
susceptibility anisotropy, sub-voxel texture, veins, a residual background field, intravoxel
dephasing, a receiver phase offset), then processed exactly as ``qsmflow run`` does (our brain
mask, multi-echo field fit, V-SHARP; :mod:`qsmflow.evaluation.realistic`) and inverted by each
method with its defaults. Cases: 1 mm isotropic and 0.9 x 0.9 x 1.8 mm, at 3 T and 7 T.
``--quick``: the 2 mm 3 T case only (what the tests check).

Printed per case: demeaned NRMSE (%), HFEN (%), XSIM (QSM-CI), SSIM (2016 challenge) and run
time of each method, lower is better except XSIM/SSIM; then the ROI means (ppm, after demeaning
in the mask) of each method beside the truth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing qsmflow

from qsmflow.evaluation.realistic import (  # noqa: E402 (after the sys.path line above)
    ROI_LABELS,
    MethodSpec,
    process_acquisition,
    score_methods,
)

DATA = Path(os.environ.get("QSMFLOW_TEST_DATA", ROOT.parent / "shared" / "data"))

#: name -> (preset, voxel size in mm)
CASES = {
    "3t-1mm": ("3t", (1.0, 1.0, 1.0)),
    "7t-1mm": ("7t", (1.0, 1.0, 1.0)),
    "3t-aniso": ("3t", (0.9, 0.9, 1.8)),
    "7t-aniso": ("7t", (0.9, 0.9, 1.8)),
    "3t-2mm": ("3t", (2.0, 2.0, 2.0)),
}

#: Test-time adaptation steps of the ``isdu+adapt`` row (``qsmflow invert --adapt N``).
ADAPT_STEPS = 5

#: The table's rows: each method with its defaults, plus the references that explain them.
METHODS = {
    "tkd": MethodSpec("tkd", "tkd"),
    "tkd(0.15)": MethodSpec("tkd(0.15)", "tkd", {"threshold": 0.15}),
    "cfl2": MethodSpec("cfl2", "cfl2"),
    "ndi": MethodSpec("ndi", "ndi"),
    "ndi(200 it)": MethodSpec("ndi(200 it)", "ndi", {"iterations": 200, "stop": "iterations"}),
    "star": MethodSpec("star", "star"),
    "tv": MethodSpec("tv", "tv"),
    "tv+mag": MethodSpec("tv+mag", "tv", magnitude_weights=True),
    "isdu": MethodSpec("isdu", "isdu"),
    "isdu+adapt": MethodSpec("isdu+adapt", "isdu", {"adapt": ADAPT_STEPS}),
}


def run_case(name: str, methods: list[str], seed: int, isdu_weights: str | None = None) -> dict:
    from qsmflow.simulate.realism import simulate_realistic

    preset, vox = CASES[name]
    t0 = time.perf_counter()
    gre = simulate_realistic(preset, voxel_size=vox, directory=DATA / "qsm2_head_model", seed=seed)
    sim_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix=f"qsmflow-realistic-{name}-") as work:
        proc = process_acquisition(gre, work)
        specs = [METHODS[m] for m in methods]
        if isdu_weights:
            specs = [
                replace(sp, options={**sp.options, "weights": isdu_weights})
                if sp.method == "isdu"
                else sp
                for sp in specs
            ]
        rows = score_methods(gre, specs, work, processed=proc)
    return {
        "case": name,
        "preset": preset,
        "voxel_size_mm": list(vox),
        "shape": list(gre.shape),
        "b0_tesla": gre.b0_tesla,
        "te_s": list(gre.te_s),
        "snr": gre.snr,
        "simulation_s": sim_s,
        "chain_s": proc.seconds,
        "mask_voxels": int(proc.local_mask.sum()),
        "methods": rows,
    }


def print_case(result: dict) -> None:
    vox = "x".join(f"{v:g}" for v in result["voxel_size_mm"])
    te = ", ".join(f"{t * 1e3:g}" for t in result["te_s"])
    print(
        f"\n{result['case']}: {result['b0_tesla']:g} T, {vox} mm, grid {result['shape']}, "
        f"TE {te} ms, SNR {result['snr']:g}; simulated in {result['simulation_s']:.0f} s, "
        f"mask {result['chain_s']['mask']:.0f} s, field {result['chain_s']['field']:.0f} s, "
        f"V-SHARP {result['chain_s']['vsharp']:.0f} s"
    )
    header = f"  {'method':<12} {'NRMSE %':>8} {'HFEN %':>7} {'XSIM':>6} {'SSIM':>6} {'time s':>7}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for name, row in result["methods"].items():
        print(
            f"  {name:<12} {row['nrmse']:8.1f} {row['hfen']:7.1f} {row['xsim']:6.3f} "
            f"{row['ssim']:6.3f} {row['seconds']:7.1f}"
        )
    names = list(result["methods"])
    rois = [r for r in ROI_LABELS.values() if r in next(iter(result["methods"].values()))["rois"]]
    print(f"\n  ROI means, ppm (demeaned in the mask)\n  {'ROI':<16} {'truth':>7}", end="")
    print("".join(f" {n[:9]:>9}" for n in names))
    for roi in rois:
        truth = next(iter(result["methods"].values()))["rois"][roi][1]
        vals = "".join(f" {result['methods'][n]['rois'][roi][0]:9.4f}" for n in names)
        print(f"  {roi:<16} {truth:7.4f}{vals}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=None)
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--quick", action="store_true", help="the 2 mm 3 T case only")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument(
        "--isdu-weights",
        metavar="FILE",
        help="weights of the isdu rows (default: the shipped ones), e.g. an earlier release",
    )
    args = ap.parse_args(argv)
    if not (DATA / "qsm2_head_model").is_dir():
        print(f"skipped: no head model in {DATA} (set QSMFLOW_TEST_DATA)")
        return 0
    full = ["3t-1mm", "7t-1mm", "3t-aniso", "7t-aniso"]
    cases = args.cases or (["3t-2mm"] if args.quick else full)
    results = []
    for case in cases:
        result = run_case(case, args.methods, args.seed, args.isdu_weights)
        print_case(result)
        results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
