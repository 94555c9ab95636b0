"""Finding the MEGRE runs of a BIDS dataset with pybids, and the public API of
:mod:`qsmflow.io.bids` (:func:`discover`, :func:`validate_dataset`, :func:`collect_inputs`)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ...errors import QSMInputError
from ..naming import entity_string
from .checks import (
    EchoSlots,
    check_echo_order,
    check_echo_pairs,
    check_images,
    check_one_field_strength,
    check_orientations,
    read_echo_metadata,
)
from .records import (
    MIN_ORIENTATIONS,
    EchoFiles,
    GRERun,
    Problem,
    Problems,
    RunScan,
    SessionProblems,
    SubjectSession,
)

log = logging.getLogger(__name__)

_EXTENSIONS = [".nii", ".nii.gz"]

#: ``(acq, run)`` labels of one head orientation (``None`` where the entity is absent).
RunKey = tuple[str | None, str | None]


def discover(
    bids_dir: str | os.PathLike,
    *,
    participant_label: str | Sequence[str] | None = None,
    session_label: str | Sequence[str] | None = None,
) -> list[SubjectSession]:
    """The MEGRE runs of each subject/session, from file names and sidecars only.

    ``participant_label``/``session_label``: one label or a list, with or without the
    ``sub-``/``ses-`` prefix; ``None`` = all. Raises :class:`QSMInputError` listing every
    problem found without opening images (missing files or echoes, sidecar values); use
    :func:`validate_dataset` or :func:`collect_inputs` for the full checks.
    """
    subjects, problems = _scan(
        bids_dir, participant_label, session_label, pipeline="qsm", open_images=False
    )
    if problems:
        raise _combined_error(bids_dir, problems)
    return subjects


def validate_dataset(
    bids_dir: str | os.PathLike,
    *,
    participant_label: str | Sequence[str] | None = None,
    session_label: str | Sequence[str] | None = None,
    pipeline: str = "qsm",
) -> tuple[list[SubjectSession], list[Problem]]:
    """Check everything before computing; return ``(subjects_ok, problems)``.

    ``subjects_ok`` holds each requested subject/session without any problem; ``problems``
    lists every problem found (each naming its file). Reads the image headers, and the data of
    the phase images (for the units check).
    """
    return _scan(bids_dir, participant_label, session_label, pipeline=pipeline, open_images=True)


def collect_inputs(
    bids_dir: str | os.PathLike,
    *,
    participant_label: str | Sequence[str] | None = None,
    session_label: str | Sequence[str] | None = None,
    pipeline: str = "qsm",
    skip_invalid: bool = False,
) -> list[SubjectSession]:
    """:func:`validate_dataset`, raising one :class:`QSMInputError` that lists all problems.

    With ``skip_invalid=True`` the problems are logged as warnings and the valid subjects are
    returned; the error is raised only when no subject/session is valid.
    """
    subjects, problems = validate_dataset(
        bids_dir,
        participant_label=participant_label,
        session_label=session_label,
        pipeline=pipeline,
    )
    if problems and (not skip_invalid or not subjects):
        raise _combined_error(bids_dir, problems)
    for p in problems:
        log.warning("skipping %s: %s", p.label or "dataset", p)
    return subjects


def format_problems(problems: Sequence[Problem]) -> str:
    """One problem per line."""
    return "\n".join(str(p) for p in problems)


def _combined_error(bids_dir, problems: Sequence[Problem]) -> QSMInputError:
    n = len(problems)
    head = f"{n} problem{'s' if n != 1 else ''} with the BIDS input {bids_dir}:"
    return QSMInputError(head + "\n" + format_problems(problems))


def _natural_key(text: str | None) -> tuple:
    parts = re.split(r"(\d+)", text or "")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _normalise_labels(labels: str | Sequence[str] | None, prefix: str) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        labels = [labels]
    out = []
    for lab in labels:
        lab = str(lab).strip()
        if lab.startswith(prefix):
            lab = lab[len(prefix) :]
        if lab and lab not in out:
            out.append(lab)
    return out or None


def _open_dataset(root: Path, probs: Problems):
    """The pybids layout of a BIDS folder, or None after recording why not."""
    if not root.is_dir():
        probs.add(None, None, root, "BIDS dataset folder not found")
        return None
    desc = root / "dataset_description.json"
    if not desc.is_file():
        probs.add(None, None, desc, "missing: not a BIDS dataset (no dataset_description.json)")
        return None
    try:
        json.loads(desc.read_text())
    except (OSError, ValueError) as exc:
        probs.add(None, None, desc, f"cannot read as JSON ({exc})")
        return None

    import bids

    try:
        return bids.BIDSLayout(str(root), validate=False, derivatives=False)
    except Exception as exc:  # pybids raises several types for malformed datasets
        probs.add(None, None, root, f"pybids cannot index this dataset ({exc})")
        return None


def _wanted_subjects(layout, root: Path, participant_label, probs: Problems) -> list[str]:
    """The subjects to process; a requested subject that is absent is a problem."""
    present = sorted(layout.get_subjects(), key=_natural_key)
    wanted = _normalise_labels(participant_label, "sub-")
    if wanted is None:
        if not present:
            probs.add(None, None, root, "no subject folders (sub-<label>) found")
        return present
    subjects = []
    for sub in wanted:
        if sub in present:
            subjects.append(sub)
        else:
            found = ", ".join(f"sub-{s}" for s in present) or "none"
            probs.add(sub, None, root / f"sub-{sub}", f"participant not found (present: {found})")
    return subjects


def _wanted_sessions(
    layout, root: Path, sub: str, wanted_ses: list[str] | None, probs: Problems
) -> list[str | None]:
    """The sessions of ``sub`` to process (``[None]`` when it has none); a requested session
    that is absent is a problem."""
    sessions: list[str | None] = sorted(layout.get_sessions(subject=sub), key=_natural_key)
    if wanted_ses is None:
        return sessions or [None]
    for ses in wanted_ses:
        if ses not in sessions:
            found = ", ".join(f"ses-{s}" for s in sessions if s) or "none"
            probs.add(
                sub,
                ses,
                root / f"sub-{sub}" / f"ses-{ses}",
                f"session not found for sub-{sub} (present: {found})",
            )
    return [s for s in sessions if s in wanted_ses]


def _scan(
    bids_dir, participant_label, session_label, *, pipeline: str, open_images: bool
) -> tuple[list[SubjectSession], list[Problem]]:
    """Find and check every requested subject/session; ``open_images=False`` skips the checks
    that read image headers and phase data (:func:`discover`)."""
    if pipeline not in MIN_ORIENTATIONS:
        raise QSMInputError(
            f"unknown pipeline {pipeline!r} (use one of {', '.join(MIN_ORIENTATIONS)})"
        )
    probs = Problems()
    root = Path(bids_dir).expanduser()
    root = root.resolve() if root.is_dir() else root
    layout = _open_dataset(root, probs)
    if layout is None:
        return [], probs.items
    from bids.layout import Query

    wanted_ses = _normalise_labels(session_label, "ses-")
    ok: list[SubjectSession] = []
    for sub in _wanted_subjects(layout, root, participant_label, probs):
        for ses in _wanted_sessions(layout, root, sub, wanted_ses, probs):
            files = layout.get(
                subject=sub,
                session=ses if ses is not None else Query.NONE,
                suffix="MEGRE",
                extension=_EXTENSIONS,
            )
            report = probs.of(sub, ses)
            if not files:
                report.add(
                    root / f"sub-{sub}" / (f"ses-{ses}" if ses is not None else ""),
                    "no multi-echo GRE images (anat/*_echo-<n>_part-<mag|phase>_MEGRE.nii[.gz])"
                    " found",
                )
                continue
            n0 = report.count()
            runs = [
                _scan_run(layout, root, key, run_files, report, open_images)
                for key, run_files in _group_by_orientation(files).items()
            ]
            check_orientations(runs, pipeline, report)
            if report.count() == n0:
                ok.append(SubjectSession(subject=sub, session=ses, runs=tuple(r.obj for r in runs)))
    return ok, probs.items


def _group_by_orientation(files) -> dict[RunKey, list]:
    """The MEGRE files of one subject/session by ``(acq, run)``, in natural label order."""
    groups: dict[RunKey, list] = {}
    for f in files:
        ents = f.get_entities()
        acq, run = ents.get("acquisition"), ents.get("run")
        key = (None if acq is None else str(acq), None if run is None else str(run))
        groups.setdefault(key, []).append(f)
    keys = sorted(groups, key=lambda k: (_natural_key(k[0]), _natural_key(k[1])))
    return {k: groups[k] for k in keys}


def _group_by_echo(files, report: SessionProblems) -> EchoSlots:
    """``{echo: {"mag"|"phase": path}}`` of one run; files without a usable echo/part entity
    (or a second file for one slot) are reported; ``part-real``/``part-imag`` are not used."""
    by_echo: EchoSlots = {}
    unused: list[Path] = []
    for f in sorted(files, key=lambda f: f.path):
        path = Path(f.path)
        ents = f.get_entities()
        part = str(ents.get("part", "mag"))
        if "echo" not in ents:
            report.add(path, "MEGRE image without an echo-<index> entity")
            continue
        try:
            echo = int(str(ents["echo"]))
        except ValueError:
            report.add(path, f"echo index {ents['echo']!r} is not an integer")
            continue
        if part in ("real", "imag"):
            unused.append(path)  # complex parts next to magnitude/phase are simply not used
            continue
        if part not in ("mag", "phase"):
            report.add(path, f"unknown part-{part} (BIDS: mag, phase, real, imag)")
            continue
        slot = by_echo.setdefault(echo, {})
        if part in slot:
            report.add(
                path,
                f"two {part} images for echo {echo} of this run ({slot[part].name}); entities "
                "other than acq-/run- (rec-, ce-, ...) do not tell runs apart here",
            )
            continue
        slot[part] = path
    if not by_echo and unused:
        report.add(
            unused[0],
            "only real/imaginary MEGRE images in this run; qsmflow needs magnitude and "
            "phase (part-mag, part-phase) per echo",
        )
    return by_echo


def _scan_run(
    layout, root: Path, key: RunKey, files, report: SessionProblems, open_images: bool
) -> RunScan:
    """Group one run's files, run every check, and build its :class:`GRERun` when clean."""
    acq, run = key
    label = entity_string({"acq": acq, "run": run})
    n0 = report.count()
    first_file = Path(sorted(f.path for f in files)[0])
    by_echo = _group_by_echo(files, report)
    if not by_echo:
        return RunScan(None, first_file, None, label)
    check_echo_pairs(by_echo, report)
    meta = read_echo_metadata(by_echo, layout, report)
    check_echo_order(meta, report)
    check_one_field_strength(meta, first_file, report)
    if open_images:
        check_images(by_echo, layout, report)
    if report.count() > n0:
        return RunScan(None, first_file, meta.field_strength_t, label)
    echoes = tuple(
        EchoFiles(e, slot["mag"], slot["phase"], meta.echo_time_s[e])
        for e, slot in sorted(by_echo.items())
    )
    run_obj = GRERun(
        subject=report.subject,
        session=report.session,
        acquisition=acq,
        run=run,
        echoes=echoes,
        field_strength_t=meta.field_strength_t,
        bids_dir=root,
    )
    return RunScan(run_obj, first_file, meta.field_strength_t, label)
