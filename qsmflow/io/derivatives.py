"""The derivatives dataset's top-level files: ``dataset_description.json``, ``.bidsignore``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import QSMInputError
from .atomic import write_text_atomic
from .nifti import write_json

#: Paths inside the derivatives folder that BIDS has no name for: logs, the Nipype cache,
#: patch sets, rigid transforms in text/FLIRT form, and field maps stored next to the anatomy
#: (BIDS ``fieldmap`` files belong in ``fmap/`` with a magnitude image and Hz/rad/s/T units; a
#: local field in ppm has no BIDS suffix). pybids still indexes all of them.
BIDSIGNORE = ("/logs", "/work", "*_patches", "*_xfm.*", "*_fieldmap.*")


README_TEXT = """\
qsmflow derivatives
===================

Written by `qsmflow run`. Per run: brain mask (desc-brain),
total field in Hz (desc-total_fieldmap), local field in ppm of B0 (desc-local_fieldmap) and its
valid-voxel mask (desc-vsharp), single-orientation susceptibility maps in ppm
(desc-<method>_Chimap). Per subject with several head orientations: COSMOS susceptibility in
ppm on the reference orientation's grid (desc-cosmos_Chimap, desc-cosmos_mask), every
orientation's local field and mask on that grid (desc-reference), rigid transforms
(desc-rigid_xfm.txt: 4x4 RAS world transform reference -> orientation, mm; desc-flirt_xfm.mat:
the same as an FSL FLIRT matrix) and training patch sets (desc-training_patches/, format in
qsmflow.training.patches). Sidecars give units, methods, parameters, backends and sources.
logs/ holds the run logs and crash reports.
"""


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that it is a writable folder (error names it)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QSMInputError(f"cannot create the output directory ({exc.strerror})", str(p)) from exc
    if not p.is_dir():
        raise QSMInputError("output path exists and is not a directory", str(p))
    if not os.access(p, os.W_OK | os.X_OK):
        raise QSMInputError("output directory is not writable", str(p))
    return p


def dataset_description(bids_dir: str | os.PathLike, pipeline: str) -> dict[str, Any]:
    from .. import __version__

    return {
        "Name": f"qsmflow {pipeline} derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "qsmflow",
                "Version": __version__,
                "Description": f"pipeline {pipeline}: multi-echo GRE -> local field -> QSM",
            }
        ],
        "SourceDatasets": [{"URL": "bids:raw:"}],
        "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},
    }


def write_dataset_files(output_dir: str | os.PathLike, bids_dir: str | os.PathLike, pipeline: str):
    """Write ``dataset_description.json`` (keeping an existing one from qsmflow) and
    ``.bidsignore``; an existing description from another tool is an error."""
    out = Path(output_dir)
    desc_file = out / "dataset_description.json"
    if desc_file.exists():
        try:
            old = json.loads(desc_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            msg = f"unreadable dataset_description.json ({exc})"
            raise QSMInputError(msg, str(desc_file)) from exc
        names = [g.get("Name") for g in old.get("GeneratedBy", []) if isinstance(g, dict)]
        if "qsmflow" not in names:
            raise QSMInputError(
                "the output folder holds another tool's derivatives; choose another folder",
                str(desc_file),
            )
    write_json(desc_file, dataset_description(bids_dir, pipeline))
    readme = out / "README"
    if not readme.exists():
        write_text_atomic(readme, README_TEXT)
    ignore = out / ".bidsignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [e for e in BIDSIGNORE if e not in lines]
    if missing:
        write_text_atomic(ignore, "\n".join([*lines, *missing]) + "\n")
