"""The supplement's comparison on one CPU budget: every network of the zoo trained on the same
patches for the same CPU time, then scored on held-out data beside NDI and STAR-QSM.

Run: ``python benchmarks/comparison.py [--budget 600] [--cases fansi head-3t-1mm]
[--out DIR] [--patches 256] [--threads 2] [--rows isdu qsmnet ...]``

Training (:mod:`qsmflow.training.trainer`, each model's preset in ``workflows/``):

* **The same patches for every model**: ``--patches`` 32^3 patches simulated once, before any
  training, by :class:`qsmflow.training.synthetic.PhantomPatchDataset` (QSM Challenge 2.0 head
  model at 0.8-1.2 mm and anisotropic voxels, built-in phantoms, random contrast and texture,
  field noise up to 0.004 ppm, B0 within 10 degrees of the third axis so that the data-driven
  nets see what they assume), seed 0. Every epoch draws a random subset of
  :data:`EPOCH_PATCHES` of them (the same seeded order for every model).
* **The same CPU budget for every model**: epochs run until the process CPU time spent in
  training (``time.process_time``, all threads) reaches ``--budget`` seconds; the last epoch
  finishes, so a model may overshoot by one epoch (reported). ISDU-QSMNet spends half its
  budget on K = 1 and half on K = 4 (unshared, initialised from K = 1: the paper's recipe);
  SpiNet-QSM trains K = 3 with one shared denoiser; the ablation rows are ISDU K = 1 with each
  denoiser, each with the whole budget.
* Each preset's batch size, learning rate and loss (the supplement's: data-driven nets batch
  8 and MSE, QSMnet the combined loss; model-based nets batch 2, combined loss; Adam 1e-4) and
  the paper's full model sizes.

Held-out cases (never used in training):

Both are cropped to the scoring mask's bounding box plus 16 voxels (:func:`crop_case`).

* ``fansi``: the FANSI analytic brain phantom (256 x 256 x 98, 0.9375 x 0.9375 x 1.5 mm), its
  local field from the dipole model plus 0.002 ppm noise, B0 along the third axis; scored in
  its mask against the true susceptibility.
* ``head-3t-1mm`` (``head-3t-2mm`` for a quick look): the realistic 3 T acquisition of
  ``benchmarks/realistic.py`` (multi-echo GRE, T2*, anisotropy, texture, veins, residual
  background) through our mask, field fit and V-SHARP; scored in the V-SHARP mask against the
  true susceptibility, with its head-model labels for the ROI table.

Both maps are demeaned inside the scoring mask (the dipole kernel leaves the mean undetermined),
then scored with the 2016 challenge's SSIM, PSNR, HFEN and RMSE (the supplement's table, the
authors' MATLAB definitions) and the 2.0 challenge's XSIM. Outputs in ``--out``: the tables
(``comparison.txt``, ``comparison.json``), the Table-1 ROI table of each labelled case
(``roi_<case>.tsv`` / ``.html``), the Figure-1-style comparison (``comparison_<case>.png``) and
the Figure-6-style denoiser ablation (``ablation_<case>.png``), all drawn by
:mod:`qsmflow.evaluation.figures` and :mod:`qsmflow.evaluation.roi_table`, and every trained
model under ``models/<row>/final.pt``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing qsmflow

DATA = Path(os.environ.get("QSMFLOW_TEST_DATA", ROOT.parent / "shared" / "data"))

#: Patches drawn per epoch (a random subset of the shared set, the paper's "RS").
EPOCH_PATCHES = 8

#: Table rows: name -> (preset, stage of the preset, [model] overrides, share of the budget).
#: "isdu" is two rows of training (K = 1 then K = 4) sharing one budget.
NETWORKS: dict[str, list[tuple[str, str, dict[str, Any], float]]] = {
    "isdu": [("train-isdu.toml", "k1", {}, 0.5), ("train-isdu.toml", "k4", {}, 0.5)],
    "spinet": [("train-spinet.toml", "train", {}, 1.0)],
    "lpcnn": [("train-lpcnn.toml", "train", {}, 1.0)],
    "qsmnet": [("train-qsmnet.toml", "train", {}, 1.0)],
    "deepqsm": [("train-deepqsm.toml", "train", {}, 1.0)],
    "xqsm": [("train-xqsm.toml", "train", {}, 1.0)],
}
#: The denoiser ablation (ISDU K = 1 with each denoiser).
ABLATION = {
    f"k1-{d}": [("train-isdu.toml", "k1", {"denoiser": d}, 1.0)]
    for d in ("wideresnet", "simple-cnn", "unet-mini", "unet-heavy")
}
CLASSICAL = ("ndi", "star")
CASES = ("fansi", "head-3t-1mm", "head-3t-2mm")


class FixedPatches:
    """A map-style dataset of patches simulated once (every model sees the same ones)."""

    def __init__(self, items: list[dict[str, Any]], description: dict[str, Any]) -> None:
        self.items = items
        self.description = description
        self.kernel_k0 = 1.0 / 3.0
        masks = [it["mask"].numpy() > 0 for it in items]
        chi = np.concatenate([it["chi"].numpy()[m] for it, m in zip(items, masks, strict=True)])
        phi = np.concatenate([it["phi"].numpy()[m] for it, m in zip(items, masks, strict=True)])
        self.normalisation = {
            "chi": {"mean": float(chi.mean()), "std": float(chi.std()), "count": chi.size},
            "field": {"mean": float(phi.mean()), "std": float(phi.std()), "count": phi.size},
        }

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    def describe(self) -> dict[str, Any]:
        return dict(self.description)


def make_patches(count: int, seed: int) -> FixedPatches:
    from qsmflow.training.synthetic import PhantomPatchDataset

    source = PhantomPatchDataset(count, 32, seed=seed, max_tilt_deg=10.0)
    source.set_epoch(0)
    keep = ("phi", "chi", "mask", "kernel")
    items = [{k: v for k, v in source[i].items() if k in keep} for i in range(count)]
    return FixedPatches(items, {**source.describe(), "fixed": True, "count": count})


def train_row(
    name: str, stages: list, patches: FixedPatches, out: Path, budget: float
) -> dict[str, Any]:
    """Train one table row within ``budget`` CPU seconds; returns its training record."""
    from qsmflow.training.config import load_train_preset, train_config_from_dict
    from qsmflow.training.trainer import Trainer

    record: dict[str, Any] = {"stages": []}
    previous = None
    for preset_name, stage_name, model_over, share in stages:
        preset = load_train_preset(ROOT / "workflows" / preset_name)
        values = dict(dict(preset.stages)[stage_name])
        values["model"] = {**values.get("model", {}), **model_over}
        if values.get("init_from") == "previous":
            values["init_from"] = str(previous)
        values.update(
            output_dir=str(out / name / stage_name),
            epochs=10**6,
            patches_per_epoch=EPOCH_PATCHES,
            device="cpu",
            num_workers=0,
            progress=False,
        )
        trainer = Trainer(train_config_from_dict(values), patches)
        cpu, wall0, epoch, seen, loss = 0.0, time.perf_counter(), 0, 0, float("nan")
        while cpu < share * budget:
            c0 = time.process_time()
            stats = trainer.train_epoch(epoch)
            cpu += time.process_time() - c0
            trainer.history.append({"epoch": epoch + 1, **stats})
            epoch, seen, loss = epoch + 1, seen + stats["patches"], stats["train_loss"]
        previous = trainer.save_final(epoch)
        record["stages"].append(
            {
                "preset": preset_name,
                "stage": stage_name,
                "model": values["model"],
                "batch_size": values["batch_size"],
                "loss": values["loss"],
                "cpu_s": round(cpu, 1),
                "wall_s": round(time.perf_counter() - wall0, 1),
                "epochs": epoch,
                "patches": seen,
                "last_loss": loss,
            }
        )
        print(
            f"  {name:<16} {stage_name:<6} {epoch:4d} epochs, {seen:5d} patches, "
            f"{cpu:6.0f} CPU-s ({time.perf_counter() - wall0:5.0f} s), last loss {loss:.4g}",
            flush=True,
        )
    record["weights"] = str(previous)
    return record


#: Voxels kept around the scoring mask's bounding box (the cases are cropped to it, so every
#: method computes on the same box and no time goes to empty field of view).
CROP_MARGIN = 16


def crop_case(case: dict[str, Any]) -> dict[str, Any]:
    """``case`` cropped to its mask's bounding box + :data:`CROP_MARGIN` voxels."""
    from qsmflow.models.inference import mask_box

    box = mask_box(case["mask"], CROP_MARGIN)
    shift = np.eye(4)
    shift[:3, 3] = [b.start for b in box]
    out = dict(case, affine=np.asarray(case["affine"]) @ shift)
    for key in ("field", "mask", "truth", "labels"):
        if out[key] is not None:
            out[key] = np.ascontiguousarray(out[key][box])
    return out


def load_case(case: str, work: Path) -> dict[str, Any]:
    """Field (ppm), mask, truth, voxel size, B0 direction, affine and labels of a case, cropped
    to the mask's box (:func:`crop_case`)."""
    if case == "fansi":
        from qsmflow.simulate.fansi import load_fansi_phantom, simulate_local_field

        ph = load_fansi_phantom()
        field, b0 = simulate_local_field(ph, noise_ppm=0.002, seed=0)
        vox = tuple(float(v) for v in ph.voxel_size)
        return crop_case(
            {
                "field": field,
                "mask": np.asarray(ph.mask, bool),
                "truth": np.asarray(ph.chi, np.float32),
                "voxel_size": vox,
                "b0": tuple(float(v) for v in b0),
                "affine": np.diag([*vox, 1.0]),
                "labels": None,
            }
        )
    from qsmflow.evaluation.realistic import process_acquisition
    from qsmflow.io.nifti import load_volume
    from qsmflow.simulate.realism import simulate_realistic

    vox = (2.0, 2.0, 2.0) if case.endswith("2mm") else (1.0, 1.0, 1.0)
    gre = simulate_realistic("3t", voxel_size=vox, directory=DATA / "qsm2_head_model", seed=1)
    proc = process_acquisition(gre, work / case)
    local = load_volume(proc.local_field)
    return crop_case(
        {
            "field": proc.local_field_ppm,
            "mask": proc.local_mask,
            "truth": np.asarray(gre.chi, np.float32),
            "voxel_size": tuple(float(v) for v in local.voxel_size),
            "b0": tuple(float(v) for v in local.b0_dir),
            "affine": np.asarray(gre.affine, float),
            "labels": np.asarray(gre.labels),
        }
    )


def reconstruct(row: str, weights: str | None, case: dict[str, Any]) -> tuple[np.ndarray, float]:
    """(chi ppm, seconds) of one row on one case."""
    t0 = time.perf_counter()
    if weights is None:
        from qsmflow.physics.inversion import invert, resolve_options

        chi = invert(
            row, case["field"], case["mask"], case["voxel_size"], case["b0"],
            **resolve_options(row, {}),
        )  # fmt: skip
    else:
        from qsmflow.models.checkpoints import load_model
        from qsmflow.models.inference import predict_volume

        _, model = load_model(weights)
        chi = predict_volume(
            model, case["field"], case["mask"], case["voxel_size"], case["b0"], device="cpu"
        )
    return np.asarray(chi, np.float32), time.perf_counter() - t0


def demeaned(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, a - a[mask].mean(), 0.0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=600.0, help="CPU seconds per model")
    ap.add_argument("--patches", type=int, default=256, help="size of the shared patch set")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=["fansi", "head-3t-1mm"])
    ap.add_argument("--rows", nargs="+", help="train and score only these rows")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="output folder (default: a new temporary folder)")
    args = ap.parse_args(argv)
    if not (DATA / "qsm2_head_model").is_dir() or not (DATA / "fansi_phantom").is_dir():
        print(f"skipped: no head model / FANSI phantom in {DATA} (set QSMFLOW_TEST_DATA)")
        return 0

    import matplotlib.pyplot as plt
    import torch

    from qsmflow.evaluation.figures import comparison_figure, save_figure
    from qsmflow.evaluation.metrics import score
    from qsmflow.evaluation.roi_table import SubjectMaps, roi_table

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="qsmflow-comparison-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = {**NETWORKS, **ABLATION}
    if args.rows:
        rows = {k: v for k, v in rows.items() if k in args.rows}
    classical = [c for c in CLASSICAL if not args.rows or c in args.rows]
    cpu_name = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln), "?"
    )
    print(
        f"budget: {args.budget:g} CPU-s per model (process time, {args.threads} threads, "
        f"{cpu_name}); {args.patches} shared 32^3 patches, {EPOCH_PATCHES} per epoch; "
        f"output {out}",
        flush=True,
    )

    t0 = time.process_time()
    patches = make_patches(args.patches, args.seed)
    print(f"patches simulated in {time.process_time() - t0:.0f} CPU-s", flush=True)
    training = {}
    for name, stages in rows.items():
        try:
            training[name] = train_row(name, stages, patches, out / "models", args.budget)
        except Exception as exc:  # one failed row must not lose the others
            print(f"  {name}: training failed: {exc!r}", flush=True)

    results: dict[str, Any] = {
        "budget_cpu_s": args.budget,
        "threads": args.threads,
        "cpu": cpu_name,
        "patches": patches.describe(),
        "training": training,
        "cases": {},
    }
    lines = []
    for case_name in args.cases:
        t0 = time.perf_counter()
        case = load_case(case_name, out / "work")
        mask, truth = case["mask"], demeaned(case["truth"], case["mask"])
        print(f"\n{case_name}: {case['field'].shape}, ready in {time.perf_counter() - t0:.0f} s")
        maps, scores, seconds = {}, {}, {}
        for name in [*training, *classical]:
            weights = training[name]["weights"] if name in training else None
            try:
                chi, sec = reconstruct(name, weights, case)
            except Exception as exc:  # report the row as failed, keep the table
                print(f"  {name:<16} failed: {exc!r}", flush=True)
                continue
            maps[name] = demeaned(chi, mask)
            scores[name] = score(maps[name], truth, mask)
            seconds[name] = sec
            print(f"  {name:<16} inverted in {sec:5.1f} s", flush=True)
        header = f"{case_name}: {'row':<16} {'SSIM':>6} {'PSNR dB':>8} {'HFEN %':>7} "
        header += f"{'RMSE %':>7} {'XSIM':>6} {'time s':>7}"
        lines += ["", header, "-" * len(header)]
        for name, s in scores.items():
            c = s["challenge"]
            lines.append(
                f"{'':<{len(case_name) + 2}}{name:<16} {c['ssim']:6.3f} {c['psnr']:8.2f} "
                f"{c['hfen']:7.1f} {c['rmse']:7.1f} {c['xsim']:6.3f} {seconds[name]:7.1f}"
            )
        print("\n".join(lines[-len(scores) - 2 :]), flush=True)
        results["cases"][case_name] = {
            "shape": list(case["field"].shape),
            "voxel_size": list(case["voxel_size"]),
            "scores": {k: v["challenge"] for k, v in scores.items()},
            "seconds": seconds,
        }
        main_rows = [n for n in [*NETWORKS, *classical] if n in maps]
        abl_rows = [n for n in ABLATION if n in maps]
        for fname, names, title in (
            ("comparison", main_rows, "networks and classical inversions"),
            ("ablation", abl_rows, "ISDU K = 1 denoiser ablation"),
        ):
            if not names:
                continue
            fig = comparison_figure(
                truth,
                {n: maps[n] for n in names},
                reference_name="truth",
                affine=case["affine"],
                metrics={n: scores[n] for n in names},
                mask=mask,
                window=(-0.1, 0.1),
                title=f"{case_name}: {title} ({args.budget:g} CPU-s each)",
            )
            save_figure(fig, out / f"{fname}_{case_name}.png")
            plt.close(fig)
        if case["labels"] is not None:
            subject = SubjectMaps(
                reference=truth,
                maps={n: maps[n] for n in [*NETWORKS, *classical] if n in maps},
                labels=case["labels"],
                mask=mask,
                reference_name="truth",
            )
            table = roi_table({case_name: subject}, min_voxels=20)
            table.to_tsv(out / f"roi_{case_name}.tsv")
            (out / f"roi_{case_name}.html").write_text(
                table.to_html(caption=f"{case_name}: ROI mean ± SD (ppm) and r with the truth")
            )
        (out / "comparison.txt").write_text("\n".join(lines) + "\n")
        (out / "comparison.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"\ntables, figures and models in {out}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
