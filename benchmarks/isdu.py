"""ISDU-QSMNet: whole-volume inference time and peak memory, and training-step throughput.

Run: ``python benchmarks/isdu.py [--quick] [--shipped | --authors] [--width 32]
[--channels-last] [--repeats 1] [--tile 80] [--devices cpu cuda]``

``--authors`` (the acceptance case of the measured-data issue): the authors' width-32 weights
(``$QSMFLOW_REFERENCE/k1_full_Spinet_QSM_model_26_.pth`` as K = 4 unshared denoisers) at 160^3,
once through qsmflow's inference and once through the authors' reference flow (their
data-consistency path, ``dc_mode="reference"``, the plain network on the whole array), in the
same run; prints the speed-up (goal >= 2x) beside the 60 s goal.

Inference (:func:`qsmflow.models.inference.predict_volume`, float32, eval mode, no_grad) of a
K = 4 unshared model on 160^3 and 224x224x126 (0.982x0.982x1 mm, oblique B0), whole volume and
tiled (``--tile`` voxels, halo 20). The weights are **random** (``ISDUQSMNet()`` as
constructed): the cost does not depend on the weight values (closed-form data consistency,
p = 2), so timings hold for trained weights too. Goals: 160^3 at K = 4 in <= 60 s and <= 6 GB
on the CPU. ``--shipped`` times the shipped default weights instead (``qsmflow/data/
isdu_default.pt``: K = 4 unshared, width 16), i.e. what ``qsmflow invert --method isdu`` runs.
The denoisers run fused (BatchNorm folded, channels_last_3d; ``predict_volume(fuse=True)``).

Training step (patches/s): 64^3 patches, K = 4 unshared, batch 2, forward + backward + Adam
(lr 1e-4) with the authors' combined L1 loss (qsmflow.training.losses.combined_l1_loss).
Goal on CUDA: an epoch of 16,800 patches in <= 12 min, i.e. >= 23.3 patches/s. A 64^3,
batch-2, K = 4 step keeps ~15-20 GB of activations for the backward pass, so ``--quick``
measures 32^3 patches on the CPU and also prints the 64^3-equivalent rate (voxels/s / 64^3).

Every CPU case runs in a fresh forked process (as _harness.py): peak memory = maximum RSS
minus RSS before the first call (inputs and weights already loaded; unlike _harness.py the
baseline is taken before the warm-up call, since glibc keeps much of what that call freed).
CUDA cases run in this process after the CPU ones (CUDA must not be initialised before a
fork); their peak is ``torch.cuda.max_memory_allocated``.

``--quick`` (about 5-6 min on 2 busy cores): no warm-up call, one repeat, 160^3 at K = 4
whole and at K = 1 whole and tiled, 224x224x126 at K = 1, training on 32^3 patches (2 timed
steps after a warm-up).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import _rss_mb  # noqa: E402

VOXEL = (0.982, 0.982, 1.0)
B0_DIR = (0.0, 0.2588, 0.9659)  # 15 degrees oblique
REFERENCE = Path(
    os.environ.get(
        "QSMFLOW_REFERENCE", Path(__file__).resolve().parents[2] / "shared/reference/isdu"
    )
)
#: The authors' K = 1 weights (width 32): every one of the K denoisers a copy.
AUTHORS_K1 = REFERENCE / "k1_full_Spinet_QSM_model_26_.pth"
AUTHORS = {"on": False}
EPOCH_PATCHES = 16_800
EPOCH_GOAL_S = 12 * 60


def _volume(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoidal mask and a smooth random field (ppm) inside it."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    axes = [((np.arange(n) - (n - 1) / 2) / (0.42 * n)) ** 2 for n in shape]
    r2 = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
    mask = r2 < 1
    phi = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2) * 0.05
    return np.where(mask, phi, 0).astype(np.float32), mask


def _run_steps(
    setup: Callable[[], Any], step: Callable[[Any], Any], repeats: int, warmup: bool
) -> dict:
    inputs = setup()
    base = _rss_mb()  # before the warm-up: the allocator may keep what that call freed
    if warmup:
        step(inputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(inputs)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"best_s": min(times), "median_s": sorted(times)[len(times) // 2], "peak_mb": peak}


def _child(setup, step, repeats, warmup, queue) -> None:
    try:
        queue.put({**_run_steps(setup, step, repeats, warmup), "error": None})
    except Exception as exc:  # report, do not kill the table
        queue.put({"best_s": np.nan, "median_s": np.nan, "peak_mb": np.nan, "error": repr(exc)})


def measure_cpu(setup, step, repeats: int, warmup: bool) -> dict:
    """``step(setup())`` in a fresh forked process (CPU only)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(setup, step, repeats, warmup, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def measure_cuda(setup, step, repeats: int, warmup: bool) -> dict:
    import torch

    try:
        inputs = setup()
        if warmup:
            step(inputs)
            torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(inputs)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**20
        out = {"best_s": min(times), "median_s": sorted(times)[len(times) // 2]}
        return {**out, "peak_mb": peak, "error": None}
    except Exception as exc:
        return {"best_s": np.nan, "median_s": np.nan, "peak_mb": np.nan, "error": repr(exc)}
    finally:
        torch.cuda.empty_cache()


# -------------------------------------------------------------------------------- cases


WIDTH = {"value": 32}  # denoiser width of the random-weight model (--width)


def _model(n_iterations: int, shipped: bool, authors: bool = False, dc_mode: str = "auto"):
    """The paper's architecture (random weights, K unshared), the shipped default weights, or
    the authors' K = 1 weights as K unshared copies (``authors``)."""
    import torch

    from qsmflow.models import ISDUQSMNet

    torch.manual_seed(0)
    if authors:
        from qsmflow.models import load_isdu

        return load_isdu(AUTHORS_K1, n_iterations=n_iterations, dc_mode=dc_mode)
    if shipped:
        from qsmflow.models.inference import load_inference_model

        return load_inference_model(None)[0]
    return ISDUQSMNet(n_iterations=n_iterations, shared_weights=False, width=WIDTH["value"])


def inference_case(
    shape, n_iterations: int, tile: int | None, device: str, shipped=False, flow="qsmflow"
):
    """``flow`` "qsmflow": predict_volume with its defaults (fused denoisers, 1^3 convolutions
    as GEMMs, denoisers on the brain's box, closed-form data consistency); "reference": the
    authors' flow (dc_mode="reference": per-sample loop, complex128 CG also for p = 2, plain
    eval-mode network, the whole array)."""

    def setup():
        authors = AUTHORS["on"]
        dc_mode = "reference" if flow == "reference" else "auto"
        model = _model(n_iterations, shipped, authors, dc_mode).eval().to(device)
        phi, mask = _volume(shape)
        return model, phi, mask

    def step(x):
        from qsmflow.models.inference import predict_volume

        model, phi, mask = x
        if flow == "reference":
            return predict_volume(
                model, phi, mask, VOXEL, B0_DIR, device=device, fuse=False, crop_margin=None
            )
        return predict_volume(model, phi, mask, VOXEL, B0_DIR, device=device, tile_size=tile)

    return setup, step


def training_case(
    patch: int, batch: int, n_iterations: int, device: str, shipped=False, channels_last=False
):
    def setup():
        import torch

        from qsmflow.models import isdu_kernel
        from qsmflow.models.wideresnet import to_channels_last_3d

        model = _model(n_iterations, shipped).to(device).train()
        if channels_last:  # as the trainer's channels_last = true
            to_channels_last_3d(model)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        shape = (patch,) * 3
        kernel = isdu_kernel(shape, (1, 1, 1), (0, 0, 1), device=device)
        chi = torch.randn(batch, 1, *shape, device=device) * 0.03
        mask = torch.ones_like(chi)
        phi = torch.fft.ifftn(kernel * torch.fft.fftn(chi, dim=(-3, -2, -1)), dim=(-3, -2, -1))
        return model, opt, kernel, chi, phi.real * mask, mask

    def step(x):
        from qsmflow.training.losses import combined_l1_loss

        model, opt, kernel, chi, phi, mask = x
        opt.zero_grad(set_to_none=True)
        chi_hat = model(phi, mask, kernel)
        loss = combined_l1_loss(chi_hat, chi, phi, mask, kernel)["total"]
        loss.backward()
        opt.step()
        return float(loss.detach())

    return setup, step


def _fmt(v: float, spec: str) -> str:
    return format(v, spec) if v == v else format("nan", ">" + spec.split(".")[0].lstrip(">"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the short set (see above)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per case (1)")
    ap.add_argument("--tile", type=int, default=80, help="tile edge for the tiled cases (80)")
    ap.add_argument("--iterations", type=int, default=4, help="K (4)")
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (all found)")
    ap.add_argument("--train-patch", type=int, default=None, help="CPU training patch (64)")
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--cube", type=int, default=160, help="edge of the cubic volume (160)")
    ap.add_argument("--big", type=int, nargs=3, default=(224, 224, 126), help="second shape")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--width", type=int, default=32, help="denoiser width, random weights (32)")
    ap.add_argument(
        "--channels-last",
        action="store_true",
        help="train with channels_last_3d weights (the trainer's channels_last = true)",
    )
    ap.add_argument(
        "--shipped",
        action="store_true",
        help="time the shipped weights' architecture (qsmflow/data/isdu_default.pt: K and width "
        "from the file) instead of the paper's (width 32, K = --iterations)",
    )
    ap.add_argument(
        "--authors",
        action="store_true",
        help="time the authors' width-32 weights (their K = 1 .pth as K unshared denoisers) and "
        "their reference flow on the same volume, and print the speed-up",
    )
    args = ap.parse_args()

    import torch

    AUTHORS["on"] = bool(args.authors)
    if args.authors and not AUTHORS_K1.is_file():
        print(f"skipped: the authors' weights are not in {REFERENCE} (set QSMFLOW_REFERENCE)")
        return

    k = args.iterations
    WIDTH["value"] = args.width
    if args.shipped:
        from qsmflow.models.inference import load_inference_model

        k = load_inference_model(None)[0].n_iterations
    quick = args.quick
    repeats = args.repeats or 1
    warmup = not quick
    big = tuple(args.big)
    cube = (args.cube,) * 3
    if quick:
        inference = [(cube, k, None), (cube, 1, None), (cube, 1, args.tile), (big, 1, None)]
    else:
        inference = [(cube, k, None), (cube, k, args.tile), (big, k, None), (big, k, args.tile)]
    if args.shipped:  # K is fixed by the file
        inference = [(cube, k, None), (cube, k, args.tile), (big, k, None)]
    flows = ["qsmflow", "reference"] if args.authors else ["qsmflow"]
    if args.authors:  # the acceptance case: 160^3, K = 4, ours and theirs in the same run
        inference = [(cube, k, None)]
    cpu_patch = args.train_patch or (32 if quick else 64)
    train_repeats = args.repeats or 2
    # whether CUDA exists, asked in a throw-away child so that this process can still fork
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        has_cuda = pool.apply(_cuda_available)
    devices = args.devices or (["cpu", "cuda"] if has_cuda else ["cpu"])
    if "cuda" in devices and not has_cuda:
        print("CUDA requested but not available: skipped")
        devices = [d for d in devices if d != "cuda"]

    rows = []

    def record(name, device, r, goal_s=None, goal_mb=None, rate=None):
        r.update(name=name, device=device, goal_s=goal_s, goal_mb=goal_mb, rate=rate)
        rows.append(r)
        print(f"  {name} [{device}]: {_fmt(r['best_s'], '.2f')} s", flush=True)

    # CPU cases first (forked children), then CUDA in this process.
    for device in sorted(devices, key=lambda d: d != "cpu"):
        measure = measure_cpu if device == "cpu" else measure_cuda
        if not args.skip_inference:
            for (shape, n_it, tile), flow in itertools.product(inference, flows):
                name = f"infer {'x'.join(map(str, shape))} K={n_it} " + (
                    f"tile {tile}" if tile else "whole"
                )
                if args.shipped:
                    name = "shipped " + name
                if args.authors:
                    name = ("authors' flow " if flow == "reference" else "authors' w. ") + name
                goal = (
                    shape == (160, 160, 160) and n_it == 4 and device == "cpu" and flow == "qsmflow"
                )
                setup, step = inference_case(shape, n_it, tile, device, args.shipped, flow)
                r = measure(setup, step, repeats, warmup)
                record(name, device, r, 60.0 if goal else None, 6144.0 if goal else None)
            if args.authors and len(rows) >= 2:
                ours, ref = rows[-2]["best_s"], rows[-1]["best_s"]
                print(f"  speed-up over the reference flow: {ref / ours:.2f}x (goal >= 2x)")
                SPEEDUP[device] = ref / ours
        if not args.skip_training:
            patch = cpu_patch if device == "cpu" else 64
            setup, step = training_case(
                patch, args.train_batch, k, device, args.shipped, args.channels_last
            )
            r = measure(setup, step, train_repeats, True)
            rate = args.train_batch / r["best_s"]
            eq = rate * (patch / 64) ** 3
            name = f"train step {patch}^3 b{args.train_batch} K={k}"
            if args.channels_last:
                name += " CL"
            if args.shipped:
                name = "shipped " + name
            record(name, device, r, rate=(rate, eq))

    threads = torch.get_num_threads()
    print(
        f"\nISDU-QSMNet benchmark ({os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} threads; "
        f"{WEIGHTS_LABEL[(args.shipped, args.authors)].format(width=args.width)} weights; "
        f"{'quick: no warm-up, ' if quick else ''}"
        f"{repeats} timed call(s))"
    )
    header = (
        f"{'case':<36} {'device':<6} {'best [s]':>9} {'median [s]':>10} {'peak [MB]':>10} "
        f"{'goal':>16}  ok"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        goal, ok = "", ""
        if r["goal_s"] is not None:
            goal = f"<={r['goal_s']:.0f} s, {r['goal_mb'] / 1024:.0f} GB"
            if r["best_s"] == r["best_s"]:
                fine = r["best_s"] <= r["goal_s"] and r["peak_mb"] <= r["goal_mb"]
                ok = "yes" if fine else "NO"
        line = (
            f"{r['name']:<36} {r['device']:<6} {_fmt(r['best_s'], '9.2f')} "
            f"{_fmt(r['median_s'], '10.2f')} {_fmt(r['peak_mb'], '10.0f')} {goal:>16}  {ok}"
        )
        if r["rate"] is not None and r["best_s"] == r["best_s"]:
            rate, eq = r["rate"]
            epoch_min = EPOCH_PATCHES / eq / 60
            fine = eq * EPOCH_GOAL_S >= EPOCH_PATCHES
            line += (
                f"\n{'':<4}{rate:.3f} patches/s = {eq:.3f} 64^3-patches/s -> epoch of "
                f"{EPOCH_PATCHES} 64^3 patches: {epoch_min:.1f} min (goal <= 12 min, "
                f"23.3 patches/s: {'yes' if fine else 'NO'})"
            )
        if r.get("error"):
            line += f"  ERROR {r['error']}"
        print(line)
    for device, factor in SPEEDUP.items():
        ok = "yes" if factor >= 2 else "NO"
        print(f"speed-up over the authors' reference flow [{device}]: {factor:.2f}x (>= 2x: {ok})")


#: (shipped, authors) -> the weights line of the table's title
WEIGHTS_LABEL = {
    (False, False): "random width-{width}",
    (True, False): "shipped",
    (False, True): "the authors' width-32",
    (True, True): "the authors' width-32",
}
#: device -> speed-up of qsmflow's inference over the authors' reference flow (--authors)
SPEEDUP: dict[str, float] = {}


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


if __name__ == "__main__":
    main()
