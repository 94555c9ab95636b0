"""The run record: what one ``qsmflow run`` did, written to ``OUTPUT_DIR/logs/run_<run_id>.json``.

Keys (paths inside ``OUTPUT_DIR`` are relative to it, others absolute)::

    record_version    1
    run_id            "<YYYYmmdd-HHMMSS>_<pid>" (also in the log, config and crash folder names)
    qsmflow_version   version that ran
    argv              the command's arguments (after ``qsmflow``); command_line: as one string
    analysis_level    "participant"
    pipeline          qsm | cosmos | training-data
    preset            the --config file given (absolute) or null
    settings_file     logs/config_<run_id>.json (every setting used)
    backends          {"mask": ..., "registration": ...} as configured (auto: see the sidecars)
    methods           inversion methods configured (qsm pipeline)
    plugin            Nipype plugin; nprocs
    bids_dir, output_dir, work_dir   absolute
    log_file, crash_dir              relative to output_dir
    start, end        ISO 8601 local time with offset; seconds: wall time (s)
    exit_status       0 all ok, 1 a subject failed or was skipped
    subjects          {label: {"status": "ok" | "failed" | "skipped",
                               "failures": [{"node", "message", "crash_file"}],
                               "problems": [input problems, for skipped subjects]}}
    workflow_errors   errors no node explains (a crash of the workflow itself)

``node`` is the node's name inside the subject's workflow (``fieldmap_acq_ori2_wf.brain_mask``);
``crash_file`` the Nipype crash report (relative path) or null.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import QSMInputError
from ..io.nifti import write_json
from .naming import run_record_path

RECORD_VERSION = 1

__all__ = [
    "RECORD_VERSION",
    "crash_files",
    "iso_now",
    "make_run_record",
    "newest_run_record",
    "read_run_record",
    "relative_to",
    "split_failure",
    "write_run_record",
]


def iso_now() -> str:
    """The local time now, ISO 8601 with its UTC offset, to the second."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def relative_to(path: str | os.PathLike | None, root: str | os.PathLike) -> str | None:
    """``path`` relative to ``root`` (POSIX) when inside it, else absolute; None stays None."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        return p.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(p)


def crash_files(crash_dir: str | os.PathLike) -> dict[str, Path]:
    """Nipype crash files of a run by the full name of their node (the ``Node:`` line).

    The newest file wins when a node crashed twice. Unreadable files are skipped.
    """
    out: dict[str, Path] = {}
    folder = Path(crash_dir)
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("crash-*.txt")):
        try:
            lines = f.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines[:5]:
            if line.startswith("Node:"):
                out[line.split(":", 1)[1].strip()] = f
                break
    return out


def split_failure(line: str) -> tuple[str, str]:
    """``"node: message"`` (as :func:`qsmflow.cli._nipype_runtime.failures_by_subject` gives)
    -> (node, message). Node names hold no ``": "``."""
    node, sep, message = line.partition(": ")
    return (node.strip(), message.strip()) if sep else (line.strip(), "")


def _failures(
    lines: Sequence[str], prefix: str, crashes: Mapping[str, Path], output_dir: Path
) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        node, message = split_failure(line)
        crash = crashes.get(prefix + node)
        out.append(
            {
                "node": node,
                "message": message,
                "crash_file": relative_to(crash, output_dir) if crash else None,
            }
        )
    return out


def make_run_record(
    *,
    run_id: str,
    argv: Sequence[str],
    pipeline: str,
    output_dir: str | os.PathLike,
    bids_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    settings_file: str | os.PathLike,
    log_file: str | os.PathLike,
    crash_dir: str | os.PathLike,
    start: str,
    end: str,
    seconds: float,
    labels: Sequence[str],
    failed: Mapping[str, Sequence[str]],
    skipped: Mapping[str, Sequence[str]],
    prefixes: Mapping[str, str],
    preset: str | os.PathLike | None = None,
    plugin: str = "Linear",
    nprocs: int | None = None,
    backends: Mapping[str, str] | None = None,
    methods: Sequence[str] = (),
) -> dict[str, Any]:
    """The run record (see the module docstring) of a finished run.

    Parameters
    ----------
    labels : the subject/session labels that ran (``sub-01[_ses-a]``).
    failed : label -> ``["node: message", ...]`` (``failures_by_subject``); the key
        ``"(workflow)"`` holds errors no node explains.
    skipped : label -> input problems (strings) of the subjects that were not run.
    prefixes : label -> the full-name prefix of its nodes (``qsmflow_wf.sub_01_wf.``), to find
        each failure's crash file.
    seconds : wall time of the run (s).
    """
    from .. import __version__

    out = Path(output_dir).resolve()
    crashes = crash_files(crash_dir)
    subjects: dict[str, dict[str, Any]] = {}
    for label in labels:
        lines = list(failed.get(label, ()))
        subjects[label] = {
            "status": "failed" if lines else "ok",
            "failures": _failures(lines, prefixes.get(label, ""), crashes, out),
        }
    for label, problems in skipped.items():
        subjects[label] = {"status": "skipped", "failures": [], "problems": list(problems)}
    argv = [str(a) for a in argv]
    bad = any(s["status"] != "ok" for s in subjects.values()) or "(workflow)" in failed
    return {
        "record_version": RECORD_VERSION,
        "run_id": run_id,
        "qsmflow_version": __version__,
        "argv": argv,
        "command_line": shlex.join(["qsmflow", *argv]),
        "analysis_level": "participant",
        "pipeline": pipeline,
        "preset": str(Path(preset).resolve()) if preset else None,
        "settings_file": relative_to(settings_file, out),
        "backends": dict(backends or {}),
        "methods": list(methods),
        "plugin": plugin,
        "nprocs": nprocs,
        "bids_dir": str(Path(bids_dir).resolve()),
        "output_dir": str(out),
        "work_dir": str(Path(work_dir).resolve()),
        "log_file": relative_to(log_file, out),
        "crash_dir": relative_to(crash_dir, out),
        "start": start,
        "end": end,
        "seconds": round(float(seconds), 3),
        "exit_status": 1 if bad else 0,
        "subjects": subjects,
        "workflow_errors": [str(e) for e in failed.get("(workflow)", ())],
    }


def write_run_record(output_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` to ``OUTPUT_DIR/logs/run_<run_id>.json`` (atomic); return the path."""
    return write_json(run_record_path(output_dir, str(record["run_id"])), dict(record))


def read_run_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run record; QSMInputError naming the file when it is not one."""
    p = Path(path)
    try:
        record = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise QSMInputError(f"cannot read the run record ({exc})", str(p)) from exc
    if not isinstance(record, dict) or "run_id" not in record or "subjects" not in record:
        raise QSMInputError("not a qsmflow run record (no run_id/subjects)", str(p))
    record.setdefault("record_file", str(p))
    return record


def _run_id_key(path: Path) -> str:
    return path.stem[len("run_") :]


def newest_run_record(
    output_dir: str | os.PathLike, label: str | None = None
) -> dict[str, Any] | None:
    """The newest run record in ``OUTPUT_DIR/logs`` (that lists ``label``, when given).

    Records are ordered by run id (start time, then process id); unreadable ones are skipped.
    """
    logs = Path(output_dir) / "logs"
    for path in sorted(logs.glob("run_*.json"), key=_run_id_key, reverse=True):
        try:
            record = read_run_record(path)
        except QSMInputError:
            continue
        if label is None or label in record.get("subjects", {}):
            return record
    return None
