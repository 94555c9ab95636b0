"""Time and peak memory of each physics step on a 224x224x126 volume (7T multi-orientation size).

Run: ``python benchmarks/physics.py [--repeats 3] [--shape 224 224 126]``

Inputs: the brain mask of LPCNN Sub001 (224x224x126, 0.982x0.982x1 mm) and its five measured
B0 directions when ``$QSMFLOW_TEST_DATA`` (default ../shared/data) is present, otherwise an
ellipsoidal mask and a spread set of directions. The susceptibility is a smooth random texture
plus a few strong spheres; fields come from the forward model. Every step runs in a fresh
process (see _harness.py): warm-up call, then the best and median of ``--repeats`` calls;
peak memory = maximum RSS minus RSS before the timed calls.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, print_table  # noqa: E402

DATA = Path(
    os.environ.get("QSMFLOW_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
VOXEL = (0.982, 0.982, 1.0)
TE_S = 0.015
B0_T = 7.0


def _inputs(shape):
    from scipy import ndimage

    from qsmflow.physics.forward import forward_field
    from qsmflow.physics.units import ppm_to_rad

    rng = np.random.default_rng(0)
    mask_file = DATA / "lpcnn_7t_orientations" / "Sub001" / "cosmos" / "Sub001_mask.nii.gz"
    dirs = None
    if mask_file.exists() and tuple(shape) == (224, 224, 126):
        import nibabel as nib

        mask = np.asarray(nib.load(mask_file).dataobj) > 0
        from qsmflow.simulate.orientations import load_lpcnn_orientations

        dirs = load_lpcnn_orientations(DATA / "lpcnn_7t_orientations" / "Sub001")
    else:
        g = np.indices(shape, dtype=np.float32)
        c = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
        r = np.sqrt((((g - c) / (0.4 * c)) ** 2).sum(0))
        mask = r < 1
    if dirs is None:
        from qsmflow.physics.geometry import rotation_matrix

        dirs = np.array(
            [
                rotation_matrix(a, t) @ [0, 0, 1]
                for a, t in (
                    ((1, 0, 0), 0),
                    ((1, 0, 0), 25),
                    ((1, 0, 0), -25),
                    ((0, 1, 0), 25),
                    ((0, 1, 0), -25),
                )
            ]
        )
    chi = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3) * 0.3
    chi[~mask] = 0
    local = forward_field(chi, VOXEL, dirs[0])
    phase = np.angle(np.exp(1j * ppm_to_rad(local * 40, TE_S, B0_T))).astype(np.float32)
    fields = np.stack([forward_field(chi, VOXEL, d) * mask for d in dirs])
    magnitude = (mask * (1.0 - 2.0 * chi)).astype(np.float32)  # a chi-contrast magnitude
    return {
        "mask": mask,
        "magnitude": magnitude,
        "chi": chi,
        "local": local * mask,
        "phase": phase,
        "fields": fields,
        "dirs": np.asarray(dirs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=(224, 224, 126))
    args = ap.parse_args()
    shape = tuple(args.shape)
    cache = {}

    def setup():
        if "x" not in cache:
            cache["x"] = _inputs(shape)
        return cache["x"]

    setup()  # build once in the parent; forked children inherit it

    from qsmflow.physics import _fft
    from qsmflow.physics.bgremove import vsharp
    from qsmflow.physics.cosmos import cosmos
    from qsmflow.physics.forward import forward_field
    from qsmflow.physics.inversion import cfl2, ndi, star_qsm, tkd, tv
    from qsmflow.physics.unwrap import laplacian_unwrap

    def torch_rfft(x):
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        t = torch.from_numpy(x["chi"])
        return torch.fft.irfftn(torch.fft.rfftn(t), s=t.shape)

    steps = [
        (
            "FFT pair rfftn+irfftn f32 (scipy)",
            lambda x: _fft.irfftn(_fft.rfftn(x["chi"]), shape),
            None,
        ),
        ("FFT pair rfftn+irfftn f32 (torch)", torch_rfft, None),
        ("forward field (2x padded)", lambda x: forward_field(x["chi"], VOXEL, x["dirs"][0]), None),
        (
            "Laplacian unwrap (one echo)",
            lambda x: laplacian_unwrap(x["phase"], VOXEL, mask=x["mask"]),
            0.5,
        ),
        (
            "V-SHARP 12..1 mm (per-radius, default)",
            lambda x: vsharp(x["local"], x["mask"], VOXEL),
            1.5,
        ),
        (
            "V-SHARP 12..1 mm (classic, largest)",
            lambda x: vsharp(x["local"], x["mask"], VOXEL, deconvolution="largest"),
            1.5,
        ),
        ("TKD (0.3)", lambda x: tkd(x["local"], x["mask"], VOXEL, x["dirs"][0]), 0.15),
        ("CFL2 (0.01)", lambda x: cfl2(x["local"], x["mask"], VOXEL, x["dirs"][0]), None),
        (
            "NDI (200 iterations)",
            lambda x: ndi(x["local"], x["mask"], VOXEL, x["dirs"][0], iterations=200),
            20.0,
        ),
        (
            "NDI (default, 15 iterations)",
            lambda x: ndi(x["local"], x["mask"], VOXEL, x["dirs"][0]),
            None,
        ),
        ("STAR-QSM", lambda x: star_qsm(x["local"], x["mask"], VOXEL, x["dirs"][0]), None),
        (
            "TV-ADMM (default, magnitude weights)",
            lambda x: tv(x["local"], x["mask"], VOXEL, x["dirs"][0], weights=x["magnitude"]),
            30.0,
        ),
        (
            "COSMOS 5 orientations (closed form)",
            lambda x: cosmos(x["fields"], x["dirs"], VOXEL, x["mask"], method="closed"),
            0.5,
        ),
        (
            "COSMOS 5 orientations (default)",
            lambda x: cosmos(x["fields"], x["dirs"], VOXEL, x["mask"]),
            None,
        ),
    ]
    rows = []
    for name, step, goal in steps:
        r = measure(setup, step, repeats=args.repeats)
        r.update(name=name, goal_s=goal)
        rows.append(r)
        print(f"  {name}: {r['best_s']:.3f} s", flush=True)
    print_table(
        rows,
        f"qsmflow physics on {shape[0]}x{shape[1]}x{shape[2]} (float32, "
        f"{os.cpu_count()} cores, scipy.fft workers={_fft.WORKERS})",
    )


if __name__ == "__main__":
    main()
