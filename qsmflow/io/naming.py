"""BIDS names: the one place that spells entity strings and derivative file names.

A derivative is named after the BIDS inputs it came from (niworkflows' DerivativesDataSink
rule): the entities of :data:`NAME_ENTITIES` that *all* its source files share, in that order,
then ``desc-<label>`` and the suffix::

    sub-<s>[_ses-<x>][_acq-<a>][_run-<r>][_desc-<label>]_<suffix><extension>

in ``sub-<s>/[ses-<x>/]anat/``. So a per-run output (sources: the run's echoes) keeps the run's
``acq-``/``run-`` entities, and a multi-orientation output (sources: every orientation) keeps
only ``sub-``/``ses-``. :data:`DERIVATIVES` lists every derivative qsmflow writes (suffix, desc,
extension, meaning and unit); the derivatives workflows, the README written into the output
folder and ``qsmflow demo`` all take the names from it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: Entities a derivative name carries, in BIDS order (the MEGRE inputs' ``echo-``/``part-``
#: never name a derivative).
NAME_ENTITIES = ("sub", "ses", "acq", "run")

SourceFiles = str | os.PathLike | Iterable[str | os.PathLike]


def parse_entities(path: str | os.PathLike) -> dict[str, str]:
    """``{"sub": "01", "acq": "ori1", ...}`` from a BIDS file name (folders ignored)."""
    name = Path(path).name.split(".")[0]
    out = {}
    for part in name.split("_"):
        if "-" in part:
            key, value = part.split("-", 1)
            out[key] = value
    return out


def common_entities(source_files: SourceFiles) -> dict[str, str]:
    """The :data:`NAME_ENTITIES` that every file of ``source_files`` has with the same value."""
    files = [source_files] if isinstance(source_files, (str, os.PathLike)) else source_files
    parsed = [parse_entities(f) for f in files]
    if not parsed:
        raise ValueError("no source file to take BIDS entities from")
    first, rest = parsed[0], parsed[1:]
    return {
        k: first[k]
        for k in NAME_ENTITIES
        if k in first and all(ents.get(k) == first[k] for ents in rest)
    }


def entity_string(entities: Mapping[str, str | None]) -> str:
    """``"sub-01_ses-a_acq-ori1"``: the :data:`NAME_ENTITIES` present (not None), in order."""
    return "_".join(f"{k}-{entities[k]}" for k in NAME_ENTITIES if entities.get(k) is not None)


def derivative_name(
    source_files: SourceFiles, suffix: str, extension: str, *, desc: str | None = None
) -> Path:
    """Relative path ``sub-X[/ses-Y]/anat/<name>`` of a derivative of ``source_files``.

    ``extension`` includes its dot (``".nii.gz"``; ``""`` for a folder).
    """
    ents = common_entities(source_files)
    if "sub" not in ents:
        raise ValueError(f"no sub- entity common to the source files: {source_files}")
    name = entity_string(ents)
    if desc:
        if not re.fullmatch(r"[A-Za-z0-9]+", desc):
            raise ValueError(f"desc label must be alphanumeric: {desc!r}")
        name += f"_desc-{desc}"
    folder = Path(f"sub-{ents['sub']}")
    if "ses" in ents:
        folder /= f"ses-{ents['ses']}"
    return folder / "anat" / f"{name}_{suffix}{extension}"


def bids_uri(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """``bids:raw:sub-01/anat/...`` for inputs below ``root``, else the absolute path."""
    p = Path(path).resolve()
    if root is not None:
        try:
            return "bids:raw:" + str(p.relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return str(p)


@dataclass(frozen=True)
class Derivative:
    """One kind of qsmflow derivative.

    ``sources`` says which inputs name it: ``"run"`` (one orientation's echoes: the name keeps
    its ``acq-``/``run-``) or ``"subject"`` (every orientation: ``sub-``/``ses-`` only).
    ``desc`` ``None`` means the label varies (the inversion method).
    """

    suffix: str
    desc: str | None
    extension: str
    sources: Literal["run", "subject"]
    meaning: str

    def name(self, source_files: SourceFiles, *, desc: str | None = None) -> Path:
        """Relative path of this derivative of ``source_files`` (``desc`` when it varies)."""
        return derivative_name(source_files, self.suffix, self.extension, desc=desc or self.desc)

    def pattern(self) -> str:
        """The file name with placeholders (see :data:`PLACEHOLDERS`), for documentation."""
        ents = "<run>" if self.sources == "run" else "<subject>"
        return f"{ents}_desc-{self.desc or '<method>'}_{self.suffix}{self.extension}"


#: What the placeholders of :meth:`Derivative.pattern` stand for.
PLACEHOLDERS = {
    "<subject>": "sub-<s>[_ses-<x>]",
    "<run>": "sub-<s>[_ses-<x>][_acq-<a>][_run-<r>]",
}


#: Every derivative qsmflow writes, by the name the derivatives workflows use for it.
DERIVATIVES: dict[str, Derivative] = {
    "brain_mask": Derivative(
        "mask", "brain", ".nii.gz", "run", "brain mask from the first-echo magnitude"
    ),
    "field_hz": Derivative("fieldmap", "total", ".nii.gz", "run", "total field, Hz"),
    "local_field": Derivative("fieldmap", "local", ".nii.gz", "run", "local field, ppm of B0"),
    "local_mask": Derivative(
        "mask", "vsharp", ".nii.gz", "run", "voxels where the local field is valid (V-SHARP)"
    ),
    "chi": Derivative(
        "Chimap", None, ".nii.gz", "run", "single-orientation susceptibility, ppm (qsm pipeline)"
    ),
    "cosmos_chi": Derivative(
        "Chimap",
        "cosmos",
        ".nii.gz",
        "subject",
        "COSMOS susceptibility, ppm (reference orientation's grid)",
    ),
    "cosmos_mask": Derivative(
        "mask", "cosmos", ".nii.gz", "subject", "COSMOS mask: voxels valid in every orientation"
    ),
    "reference_field": Derivative(
        "fieldmap",
        "reference",
        ".nii.gz",
        "run",
        "local field on the reference grid, ppm (training input)",
    ),
    "reference_mask": Derivative(
        "mask", "reference", ".nii.gz", "run", "its mask on the reference grid"
    ),
    "rigid_xfm": Derivative(
        "xfm", "rigid", ".txt", "run", "4x4 RAS world transform reference -> orientation, mm"
    ),
    "flirt_xfm": Derivative(
        "xfm",
        "flirt",
        ".mat",
        "run",
        "the same as an FSL FLIRT matrix (orientation -> reference)",
    ),
    "training_patches": Derivative(
        "patches",
        "training",
        "",
        "subject",
        "training patch set (format: qsmflow.training.patch_store)",
    ),
}


def naming_table() -> str:
    """:data:`DERIVATIVES` as an indented plain-text table: placeholders, then one row per
    derivative (file name pattern, meaning; a folder ends in ``/``)."""
    rows = [(d.pattern() + ("" if d.extension else "/"), d.meaning) for d in DERIVATIVES.values()]
    width = max(len(name) for name, _ in rows)
    lines = [f"    {key} = {value}" for key, value in PLACEHOLDERS.items()]
    lines += [""] + [f"    {name:<{width}}  {meaning}" for name, meaning in rows]
    return "\n".join(lines)
