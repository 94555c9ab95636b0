"""Find and check multi-echo GRE inputs in a BIDS dataset before any computation.

What is read
------------
Multi-echo GRE magnitude and phase per echo, BIDS suffix ``MEGRE``::

    sub-<s>/[ses-<t>/]anat/sub-<s>[_ses-<t>][_acq-<a>][_run-<r>]_echo-<n>_part-<mag|phase>_MEGRE.nii[.gz]

with JSON sidecars (BIDS inheritance is honoured, through pybids). Head orientations of one
subject/session are the distinct ``acq-``/``run-`` combinations; they are sorted naturally by
their label (``acq-ori2`` before ``acq-ori10``) and the **first one is the reference
orientation** (COSMOS registers the others to it). A ``MEGRE`` file without a ``part`` entity
counts as magnitude (the BIDS default); ``part-real``/``part-imag`` files are not used.
``derivatives/`` is not searched.

Units and conventions
---------------------
* ``EchoTime`` in **seconds** (BIDS); a value above 1 is taken for milliseconds and is an error.
  Echo times must be positive and increase with the echo index ``echo-1, echo-2, ...``
  (indices start at 1 without gaps); magnitude and phase of one echo must agree.
* ``MagneticFieldStrength`` in **tesla**, required in every sidecar.
* Phase in radians ([-pi, pi]) or Siemens 12-bit units ([-4096, 4095], or raw [0, 4095]); the
  data of every phase image is read and classified by
  :func:`qsmflow.physics.validation.phase_to_radians` (a sidecar ``"Units": "rad"`` forces the
  radians check). Degrees, unwrapped or arbitrarily scaled phase is an error naming the range.
* All images of one run (every echo, magnitude and phase) must be 3-D (a trailing singleton 4th
  axis is allowed) on one grid: same shape and affine (from the headers, within 1e-3 mm).

API
---
* :func:`discover` - the runs of each subject/session from the file names and sidecars only (no
  image is opened); raises one :class:`~qsmflow.errors.QSMInputError` listing every structural
  or sidecar problem.
* :func:`validate_dataset` - every check above, plus the pipeline's needs; returns
  ``(subjects_ok, problems)``: the :class:`SubjectSession` objects without any problem, and a
  list of :class:`Problem` (``subject``, ``session``, ``path``, ``message``; ``str(problem)`` is
  ``"<path>: <message>"``). A subject/session with any problem is left out of ``subjects_ok``
  as a whole; problems of the dataset itself (missing folder, no dataset_description.json) have
  ``subject=None``. Use it to process the valid subjects and report the rest.
* :func:`collect_inputs` - :func:`validate_dataset`, then one :class:`QSMInputError` listing all
  problems (one per line) if there is any; with ``skip_invalid=True`` the problems are logged
  and only the valid subjects are returned (an error only when none is valid).

``pipeline`` is ``"qsm"`` (one orientation is enough), ``"cosmos"`` or ``"training-data"`` (at
least 2 head orientations per subject/session, all on one field strength).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QSMInputError

log = logging.getLogger(__name__)

#: Fewest head orientations each pipeline needs per subject/session.
MIN_ORIENTATIONS = {"qsm": 1, "cosmos": 2, "training-data": 2}

#: EchoTime above this (seconds) is taken for milliseconds.
MAX_ECHO_TIME_S = 1.0
#: Plausible MagneticFieldStrength range (tesla).
MAX_FIELD_STRENGTH_T = 25.0
#: Affine tolerance (mm) for "same grid".
AFFINE_ATOL_MM = 1e-3

_EXTENSIONS = [".nii", ".nii.gz"]


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class EchoFiles:
    """Magnitude and phase of one echo; ``echo`` is the BIDS index (1-based), TE in seconds."""

    echo: int
    magnitude: Path
    phase: Path
    echo_time_s: float


@dataclass(frozen=True)
class GRERun:
    """One multi-echo GRE acquisition (one head orientation) of a subject/session.

    ``echoes`` are sorted by echo index; ``field_strength_t`` in tesla; ``bids_dir`` is the
    dataset root (absolute). All paths are absolute.
    """

    subject: str
    session: str | None
    acquisition: str | None
    run: str | None
    echoes: tuple[EchoFiles, ...]
    field_strength_t: float
    bids_dir: Path | None = None

    @property
    def label(self) -> str:
        """Orientation key: ``"acq-ori1"``, ``"acq-ori1_run-2"``, ``"run-1"``; ``""`` if none."""
        parts = []
        if self.acquisition is not None:
            parts.append(f"acq-{self.acquisition}")
        if self.run is not None:
            parts.append(f"run-{self.run}")
        return "_".join(parts)

    @property
    def bids_prefix(self) -> str:
        """``sub-<s>[_ses-<t>][_acq-<a>][_run-<r>]``, for naming derived files."""
        out = f"sub-{self.subject}"
        if self.session is not None:
            out += f"_ses-{self.session}"
        return out + (f"_{self.label}" if self.label else "")

    @property
    def echo_times_s(self) -> tuple[float, ...]:
        return tuple(e.echo_time_s for e in self.echoes)

    @property
    def magnitude_files(self) -> tuple[Path, ...]:
        return tuple(e.magnitude for e in self.echoes)

    @property
    def phase_files(self) -> tuple[Path, ...]:
        return tuple(e.phase for e in self.echoes)

    @property
    def source_files(self) -> list[str]:
        """Input files (per echo: magnitude, then phase) as absolute paths, for provenance.

        Absolute so that they stay valid from any working directory (Nipype nodes);
        :func:`qsmflow.interfaces.bids.bids_uri` turns them into ``bids:raw:`` URIs.
        """
        return [str(p) for e in self.echoes for p in (e.magnitude, e.phase)]

    @property
    def relative_source_files(self) -> list[str]:
        """:attr:`source_files` relative to ``bids_dir`` (``sub-01/anat/...``) when known."""
        out = []
        for f in self.source_files:
            try:
                out.append(Path(f).relative_to(self.bids_dir).as_posix())
            except (TypeError, ValueError):
                out.append(f)
        return out


@dataclass(frozen=True)
class SubjectSession:
    """The runs (head orientations) of one subject/session; ``runs[0]`` is the reference."""

    subject: str
    session: str | None
    runs: tuple[GRERun, ...]

    @property
    def label(self) -> str:
        """``"sub-01"`` or ``"sub-01_ses-a"``."""
        return _label(self.subject, self.session)

    @property
    def reference(self) -> GRERun:
        return self.runs[0]


@dataclass(frozen=True)
class Problem:
    """One input problem: the file (or folder) it concerns and what is wrong.

    ``subject``/``session`` are bare labels (``"01"``), ``None`` for dataset-level problems.
    """

    subject: str | None
    path: str
    message: str
    session: str | None = None

    @property
    def label(self) -> str | None:
        """``"sub-01[_ses-a]"`` or ``None``."""
        return None if self.subject is None else _label(self.subject, self.session)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _label(subject: str, session: str | None) -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session is not None else "")


# --------------------------------------------------------------------------- public API


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
        bids_dir, participant_label, session_label, pipeline="qsm", check_images=False
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
    return _scan(bids_dir, participant_label, session_label, pipeline=pipeline, check_images=True)


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


# --------------------------------------------------------------------------- scanning


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


class _Problems:
    def __init__(self):
        self.items: list[Problem] = []

    def add(self, subject, session, path, message) -> None:
        self.items.append(Problem(subject, str(path), message, session))

    def add_grouped(self, subject, session, paths: list, message: str) -> None:
        """One problem for several files with the same defect (first file named)."""
        if not paths:
            return
        extra = ""
        if len(paths) > 1:
            names = ", ".join(Path(p).name for p in paths[1:4])
            more = f" and {len(paths) - 4} more" if len(paths) > 4 else ""
            extra = f" (also {names}{more})"
        self.add(subject, session, paths[0], message + extra)

    def count(self, subject, session) -> int:
        return sum(1 for p in self.items if p.subject == subject and p.session == session)


def _scan(
    bids_dir, participant_label, session_label, *, pipeline: str, check_images: bool
) -> tuple[list[SubjectSession], list[Problem]]:
    if pipeline not in MIN_ORIENTATIONS:
        raise QSMInputError(
            f"unknown pipeline {pipeline!r} (use one of {', '.join(MIN_ORIENTATIONS)})"
        )
    probs = _Problems()
    root = Path(bids_dir).expanduser()
    if not root.is_dir():
        probs.add(None, None, root, "BIDS dataset folder not found")
        return [], probs.items
    root = root.resolve()
    desc = root / "dataset_description.json"
    if not desc.is_file():
        probs.add(None, None, desc, "missing: not a BIDS dataset (no dataset_description.json)")
        return [], probs.items
    try:
        json.loads(desc.read_text())
    except (OSError, ValueError) as exc:
        probs.add(None, None, desc, f"cannot read as JSON ({exc})")
        return [], probs.items

    import bids
    from bids.layout import Query

    try:
        layout = bids.BIDSLayout(str(root), validate=False, derivatives=False)
    except Exception as exc:  # pybids raises several types for malformed datasets
        probs.add(None, None, root, f"pybids cannot index this dataset ({exc})")
        return [], probs.items

    present = sorted(layout.get_subjects(), key=_natural_key)
    wanted = _normalise_labels(participant_label, "sub-")
    if wanted is None:
        if not present:
            probs.add(None, None, root, "no subject folders (sub-<label>) found")
        subjects = present
    else:
        subjects = []
        for sub in wanted:
            if sub in present:
                subjects.append(sub)
            else:
                found = ", ".join(f"sub-{s}" for s in present) or "none"
                probs.add(
                    sub, None, root / f"sub-{sub}", f"participant not found (present: {found})"
                )
    wanted_ses = _normalise_labels(session_label, "ses-")

    ok: list[SubjectSession] = []
    for sub in subjects:
        sessions: list[str | None] = sorted(layout.get_sessions(subject=sub), key=_natural_key)
        if wanted_ses is not None:
            for ses in wanted_ses:
                if ses not in sessions:
                    found = ", ".join(f"ses-{s}" for s in sessions if s) or "none"
                    probs.add(
                        sub,
                        ses,
                        root / f"sub-{sub}" / f"ses-{ses}",
                        f"session not found for sub-{sub} (present: {found})",
                    )
            sessions = [s for s in sessions if s in wanted_ses]
        elif not sessions:
            sessions = [None]
        for ses in sessions:
            files = layout.get(
                subject=sub,
                session=ses if ses is not None else Query.NONE,
                suffix="MEGRE",
                extension=_EXTENSIONS,
            )
            folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses is not None else "")
            if not files:
                probs.add(
                    sub,
                    ses,
                    folder,
                    "no multi-echo GRE images (anat/*_echo-<n>_part-<mag|phase>_MEGRE.nii[.gz])"
                    " found",
                )
                continue
            n0 = probs.count(sub, ses)
            runs = _scan_session(layout, root, sub, ses, files, probs, check_images)
            _check_orientations(runs, sub, ses, pipeline, probs)
            if probs.count(sub, ses) == n0:
                ok.append(SubjectSession(subject=sub, session=ses, runs=tuple(r.obj for r in runs)))
    return ok, probs.items


@dataclass
class _RunScan:
    """A run being checked: its GRERun (``None`` when broken) and a file to name in messages."""

    key: tuple[str | None, str | None]
    obj: GRERun | None
    first_file: Path
    field_strength_t: float | None
    label: str


def _scan_session(layout, root, sub, ses, files, probs, check_images) -> list[_RunScan]:
    groups: dict[tuple[str | None, str | None], list] = {}
    for f in files:
        ents = f.get_entities()
        acq = ents.get("acquisition")
        run = ents.get("run")
        key = (None if acq is None else str(acq), None if run is None else str(run))
        groups.setdefault(key, []).append(f)
    keys = sorted(groups, key=lambda k: (_natural_key(k[0]), _natural_key(k[1])))
    return [
        _scan_run(layout, root, sub, ses, key, groups[key], probs, check_images) for key in keys
    ]


def _sibling(path: Path, echo: int, part: str) -> Path:
    """The name the ``echo``/``part`` file of the same run would have."""
    name = re.sub(r"_echo-[0-9a-zA-Z]+", f"_echo-{echo}", path.name)
    if "_part-" in name:
        name = re.sub(r"_part-[0-9a-zA-Z]+", f"_part-{part}", name)
    else:
        name = name.replace("_MEGRE", f"_part-{part}_MEGRE")
    return path.with_name(name)


def _sidecar(path: Path) -> Path:
    """The same-name JSON sidecar when it exists, else the image (metadata may be inherited)."""
    name = path.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem
    js = path.with_name(stem + ".json")
    return js if js.is_file() else path


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _scan_run(layout, root, sub, ses, key, files, probs: _Problems, check_images) -> _RunScan:
    acq, run = key
    label = "_".join(
        ([f"acq-{acq}"] if acq is not None else []) + ([f"run-{run}"] if run is not None else [])
    )
    n0 = probs.count(sub, ses)
    add = lambda path, msg: probs.add(sub, ses, path, msg)  # noqa: E731

    # ---- files per (echo, part)
    by_echo: dict[int, dict[str, Path]] = {}
    unused: list[Path] = []
    for f in sorted(files, key=lambda f: f.path):
        path = Path(f.path)
        ents = f.get_entities()
        part = str(ents.get("part", "mag"))
        if "echo" not in ents:
            add(path, "MEGRE image without an echo-<index> entity")
            continue
        try:
            echo = int(str(ents["echo"]))
        except ValueError:
            add(path, f"echo index {ents['echo']!r} is not an integer")
            continue
        if part in ("real", "imag"):
            unused.append(path)  # complex parts next to magnitude/phase are simply not used
            continue
        if part not in ("mag", "phase"):
            add(path, f"unknown part-{part} (BIDS: mag, phase, real, imag)")
            continue
        slot = by_echo.setdefault(echo, {})
        if part in slot:
            add(
                path,
                f"two {part} images for echo {echo} of this run ({slot[part].name}); entities "
                "other than acq-/run- (rec-, ce-, ...) do not tell runs apart here",
            )
            continue
        slot[part] = path
    first_file = Path(sorted(f.path for f in files)[0])
    if not by_echo:
        if unused:
            add(
                unused[0],
                "only real/imaginary MEGRE images in this run; qsmflow needs magnitude and "
                "phase (part-mag, part-phase) per echo",
            )
        return _RunScan(key, None, first_file, None, label)
    any_file = next(iter(next(iter(by_echo.values())).values()))

    # ---- missing echoes / partners
    for echo in sorted(by_echo):
        slot = by_echo[echo]
        for part, other in (("phase", "mag"), ("mag", "phase")):
            if part not in slot:
                add(
                    _sibling(slot[other], echo, part),
                    f"missing: {'phase' if part == 'phase' else 'magnitude'} image of echo "
                    f"{echo} (there is {slot[other].name})",
                )
    echoes = sorted(by_echo)
    gaps = [e for e in range(1, echoes[-1] + 1) if e not in by_echo]
    for e in gaps:
        add(
            _sibling(any_file, e, "phase"),
            f"missing: echo {e} (neither magnitude nor phase); echoes found: "
            f"{', '.join(map(str, echoes))}",
        )

    # ---- sidecars: EchoTime (s), MagneticFieldStrength (T)
    no_te, no_b0 = [], []
    te: dict[int, float] = {}
    te_file: dict[int, Path] = {}
    b0: dict[float, list[Path]] = {}
    for echo in echoes:
        slot = by_echo[echo]
        for part in ("phase", "mag"):
            if part not in slot:
                continue
            path = slot[part]
            side = _sidecar(path)
            try:
                meta = layout.get_metadata(str(path))
            except Exception as exc:  # malformed JSON somewhere in the inheritance chain
                add(side, f"cannot read the JSON sidecar ({exc})")
                continue
            if "EchoTime" not in meta:
                no_te.append(side)
            else:
                t = _number(meta["EchoTime"])
                if t is None:
                    add(side, f"EchoTime {meta['EchoTime']!r} is not a number (seconds)")
                elif t <= 0:
                    add(side, f"EchoTime {t:g} is not positive (BIDS EchoTime is in seconds)")
                elif t > MAX_ECHO_TIME_S:
                    add(
                        side,
                        f"EchoTime {t:g} looks like milliseconds; BIDS EchoTime is in seconds "
                        f"(e.g. {t / 1000:g})",
                    )
                elif echo in te:
                    if abs(te[echo] - t) > 1e-6:
                        add(
                            side,
                            f"EchoTime {t:g} s differs from {te[echo]:g} s of the same echo's "
                            f"{te_file[echo].name}",
                        )
                else:
                    te[echo], te_file[echo] = t, side
            if "MagneticFieldStrength" not in meta:
                no_b0.append(side)
            else:
                b = _number(meta["MagneticFieldStrength"])
                if b is None or not 0 < b <= MAX_FIELD_STRENGTH_T:
                    add(
                        side,
                        f"MagneticFieldStrength {meta['MagneticFieldStrength']!r} is not a field "
                        "strength in tesla",
                    )
                else:
                    b0.setdefault(b, []).append(side)
    probs.add_grouped(sub, ses, no_te, "no EchoTime (seconds) in the JSON sidecar")
    probs.add_grouped(sub, ses, no_b0, "no MagneticFieldStrength (tesla) in the JSON sidecar")
    prev = None
    for echo in echoes:
        if echo not in te:
            continue
        if prev is not None and te[echo] <= te[prev]:
            add(
                te_file[echo],
                f"EchoTime {te[echo]:g} s of echo {echo} is not larger than {te[prev]:g} s of "
                f"echo {prev}; echo times must increase with the echo index",
            )
        prev = echo
    if len(b0) > 1:
        values = ", ".join(f"{b:g} T ({paths[0].name})" for b, paths in sorted(b0.items()))
        add(first_file, f"MagneticFieldStrength differs between the images of one run: {values}")

    # ---- headers: 3-D, one grid; phase units from the data
    if check_images:
        _check_images(by_echo, echoes, layout, add)

    field = next(iter(b0)) if len(b0) == 1 else None
    if probs.count(sub, ses) > n0:
        return _RunScan(key, None, first_file, field, label)
    run_obj = GRERun(
        subject=sub,
        session=ses,
        acquisition=acq,
        run=run,
        echoes=tuple(EchoFiles(e, by_echo[e]["mag"], by_echo[e]["phase"], te[e]) for e in echoes),
        field_strength_t=field,
        bids_dir=root,
    )
    return _RunScan(key, run_obj, first_file, field, label)


def _grid(path: Path, add) -> tuple[tuple[int, ...], np.ndarray, Any] | None:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for broken files
        add(path, f"cannot read as NIfTI ({exc})")
        return None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        add(path, f"expected a 3-D image (one echo per file), got shape {shape}")
        return None
    return shape, affine, img


def _grid_difference(a, b) -> str | None:
    if a[0] != b[0]:
        return f"shape {a[0]} vs {b[0]}"
    d = float(np.abs(a[1] - b[1]).max())
    if d > AFFINE_ATOL_MM:
        return f"affines differ by up to {d:.4g} mm"
    return None


def _check_images(by_echo, echoes, layout, add) -> None:
    from ..physics.validation import phase_to_radians

    grids: dict[tuple[int, str], tuple] = {}
    for echo in echoes:
        for part in ("phase", "mag"):
            if part in by_echo[echo]:
                g = _grid(by_echo[echo][part], add)
                if g is not None:
                    grids[(echo, part)] = g
    # magnitude vs phase of each echo
    for echo in echoes:
        gp, gm = grids.get((echo, "phase")), grids.get((echo, "mag"))
        if gp is not None and gm is not None:
            diff = _grid_difference(gp, gm)
            if diff:
                add(
                    by_echo[echo]["phase"],
                    f"magnitude/phase grid mismatch with {by_echo[echo]['mag'].name}: {diff}",
                )
    # every echo vs the first echo (phase, else magnitude)
    for part in ("phase", "mag"):
        ref = next(((e, grids[(e, part)]) for e in echoes if (e, part) in grids), None)
        if ref is None:
            continue
        for echo in echoes:
            g = grids.get((echo, part))
            if g is None or echo == ref[0]:
                continue
            diff = _grid_difference(g, ref[1])
            if diff:
                add(
                    by_echo[echo][part],
                    f"echo {echo} is on a different grid than echo {ref[0]} "
                    f"({by_echo[ref[0]][part].name}): {diff}",
                )
    # phase units, from the data
    for echo in echoes:
        g = grids.get((echo, "phase"))
        if g is None:
            continue
        path = by_echo[echo]["phase"]
        try:
            data = np.asarray(g[2].dataobj, dtype=np.float32).reshape(g[0])
        except Exception as exc:
            add(path, f"cannot read the image data ({exc})")
            continue
        try:
            units = layout.get_metadata(str(path)).get("Units")
        except Exception:  # already reported with the sidecar checks
            units = None
        try:
            phase_to_radians(data, units="rad" if units == "rad" else "auto")
        except QSMInputError as exc:
            extra = ' (the sidecar says "Units": "rad")' if units == "rad" else ""
            add(path, f"{exc}{extra}")


def _check_orientations(runs: list[_RunScan], sub, ses, pipeline, probs: _Problems) -> None:
    need = MIN_ORIENTATIONS[pipeline]
    if not runs:
        return
    if len(runs) < need:
        found = ", ".join(r.label or "no acq-/run- entity" for r in runs)
        probs.add(
            sub,
            ses,
            runs[0].first_file,
            f"{pipeline} needs at least {need} head orientations (acq-/run- entities), found "
            f"{len(runs)}: {runs[0].first_file} ({found})",
        )
    if need > 1:
        fields = {r.field_strength_t for r in runs if r.field_strength_t is not None}
        if len(fields) > 1:
            values = ", ".join(
                f"{r.label} {r.field_strength_t:g} T" for r in runs if r.field_strength_t
            )
            probs.add(
                sub,
                ses,
                runs[0].first_file,
                f"orientations on different field strengths ({values}); {pipeline} needs one",
            )
