"""Held-out evaluation of the shipped ISDU-QSMNet against TKD, NDI and STAR-QSM.

Run: ``python benchmarks/isdu_heldout.py [--out DIR] [--noise-ppm 0.002] [--tilt-deg 0]
[--weights FILE] [--seed 0]``

The test phantom is the FANSI analytic brain phantom (256 x 256 x 98, 0.9375 x 0.9375 x 1.5 mm,
``$QSMFLOW_TEST_DATA/fansi_phantom``), which the shipped weights never saw in training
(``workflows/train-isdu-cpu.toml`` uses the QSM Challenge 2.0 head model and built-in phantoms
only). Its local field is simulated with the dipole forward model (zero-padded, D(0) = 0, B0
along array axis 2 or tilted by ``--tilt-deg`` about axis 0) from the susceptibility inside the
mask, plus white Gaussian noise of ``--noise-ppm`` ppm (0.002 ppm ~ single-echo phase noise at
3 T, TE 20 ms, SNR 40), masked.

Every reconstruction is made by the command line as a user would: ``qsmflow invert --method
{tkd,ndi,star,isdu}`` with default settings, then ``qsmflow evaluate`` scores all of them against
the true susceptibility inside the phantom's mask and prints the comparison table quoted in
the README. Files go to ``--out`` (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("tkd", "ndi", "star", "isdu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="keep the NIfTI files and JSON here")
    ap.add_argument("--noise-ppm", type=float, default=0.002)
    ap.add_argument("--tilt-deg", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", help="ISDU weights (default: the shipped ones)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = ap.parse_args(argv)

    from qsmflow.io.nifti import save_volume
    from qsmflow.simulate.fansi import load_fansi_phantom, simulate_local_field

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="isdu-heldout-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        ph = load_fansi_phantom()
        field, b0 = simulate_local_field(
            ph, noise_ppm=args.noise_ppm, tilt_deg=args.tilt_deg, seed=args.seed
        )
        chi, mask, vox = ph.chi, ph.mask, ph.voxel_size
        affine = np.diag([*vox, 1.0])
        save_volume(out / "localfield.nii.gz", field, affine)
        save_volume(out / "chi_true.nii.gz", chi, affine)
        save_volume(out / "mask.nii.gz", mask.astype(np.uint8), affine)
        print(
            f"FANSI phantom {chi.shape} at {vox} mm, B0 {np.round(b0, 4).tolist()}, "
            f"noise {args.noise_ppm} ppm; outputs in {out}"
        )
        exe = [sys.executable, "-m", "qsmflow"]
        recons = []
        for method in args.methods:
            dest = out / f"{method}.nii.gz"
            cmd = [*exe, "invert", str(out / "localfield.nii.gz"), "-m", str(out / "mask.nii.gz")]
            cmd += ["-o", str(dest), "--method", method, "--b0-dir", *map(str, b0)]
            if method == "isdu" and args.weights:
                cmd += ["--weights", args.weights]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            print(f"  qsmflow invert --method {method}: {time.perf_counter() - t0:.1f} s")
            recons.append(str(dest))
        cmd = [*exe, "evaluate", *recons, "-r", str(out / "chi_true.nii.gz")]
        cmd += ["-m", str(out / "mask.nii.gz"), "--json", str(out / "metrics.json")]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        table = res.stdout[res.stdout.index("Comparison") :]
        print("\n$ qsmflow evaluate " + " ".join(Path(r).name for r in recons) + " ...")
        print(table)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
