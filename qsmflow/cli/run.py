"""``qsmflow run BIDS_DIR OUTPUT_DIR participant``: the Nipype pipeline as a BIDS App."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import PipelineConfig

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
  training-data  cosmos, plus training pairs cut into patches (qsmflow.training.patch_store)

Outputs go to OUTPUT_DIR as BIDS derivatives (sidecars with units, methods, parameters,
backends and sources), a log under OUTPUT_DIR/logs. The Nipype cache (--work-dir) makes a rerun
recompute only what changed, and an interrupted run resume. A failing subject does not stop the
others; the exit status is 0 when everything succeeded, 1 when a subject failed or was
skipped, 2 for unusable arguments or input.

Reports: every run writes OUTPUT_DIR/logs/run_<id>.json (command, settings, times, status and
failed steps per subject) and an HTML report per subject/session, OUTPUT_DIR/sub-<label>.html
(figures under OUTPUT_DIR/sub-<label>/figures/; --no-report skips them; `qsmflow report`
makes them again). With a label image (--labels, or a *_dseg.nii.gz in the BIDS derivatives)
the report has an ROI table, also written as sub-<label>/sub-<label>_desc-rois_table.tsv.

Group level: `qsmflow run BIDS_DIR OUTPUT_DIR group` aggregates the per-subject ROI tables
into OUTPUT_DIR/group_desc-rois_table.tsv and OUTPUT_DIR/group.html (exit 2 when there are none).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``qsmflow run``; choices come from where each option is implemented."""
    from ..backends import BACKENDS
    from ..config import PIPELINES
    from ..steps.inversion import INVERSION_METHODS

    p = subparsers.add_parser(
        "run",
        help="BIDS dataset -> local fields, QSM, COSMOS or training data (Nipype)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="input BIDS dataset")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="derivatives folder (created)")
    p.add_argument(
        "analysis_level",
        choices=["participant", "group"],
        help="participant: run the pipeline; group: aggregate the subjects' ROI tables",
    )
    p.add_argument("--participant-label", nargs="+", metavar="LABEL", help="subjects (no sub-)")
    p.add_argument("--session-label", nargs="+", metavar="LABEL", help="sessions (no ses-)")
    p.add_argument("--pipeline", choices=PIPELINES, help="default qsm")
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
    p.add_argument("--mask-backend", choices=BACKENDS)
    p.add_argument("--registration-backend", choices=BACKENDS)
    p.add_argument(
        "--methods",
        nargs="+",
        choices=INVERSION_METHODS,
        help="inversions of the qsm pipeline (default tv, with the magnitude as weights)",
    )
    p.add_argument(
        "--magnitude-weights",
        nargs="*",
        metavar="METHOD",
        help="methods given the multi-echo magnitude as weights (tv: MEDI-style edge weights, "
        "ndi: data weights; default tv); no METHOD: none",
    )
    p.add_argument(
        "--no-report", action="store_true", help="do not write the HTML reports (run record only)"
    )
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="label image (integer, on the reference orientation's grid) for the reports' ROI "
        "table (default: BIDS_DIR/derivatives/*/sub-X/anat/*_acq-<reference>_dseg.nii.gz)",
    )
    p.add_argument(
        "--label-names",
        metavar="TSV",
        help="names of the labels (BIDS dseg.tsv: index, name; default: a dseg.tsv beside "
        "--labels or at its dataset root)",
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


def build_config(args: argparse.Namespace) -> PipelineConfig:
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
    if args.magnitude_weights is not None:
        cfg.inversion.magnitude_weights = list(args.magnitude_weights)
    if args.plugin:
        cfg.execution.plugin = args.plugin
    if args.nprocs:
        cfg.execution.nprocs = args.nprocs
    cfg.execution.plugin_args.update(_parse_plugin_args(args.plugin_args))
    return cfg.validate(args.config)


def _check_input(args: argparse.Namespace, pipeline: str) -> tuple[Path, Path, list, list]:
    """BIDS folder, output folder, the subjects that can run and the input problems.

    Problems are printed; no processable subject is an input error (exit 2).
    """
    from ..errors import QSMInputError
    from ..io.bids import validate_dataset
    from ..io.derivatives import check_output_dir

    bids_dir = Path(args.bids_dir).resolve()
    if not bids_dir.is_dir():
        raise QSMInputError("BIDS folder not found", str(bids_dir))
    out = check_output_dir(args.output_dir).resolve()  # fail before the (slow) validation
    subjects, problems = validate_dataset(
        bids_dir,
        participant_label=args.participant_label,
        session_label=args.session_label,
        pipeline=pipeline,
    )
    if problems:
        print(f"qsmflow run: {len(problems)} problem(s) in {bids_dir}:", file=sys.stderr)
        for prob in problems:
            print(f"  - {prob}", file=sys.stderr)
    if not subjects:
        raise QSMInputError(
            "no subject/session can be processed (problems listed above)", str(bids_dir)
        )
    return bids_dir, out, subjects, problems


def _skipped(problems: list) -> tuple[list[str], dict[str, list[str]]]:
    """Subjects with input problems: bare labels (for the summary) and, by ``sub-X[_ses-Y]``
    label, their problems (for the run record)."""
    skipped = sorted({p.subject for p in problems if getattr(p, "subject", None)})
    by_label: dict[str, list[str]] = {}
    for p in problems:
        if getattr(p, "label", None):
            by_label.setdefault(p.label, []).append(str(p))
    return skipped, by_label


def _print_dry_run(subjects: list) -> None:
    for s in subjects:
        for r in s.runs:
            print(
                f"  {s.label} {r.label}: {len(r.echoes)} echoes, "
                f"TE {', '.join(f'{t * 1e3:g}' for t in r.echo_times_s)} ms, "
                f"{r.field_strength_t:g} T"
            )
    print("dry run: nothing computed")


def _check_label_files(args: argparse.Namespace) -> None:
    from ..errors import QSMInputError

    for opt in ("labels", "label_names"):
        value = getattr(args, opt, None)
        if value and not Path(value).is_file():
            raise QSMInputError(f"--{opt.replace('_', '-')}: file not found", value)


def write_reports_for(
    out: Path,
    labels: list[str],
    *,
    bids_dir: Path | None,
    args: argparse.Namespace,
    run_record: Path | None = None,
    prog: str = "qsmflow run",
) -> int:
    """Write each subject's report, one line per subject; a failure is a warning naming the
    subject and the problem. Returns the number of reports that failed."""
    from ..reports import write_subject_report

    n_bad = 0
    for label in labels:
        t0 = time.perf_counter()
        try:
            path = write_subject_report(
                out,
                label,
                bids_dir=bids_dir,
                labels=args.labels,
                label_names=args.label_names,
                run_record=run_record,
            )
        except Exception as exc:  # a report must never cost the run its outputs or status
            n_bad += 1
            print(
                f"{prog}: warning: no report for {label}: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            continue
        print(f"report: {path} ({time.perf_counter() - t0:.1f} s)")
    return n_bad


def run_group(args: argparse.Namespace) -> int:
    """The group level: aggregate the per-subject ROI tables (exit 2 when there are none)."""
    from ..errors import QSMInputError
    from ..reports import write_group_report

    out = Path(args.output_dir).resolve()
    if not out.is_dir():
        raise QSMInputError("output folder not found; run the participant level first", str(out))
    tsv, html = write_group_report(out, args.participant_label)
    print(f"qsmflow run: group level\nROI table: {tsv}\nreport: {html}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Check the dataset, build the workflow, run it and report per subject (exit 0/1/2)."""
    if args.analysis_level == "group":
        return run_group(args)
    from ..io.derivatives import check_output_dir, write_dataset_files
    from ..reports.runrecord import iso_now, make_run_record, write_run_record
    from ..workflows.base import init_qsmflow_wf, subject_wf_name
    from ._nipype_runtime import (
        Tracker,
        attach_log,
        configure_nipype,
        failures_by_subject,
        plugin_settings,
        restored_environment,
        summarise,
    )

    t0 = time.perf_counter()
    started = iso_now()
    cfg = build_config(args)
    _check_label_files(args)
    bids_dir, out, subjects, problems = _check_input(args, cfg.pipeline)
    skipped, skipped_problems = _skipped(problems)

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
        _print_dry_run(subjects)
        return 0

    check_output_dir(work)
    write_dataset_files(out, bids_dir, cfg.pipeline)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}"
    log_file = logs / f"qsmflow_{run_id}.log"
    crash_dir = logs / f"crash_{run_id}"
    settings_file = logs / f"config_{run_id}.json"
    settings_file.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    configure_nipype(wf, logs, crash_dir)
    plugin = cfg.execution.plugin
    tracker = Tracker.with_progress_bar(len(nodes))
    crashed = None
    with restored_environment(), attach_log(log_file):
        plugin_args = plugin_settings(
            wf, plugin, cfg.execution.plugin_args, cfg.execution.nprocs, work
        )
        plugin_args["status_callback"] = tracker
        try:
            wf.run(plugin=plugin, plugin_args=plugin_args)
        except RuntimeError as exc:
            crashed = exc
        finally:
            tracker.close()

    prefixes = {s.label: f"{wf.name}.{subject_wf_name(s)}." for s in subjects}
    failed = failures_by_subject(prefixes, tracker.failed, crash_dir, crashed)
    seconds = time.perf_counter() - t0
    print(f"\nqsmflow run: finished in {seconds:.0f} s ({plugin})")
    record = make_run_record(
        run_id=run_id,
        argv=getattr(args, "argv", None) or sys.argv[1:],
        pipeline=cfg.pipeline,
        output_dir=out,
        bids_dir=bids_dir,
        work_dir=work,
        settings_file=settings_file,
        log_file=log_file,
        crash_dir=crash_dir,
        start=started,
        end=iso_now(),
        seconds=seconds,
        labels=labels,
        failed=failed,
        skipped=skipped_problems,
        prefixes=prefixes,
        preset=args.config,
        plugin=plugin,
        nprocs=cfg.execution.nprocs,
        backends={"mask": cfg.masking.backend, "registration": cfg.registration.backend},
        methods=cfg.inversion.methods if cfg.pipeline == "qsm" else [],
    )
    record_file = write_run_record(out, record)
    paths = {"derivatives": out, "log": log_file, "run record": record_file}
    paths["work dir (cache)"] = work
    summarise(labels, failed, skipped, paths, crash_dir)
    if not args.no_report:
        write_reports_for(out, labels, bids_dir=bids_dir, args=args, run_record=record_file)
    return 1 if failed or skipped else 0
