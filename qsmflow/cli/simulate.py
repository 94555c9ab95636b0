"""``qsmflow simulate``: a simulated multi-echo, multi-orientation GRE BIDS dataset with truth."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_TE = (0.005, 0.010, 0.015, 0.020)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "simulate",
        help="simulate a multi-echo GRE BIDS dataset with known truth (chi and fields in ppm)",
        description=(
            "Forward-simulate multi-echo complex GRE data (magnitude, phase in rad) of a head "
            "phantom in one or more head orientations and write it as a BIDS dataset, with the "
            "truth (chi and local/total field in ppm, labels, masks, each orientation's "
            "rotation and B0 direction) under derivatives/qsmflow-simulation/. Units: echo "
            "times in seconds, B0 in tesla, voxel size in mm, rotations in degrees."
        ),
    )
    p.add_argument(
        "output_dir",
        metavar="OUTPUT_DIR",
        help="new or empty folder (or an earlier qsmflow simulation, which is replaced)",
    )
    p.add_argument(
        "--phantom",
        choices=("builtin", "head-model"),
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
        nargs="+",
        metavar="FILE",
        help="text file(s) with B0 directions (3 numbers per direction, head frame), "
        "e.g. the measured LPCNN SubXXX_oriN.txt; one orientation per direction",
    )
    p.add_argument(
        "--orientation-mode",
        choices=("rotate", "oblique"),
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
        type=float,
        nargs="+",
        default=list(DEFAULT_TE),
        metavar="S",
        help="echo times in seconds (default 0.005 0.010 0.015 0.020)",
    )
    p.add_argument(
        "--b0", type=float, default=3.0, metavar="T", help="field strength in tesla (default 3)"
    )
    p.add_argument(
        "--snr",
        type=float,
        default=100.0,
        help="mean first-echo brain magnitude / noise sigma (default 100; inf = noise-free)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--texture", action="store_true", help="add within-tissue texture to chi, M0 and R2*"
    )
    p.add_argument(
        "--phase-offset",
        choices=("smooth", "none"),
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
        "--force",
        action="store_true",
        help="write into an existing BIDS dataset not made by qsmflow simulate",
    )
    p.set_defaults(func=run)
    return p


def _read_b0_dirs(files) -> list:
    import numpy as np

    from ..errors import QSMInputError
    from ..physics.kernel import normalise_b0_dir

    dirs = []
    for f in files:
        try:
            arr = np.loadtxt(f, delimiter=None, ndmin=1, dtype=float)
        except (OSError, ValueError) as exc:
            raise QSMInputError(f"cannot read B0 directions ({exc})", str(f)) from exc
        arr = arr.reshape(-1, 3) if arr.size % 3 == 0 else None
        if arr is None or arr.size == 0:
            raise QSMInputError("expected 3 numbers per B0 direction", str(f))
        for row in arr:
            try:
                dirs.append(normalise_b0_dir(row))
            except QSMInputError as exc:
                raise QSMInputError(str(exc), str(f)) from exc
    return dirs


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..errors import QSMInputError
    from ..physics import units
    from ..physics.geometry import rotation_angle_deg
    from ..physics.kernel import check_voxel_size
    from ..simulate.bids import BIDSWriter
    from ..simulate.gre import head_rotations, rotation_to_z, simulate_gre
    from ..simulate.head_model import default_head_model_dir
    from ..simulate.phantom import BuiltinPhantom, HeadModelSource, check_supersample

    t0 = time.perf_counter()
    if args.subjects < 1:
        raise QSMInputError(f"--subjects must be >= 1, got {args.subjects}")
    if len(args.voxel_size) not in (1, 3):
        raise QSMInputError("--voxel-size takes one value or three (mm)")
    vox = tuple(args.voxel_size) if len(args.voxel_size) == 3 else (args.voxel_size[0],) * 3
    snr = None if not np.isfinite(args.snr) else args.snr
    for t in args.echo_times:
        units.ppm_to_rad(0.0, t, args.b0)  # TE in seconds, B0 in tesla: fail before writing
    if snr is not None and not snr > 0:
        raise QSMInputError(f"--snr must be positive (inf for noise-free), got {args.snr}")
    check_voxel_size(vox)
    check_supersample(args.supersample)
    if args.phantom == "head-model":
        d = Path(args.head_model_dir) if args.head_model_dir else default_head_model_dir()
        for name in ("SegmentedModel.nii.gz", "BrainMask.nii.gz", "SusceptibilityValues.mat"):
            if not (d / name).is_file():
                raise QSMInputError(
                    "head model file not found (see --head-model-dir)", str(d / name)
                )

    # orientations: head rotations (rotate mode) or B0 directions (oblique mode)
    if args.b0_dirs_file:
        dirs = _read_b0_dirs(args.b0_dirs_file)
        rotations = [rotation_to_z(b) for b in dirs]  # R.T @ z = b
    else:
        if args.orientations < 1:
            raise QSMInputError(f"--orientations must be >= 1, got {args.orientations}")
        rotations = head_rotations(args.orientations, args.max_rotation_deg, seed=args.seed)
    n_ori = len(rotations)
    acqs = [f"ori{k + 1}" for k in range(n_ori)] if n_ori > 1 else [None]

    params = {
        "phantom": args.phantom,
        "voxel_size_mm": list(vox),
        "subjects": args.subjects,
        "orientations": n_ori,
        "orientation_mode": args.orientation_mode,
        "max_rotation_deg": args.max_rotation_deg,
        "b0_dirs_file": [str(f) for f in args.b0_dirs_file or []],
        "echo_times_s": list(args.echo_times),
        "b0_tesla": args.b0,
        "snr": snr,
        "seed": args.seed,
        "texture": args.texture,
        "phase_offset": args.phase_offset,
        "dephasing": args.dephasing,
        "supersample": args.supersample,
    }
    writer = BIDSWriter(Path(args.output_dir), force=args.force, parameters=params)
    margin = 10.0 if (n_ori > 1 and args.orientation_mode == "rotate") else 0.0

    stats = []
    bar = tqdm(total=args.subjects * n_ori, desc="simulate", unit="run")
    for s in range(args.subjects):
        sub = f"{s + 1:02d}"
        if args.phantom == "builtin":
            src = BuiltinPhantom(vox, seed=args.seed + s, texture=args.texture)
        else:
            src = HeadModelSource(
                args.head_model_dir, vox, margin_mm=margin, seed=args.seed + s, texture=args.texture
            )
        for k, (acq, rot) in enumerate(zip(acqs, rotations, strict=True)):
            bar.set_postfix_str(f"sub-{sub}" + (f" acq-{acq}" if acq else ""))
            geo = (
                {"rotation": rot}
                if args.orientation_mode == "rotate"
                else {"b0_dir": rot.T @ np.array([0.0, 0.0, 1.0])}
            )
            data = simulate_gre(
                src,
                te_s=args.echo_times,
                b0_tesla=args.b0,
                snr=snr,
                phase_offset=None if args.phase_offset == "none" else "smooth",
                seed=(args.seed, s, k),
                dephasing=args.dephasing,
                supersample=args.supersample,
                **geo,
            )
            writer.write_run(
                sub, data, acq=acq, participant={"phantom": args.phantom, "seed": args.seed + s}
            )
            b = data.brain_mask
            stats.append(
                {
                    "run": f"sub-{sub}" + (f"_acq-{acq}" if acq else ""),
                    "tilt": np.degrees(np.arccos(np.clip(abs(data.b0_dir_canonical[2]), 0, 1))),
                    "rot": rotation_angle_deg(data.rotation),
                    "total": float(np.abs(data.total_field[b]).max()) if b.any() else 0.0,
                    "local": float(np.abs(data.local_field[b]).max()) if b.any() else 0.0,
                    "sigma": data.noise_sigma,
                    "shape": data.shape,
                }
            )
            bar.update(1)
    bar.close()
    summary = writer.finish()
    dt = time.perf_counter() - t0

    print(
        f"qsmflow simulate: wrote {summary['runs']} run(s) of {summary['subjects']} subject(s), "
        f"{summary['files']} files, to {summary['root']} in {dt:.1f} s"
    )
    print(
        f"  phantom {args.phantom}, grid {stats[0]['shape']} at {vox} mm, B0 {args.b0} T, "
        f"TE {', '.join(f'{t * 1e3:g}' for t in args.echo_times)} ms, "
        f"SNR {'noise-free' if snr is None else f'{snr:g}'}, mode {args.orientation_mode}, "
        f"supersampling {args.supersample}"
    )
    print("  run                 B0 tilt   head rot   max|total| max|local|  noise sigma")
    print("                      (deg)     (deg)      brain ppm  brain ppm")
    for st in stats:
        print(
            f"  {st['run']:<18} {st['tilt']:7.1f} {st['rot']:9.1f} {st['total']:11.3f} "
            f"{st['local']:10.3f} {st['sigma']:12.4g}"
        )
    print(f"  truth: {Path(summary['root']) / 'derivatives' / 'qsmflow-simulation'}")
    return 0
