"""The group level: every subject's ROI table in one (``OUTPUT_DIR/group_desc-rois_table.tsv``)
and ``OUTPUT_DIR/group.html`` (the Table-1 layout across subjects, links to the reports)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..errors import QSMInputError
from ..evaluation.roi_table import RoiTable, aggregate
from ..io.atomic import write_text_atomic
from .collect import find_labels, natural_key
from .naming import GROUP_HTML, GROUP_ROI_TSV, ROI_TABLE_SUFFIX, normalise_label, report_path
from .page import Section, cell, esc, link, note, page, table
from .runrecord import iso_now

__all__ = ["find_roi_tables", "write_group_report"]

LOGGER = logging.getLogger("qsmflow.reports")


def find_roi_tables(
    output_dir: str | os.PathLike, participant_label: Sequence[str] | None = None
) -> dict[str, Path]:
    """Per-subject ROI tables (``sub-*/[ses-*/]*_desc-rois_table.tsv``) by label, sorted;
    only the ``participant_label`` subjects (``01`` or ``sub-01``) when given."""
    root = Path(output_dir)
    found = {}
    for pattern in (f"sub-*/sub-*{ROI_TABLE_SUFFIX}", f"sub-*/ses-*/sub-*{ROI_TABLE_SUFFIX}"):
        for path in root.glob(pattern):
            found[path.name[: -len(ROI_TABLE_SUFFIX)]] = path
    if participant_label:
        subjects = {normalise_label(s).split("_")[0] for s in participant_label}
        found = {k: v for k, v in found.items() if k.split("_")[0] in subjects}
    return {k: found[k] for k in sorted(found, key=natural_key)}


def _subjects_html(out: Path, tables: dict[str, Path]) -> str:
    labels = sorted(set(find_labels(out)) | set(tables), key=natural_key)
    rows = []
    for label in labels:
        report = report_path(out, label)
        tsv = tables.get(label)
        rows.append(
            [
                f"<td>{esc(label)}</td>",
                f"<td>{link(report.name, 'report')}</td>" if report.is_file() else cell(None),
                f"<td>{link(tsv.relative_to(out).as_posix(), tsv.name)}</td>"
                if tsv
                else cell("no ROI table"),
            ]
        )
    return table(["subject", "report", "ROI table"], rows)


def write_group_report(
    output_dir: str | os.PathLike, participant_label: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Aggregate the per-subject ROI tables (:func:`qsmflow.evaluation.roi_table.aggregate`)
    into ``OUTPUT_DIR/group_desc-rois_table.tsv`` and write ``OUTPUT_DIR/group.html``.

    Returns (TSV, HTML). Raises QSMInputError when no per-subject table exists yet (run the
    participant level, with labels, first).
    """
    out = Path(output_dir).resolve()
    tables = find_roi_tables(out, participant_label)
    if not tables:
        raise QSMInputError(
            f"no per-subject ROI tables (sub-*/sub-*{ROI_TABLE_SUFFIX}); run the participant "
            "level first, with a label image (--labels or a *_dseg.nii.gz in the BIDS "
            "derivatives)",
            str(out),
        )
    combined: RoiTable = aggregate(RoiTable.from_tsv(p) for p in tables.values())
    tsv = combined.to_tsv(out / GROUP_ROI_TSV)
    caption = (
        "Mean ± SD (ppm) per ROI and subject, the reference first (COSMOS, or the simulation "
        "truth), then each map with its voxelwise Pearson r with the reference. Bold: the mean "
        "closest to the reference's, the highest r."
    )
    sections = [
        Section(
            "rois",
            "Regions of interest",
            combined.to_html(caption=caption) + f"<p>Table as TSV: {link(tsv.name, tsv.name)}</p>",
        ),
        Section("subjects", "Subjects", _subjects_html(out, tables)),
    ]
    footer = (
        f"qsmflow {esc(__version__)} group report of {len(tables)} subject(s); made "
        f'<span class="generated">{esc(iso_now())}</span>'
    )
    refs = {s: combined.reference_name(s) for s in combined.subjects}
    if len(set(refs.values())) > 1:
        text = ", ".join(f"{s}: {r}" for s, r in refs.items())
        sections[0].body = note(f"The subjects' references differ ({text}).") + sections[0].body
    if len(tables) < 2:
        sections[0].body = note("Only one subject so far.") + sections[0].body
    html = page("qsmflow: group", sections, footer=footer)
    path = write_text_atomic(out / GROUP_HTML, html)
    LOGGER.info("group report %s (%d subjects)", path, len(tables))
    return tsv, path
