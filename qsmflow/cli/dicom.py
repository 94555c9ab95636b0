"""``qsmflow dicom``: multi-echo GRE DICOM to the BIDS layout ``qsmflow run`` reads."""

from __future__ import annotations

import argparse
import sys

HELP = "convert multi-echo GRE DICOM (Siemens, GE, Philips; classic or enhanced) to BIDS"

DESCRIPTION = (
    "Convert the gradient-echo series under DICOM_DIR into the BIDS dataset BIDS_DIR. "
    "Multi-echo GRE becomes anat/sub-<s>[_ses-<t>][_acq-<a>]_echo-<n>_part-<mag|phase>_MEGRE"
    ".nii.gz (echoes numbered by EchoTime); Siemens phase-difference and GE B0 field maps go to "
    "fmap/. Units and conventions: EchoTime and RepetitionTime in seconds in the sidecars; "
    "phase in radians in [-pi, pi) where the vendor convention is known (Siemens 12-bit, "
    "Philips rescale slope/intercept, GE milliradians; the rule is recorded as PhaseScaling), "
    "GE field maps in Hz; geometry as dcm2niix writes it (LPS -> RAS, rows flipped, slices "
    "ascending along the slice normal), so the B0 direction read from the affine is right for "
    "oblique heads. Several series of one sequence with different head orientations get acq- "
    "labels (series description, else ori1, ori2... by acquisition time) for "
    "--pipeline cosmos. Series that cannot be converted (missing slices, inconsistent "
    "geometry, not gradient echo, undecodable compression) are listed with a file and the "
    "reason; the others are still written, each run complete or not at all."
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``qsmflow dicom``."""
    p = subparsers.add_parser("dicom", help=HELP, description=DESCRIPTION)
    p.add_argument("dicom_dir", metavar="DICOM_DIR", help="folder searched recursively")
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="BIDS dataset to write (created)")
    p.add_argument("--subject", required=True, metavar="LABEL", help="BIDS subject label")
    p.add_argument("--session", metavar="LABEL", help="BIDS session label (optional)")
    p.add_argument(
        "--backend",
        choices=("python", "dcm2niix"),
        default="python",
        help="python: pydicom (default); dcm2niix: the dcm2niix program (pip install dcm2niix)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Convert; print what was written and what was skipped. Exit 0 when all converted, 1 when
    some series were skipped (the rest written)."""
    from ..io.dicom import convert_dicom

    result = convert_dicom(
        args.dicom_dir,
        args.bids_dir,
        subject=args.subject,
        session=args.session,
        backend=args.backend,
    )
    print(f"qsmflow dicom: wrote {len(result.runs)} run(s) to {result.bids_dir}")
    for r in result.runs:
        series = ", ".join(str(n) for n in r.series_numbers)
        label = f" acq-{r.acq}" if r.acq else ""
        print(f"  {r.kind:<9} {len(r.images)} images{label}  (series {series}: {r.description})")
        for note in r.notes:
            print(f"    note: {note}")
    if result.skipped:
        print(f"qsmflow dicom: skipped {len(result.skipped)}:", file=sys.stderr)
        for s in result.skipped:
            print(f"  {s}", file=sys.stderr)
        return 1
    return 0
