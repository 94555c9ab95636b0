"""``qsmflow run BIDS_DIR OUTPUT_DIR participant``: the Nipype pipeline as a BIDS App."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DESCRIPTION = """\
Run the qsmflow pipeline on a BIDS dataset of multi-echo GRE data (BIDS-App convention).

Input: per subject/session, runs of magnitude and phase per echo
(sub-X[_ses-Y][_acq-A][_run-R]_echo-N_part-{mag,phase}_MEGRE.nii[.gz]) with EchoTime (s) and
MagneticFieldStrength (T) in the sidecars; head orientations are the acq-/run- entities, the
first (sorted) is the reference. The whole dataset is checked before anything is computed.

Pipelines:
  qsm            per run: brain mask, multi-echo field (Hz), V-SHARP local field (ppm),
                 dipole inversion(s) (ppm)
  cosmos         per run as above, then rigid registration of every orientation to the
                 reference and COSMOS (ppm) on the reference grid
  training-data  cosmos, plus training pairs cut into patches (qsmflow.training.patches)

Outputs go to OUTPUT_DIR as BIDS derivatives (sidecars with units, methods, parameters,
backends and sources), a log under OUTPUT_DIR/logs. The Nipype cache (--work-dir) makes a rerun
recompute only what changed, and an interrupted run resume. A failing subject does not stop the
others; the exit status is 0 when everything succeeded, 1 when a subject failed or was
skipped, 2 for unusable arguments or input.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="BIDS dataset -> local fields, QSM, COSMOS or training data (Nipype)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="input BIDS dataset")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="derivatives folder (created)")
    p.add_argument("analysis_level", choices=["participant"], help="only 'participant'")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL", help="subjects (no sub-)")
    p.add_argument("--session-label", nargs="+", metavar="LABEL", help="sessions (no ses-)")
    p.add_argument("--pipeline", choices=["qsm", "cosmos", "training-data"], help="default qsm")
    p.add_argument(
        "--config", metavar="FILE.toml", help="settings preset (see workflows/ in the repository)"
    )
    p.add_argument(
        "--work-dir", metavar="DIR", help="Nipype working folder (default OUTPUT_DIR/work)"
    )
    p.add_argument("--nprocs", type=int, metavar="N", help="parallel processes (MultiProc)")
    p.add_argument(
        "--plugin",
        metavar="NAME",
        help="Nipype plugin: Linear (default), MultiProc, SLURM, SGE, PBS, ...",
    )
    p.add_argument(
        "--plugin-args",
        nargs="+",
        metavar="KEY=VALUE",
        help="passed to the plugin (values parsed as JSON when possible), "
        "e.g. sbatch_args='--mem=8G --time=1:00:00'",
    )
    p.add_argument("--mask-backend", choices=["auto", "fsl", "python"])
    p.add_argument("--registration-backend", choices=["auto", "fsl", "python"])
    p.add_argument(
        "--methods",
        nargs="+",
        choices=["tkd", "tsvd", "cfl2", "ndi", "star", "isdu"],
        help="inversions of the qsm pipeline (default tkd)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the input and build the workflow, print what would run, compute nothing",
    )
    p.set_defaults(func=run)


def _parse_plugin_args(items: list[str] | None) -> dict:
    from ..errors import QSMInputError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise QSMInputError(f"--plugin-args expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_config(args: argparse.Namespace):
    """Preset (``--config``) or defaults, then the command-line options on top."""
    from ..config import PipelineConfig, load_config

    cfg = load_config(args.config) if args.config else PipelineConfig()
    if args.pipeline:
        cfg.pipeline = args.pipeline
    if args.mask_backend:
        cfg.masking.backend = args.mask_backend
    if args.registration_backend:
        cfg.registration.backend = args.registration_backend
    if args.methods:
        cfg.inversion.methods = list(args.methods)
    if args.plugin:
        cfg.execution.plugin = args.plugin
    if args.nprocs:
        cfg.execution.nprocs = args.nprocs
    cfg.execution.plugin_args.update(_parse_plugin_args(args.plugin_args))
    return cfg.validate(args.config)


@dataclass
class _Tracker:
    """Nipype status callback: progress bar and the nodes that failed."""

    total: int
    bar: object = None
    finished: int = 0
    failed: list = field(default_factory=list)

    def __call__(self, node, status: str) -> None:
        if status == "exception":
            self.failed.append(node.fullname)
        if status in ("end", "exception"):
            self.finished += 1
            if self.bar is not None:
                self.bar.update(1)


def _crash_messages(crash_dir: Path) -> dict[str, str]:
    """Last line of each crash file's traceback, by node name."""
    out = {}
    for f in sorted(crash_dir.glob("crash-*.txt")):
        text = f.read_text(errors="replace")
        node = ""
        for line in text.splitlines():
            if line.startswith("Node:"):
                node = line.split(":", 1)[1].strip()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error:" in ln or "QSMInputError" in ln]
        message = errors[-1] if errors else lines[-1]
        out[node or f.name] = message.split("QSMInputError: ", 1)[-1]
    return out


def _configure_workers(plugin: str, nprocs: int | None, work: Path) -> None:
    """MultiProc worker processes: each gets its share of the FFT threads and one BLAS/torch
    thread; Nipype in the workers logs warnings only (the parent shows progress).

    ITK's thread count is left alone on purpose: Mattes MI sums are threaded, and a different
    thread count changes the registration in the last digits, so MultiProc and Linear would
    no longer give identical outputs.
    """
    if plugin != "MultiProc":
        return
    per_proc = str(max(1, (os.cpu_count() or 1) // max(1, nprocs or os.cpu_count() or 1)))
    os.environ["QSMFLOW_FFT_WORKERS"] = per_proc
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    cfg_dir = work / ".nipype"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "nipype.cfg").write_text(
        "[logging]\nworkflow_level = WARNING\ninterface_level = WARNING\nutils_level = WARNING\n"
    )
    os.environ["NIPYPE_CONFIG_DIR"] = str(cfg_dir)


def run(args: argparse.Namespace) -> int:
    import getpass

    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    from ..errors import QSMInputError
    from ..io.bids import validate_dataset
    from ..io.derivatives import check_output_dir, write_dataset_files
    from ..workflows.base import init_qsmflow_wf, subject_wf_name

    t0 = time.perf_counter()
    cfg = build_config(args)
    bids_dir = Path(args.bids_dir).resolve()
    if not bids_dir.is_dir():
        raise QSMInputError("BIDS folder not found", str(bids_dir))
    out = check_output_dir(args.output_dir).resolve()  # fail before the (slow) validation
    subjects, problems = validate_dataset(
        bids_dir,
        participant_label=args.participant_label,
        session_label=args.session_label,
        pipeline=cfg.pipeline,
    )
    if problems:
        print(f"qsmflow run: {len(problems)} problem(s) in {bids_dir}:", file=sys.stderr)
        for prob in problems:
            print(f"  - {prob}", file=sys.stderr)
    if not subjects:
        raise QSMInputError(
            "no subject/session can be processed (problems listed above)", str(bids_dir)
        )
    skipped = sorted({p.subject for p in problems if getattr(p, "subject", None)})

    work = Path(args.work_dir).resolve() if args.work_dir else out / "work"
    wf = init_qsmflow_wf(subjects=subjects, config=cfg, bids_dir=bids_dir, output_dir=out)
    wf.base_dir = str(work)
    nodes = wf.list_node_names()
    labels = [s.label for s in subjects]
    print(
        f"qsmflow run: pipeline {cfg.pipeline}, {len(subjects)} subject/session(s) "
        f"({', '.join(labels)}), {len(nodes)} nodes"
    )
    if args.dry_run:
        for s in subjects:
            for r in s.runs:
                print(
                    f"  {s.label} {r.label}: {len(r.echoes)} echoes, "
                    f"TE {', '.join(f'{t * 1e3:g}' for t in r.echo_times_s)} ms, "
                    f"{r.field_strength_t:g} T"
                )
        print("dry run: nothing computed")
        return 0

    check_output_dir(work)
    write_dataset_files(out, bids_dir, cfg.pipeline)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_file = logs / f"qsmflow_{stamp}_{os.getpid()}.log"
    crash_dir = logs / f"crash_{stamp}_{os.getpid()}"
    (logs / f"config_{stamp}_{os.getpid()}.json").write_text(
        json.dumps(cfg.to_dict(), indent=2) + "\n"
    )
    execution = {
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "hash_method": "timestamp",
        "stop_on_first_crash": False,
        "remove_unnecessary_outputs": False,
    }
    nipype_config.update_config(
        {
            "logging": {"log_directory": str(logs), "log_to_file": False},
            "execution": execution,
            "monitoring": {"enabled": False},
        }
    )
    nipype_logging.update_logging(nipype_config)
    wf.config["execution"].update(execution)  # the workflow copied the config when built
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in root.handlers:  # the terminal keeps the -v level; the log file gets INFO
        h.setLevel(max(h.level, root.level))
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils", "qsmflow"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(min(lg.level or logging.INFO, logging.INFO))
    # Nipype's own console output is noisy; the progress bar and the summary replace it.
    logging.getLogger("nipype.workflow").propagate = False
    for h in logging.getLogger("nipype").handlers:
        h.setLevel(logging.WARNING)

    os.environ.setdefault("LOGNAME", getpass.getuser() or "qsmflow")  # batch plugins need it
    plugin = cfg.execution.plugin
    plugin_args = dict(cfg.execution.plugin_args)
    if plugin == "MultiProc":
        plugin_args.setdefault("mp_context", "forkserver")  # fork after torch use hangs
        if cfg.execution.nprocs:
            plugin_args.setdefault("n_procs", cfg.execution.nprocs)
    _configure_workers(plugin, plugin_args.get("n_procs"), work)
    if plugin == "MultiProc":  # the default 2 s poll dominates runs of many short nodes
        wf.config["execution"]["poll_sleep_duration"] = 0.1

    tracker = _Tracker(total=len(nodes))
    try:
        from tqdm import tqdm

        tracker.bar = tqdm(
            total=len(nodes), desc="qsmflow", unit="node", disable=not sys.stderr.isatty()
        )
    except ImportError:  # pragma: no cover - tqdm is a dependency
        pass
    plugin_args["status_callback"] = tracker
    crashed = None
    try:
        wf.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as exc:
        crashed = exc
    finally:
        if tracker.bar is not None:
            tracker.bar.close()
        for name in ("nipype.workflow", "nipype.interface", "nipype.utils", "qsmflow"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()

    messages = _crash_messages(crash_dir) if crash_dir.exists() else {}
    failed_subjects: dict[str, list[str]] = {}
    for s in subjects:
        prefix = f"{wf.name}.{subject_wf_name(s)}."
        bad = [n for n in tracker.failed if n.startswith(prefix)]
        if bad:
            failed_subjects[s.label] = [
                f"{n[len(prefix) :]}: {messages.get(n.split('.')[-1], messages.get(n, ''))}"
                for n in bad
            ]
    if crashed is not None and not failed_subjects:
        failed_subjects["(workflow)"] = [str(crashed)]

    elapsed = time.perf_counter() - t0
    print(f"\nqsmflow run: finished in {elapsed:.0f} s ({plugin})")
    for s in subjects:
        state = "FAILED" if s.label in failed_subjects else "ok"
        print(f"  {s.label:<24} {state}")
        for line in failed_subjects.get(s.label, []):
            print(f"      {line}")
    for label in skipped:
        print(f"  {label:<24} SKIPPED (input problems above)")
    print(f"derivatives: {out}\nlog: {log_file}\nwork dir (cache): {work}")
    if crash_dir.exists():
        print(f"crash reports: {crash_dir}")
    return 1 if failed_subjects or skipped else 0
