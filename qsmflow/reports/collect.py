"""Find what a subject/session has: its BIDS inputs, its derivatives in ``OUTPUT_DIR``, a
simulation truth and a segmentation.

Nothing here reads image data; :func:`collect_subject` only lists files and reads JSON
sidecars, so it works on any partial output (a subject that failed part-way).

* **Derivatives** are recognised by their names (:data:`qsmflow.io.naming.DERIVATIVES`) in
  ``OUTPUT_DIR/sub-<s>/[ses-<x>/]anat/``; per-run ones are grouped by orientation (their
  ``acq-``/``run-`` entities).
* **Inputs**: ``BIDS_DIR/sub-<s>/[ses-<x>/]anat/*_MEGRE.nii[.gz]`` by orientation and echo, with
  ``EchoTime`` (s) and ``MagneticFieldStrength`` (T) from their own sidecars (falling back to
  the derivatives' sidecars, which record the values used).
* **Truth** (simulations): ``BIDS_DIR/derivatives/<any>/sub-<s>/[ses-<x>/]anat/
  <run entities>_Chimap.nii[.gz]`` (no ``desc-``), one per orientation.
* **Segmentation**: ``BIDS_DIR/derivatives/<any>/.../<reference run entities>_dseg.nii[.gz]``,
  names from a ``*_dseg.tsv`` beside it or the derivative dataset's root ``dseg.tsv``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from ..io.atomic import nifti_extension, nifti_stem
from ..io.naming import DERIVATIVES, entity_string, parse_entities
from ..io.nifti import sidecar_path
from .naming import normalise_label, split_label

__all__ = [
    "Echo",
    "Orientation",
    "SubjectFiles",
    "bids_dir_from_derivatives",
    "collect_subject",
    "find_labels",
    "find_segmentation",
    "natural_key",
    "read_sidecar",
]


def natural_key(text: str) -> tuple:
    """Sort key that orders ``acq-ori2`` before ``acq-ori10``."""
    parts = re.split(r"(\d+)", text or "")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def read_sidecar(path: str | os.PathLike | None) -> dict[str, Any]:
    """The JSON sidecar of ``path`` (``{}`` when absent or unreadable)."""
    if path is None:
        return {}
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class Echo:
    """One echo of an orientation's BIDS input: magnitude and phase files, TE (s)."""

    index: int
    magnitude: Path | None = None
    phase: Path | None = None
    echo_time_s: float | None = None


@dataclass
class Orientation:
    """One head orientation (run) of a subject/session: inputs, derivatives and truth.

    ``label`` is the run's ``acq-``/``run-`` entities (``"acq-ori1"``; ``""`` for an unlabelled
    single run); ``derivatives`` maps :data:`~qsmflow.io.naming.DERIVATIVES` keys
    (``brain_mask``, ``field_hz``, ``local_field``, ``local_mask``, ``reference_field``,
    ``reference_mask``, ``rigid_xfm``, ``flirt_xfm``) to files; ``chi`` maps an inversion method
    to its map.
    """

    label: str
    prefix: str
    echoes: list[Echo] = field(default_factory=list)
    derivatives: dict[str, Path] = field(default_factory=dict)
    chi: dict[str, Path] = field(default_factory=dict)
    truth: Path | None = None
    field_strength_t: float | None = None

    @property
    def name(self) -> str:
        """Label for display (``"acq-ori1"``, or ``"(single run)"``)."""
        return self.label or "(single run)"

    @property
    def magnitude1(self) -> Path | None:
        """First-echo magnitude (BIDS input), if found."""
        for echo in self.echoes:
            if echo.magnitude is not None:
                return echo.magnitude
        return None

    @property
    def echo_times_s(self) -> list[float]:
        """Echo times (s) by echo index: the inputs' sidecars, else the field fit's record."""
        times = [e.echo_time_s for e in self.echoes]
        if times and all(t is not None for t in times):
            return [float(t) for t in times if t is not None]
        used = read_sidecar(self.derivatives.get("field_hz")).get("EchoTime")
        return [float(t) for t in used] if isinstance(used, list) else []


@dataclass
class SubjectFiles:
    """Everything found for one subject/session (see the module docstring).

    ``orientations`` are in natural order of their labels with the reference (the first, or
    the one the sidecars name as ``ReferenceOrientation``) first; ``derivatives`` holds the
    subject-level ones (``cosmos_chi``, ``cosmos_mask``, ``training_patches``).
    """

    label: str
    subject: str
    session: str | None
    output_dir: Path
    bids_dir: Path | None
    orientations: list[Orientation] = field(default_factory=list)
    derivatives: dict[str, Path] = field(default_factory=dict)
    anat_dir: Path | None = None

    @property
    def reference(self) -> Orientation | None:
        """The reference orientation (COSMOS's grid), or None without any."""
        return self.orientations[0] if self.orientations else None

    def orientation(self, label: str) -> Orientation:
        """The orientation called ``label`` (created when new)."""
        for ori in self.orientations:
            if ori.label == label:
                return ori
        prefix = "_".join(p for p in (self.label, label) if p)
        ori = Orientation(label=label, prefix=prefix)
        self.orientations.append(ori)
        return ori

    def all_files(self) -> list[Path]:
        """Every derivative file found (subject level first), sorted by name."""
        files = list(self.derivatives.values())
        for ori in self.orientations:
            files += list(ori.derivatives.values()) + list(ori.chi.values())
        return sorted(files, key=lambda p: p.name)


# --------------------------------------------------------------------------------------------
# Locating things
# --------------------------------------------------------------------------------------------


def _anat_dir(root: Path, subject: str, session: str | None) -> Path:
    folder = root / f"sub-{subject}"
    if session:
        folder /= f"ses-{session}"
    return folder / "anat"


def bids_dir_from_derivatives(output_dir: str | os.PathLike) -> Path | None:
    """The raw BIDS folder named by ``OUTPUT_DIR/dataset_description.json`` (``DatasetLinks``
    ``raw``, a ``file://`` URI), when it exists."""
    desc = Path(output_dir) / "dataset_description.json"
    try:
        raw = json.loads(desc.read_text()).get("DatasetLinks", {}).get("raw")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(raw, str):
        return None
    parsed = urlparse(raw)
    path = Path(url2pathname(parsed.path)) if parsed.scheme == "file" else Path(raw)
    return path if path.is_dir() else None


def find_labels(output_dir: str | os.PathLike) -> list[str]:
    """Subject/session labels with a derivatives folder (``sub-*/[ses-*/]anat``), sorted."""
    root = Path(output_dir)
    labels = []
    for anat in list(root.glob("sub-*/anat")) + list(root.glob("sub-*/ses-*/anat")):
        parts = anat.relative_to(root).parts[:-1]
        labels.append("_".join(parts))
    return sorted(set(labels), key=natural_key)


# --------------------------------------------------------------------------------------------
# Derivatives
# --------------------------------------------------------------------------------------------


def _derivative_key(suffix: str, desc: str | None, extension: str) -> tuple[str, str | None]:
    """(DERIVATIVES key, method) of a file name's parts; ("", None) when unknown."""
    for key, d in DERIVATIVES.items():
        if d.suffix == suffix and d.extension == extension and d.desc is not None:
            if d.desc == desc:
                return key, None
    chi = DERIVATIVES["chi"]
    if suffix == chi.suffix and extension == chi.extension and desc:
        return "chi", desc
    return "", None


def _add_derivatives(files: SubjectFiles) -> None:
    anat = files.anat_dir
    if anat is None or not anat.is_dir():
        return
    for path in sorted(anat.iterdir()):
        if path.name.startswith(".") or path.suffix == ".json":
            continue
        extension = "" if path.is_dir() else nifti_extension(path)
        stem = nifti_stem(path) if extension else path.name
        if not stem.startswith(f"{files.label}_"):
            continue
        ents = parse_entities(stem)
        if ents.get("ses") != files.session:
            continue
        suffix = stem.rsplit("_", 1)[-1]
        key, method = _derivative_key(suffix, ents.get("desc"), extension)
        if not key:
            continue
        ori_label = entity_string({"acq": ents.get("acq"), "run": ents.get("run")})
        if DERIVATIVES[key].sources == "subject":
            files.derivatives[key] = path
        elif key == "chi":
            files.orientation(ori_label).chi[str(method)] = path
        else:
            files.orientation(ori_label).derivatives[key] = path


# --------------------------------------------------------------------------------------------
# Inputs, truth, segmentation
# --------------------------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out


def _add_inputs(files: SubjectFiles) -> None:
    if files.bids_dir is None:
        return
    anat = _anat_dir(files.bids_dir, files.subject, files.session)
    if not anat.is_dir():
        return
    for path in sorted(anat.glob(f"{files.label}_*MEGRE.nii*")):
        if nifti_extension(path) not in (".nii", ".nii.gz"):
            continue
        ents = parse_entities(path)
        if ents.get("ses") != files.session:
            continue
        ori = files.orientation(entity_string({"acq": ents.get("acq"), "run": ents.get("run")}))
        try:
            index = int(ents.get("echo", "1"))
        except ValueError:
            continue
        echo = next((e for e in ori.echoes if e.index == index), None)
        if echo is None:
            echo = Echo(index=index)
            ori.echoes.append(echo)
            ori.echoes.sort(key=lambda e: e.index)
        meta = read_sidecar(path)
        part = ents.get("part", "mag")
        if part == "mag":
            echo.magnitude = path
        elif part == "phase":
            echo.phase = path
        if echo.echo_time_s is None:
            echo.echo_time_s = _float(meta.get("EchoTime"))
        if ori.field_strength_t is None:
            ori.field_strength_t = _float(meta.get("MagneticFieldStrength"))


def _derivative_roots(files: SubjectFiles) -> list[Path]:
    """``BIDS_DIR/derivatives/*`` datasets other than ``OUTPUT_DIR`` itself."""
    if files.bids_dir is None:
        return []
    roots = sorted(p for p in (files.bids_dir / "derivatives").glob("*") if p.is_dir())
    own = files.output_dir.resolve()
    return [r for r in roots if r.resolve() != own]


def _first_nifti(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _add_truth(files: SubjectFiles) -> None:
    for root in _derivative_roots(files):
        anat = _anat_dir(root, files.subject, files.session)
        for ori in files.orientations:
            if ori.truth is None:
                ori.truth = _first_nifti(anat, f"{ori.prefix}_Chimap")


def find_segmentation(files: SubjectFiles) -> tuple[Path | None, Path | None]:
    """(label image, names table) of the reference orientation in ``BIDS_DIR/derivatives``.

    The names are the ``*_dseg.tsv`` beside the image, else the derivative dataset's root
    ``dseg.tsv``; None where not found.
    """
    ref = files.reference
    if ref is None:
        return None, None
    for root in _derivative_roots(files):
        anat = _anat_dir(root, files.subject, files.session)
        image = _first_nifti(anat, f"{ref.prefix}_dseg")
        if image is None:
            continue
        for names in (anat / f"{ref.prefix}_dseg.tsv", root / "dseg.tsv"):
            if names.is_file():
                return image, names
        return image, None
    return None, None


def _order_orientations(files: SubjectFiles) -> None:
    files.orientations.sort(key=lambda o: natural_key(o.label))
    named = {
        read_sidecar(p).get("ReferenceOrientation")
        for o in files.orientations
        for k, p in o.derivatives.items()
        if k.startswith("reference_") or k == "rigid_xfm"
    }
    named.discard(None)
    if len(named) == 1:
        ref = named.pop()
        files.orientations.sort(key=lambda o: o.label != ref)


def collect_subject(
    output_dir: str | os.PathLike, label: str, *, bids_dir: str | os.PathLike | None = None
) -> SubjectFiles:
    """Everything found for subject/session ``label`` (``01``, ``sub-01``, ``sub-01_ses-a``).

    ``bids_dir`` (raw BIDS root) gives the inputs, truth and segmentation; without it the
    derivatives are still listed.
    """
    norm = normalise_label(label)
    subject, session = split_label(norm)
    out = Path(output_dir).resolve()
    files = SubjectFiles(
        label=norm,
        subject=subject,
        session=session,
        output_dir=out,
        bids_dir=Path(bids_dir).resolve() if bids_dir is not None else None,
        anat_dir=_anat_dir(out, subject, session),
    )
    _add_derivatives(files)
    _add_inputs(files)
    _order_orientations(files)
    _add_truth(files)
    return files
