"""``qsmflow simulate``: a simulated multi-echo, multi-orientation GRE BIDS dataset with truth."""

from __future__ import annotations

import argparse
import inspect
import time


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``qsmflow simulate``; choices and defaults come from :mod:`qsmflow.simulate`."""
    from ..simulate.dataset import (
        DEFAULT_B0_TESLA,
        DEFAULT_SNR,
        ORIENTATION_MODES,
        PHANTOMS,
        PHASE_OFFSETS,
        REALISM,
    )
    from ..simulate.gre import DEFAULT_TE_S
    from ..simulate.realism import REALISM_PRESETS

    def preset_summary(name: str) -> str:
        p = REALISM_PRESETS[name]
        te = "/".join(f"{t * 1e3:g}" for t in p["te_s"])
        return f"{name}: B0 {p['b0_tesla']:g} T, TE {te} ms, SNR {p['snr']:g}"

    p = subparsers.add_parser(
        "simulate",
        help="simulate a multi-echo GRE BIDS dataset with known truth (chi and fields in ppm)",
        description=(
            "Forward-simulate multi-echo complex GRE data (magnitude, phase in rad) of a head "
            "phantom in one or more head orientations and write it as a BIDS dataset, with the "
            "truth (chi and local/total field in ppm, labels, masks, each orientation's "
            "rotation and B0 direction) under derivatives/qsmflow-simulation/. Units: echo "
            "times in seconds, B0 in tesla, voxel size in mm, rotations in degrees. "
            "--realism 3t/7t (with --phantom head-model) makes data that stands in for measured "
            "data: WM susceptibility anisotropy, sub-voxel texture, veins, a residual "
            "background field, tissue texture, smooth phase offset and dephasing, with the "
            "preset's B0, echo times and SNR. Precedence: --b0, --echo-times and --snr given "
            "explicitly override the preset's values; --texture and --dephasing are on with a "
            "preset (their flags cannot turn them off); --phase-offset applies as given."
        ),
    )
    p.add_argument(
        "output_dir",
        metavar="OUTPUT_DIR",
        help="new or empty folder (or an earlier qsmflow simulation, which is replaced)",
    )
    p.add_argument(
        "--phantom",
        choices=PHANTOMS,
        default="builtin",
        help="builtin: procedural head built in code (default); head-model: the QSM Challenge "
        "2.0 head model (needs --head-model-dir or $QSMFLOW_TEST_DATA)",
    )
    p.add_argument(
        "--head-model-dir",
        metavar="DIR",
        help="folder with SegmentedModel.nii.gz, BrainMask.nii.gz and SusceptibilityValues.mat",
    )
    p.add_argument(
        "--voxel-size",
        type=float,
        nargs="+",
        default=[2.0],
        metavar="MM",
        help="voxel size in mm, one value or three (default 2)",
    )
    p.add_argument(
        "--subjects",
        type=int,
        default=1,
        metavar="N",
        help="number of subjects (builtin: different anatomy per subject; default 1)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--orientations",
        type=int,
        default=3,
        metavar="N",
        help="head orientations per subject: the reference plus N-1 tilts (default 3)",
    )
    g.add_argument(
        "--b0-dirs-file",
        dest="b0_dirs_files",
        nargs="+",
        metavar="FILE",
        help="text file(s) with B0 directions (3 numbers per direction, head frame), "
        "e.g. the measured LPCNN SubXXX_oriN.txt; one orientation per direction",
    )
    p.add_argument(
        "--orientation-mode",
        choices=ORIENTATION_MODES,
        default="rotate",
        help="rotate: the head is rotated, axial affine, registration needed (default); "
        "oblique: the head stays fixed and the affine is oblique (B0 direction from the affine)",
    )
    p.add_argument(
        "--max-rotation-deg",
        type=float,
        default=25.0,
        metavar="DEG",
        help="largest head tilt in degrees (default 25)",
    )
    p.add_argument(
        "--echo-times",
        dest="echo_times_s",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help="echo times in seconds (default "
        + " ".join(f"{t:.3f}" for t in DEFAULT_TE_S)
        + ", or the --realism preset's)",
    )
    p.add_argument(
        "--b0",
        dest="b0_tesla",
        type=float,
        default=None,
        metavar="T",
        help=f"field strength in tesla (default {DEFAULT_B0_TESLA:g}, or the --realism preset's)",
    )
    p.add_argument(
        "--snr",
        type=float,
        default=None,
        help=f"mean first-echo brain magnitude / noise sigma (default {DEFAULT_SNR:g}, or the "
        "--realism preset's; inf = noise-free)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--texture", action="store_true", help="add within-tissue texture to chi, M0 and R2*"
    )
    p.add_argument(
        "--phase-offset",
        choices=PHASE_OFFSETS,
        default="smooth",
        help="receiver phase offset at TE=0 (default smooth)",
    )
    p.add_argument(
        "--dephasing", action="store_true", help="model intravoxel dephasing (signal loss near air)"
    )
    p.add_argument(
        "--supersample",
        type=int,
        default=2,
        metavar="N",
        help="compute fields and signal on a grid N times finer and average each voxel's "
        "N^3 sub-voxels (partial volume; avoids spurious non-harmonic fields of sharp "
        "bone/air edges with tilted B0); 1 = straight on the output grid (default 2)",
    )
    p.add_argument(
        "--realism",
        choices=REALISM,
        default=None,
        help="realistic-acquisition preset (needs --phantom head-model): "
        + "; ".join(preset_summary(n) for n in REALISM)
        + "; both with WM anisotropy 0.015 ppm, sub-voxel texture, veins, 0.02 ppm residual "
        "background, texture, dephasing. Explicit --b0/--echo-times/--snr override the preset",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into an existing BIDS dataset not made by qsmflow simulate",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Simulate the dataset and print one line per run."""
    from ..simulate.dataset import simulate_dataset

    t0 = time.perf_counter()
    # the option names are the function's parameter names (argparse dests), one vocabulary
    names = inspect.signature(simulate_dataset).parameters
    ds = simulate_dataset(**{name: getattr(args, name) for name in names})
    dt = time.perf_counter() - t0
    print(
        f"qsmflow simulate: wrote {len(ds.runs)} run(s) of {ds.subjects} subject(s), "
        f"{ds.files} files, to {ds.root} in {dt:.1f} s"
    )
    par = ds.parameters
    print(
        f"  phantom {args.phantom}, grid {ds.runs[0].shape} at {ds.voxel_size_mm} mm, "
        f"B0 {par['b0_tesla']} T, TE {', '.join(f'{t * 1e3:g}' for t in par['echo_times_s'])} ms, "
        f"SNR {'noise-free' if ds.snr is None else f'{ds.snr:g}'}, mode {args.orientation_mode}, "
        f"supersampling {args.supersample}"
        + (f", realism {par['realism']}" if par.get("realism") else "")
    )
    print("  run                 B0 tilt   head rot   max|total| max|local|  noise sigma")
    print("                      (deg)     (deg)      brain ppm  brain ppm")
    for st in ds.runs:
        print(
            f"  {st.run:<18} {st.tilt_deg:7.1f} {st.rotation_deg:9.1f} {st.max_total_ppm:11.3f} "
            f"{st.max_local_ppm:10.3f} {st.noise_sigma:12.4g}"
        )
    print(f"  truth: {ds.truth_dir}")
    return 0
