"""Time, peak memory and accuracy of the Python backends and of a whole ``qsmflow run``.

Run: ``python benchmarks/pipeline.py [--repeat N] [--quick] [--items mask registration run]``

1. Brain extraction (:func:`qsmflow.masking.brain_mask`) of the real SNU 3T magnitude
   (176x176x160, 1 mm, ``$QSMFLOW_TEST_DATA/snu_magnitude``): time, peak memory (goal <= 20 s),
   and the Dice coefficient against the shipped mask.
2. Rigid registration, Python backend, exactly as the pipeline runs it
   (:func:`qsmflow.registration.files.register_files` on NIfTI files, ``backend="python"``:
   ``register_arrays`` with ``iterations=PYTHON_MAX_ITERATIONS`` and ``REGISTRATION_THREADS``):
   the SNU magnitude against itself rotated 25 deg about the oblique axis (1, 0.6, 0.4) and
   shifted (6, -6, 5) mm (9.8 mm), plus Gaussian noise of 3 % (the pair of
   ``tests/test_registration.py``). Time per pair (goal <= 30 s) and the rotation / translation
   errors against the known transform (goal 0.3 deg / 0.3 mm).
3. ``qsmflow run BIDS OUT participant --pipeline cosmos --mask-backend python
   --registration-backend python`` as a subprocess (``python -m qsmflow``, so start-up is
   included) on a 3-orientation head-model dataset at 2 mm (``qsmflow simulate --phantom
   head-model --voxel-size 2 --orientations 3 --max-rotation-deg 25 --seed 1``, simulated once
   and not timed): with ``--plugin Linear``, with ``--plugin MultiProc --nprocs 2`` (each in a
   fresh work and output folder), and a rerun of the Linear one with the same work (and output)
   folder, where everything is cached (checked: no node's ``result_*.pklz`` in the work
   folder is rewritten, as in ``tests/test_pipeline_e2e.py``). ``--quick`` skips the MultiProc
   run and, unless ``--repeat`` is given, runs every step once.

Steps 1-2 run in a fresh forked process each (like ``_harness.measure``): best and median of
``--repeat`` calls (brain extraction after one warm-up call; registration without one, its
imports being done beforehand); peak memory = maximum RSS minus RSS before the timed calls. For
step 3 each ``qsmflow run`` is timed once (reruns ``--repeat`` times) and peak memory is the
maximum RSS of the ``qsmflow`` process or of any process it waited for (``wait4``), not a sum
over parallel workers. Items whose test data is missing are skipped with a message.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import _rss_mb, print_table  # noqa: E402

DATA = Path(
    os.environ.get("QSMFLOW_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
SNU = DATA / "snu_magnitude"
HEAD_MODEL = DATA / "qsm2_head_model"

MASK_GOAL_S = 20.0
REGISTRATION_GOAL_S = 30.0
REGISTRATION_GOAL_DEG = 0.3
REGISTRATION_GOAL_MM = 0.3
#: The known transform of item 2 (reference world -> moving world), as in the tests.
TRUE_AXIS, TRUE_ANGLE_DEG, TRUE_SHIFT_MM = (1.0, 0.6, 0.4), 25.0, (6.0, -6.0, 5.0)
NOISE = 0.03  # 3 % of the white-matter magnitude (the SNU magnitude is normalised, WM ~ 1)
ITEMS = ("mask", "registration", "run")


# ------------------------------------------------------------------------------------------------
# measurement in a forked child, with a summary of the step's output


def _child(setup, step, summary, repeats: int, warmup: bool, queue) -> None:
    try:
        inputs = setup()
        if warmup:
            step(inputs)  # FFT plans, imports, caches
        base = _rss_mb()
        times, out = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = step(inputs)
            times.append(time.perf_counter() - t0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB
        info = summary(inputs, out) if summary is not None else {}
        queue.put((min(times), sorted(times)[len(times) // 2], max(peak - base, 0.0), info, None))
    except Exception as exc:  # report, do not kill the whole table
        queue.put((float("nan"), float("nan"), float("nan"), {}, repr(exc)))


def measure(
    setup: Callable[[], Any],
    step: Callable[[Any], Any],
    summary: Callable[[Any, Any], dict] | None = None,
    repeats: int = 3,
    warmup: bool = True,
) -> dict:
    """``_harness.measure`` plus ``summary(inputs, last_output)`` returned as ``info``."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(setup, step, summary, repeats, warmup, queue))
    proc.start()
    best, median, peak, info, error = queue.get()
    proc.join()
    return {"best_s": best, "median_s": median, "peak_mb": peak, "info": info, "error": error}


# ------------------------------------------------------------------------------------------------
# inputs


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _load_snu() -> tuple[np.ndarray, np.ndarray]:
    import scipy.io as sio

    mag = sio.loadmat(SNU / "mag1.mat")["mag"].astype(np.float32)
    msk = sio.loadmat(SNU / "msk1.mat")["msk"] > 0
    return mag, msk


def _centred_affine(shape, vox: float = 1.0) -> np.ndarray:
    a = np.diag([vox, vox, vox, 1.0])
    a[:3, 3] = -vox * (np.asarray(shape) - 1) / 2.0
    return a


def _rigid(axis, angle_deg: float, t_mm) -> np.ndarray:
    from qsmflow.physics.geometry import rotation_matrix

    m = np.eye(4)
    m[:3, :3] = rotation_matrix(axis, angle_deg)
    m[:3, 3] = t_mm
    return m


def _registration_pair(folder: Path) -> dict:
    """Write the SNU magnitude and its rotated/shifted/noisy copy as NIfTI files in ``folder``.

    moving(u) = ref at ref-voxel A^-1 T^-1 A u (scipy, independent of the package's resampler).
    """
    import nibabel as nib
    from scipy import ndimage

    mag, _ = _load_snu()
    a = _centred_affine(mag.shape)
    t_true = _rigid(TRUE_AXIS, TRUE_ANGLE_DEG, TRUE_SHIFT_MM)
    m = np.linalg.inv(a) @ np.linalg.inv(t_true) @ a
    mov = ndimage.affine_transform(mag, m[:3, :3], offset=m[:3, 3], output_shape=mag.shape, order=1)
    mov = mov + np.random.default_rng(3).normal(0.0, NOISE, mov.shape).astype(np.float32)
    ref_file, mov_file = folder / "reference.nii.gz", folder / "moving.nii.gz"
    nib.save(nib.Nifti1Image(mag, a), ref_file)
    nib.save(nib.Nifti1Image(mov.astype(np.float32), a), mov_file)
    return {"reference": ref_file, "moving": mov_file, "t_true": t_true}


# ------------------------------------------------------------------------------------------------
# items 1 and 2


def bench_mask(repeats: int) -> tuple[dict, list[tuple]]:
    from qsmflow.masking import brain_mask

    cache: dict = {}

    def setup():
        if "x" not in cache:
            cache["x"] = _load_snu()
        return cache["x"]

    setup()  # load once in the parent; the forked child inherits it
    r = measure(
        setup,
        lambda x: brain_mask(x[0], 1.0),
        lambda x, m: {"dice": _dice(m, x[1])},
        repeats=repeats,
    )
    shape = "x".join(map(str, cache["x"][0].shape))
    r.update(name=f"brain mask (python) SNU {shape}", goal_s=MASK_GOAL_S)
    acc = []
    if "dice" in r["info"]:
        acc.append(("brain mask Dice vs shipped mask", f"{r['info']['dice']:.4f}", "", ""))
    return r, acc


def bench_registration(repeats: int, tmp: Path) -> tuple[dict, list[tuple]]:
    from qsmflow.physics.geometry import rotation_angle_deg
    from qsmflow.registration.files import (
        PYTHON_MAX_ITERATIONS,
        REGISTRATION_THREADS,
        register_files,
    )

    pair = _registration_pair(tmp)

    def setup():
        import SimpleITK  # noqa: F401  (imports outside the timing; no warm-up call)

        return pair

    def step(p):
        return register_files(p["moving"], p["reference"], backend="python")

    def summary(p, outcome):
        t, t_true = outcome.transform, p["t_true"]
        return {
            "rot_err_deg": rotation_angle_deg(t[:3, :3].T @ t_true[:3, :3]),
            "tr_err_mm": float(np.linalg.norm(t[:3, 3] - t_true[:3, 3])),
            "angle_deg": outcome.angle_deg,
        }

    r = measure(setup, step, summary, repeats=repeats, warmup=False)
    r.update(
        name=f"rigid registration (python) {TRUE_ANGLE_DEG:g} deg",
        goal_s=REGISTRATION_GOAL_S,
    )
    print(
        f"    (register_files backend=python: iterations={PYTHON_MAX_ITERATIONS} per level, "
        f"threads={REGISTRATION_THREADS}; true shift "
        f"{np.linalg.norm(TRUE_SHIFT_MM):.1f} mm, noise {NOISE:.0%})",
        flush=True,
    )
    acc = []
    info = r["info"]
    if info:

        def ok(v, goal):
            return "yes" if v <= goal else "NO"

        rot, tr = info["rot_err_deg"], info["tr_err_mm"]
        acc.append(
            (
                "registration rotation error [deg]",
                f"{rot:.3f}",
                f"{REGISTRATION_GOAL_DEG:.2f}",
                ok(rot, REGISTRATION_GOAL_DEG),
            )
        )
        acc.append(
            (
                "registration translation error [mm]",
                f"{tr:.3f}",
                f"{REGISTRATION_GOAL_MM:.2f}",
                ok(tr, REGISTRATION_GOAL_MM),
            )
        )
        acc.append(("registration angle found [deg]", f"{info['angle_deg']:.3f}", "", ""))
    return r, acc


# ------------------------------------------------------------------------------------------------
# item 3


def _run_timed(argv: list[str], log: Path) -> tuple[float, float, int]:
    """Run ``argv``, output to ``log``: (wall s, max RSS MB of it and its waited children, rc)."""
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode


def _tail(log: Path, n: int = 5) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(lines[-n:])


def _row(name: str, times: list[float], peak: float, error: str | None, goal=None) -> dict:
    nan = float("nan")
    return {
        "name": name,
        "best_s": min(times) if times else nan,
        "median_s": sorted(times)[len(times) // 2] if times else nan,
        "peak_mb": peak,
        "goal_s": goal,
        "error": error,
    }


def _result_files(work: Path) -> dict[str, int]:
    """Nipype's per-node result files and their modification times (as the e2e test)."""
    return {str(p): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}


def bench_run(repeats: int, quick: bool, tmp: Path, acc: list[tuple]) -> list[dict]:
    """Rows of item 3; appends the rerun's cache check to ``acc``."""
    py = sys.executable
    bids = tmp / "bids"
    sim = [py, "-m", "qsmflow", "simulate", str(bids), "--phantom", "head-model"]
    sim += ["--head-model-dir", str(HEAD_MODEL), "--voxel-size", "2", "--orientations", "3"]
    sim += ["--max-rotation-deg", "25", "--seed", "1"]
    wall, _, rc = _run_timed(sim, tmp / "simulate.log")
    if rc != 0:
        print(f"  simulate failed (exit {rc}): {_tail(tmp / 'simulate.log')}", flush=True)
        return [_row("qsmflow simulate", [], float("nan"), f"exit {rc}")]
    print(f"  simulated the 3-orientation head model at 2 mm in {wall:.1f} s (not timed)")

    base = [py, "-m", "qsmflow", "run", str(bids)]
    opts = ["participant", "--pipeline", "cosmos"]
    opts += ["--mask-backend", "python", "--registration-backend", "python"]

    def run_once(tag: str, plugin: list[str], out: Path, work: Path) -> tuple[float, float, str]:
        log = tmp / f"{tag}.log"
        argv = [*base, str(out), *opts, "--work-dir", str(work), *plugin]
        wall, peak, rc = _run_timed(argv, log)
        err = None if rc == 0 else f"exit {rc}: {_tail(log)}"
        print(f"  {tag}: {wall:.1f} s, exit {rc}", flush=True)
        return wall, peak, err

    rows = []
    variants = [("linear", ["--plugin", "Linear"], "qsmflow run cosmos, Linear")]
    if not quick:
        variants.append(
            (
                "multiproc",
                ["--plugin", "MultiProc", "--nprocs", "2"],
                "qsmflow run cosmos, MultiProc x2",
            )
        )
    for tag, plugin, name in variants:
        out, work = tmp / f"out-{tag}", tmp / f"work-{tag}"
        for d in (out, work):  # fresh folders
            shutil.rmtree(d, ignore_errors=True)
        wall, peak, err = run_once(tag, plugin, out, work)
        rows.append(_row(name, [wall], peak, err))
        if tag == "linear":
            reruns, peaks, rerr = [], [], err
            before = _result_files(work)
            for i in range(repeats if err is None else 0):
                w, p, e = run_once(f"linear-rerun{i + 1}", plugin, out, work)
                if e is not None:
                    rerr = e
                    break
                reruns.append(w)
                peaks.append(p)
            if reruns:
                after = _result_files(work)
                redone = sum(after.get(k) != v for k, v in before.items()) + len(
                    after.keys() - before.keys()
                )
                acc.append(
                    (
                        "rerun: nodes re-executed",
                        f"{redone}/{len(before)}",
                        "0",
                        "yes" if redone == 0 else "NO",
                    )
                )
            rows.append(
                _row(
                    "rerun, same work dir (all cached)",
                    reruns,
                    max(peaks) if peaks else float("nan"),
                    rerr if not reruns else None,
                )
            )
    return rows


# ------------------------------------------------------------------------------------------------


def _print_accuracy(acc: list[tuple]) -> None:
    if not acc:
        return
    header = f"{'accuracy and checks':<38} {'value':>9} {'goal':>9}  ok"
    print()
    print(header)
    print("-" * len(header))
    for name, value, goal, ok in acc:
        print(f"{name:<38} {value:>9} {goal:>9}  {ok}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--repeat",
        "--repeats",
        dest="repeat",
        type=int,
        default=None,
        help="timed calls per step, and reruns (default 3; 1 with --quick)",
    )
    ap.add_argument("--quick", action="store_true", help="no MultiProc run; --repeat 1")
    ap.add_argument("--items", nargs="+", choices=ITEMS, default=list(ITEMS))
    args = ap.parse_args()
    repeats = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeats < 1:
        ap.error("--repeat must be >= 1")

    rows: list[dict] = []
    acc: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="qsmflow-bench-") as tmpdir:
        tmp = Path(tmpdir)
        snu_ok = (SNU / "mag1.mat").is_file() and (SNU / "msk1.mat").is_file()
        if "mask" in args.items:
            if snu_ok:
                r, a = bench_mask(repeats)
                rows.append(r)
                acc += a
                print(f"  {r['name']}: {r['best_s']:.3f} s", flush=True)
            else:
                print(f"  skipped brain extraction: {SNU} not found (set QSMFLOW_TEST_DATA)")
        if "registration" in args.items:
            if not snu_ok:
                print(f"  skipped registration: {SNU} not found (set QSMFLOW_TEST_DATA)")
            elif importlib.util.find_spec("SimpleITK") is None:
                print("  skipped registration: SimpleITK not installed")
            else:
                r, a = bench_registration(repeats, tmp)
                rows.append(r)
                acc += a
                print(f"  {r['name']}: {r['best_s']:.3f} s", flush=True)
        if "run" in args.items:
            if (HEAD_MODEL / "SegmentedModel.nii.gz").is_file():
                rows += bench_run(repeats, args.quick, tmp, acc)
            else:
                print(f"  skipped qsmflow run: {HEAD_MODEL} not found (set QSMFLOW_TEST_DATA)")

    if not rows:
        print("nothing measured")
        return
    print_table(
        rows,
        f"qsmflow Python backends and pipeline ({os.cpu_count()} cores, repeat {repeats}"
        f"{', quick' if args.quick else ''})",
    )
    _print_accuracy(acc)


if __name__ == "__main__":
    main()
