"""Tiny benchmark harness: each case runs in a fresh process; wall time and peak memory.

Peak memory is the child's maximum resident set size (``ru_maxrss``) minus its resident size
just before the timed call (inputs and libraries already loaded), i.e. what the step itself
needs on top of its inputs.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Callable
from typing import Any


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _child(setup: Callable[[], Any], step: Callable[[Any], Any], repeats: int, queue) -> None:
    try:
        inputs = setup()
        step(inputs)  # warm-up: FFT plans, imports, caches
        base = _rss_mb()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step(inputs)
            times.append(time.perf_counter() - t0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB
        queue.put((min(times), sorted(times)[len(times) // 2], max(peak - base, 0.0), None))
    except Exception as exc:  # report, do not kill the whole table
        queue.put((float("nan"), float("nan"), float("nan"), repr(exc)))


def measure(setup: Callable[[], Any], step: Callable[[Any], Any], repeats: int = 3) -> dict:
    """Run ``step(setup())`` ``repeats`` times in a fresh (forked) process."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(setup, step, repeats, queue))
    proc.start()
    best, median, peak, error = queue.get()
    proc.join()
    return {"best_s": best, "median_s": median, "peak_mb": peak, "error": error}


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    header = (
        f"{'step':<38} {'best [s]':>9} {'median [s]':>11} {'peak [MB]':>10} {'goal [s]':>9}  ok"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        goal = r.get("goal_s")
        ok = (
            ""
            if goal is None or r["best_s"] != r["best_s"]
            else ("yes" if r["best_s"] <= goal else "NO")
        )
        goal_txt = f"{goal:9.2f}" if goal is not None else f"{'':>9}"
        line = (
            f"{r['name']:<38} {r['best_s']:9.3f} {r['median_s']:11.3f} {r['peak_mb']:10.0f} "
            f"{goal_txt}  {ok}"
        )
        print(line + (f"  ERROR {r['error']}" if r.get("error") else ""))
