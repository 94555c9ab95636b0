"""What :mod:`qsmflow.io.bids` finds: runs, subject/sessions, and the input problems."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..naming import entity_string

#: Fewest head orientations each pipeline needs per subject/session (the one such rule).
MIN_ORIENTATIONS = {"qsm": 1, "cosmos": 2, "training-data": 2}


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
        return entity_string({"acq": self.acquisition, "run": self.run})

    @property
    def bids_prefix(self) -> str:
        """``sub-<s>[_ses-<t>][_acq-<a>][_run-<r>]``, the entities of the run's derivatives."""
        return entity_string(
            {"sub": self.subject, "ses": self.session, "acq": self.acquisition, "run": self.run}
        )

    @property
    def echo_times_s(self) -> tuple[float, ...]:
        """Echo times in seconds, by echo index."""
        return tuple(e.echo_time_s for e in self.echoes)

    @property
    def magnitude_files(self) -> tuple[Path, ...]:
        """Magnitude image of every echo, by echo index."""
        return tuple(e.magnitude for e in self.echoes)

    @property
    def phase_files(self) -> tuple[Path, ...]:
        """Phase image of every echo, by echo index."""
        return tuple(e.phase for e in self.echoes)

    @property
    def source_files(self) -> list[str]:
        """Input files (per echo: magnitude, then phase) as absolute paths, for provenance.

        Absolute so that they stay valid from any working directory (Nipype nodes);
        :func:`qsmflow.io.naming.bids_uri` turns them into ``bids:raw:`` URIs.
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
        return entity_string({"sub": self.subject, "ses": self.session})

    @property
    def reference(self) -> GRERun:
        """The reference orientation (the first run in natural label order)."""
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
        if self.subject is None:
            return None
        return entity_string({"sub": self.subject, "ses": self.session})

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Problems:
    """The problems found so far, in order; a check adds to it and goes on."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, subject: str | None, session: str | None, path, message: str) -> None:
        """Record ``message`` about ``path`` (a file or folder)."""
        self.items.append(Problem(subject, str(path), message, session))

    def add_grouped(
        self, subject: str | None, session: str | None, paths: list, message: str
    ) -> None:
        """One problem for several files with the same defect (first file named)."""
        if not paths:
            return
        extra = ""
        if len(paths) > 1:
            names = ", ".join(Path(p).name for p in paths[1:4])
            more = f" and {len(paths) - 4} more" if len(paths) > 4 else ""
            extra = f" (also {names}{more})"
        self.add(subject, session, paths[0], message + extra)

    def count(self, subject: str | None, session: str | None) -> int:
        """How many problems of one subject/session were recorded."""
        return sum(1 for p in self.items if p.subject == subject and p.session == session)

    def of(self, subject: str, session: str | None) -> SessionProblems:
        """A recorder for the problems of one subject/session."""
        return SessionProblems(self, subject, session)


@dataclass(frozen=True)
class SessionProblems:
    """:class:`Problems` bound to one subject/session (what the per-run checks report to)."""

    problems: Problems
    subject: str
    session: str | None

    def add(self, path, message: str) -> None:
        """Record ``message`` about ``path``."""
        self.problems.add(self.subject, self.session, path, message)

    def add_grouped(self, paths: list, message: str) -> None:
        """One problem for several files with the same defect (first file named)."""
        self.problems.add_grouped(self.subject, self.session, paths, message)

    def count(self) -> int:
        """How many problems this subject/session has so far."""
        return self.problems.count(self.subject, self.session)


@dataclass(frozen=True)
class RunScan:
    """A run being checked: its :class:`GRERun` (``None`` when broken), the file to name in
    messages about the run, its field strength (tesla, ``None`` when unknown) and label."""

    obj: GRERun | None
    first_file: Path
    field_strength_t: float | None
    label: str
