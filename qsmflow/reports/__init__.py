"""HTML reports of ``qsmflow run`` (fMRIPrep-style): one per subject/session, and a group one.

Public API
----------
* :func:`write_subject_report` ``(output_dir, subject, *, bids_dir=None, labels=None,
  label_names=None, run_record=None)`` -> ``OUTPUT_DIR/sub-<s>[_ses-<x>].html``: summary
  (inputs, echoes and TE, orientations, B0, voxel size, field strength), outputs, QC figures
  (brain mask on the magnitude, total and local field), every susceptibility map and COSMOS,
  registration checks, comparisons with COSMOS / the simulation truth (metrics), the ROI table
  (also as TSV), provenance and the errors of failed steps. Figures are PNG files under
  ``OUTPUT_DIR/sub-<s>/[ses-<x>/]figures/``; nothing is loaded from the network.
* :func:`write_reports` - the reports of several subjects, never raising: label -> path or
  the exception (for ``qsmflow run`` / ``qsmflow report``).
* :func:`write_group_report` ``(output_dir)`` -> (``group_desc-rois_table.tsv``,
  ``group.html``): the per-subject ROI tables aggregated.
* Run records (``OUTPUT_DIR/logs/run_<run_id>.json``, :mod:`qsmflow.reports.runrecord`):
  :func:`make_run_record`, :func:`write_run_record`, :func:`read_run_record`,
  :func:`newest_run_record`.

Modules: ``naming`` (paths), ``runrecord``, ``collect`` (find files; no image data),
``analysis`` (comparisons, metrics, ROI table), ``plots`` (figures), ``page`` (HTML),
``sections``, ``subject``, ``group``. Imports point down only: evaluation, registration, io.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .collect import collect_subject, find_labels
from .group import find_roi_tables, write_group_report
from .naming import figures_dir, report_path, roi_table_path
from .runrecord import make_run_record, newest_run_record, read_run_record, write_run_record

__all__ = [
    "collect_subject",
    "figures_dir",
    "find_labels",
    "find_roi_tables",
    "make_run_record",
    "newest_run_record",
    "read_run_record",
    "report_path",
    "roi_table_path",
    "write_group_report",
    "write_reports",
    "write_run_record",
    "write_subject_report",
]


def write_subject_report(output_dir: str | os.PathLike, subject: str, **kwargs: Any) -> Path:
    """:func:`qsmflow.reports.subject.write_subject_report` (see there).

    Imported on first use: figures need matplotlib, which ``qsmflow run`` should not load
    before it has checked its input (a read-only container cannot even import it without a
    writable config folder).
    """
    from .subject import write_subject_report as write

    return write(output_dir, subject, **kwargs)


def write_reports(
    output_dir: str | os.PathLike,
    labels: Sequence[str],
    **kwargs: Any,
) -> dict[str, Path | Exception]:
    """:func:`write_subject_report` for each label; a failure is returned, not raised.

    Keyword arguments go to :func:`write_subject_report`. Returns label -> report path, or
    the exception that stopped that subject's report.
    """
    out: dict[str, Path | Exception] = {}
    for label in labels:
        try:
            out[label] = write_subject_report(output_dir, label, **kwargs)
        except Exception as exc:  # one subject's report must not stop the others
            out[label] = exc
    return out
