"""DICOM to BIDS for multi-echo GRE: :func:`convert_dicom` (``qsmflow dicom``).

Modules: :mod:`.read` (pydicom files to per-frame records, classic and enhanced multi-frame),
:mod:`.series` (echoes and parts, slice order, the dcm2niix affine, scaling to radians/Hz),
:mod:`.layout` (runs: MEGRE, phase-difference and Hz field maps; acq- labels), :mod:`.write`
(BIDS files, staged then renamed into place), :mod:`.dcm2niix` (the optional backend).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import QSMInputError
from .layout import Run, assemble_runs, assign_acquisition_labels
from .read import Frame, PixelReader, frames_of, iter_dicom_files, read_header
from .series import ImageVolume, SeriesError, volumes_of_series
from .write import existing_conflicts, write_dataset_files, write_run

log = logging.getLogger(__name__)

BACKENDS = ("python", "dcm2niix")


@dataclass(frozen=True)
class Skipped:
    """Something not converted: the file to look at, its series and why."""

    source: str
    series: str
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.source} ({self.series}): {self.reason}"
            if self.series
            else (f"{self.source}: {self.reason}")
        )


@dataclass
class ConversionResult:
    """What :func:`convert_dicom` wrote (paths relative to ``bids_dir``) and skipped."""

    bids_dir: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    @property
    def images(self) -> list[Path]:
        return [p for p in self.written if p.name.endswith(".nii.gz")]


def _check_label(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    value = str(value).removeprefix(f"{what[:3]}-")
    if not value or not value.isalnum():
        raise QSMInputError(f"BIDS {what} label must be alphanumeric, got {value!r}")
    return value


def convert_dicom(
    dicom_dir: str | os.PathLike,
    bids_dir: str | os.PathLike,
    *,
    subject: str,
    session: str | None = None,
    backend: str = "python",
) -> ConversionResult:
    """Convert the GRE series under ``dicom_dir`` into the BIDS dataset ``bids_dir``.

    Every series that can be converted is written (see :mod:`.layout` for names); the others
    are listed in :attr:`ConversionResult.skipped` with a file and the reason. Raises
    :class:`QSMInputError` when ``dicom_dir`` is missing or nothing at all could be converted.
    """
    subject = _check_label(subject, "subject")
    session = _check_label(session, "session")
    src = Path(dicom_dir)
    if not src.is_dir():
        raise QSMInputError("DICOM folder not found", str(src))
    if backend == "python":
        volumes, skipped = read_volumes(src)
    elif backend == "dcm2niix":
        from .dcm2niix import dcm2niix_volumes

        volumes, warnings = dcm2niix_volumes(src)
        skipped = [Skipped(str(src), "", w) for w in warnings]
    else:
        raise QSMInputError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    runs = assemble_runs(volumes)
    if not runs:
        detail = "\n".join(str(s) for s in skipped) or "no DICOM image found"
        raise QSMInputError(f"nothing could be converted:\n{detail}", str(src))
    assign_acquisition_labels(runs)
    root = Path(bids_dir)
    result = ConversionResult(bids_dir=root, skipped=skipped, runs=runs)
    for path in existing_conflicts(root, runs, subject, session):
        log.warning("replacing %s", root / path)
    for run in runs:
        result.written += write_run(root, run, subject, session)
    result.written += write_dataset_files(root, f"Subject {subject} from {src.name}.")
    return result


def read_volumes(dicom_dir: Path) -> tuple[list[ImageVolume], list[Skipped]]:
    """All image volumes pydicom can make of ``dicom_dir``, and what it skipped and why."""
    series: dict[str, list[Frame]] = defaultdict(list)
    skipped: list[Skipped] = []
    for path in iter_dicom_files(dicom_dir):
        ds = read_header(path)
        if ds is None:
            skipped.append(Skipped(str(path), "", "not a DICOM file"))
            continue
        try:
            for frame in frames_of(path, ds):
                series[frame.series_uid].append(frame)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            skipped.append(Skipped(str(path), "", f"unreadable DICOM header ({exc})"))
    volumes: list[ImageVolume] = []
    pixels = PixelReader()
    for frames in series.values():
        first = frames[0]
        name = f"series {first.series_number} {first.series_description!r}"
        try:
            volumes += volumes_of_series(frames, pixels)
        except SeriesError as exc:
            skipped.append(Skipped(exc.source, name, exc.reason))
        except Exception as exc:  # pixel decoders raise many types for broken data
            skipped.append(Skipped(str(first.path), name, f"cannot read the pixel data ({exc})"))
        finally:
            pixels.clear()
    return volumes, skipped


__all__ = ["BACKENDS", "ConversionResult", "Skipped", "convert_dicom", "read_volumes"]
