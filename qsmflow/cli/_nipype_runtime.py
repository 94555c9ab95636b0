"""How ``qsmflow run`` executes a workflow: Nipype settings, log file, plugin, progress, report.

Kept apart from :mod:`qsmflow.cli.run` (options and the flow), as sdcflows keeps
``cli/workflow.py`` apart from its parser: everything here is about running a graph that is
already built, nothing about what the graph computes.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Loggers whose records go to the run's log file (INFO and above).
LOGGERS = ("nipype.workflow", "nipype.interface", "nipype.utils", "qsmflow")


def configure_nipype(wf: Any, logs: Path, crash_dir: Path) -> None:
    """Crash files as text in ``crash_dir``, timestamp hashing, no stop on the first crash.

    Applied to Nipype's global config and to ``wf``, which copied the config when it was built.
    """
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

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
    wf.config["execution"].update(execution)


@contextmanager
def attach_log(log_file: Path) -> Iterator[None]:
    """Send Nipype's and qsmflow's INFO records to ``log_file`` while the block runs.

    The terminal keeps the ``-v`` level; Nipype's own console output is silenced below
    WARNING (the progress bar and the summary replace it).
    """
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in root.handlers:
        h.setLevel(max(h.level, root.level))
    for name in LOGGERS:
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(min(lg.level or logging.INFO, logging.INFO))
    logging.getLogger("nipype.workflow").propagate = False
    for h in logging.getLogger("nipype").handlers:
        h.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        handler.close()


@contextmanager
def restored_environment() -> Iterator[None]:
    """Put ``os.environ`` back as it was when the block ends.

    The worker settings of a run (one BLAS/torch thread, the FFT share, Nipype's config dir)
    are for that run's processes only: a caller that runs ``qsmflow run`` in-process and then
    computes (a test, a notebook) keeps its own thread settings.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


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


def _check_temporary_folder() -> None:
    """MultiProc's forkserver puts its socket in the temporary folder: fail clearly without one."""
    import tempfile

    from ..errors import QSMInputError

    try:
        tempfile.gettempdir()
    except FileNotFoundError as exc:
        raise QSMInputError(
            "no writable temporary folder for --plugin MultiProc (its worker processes talk "
            "through a socket there): set TMPDIR to a writable folder with a short path",
            os.environ.get("TMPDIR", "/tmp"),
        ) from exc


def _user_name() -> str:
    """The login name, or "qsmflow" for a user ID without a passwd entry (containers run with
    ``--user UID``: ``getpass.getuser`` raises KeyError or OSError there)."""
    try:
        return getpass.getuser() or "qsmflow"
    except (KeyError, OSError):
        return "qsmflow"


def plugin_settings(
    wf: Any, plugin: str, plugin_args: dict[str, Any], nprocs: int | None, work: Path
) -> dict[str, Any]:
    """The plugin arguments to run ``wf`` with, and the process environment they need.

    MultiProc starts its workers with forkserver (fork after torch use hangs), takes ``nprocs``
    (processes) unless the plugin arguments name ``n_procs``, and polls every 0.1 s (the
    default 2 s dominates runs of many short nodes).
    """
    if not os.environ.get("LOGNAME"):  # batch plugins need it
        os.environ["LOGNAME"] = _user_name()
    args = dict(plugin_args)
    if plugin == "MultiProc":
        _check_temporary_folder()
        args.setdefault("mp_context", "forkserver")
        if nprocs:
            args.setdefault("n_procs", nprocs)
    _configure_workers(plugin, args.get("n_procs"), work)
    if plugin == "MultiProc":
        wf.config["execution"]["poll_sleep_duration"] = 0.1
    return args


@dataclass
class Tracker:
    """Nipype status callback: progress bar and the nodes that failed."""

    total: int
    bar: Any = None
    finished: int = 0
    failed: list[str] = field(default_factory=list)

    @classmethod
    def with_progress_bar(cls, total: int) -> Tracker:
        """A tracker drawing a progress bar of ``total`` nodes on a terminal's stderr."""
        from tqdm import tqdm

        bar = tqdm(total=total, desc="qsmflow", unit="node", disable=not sys.stderr.isatty())
        return cls(total=total, bar=bar)

    def __call__(self, node: Any, status: str) -> None:
        if status == "exception":
            self.failed.append(node.fullname)
        if status in ("end", "exception"):
            self.finished += 1
            if self.bar is not None:
                self.bar.update(1)

    def close(self) -> None:
        """Close the progress bar."""
        if self.bar is not None:
            self.bar.close()


def crash_messages(crash_dir: Path) -> dict[str, str]:
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


def failures_by_subject(
    prefixes: dict[str, str],
    failed_nodes: Sequence[str],
    crash_dir: Path,
    crashed: Exception | None,
) -> dict[str, list[str]]:
    """``{subject label: ["node: message", ...]}`` for the subjects with a failed node.

    ``prefixes`` maps each subject label to the full-name prefix of its nodes; a workflow
    crash that no node explains is reported under ``"(workflow)"``.
    """
    messages = crash_messages(crash_dir) if crash_dir.exists() else {}
    failed: dict[str, list[str]] = {}
    for label, prefix in prefixes.items():
        bad = [n for n in failed_nodes if n.startswith(prefix)]
        if bad:
            failed[label] = [
                f"{n[len(prefix) :]}: {messages.get(n.split('.')[-1], messages.get(n, ''))}"
                for n in bad
            ]
    if crashed is not None and not failed:
        failed["(workflow)"] = [str(crashed)]
    return failed


def summarise(
    labels: Sequence[str],
    failed: dict[str, list[str]],
    skipped: Sequence[str],
    paths: dict[str, Path],
    crash_dir: Path,
) -> None:
    """Print one line per subject (ok, FAILED with its nodes, SKIPPED) and where things are."""
    for label in labels:
        print(f"  {label:<24} {'FAILED' if label in failed else 'ok'}")
        for line in failed.get(label, []):
            print(f"      {line}")
    for label in skipped:
        print(f"  {label:<24} SKIPPED (input problems above)")
    print("\n".join(f"{what}: {path}" for what, path in paths.items()))
    if crash_dir.exists():
        print(f"crash reports: {crash_dir}")
