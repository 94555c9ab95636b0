"""Where the reports and their files go in ``OUTPUT_DIR`` (fMRIPrep's layout).

One report per subject/session, named by its BIDS entities
(:func:`qsmflow.io.naming.entity_string`)::

    OUTPUT_DIR/sub-<s>[_ses-<x>].html                                 the report
    OUTPUT_DIR/sub-<s>/[ses-<x>/]figures/<...>_desc-<what>_figure.png  its figures (PNG)
    OUTPUT_DIR/sub-<s>/[ses-<x>/]sub-<s>[_ses-<x>]_desc-rois_table.tsv its ROI table (+ .json)
    OUTPUT_DIR/group.html, OUTPUT_DIR/group_desc-rois_table.tsv        the group level
    OUTPUT_DIR/logs/run_<run_id>.json                                  the run record

A subject with several sessions gets one report per session (the unit the pipeline runs and
reports status for), all listed by the group report.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import QSMInputError
from ..io.naming import entity_string, parse_entities

#: File name of the group report and of the aggregated ROI table (in ``OUTPUT_DIR``).
GROUP_HTML = "group.html"
GROUP_ROI_TSV = "group_desc-rois_table.tsv"
#: Suffix (with desc) of a subject's ROI table.
ROI_TABLE_SUFFIX = "_desc-rois_table.tsv"
#: Entries the reports add to the derivatives' ``.bidsignore`` (BIDS has no name for them).
REPORT_BIDSIGNORE = ("/sub-*.html", "/group*", "/sub-*/figures", "/sub-*/ses-*/figures")
REPORT_BIDSIGNORE += ("*_desc-rois_table.*",)


def normalise_label(label: str) -> str:
    """``"01"`` / ``"sub-01"`` / ``"sub-01_ses-a"`` -> ``"sub-01"`` / ``"sub-01_ses-a"``.

    Raises QSMInputError for anything that is not ``sub-<alnum>[_ses-<alnum>]``.
    """
    text = str(label).strip()
    if not text.startswith("sub-"):
        text = f"sub-{text}"
    if not re.fullmatch(r"sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?", text):
        raise QSMInputError(
            f"expected a subject label like 01, sub-01 or sub-01_ses-a, got {label!r}", "label"
        )
    return text


def split_label(label: str) -> tuple[str, str | None]:
    """(subject, session or None) of ``sub-01[_ses-a]`` (bare labels, no ``sub-``)."""
    ents = parse_entities(normalise_label(label))
    return ents["sub"], ents.get("ses")


def subject_folder(output_dir: str | os.PathLike, label: str) -> Path:
    """``OUTPUT_DIR/sub-<s>[/ses-<x>]``: where the subject/session's report files go."""
    sub, ses = split_label(label)
    folder = Path(output_dir) / f"sub-{sub}"
    return folder / f"ses-{ses}" if ses else folder


def report_path(output_dir: str | os.PathLike, label: str) -> Path:
    """``OUTPUT_DIR/sub-<s>[_ses-<x>].html``."""
    sub, ses = split_label(label)
    return Path(output_dir) / f"{entity_string({'sub': sub, 'ses': ses})}.html"


def figures_dir(output_dir: str | os.PathLike, label: str) -> Path:
    """``OUTPUT_DIR/sub-<s>[/ses-<x>]/figures``."""
    return subject_folder(output_dir, label) / "figures"


def roi_table_path(output_dir: str | os.PathLike, label: str) -> Path:
    """``OUTPUT_DIR/sub-<s>[/ses-<x>]/sub-<s>[_ses-<x>]_desc-rois_table.tsv``."""
    return subject_folder(output_dir, label) / f"{normalise_label(label)}{ROI_TABLE_SUFFIX}"


def run_record_path(output_dir: str | os.PathLike, run_id: str) -> Path:
    """``OUTPUT_DIR/logs/run_<run_id>.json``."""
    return Path(output_dir) / "logs" / f"run_{run_id}.json"


def figure_name(prefix: str, desc: str) -> str:
    """``<prefix>_desc-<desc>_figure.png`` (``desc`` alphanumeric)."""
    if not re.fullmatch(r"[A-Za-z0-9]+", desc):
        raise ValueError(f"figure desc must be alphanumeric: {desc!r}")
    return f"{prefix}_desc-{desc}_figure.png"
