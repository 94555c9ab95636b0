"""One subject/session's HTML report: :func:`write_subject_report`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ..io.atomic import atomic_dir, write_text_atomic
from ..io.nifti import sidecar_path
from .analysis import Comparison, compute_comparison, plan_comparisons, subject_roi_table
from .collect import SubjectFiles, bids_dir_from_derivatives, collect_subject, find_segmentation
from .naming import (
    REPORT_BIDSIGNORE,
    figures_dir,
    normalise_label,
    report_path,
    roi_table_path,
)
from .page import Section, esc, link, note, page
from .plots import DEFAULT_WINDOW
from .runrecord import iso_now, newest_run_record, read_run_record
from .sections import (
    ReportContext,
    comparison_section,
    errors_section,
    maps_section,
    outputs_section,
    provenance_section,
    qc_section,
    registration_section,
    rois_section,
    summary_section,
)

__all__ = ["write_subject_report"]

LOGGER = logging.getLogger("qsmflow.reports")

RunRecord = Mapping[str, Any] | str | os.PathLike


def _record(output_dir: Path, label: str, run_record: RunRecord | None) -> dict[str, Any] | None:
    if run_record is None:
        return newest_run_record(output_dir, label)
    if isinstance(run_record, Mapping):
        return dict(run_record)
    return read_run_record(run_record)


def _bids_dir(output_dir: Path, given: Any, record: Mapping[str, Any] | None) -> Path | None:
    if given is not None:
        return Path(given)
    found = bids_dir_from_derivatives(output_dir)
    if found is None and record and record.get("bids_dir"):
        candidate = Path(record["bids_dir"])
        found = candidate if candidate.is_dir() else None
    return found


def _comparisons(ctx: ReportContext, all_orientations: bool) -> tuple[list[Comparison], list[str]]:
    out, failures = [], []
    for plan in plan_comparisons(ctx.files, all_orientations=all_orientations):
        try:
            out.append(compute_comparison(plan))
        except Exception as exc:  # a report shows what it can
            what = f"comparison of {plan.orientation.name} with {plan.reference_name}"
            failures.append(ctx.fail(what, exc))
    return out, failures


def _rois(
    ctx: ReportContext,
    comparisons: list[Comparison],
    labels: Any,
    label_names: Any,
    tsv: Path,
) -> tuple[str, bool]:
    """The ROI section's HTML and whether the TSV was written."""
    files = ctx.files
    source = "given (--labels)"
    names = label_names
    if labels is None:
        labels, names_file = find_segmentation(files)
        names = names_file if label_names is None else label_names
        source = "found in the BIDS derivatives"
    if labels is None:
        text = "No label image (give --labels, or a *_dseg.nii.gz in the BIDS derivatives)."
        return note(text), False
    ref = files.reference
    comp = next((c for c in comparisons if ref and c.plan.orientation is ref), None)
    if comp is None:
        text = f"Labels {Path(labels).name}, but no comparison on the reference grid to use."
        return note(text), False
    try:
        table = subject_roi_table(comp, files.label, labels, names)
        table.to_tsv(tsv)
    except Exception as exc:  # a report shows what it can
        return ctx.fail("ROI table", exc), False
    plan = comp.plan
    caption = (
        f"{ref.name}: mean ± SD (ppm) per ROI of {plan.reference_name} and of each map, and "
        f"the voxelwise Pearson r with {plan.reference_name}, inside the {plan.mask_description}."
        f" Labels: {Path(labels).name} ({source}). Bold: mean closest to the reference's, "
        "highest r."
    )
    rel = tsv.relative_to(files.output_dir).as_posix()
    body = table.to_html(caption=caption) + f"<p>Table as TSV: {link(rel, tsv.name)}</p>"
    return body, True


def _remove_stale(tsv: Path) -> None:
    for p in (tsv, sidecar_path(tsv)):
        if p.is_file():
            p.unlink()


def _add_bidsignore(output_dir: Path) -> None:
    ignore = output_dir / ".bidsignore"
    if not ignore.is_file():
        return
    lines = ignore.read_text().splitlines()
    missing = [e for e in REPORT_BIDSIGNORE if e not in lines]
    if missing:
        write_text_atomic(ignore, "\n".join([*lines, *missing]) + "\n")


def _sections(
    ctx: ReportContext, labels: Any, label_names: Any, tsv: Path, all_orientations: bool
) -> list[Section]:
    comparisons, failures = _comparisons(ctx, all_orientations)
    rois_html, wrote_tsv = _rois(ctx, comparisons, labels, label_names, tsv)
    if not wrote_tsv:
        _remove_stale(tsv)
    sections = [errors_section(ctx), summary_section(ctx), outputs_section(ctx)]
    sections += [qc_section(ctx), maps_section(ctx), registration_section(ctx)]
    sections += [comparison_section(ctx, comparisons, failures), rois_section(ctx, rois_html)]
    sections.append(provenance_section(ctx))
    return [s for s in sections if s is not None]


def write_subject_report(
    output_dir: str | os.PathLike,
    subject: str,
    *,
    bids_dir: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    label_names: str | os.PathLike | Mapping[int, str] | None = None,
    run_record: RunRecord | None = None,
    window: tuple[float, float] = DEFAULT_WINDOW,
    all_orientations: bool = False,
) -> Path:
    """Write ``OUTPUT_DIR/sub-<s>[_ses-<x>].html`` and its figures; return the report's path.

    Parameters
    ----------
    output_dir : the derivatives folder of ``qsmflow run``.
    subject : ``01``, ``sub-01`` or ``sub-01_ses-a`` (one report per subject/session).
    bids_dir : raw BIDS folder (inputs, magnitude for the QC figures, simulation truth,
        segmentation); default: the derivatives' ``dataset_description.json`` link, else the
        run record's.
    labels : label image (integer, on the reference orientation's grid) for the ROI table;
        default: ``BIDS_DIR/derivatives/*/sub-<s>/[ses-<x>/]anat/<reference run>_dseg.nii.gz``.
    label_names : names of the labels: a mapping or a file (BIDS ``dseg.tsv``, or the formats of
        :func:`qsmflow.evaluation.rois.load_label_names`); default: a ``dseg.tsv`` beside
        ``labels`` or at its dataset's root.
    run_record : the run record (mapping or ``logs/run_<id>.json``) for provenance and errors;
        default: the newest in ``OUTPUT_DIR/logs`` that lists the subject.
    window : display window of susceptibility maps (ppm).
    all_orientations : also compare every other orientation's maps with its own simulation
        truth (one more set of metrics per orientation; off by default as scoring takes
        seconds per map).

    Figures go to ``OUTPUT_DIR/sub-<s>/[ses-<x>/]figures/`` (PNG, replaced as a whole), the
    ROI table to ``sub-<s>/[ses-<x>/]sub-<s>[_ses-<x>]_desc-rois_table.tsv``; everything is
    written atomically and a rerun replaces it. Parts that cannot be made (missing or broken
    files) are shown as highlighted notes and logged as warnings (``qsmflow.reports``).
    """
    out = Path(output_dir).resolve()
    label = normalise_label(subject)
    record = _record(out, label, run_record)
    files: SubjectFiles = collect_subject(out, label, bids_dir=_bids_dir(out, bids_dir, record))
    folder = figures_dir(out, label)
    tsv = roi_table_path(out, label)
    with atomic_dir(folder) as tmp:
        ctx = ReportContext(
            files=files,
            figures_folder=tmp,
            figures_href=folder.relative_to(out).as_posix(),
            window=(float(window[0]), float(window[1])),
            record=record,
        )
        sections = _sections(ctx, labels, label_names, tsv, all_orientations)
    footer = (
        f"qsmflow {esc(__version__)} report of {esc(label)}; made "
        f'<span class="generated">{esc(iso_now())}</span>; '
        f"{ctx.n_figures} figure(s)"
        + (f"; {len(ctx.problems)} part(s) could not be made" if ctx.problems else "")
    )
    html = page(f"qsmflow: {label}", sections, footer=footer)
    path = write_text_atomic(report_path(out, label), html)
    _add_bidsignore(out)
    LOGGER.info("%s: report %s (%d figures)", label, path, ctx.n_figures)
    return path
