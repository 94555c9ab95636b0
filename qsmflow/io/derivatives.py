"""The derivatives dataset's top-level files: ``dataset_description.json``, ``.bidsignore``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import QSMInputError
from .atomic import write_text_atomic
from .naming import naming_table
from .nifti import write_json

#: Paths inside the derivatives folder that BIDS has no name for: logs, the Nipype cache,
#: patch sets, rigid transforms in text/FLIRT form, and field maps stored next to the anatomy
#: (BIDS ``fieldmap`` files belong in ``fmap/`` with a magnitude image and Hz/rad/s/T units; a
#: local field in ppm has no BIDS suffix). pybids still indexes all of them.
BIDSIGNORE = ("/logs", "/work", "*_patches", "*_xfm.*", "*_fieldmap.*")


README_TEXT = f"""\
qsmflow derivatives
===================

Written by `qsmflow run`. A file is named after the inputs it was computed from: the entities
they share, then desc- and the suffix. Results of one run (head orientation) keep its
acq-/run- entities; multi-orientation results (COSMOS, on the reference orientation's grid) have
sub-/ses- only. All are in sub-<s>/[ses-<x>/]anat/:

{naming_table()}

Sidecars give units, methods, parameters, backends and sources (BIDS URIs).
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
    """The derivatives' BIDS ``dataset_description.json`` (DatasetLinks raw -> ``bids_dir``)."""
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
