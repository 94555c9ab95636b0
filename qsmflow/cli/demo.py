"""``qsmflow demo``: the whole classical chain on the built-in phantom, step by step.

Each step is the same command a user would type (``qsmflow unwrap``, ``bgremove``, ``invert``,
``cosmos``, ``evaluate``), so the demo doubles as a worked example of the per-step interface.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METHODS = ("tkd", "cfl2", "ndi", "star")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="simulate the built-in phantom and run unwrap -> V-SHARP -> inversions -> COSMOS",
        description=(
            "Simulate a 3-orientation multi-echo GRE BIDS dataset of the built-in phantom (2 mm, "
            "3 T, oblique B0 directions), then per orientation: multi-echo field fit (Hz), "
            "V-SHARP to the local field (ppm), and for the first orientation TKD, CFL2, NDI and "
            "STAR-QSM; COSMOS from all three; finally every map is scored against the true "
            "susceptibility (ppm) inside the V-SHARP mask. The brain mask is the simulation's "
            "own (brain extraction arrives with the Nipype workflows)."
        ),
    )
    p.add_argument("output", metavar="OUTPUT_DIR", help="folder for the dataset and results")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulation")
    p.set_defaults(func=run)


def _step(argv: list[str]) -> None:
    from ..errors import QSMInputError
    from .main import main

    print("$ qsmflow " + " ".join(argv), flush=True)
    rc = main(argv)
    if rc != 0:
        raise QSMInputError(f"demo step failed (exit {rc}): qsmflow {' '.join(argv)}")


def _stack_echoes(files: list[Path], out: Path) -> None:
    import numpy as np

    from ..io.nifti import load_volume, save_volume

    vols = [load_volume(f) for f in files]
    save_volume(out, np.stack([v.data for v in vols], axis=-1), vols[0].affine)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io.nifti import load_volume, save_volume

    t0 = time.perf_counter()
    out = Path(args.output)
    bids, work = out / "bids", out / "work"
    _step(
        ["simulate", str(bids), "--orientation-mode", "oblique", "--seed", str(args.seed)]
        + (["--force"] if bids.exists() else [])
    )
    truth = bids / "derivatives" / "qsmflow-simulation" / "sub-01" / "anat"
    anat = bids / "sub-01" / "anat"
    locals_, eroded_masks = [], []
    for ori in ("ori1", "ori2", "ori3"):
        prefix = f"sub-01_acq-{ori}"
        echoes = sorted(anat.glob(f"{prefix}_echo-*_part-phase_MEGRE.nii.gz"))
        te = [
            json.loads(f.with_name(f.name.replace(".nii.gz", ".json")).read_text())["EchoTime"]
            for f in echoes
        ]
        b0 = json.loads(
            echoes[0].with_name(echoes[0].name.replace(".nii.gz", ".json")).read_text()
        )["MagneticFieldStrength"]
        _stack_echoes(echoes, work / f"{prefix}_phase.nii.gz")
        _stack_echoes(
            [Path(str(f).replace("part-phase", "part-mag")) for f in echoes],
            work / f"{prefix}_mag.nii.gz",
        )
        mask = truth / f"{prefix}_desc-brain_mask.nii.gz"
        _step(
            [
                "unwrap",
                str(work / f"{prefix}_phase.nii.gz"),
                "-o",
                str(work / f"{prefix}_field_hz.nii.gz"),
                "--magnitude",
                str(work / f"{prefix}_mag.nii.gz"),
                "-m",
                str(mask),
                "--echo-times",
                *[repr(t) for t in te],
            ]
        )
        _step(
            [
                "bgremove",
                str(work / f"{prefix}_field_hz.nii.gz"),
                "-m",
                str(mask),
                "-o",
                str(work / f"{prefix}_local_ppm.nii.gz"),
                "--mask-out",
                str(work / f"{prefix}_eroded_mask.nii.gz"),
                "--b0",
                repr(b0),
            ]
        )
        locals_.append(work / f"{prefix}_local_ppm.nii.gz")
        eroded_masks.append(work / f"{prefix}_eroded_mask.nii.gz")

    ref_mask = eroded_masks[0]
    chi_true = truth / "sub-01_acq-ori1_Chimap.nii.gz"
    labels = truth / "sub-01_acq-ori1_dseg.nii.gz"
    maps = {}
    for method in METHODS:
        maps[method] = work / f"sub-01_acq-ori1_chi_{method}.nii.gz"
        _step(
            [
                "invert",
                str(locals_[0]),
                "-m",
                str(ref_mask),
                "-o",
                str(maps[method]),
                "--method",
                method,
            ]
        )
    common = np.logical_and.reduce([load_volume(m).data > 0 for m in eroded_masks])
    common_mask = work / "sub-01_cosmos_mask.nii.gz"
    save_volume(common_mask, common.astype(np.uint8), load_volume(ref_mask).affine, dtype=np.uint8)
    maps["cosmos"] = work / "sub-01_chi_cosmos.nii.gz"
    _step(["cosmos", *map(str, locals_), "-m", str(common_mask), "-o", str(maps["cosmos"])])

    results = {}
    for name, path in maps.items():
        js = work / f"{path.name.replace('.nii.gz', '')}_metrics.json"
        _step(
            [
                "evaluate",
                str(path),
                "--reference",
                str(chi_true),
                "--mask",
                str(common_mask),
                "--labels",
                str(labels),
                "--json",
                str(js),
            ]
        )
        results[name] = json.loads(js.read_text())
    summary = out / "demo_metrics.json"
    from ..io.nifti import write_json

    write_json(summary, results)
    print(f"\nqsmflow demo: finished in {time.perf_counter() - t0:.0f} s")
    print(f"{'method':<8} {'NRMSE %':>8} {'HFEN %':>8} {'XSIM':>7} {'SSIM16':>7} {'corr':>6}")
    for name, r in results.items():
        q, c = r["qsmci"], r["challenge"]
        print(
            f"{name:<8} {q['nrmse']:8.1f} {q['hfen']:8.1f} {q['xsim']:7.3f} "
            f"{c['ssim']:7.3f} {q['correlation']:6.3f}"
        )
    print(
        f"(QSM-CI definitions except SSIM16 = 2016 challenge SSIM; all maps and metrics "
        f"under {out})"
    )
    return 0
