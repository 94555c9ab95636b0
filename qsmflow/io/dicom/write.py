"""Writing runs into a BIDS dataset: images, sidecars, dataset_description.json.

Each run is written into a hidden staging folder inside the dataset and its files are then
renamed into place, so an interrupted or failed run leaves no partial file behind (at most a
``.tmp-*`` folder that nothing reads). Images are gzipped NIfTI-1 with the affine as both qform
and sform (code 1, scanner); integer magnitude and field maps keep their stored data type,
phase is float32 radians.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ... import __version__
from ..atomic import write_text_atomic
from ..nifti import write_json
from .layout import Run

BIDS_VERSION = "1.9.0"


def run_prefix(subject: str, session: str | None, acq: str | None) -> str:
    """``sub-<s>[_ses-<t>][_acq-<a>]``."""
    out = f"sub-{subject}"
    if session:
        out += f"_ses-{session}"
    if acq:
        out += f"_acq-{acq}"
    return out


def run_folder(subject: str, session: str | None, datatype: str) -> Path:
    """``sub-<s>/[ses-<t>/]<datatype>`` relative to the dataset root."""
    folder = Path(f"sub-{subject}")
    if session:
        folder /= f"ses-{session}"
    return folder / datatype


def planned_files(run: Run, subject: str, session: str | None) -> list[Path]:
    """The NIfTI files (relative) ``run`` will be written to."""
    folder = run_folder(subject, session, run.datatype)
    prefix = run_prefix(subject, session, run.acq)
    return [folder / f"{prefix}_{tail}.nii.gz" for tail in run.images]


def write_run(root: Path, run: Run, subject: str, session: str | None) -> list[Path]:
    """Write the images and sidecars of ``run``; returns the paths written (relative)."""
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-dicom-", dir=root))
    written: list[Path] = []
    try:
        for rel, (volume, extra) in zip(
            planned_files(run, subject, session), run.images.values(), strict=True
        ):
            img = nib.Nifti1Image(np.asarray(volume.data), volume.affine)
            img.set_qform(volume.affine, code=1)
            img.set_sform(volume.affine, code=1)
            img.header.set_xyzt_units("mm", "sec")
            stem = staging / rel.name.removesuffix(".nii.gz")
            nib.save(img, f"{stem}.nii.gz")
            sidecar = {**volume.sidecar, **extra}
            Path(f"{stem}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
            written += [rel, rel.with_name(stem.name + ".json")]
        for rel in written:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def write_dataset_files(root: Path, subjects_note: str) -> list[Path]:
    """dataset_description.json and README, unless the dataset already has them."""
    out = []
    desc = root / "dataset_description.json"
    if not desc.exists():
        write_json(
            desc,
            {
                "Name": "qsmflow dicom conversion",
                "BIDSVersion": BIDS_VERSION,
                "DatasetType": "raw",
                "GeneratedBy": [
                    {
                        "Name": "qsmflow",
                        "Version": __version__,
                        "Description": "qsmflow dicom: multi-echo GRE DICOM to BIDS",
                    }
                ],
            },
        )
        out.append(Path(desc.name))
    readme = root / "README"
    if not readme.exists():
        write_text_atomic(
            readme,
            "Converted from DICOM with qsmflow dicom. Multi-echo GRE as anat/*_MEGRE "
            "(phase in radians), field maps in fmap/. " + subjects_note + "\n",
        )
        out.append(Path(readme.name))
    return out


def existing_conflicts(root: Path, runs: Sequence[Run], subject: str, session: str | None):
    """Planned files that already exist (they are replaced)."""
    return [p for r in runs for p in planned_files(r, subject, session) if (root / p).exists()]
