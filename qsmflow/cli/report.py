"""``qsmflow report OUTPUT_DIR``: make the HTML reports again from existing derivatives."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "(re)make the HTML reports of a qsmflow run's outputs"

DESCRIPTION = """\
Make each subject's HTML report again from the derivatives in OUTPUT_DIR (written by
`qsmflow run`): OUTPUT_DIR/sub-<label>[_ses-<x>].html with its figures under
OUTPUT_DIR/sub-<label>/[ses-<x>/]figures/ and, with a label image, the ROI table
sub-<label>/[ses-<x>/]sub-<label>[_ses-<x>]_desc-rois_table.tsv. Existing reports are replaced.

The BIDS folder (inputs, magnitude images for the QC figures, simulation truth, segmentation)
is taken from OUTPUT_DIR/dataset_description.json, else from the newest run record
(OUTPUT_DIR/logs/run_<id>.json), unless --bids-dir is given. Provenance and the errors of
failed steps come from the newest run record that lists the subject.

--group also writes the group level (OUTPUT_DIR/group.html, group_desc-rois_table.tsv), as
`qsmflow run BIDS_DIR OUTPUT_DIR group` does.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``qsmflow report OUTPUT_DIR [--participant-label ...] [--bids-dir DIR] ...``."""
    p = subparsers.add_parser(
        "report",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="derivatives folder of qsmflow run")
    p.add_argument(
        "--participant-label",
        nargs="+",
        metavar="LABEL",
        help="subjects (01 or sub-01; default: every subject found and in the newest run record)",
    )
    p.add_argument("--bids-dir", metavar="DIR", help="raw BIDS folder (default: see above)")
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="label image (integer, on the reference orientation's grid) for the ROI table",
    )
    p.add_argument(
        "--label-names", metavar="TSV", help="names of the labels (BIDS dseg.tsv: index, name)"
    )
    p.add_argument("--group", action="store_true", help="also write the group report")
    p.set_defaults(func=run)
    return p


def _labels(out: Path, participant_label: list[str] | None) -> list[str]:
    """Subject/session labels to report: found in OUTPUT_DIR plus the newest run record's
    (which may list a subject that wrote nothing), filtered by ``participant_label``."""
    from ..reports import find_labels, newest_run_record
    from ..reports.collect import natural_key
    from ..reports.naming import normalise_label

    found = set(find_labels(out))
    record = newest_run_record(out)
    if record:
        found |= {k for k, v in record.get("subjects", {}).items() if v.get("status") != "skipped"}
    if participant_label:
        wanted = {normalise_label(s) for s in participant_label}
        subjects = {w.split("_")[0] for w in wanted}
        found = {f for f in found if f in wanted or f.split("_")[0] in subjects}
    return sorted(found, key=natural_key)


def run(args: argparse.Namespace) -> int:
    """Write the reports; exit 0, 1 when a report failed, 2 for unusable input."""
    from ..errors import QSMInputError
    from ..reports import write_group_report
    from .run import _check_label_files, write_reports_for

    out = Path(args.output_dir).resolve()
    if not (out / "dataset_description.json").is_file():
        raise QSMInputError("not a qsmflow output folder (no dataset_description.json)", str(out))
    if args.bids_dir and not Path(args.bids_dir).is_dir():
        raise QSMInputError("BIDS folder not found", args.bids_dir)
    _check_label_files(args)
    labels = _labels(out, args.participant_label)
    if not labels:
        raise QSMInputError("no subject found (sub-*/anat) for the given labels", str(out))
    bids_dir = Path(args.bids_dir).resolve() if args.bids_dir else None
    n_bad = write_reports_for(out, labels, bids_dir=bids_dir, args=args, prog="qsmflow report")
    if args.group:
        tsv, html = write_group_report(out, args.participant_label)
        print(f"group ROI table: {tsv}\ngroup report: {html}")
    return 1 if n_bad else 0
