"""The ISDU-QSMNet supplement's Table 1: per subject and ROI, each map's mean +- SD (ppm) and
its Pearson r with the reference (COSMOS), the best marked.

* :func:`roi_table` - compute it from arrays (:class:`SubjectMaps` per subject), through
  :func:`qsmflow.evaluation.rois.roi_stats` (SD with ``ddof`` = 1 as MATLAB ``std``; r over
  the ROI's voxels inside the mask; NaN when either map is constant there);
  :func:`subject_maps_from_files` loads one subject's NIfTI files (one grid, errors name the
  file).
* :class:`RoiTable` - the rows; :meth:`RoiTable.to_tsv` / :meth:`RoiTable.from_tsv` (a
  machine-readable round trip, so a group step can :func:`aggregate` per-subject tables) and
  :meth:`RoiTable.to_html` (a ``<table>`` fragment for reports).
* :func:`read_dseg_tsv` - label names of a BIDS segmentation (``*_dseg.tsv``, columns
  ``index`` and ``name``); :func:`read_label_names` picks it or
  :func:`qsmflow.evaluation.rois.load_label_names` by the file's header.

"Best" per (subject, ROI), among the methods (never the reference), two separate rules:

* **by mean** - the method whose mean is closest to the reference's mean (smallest
  |mean - reference mean|);
* **by r** - the method with the highest Pearson r with the reference.

Ties (within 1e-12) mark every tied method; NaN values are never best; nothing is marked in a
(subject, ROI) with fewer than two methods. All values are in ppm except n (voxels) and r.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QSMInputError
from ..io.atomic import write_text_atomic
from ..io.nifti import load_volume, sidecar_path, write_json
from ._checks import as_labels, as_mask, check_same_grid
from .rois import load_label_names, roi_stats

__all__ = [
    "TSV_COLUMNS",
    "RoiRow",
    "RoiTable",
    "SubjectMaps",
    "aggregate",
    "read_dseg_tsv",
    "read_label_names",
    "roi_table",
    "subject_maps_from_files",
]

#: Columns of :meth:`RoiTable.to_tsv`, in order. ``participant_id`` and ``index`` (the label
#: value, as in a BIDS ``dseg.tsv``) rather than "subject"/"label": those are BIDS entity names,
#: and pybids reads a sidecar key named after an entity as that entity's value.
TSV_COLUMNS = (
    "participant_id",
    "index",
    "roi",
    "method",
    "role",
    "n_voxels",
    "mean_ppm",
    "sd_ppm",
    "r_with_reference",
    "best_mean",
    "best_r",
)

#: The JSON sidecar of :meth:`RoiTable.to_tsv` (BIDS tabular-file column descriptions).
TSV_SIDECAR: dict[str, dict[str, str]] = {
    "participant_id": {"Description": "subject (BIDS label or any name)"},
    "index": {"Description": "integer label of the ROI in the segmentation"},
    "roi": {"Description": "ROI name"},
    "method": {"Description": "map name; the reference's row has role 'reference'"},
    "role": {"Description": "'reference' (e.g. COSMOS) or 'method'"},
    "n_voxels": {"Description": "voxels of the ROI inside the mask"},
    "mean_ppm": {"Description": "mean susceptibility in the ROI", "Units": "ppm"},
    "sd_ppm": {"Description": "standard deviation in the ROI (ddof 1)", "Units": "ppm"},
    "r_with_reference": {
        "Description": "voxelwise Pearson r with the reference in the ROI (n/a: reference, "
        "or a constant map)"
    },
    "best_mean": {"Description": "1: mean closest to the reference's among the methods"},
    "best_r": {"Description": "1: highest r among the methods"},
}

_NA = "n/a"

#: Values within this (relative, at least absolute) distance of the best are tied.
_TIE_RTOL = 1e-12


# --------------------------------------------------------------------------------------------
# Rows and table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectMaps:
    """One subject's maps (ppm, one grid): the reference, the methods and the segmentation.

    ``labels``: integer label image (0 = background); ``mask``: optional (voxels > 0), the
    ROIs are counted inside it; ``label_names``: label -> name (default: the head model's,
    :func:`qsmflow.evaluation.rois.default_label_names`; ``label-<n>`` for unnamed labels).
    """

    reference: np.ndarray
    maps: Mapping[str, np.ndarray]
    labels: np.ndarray
    mask: np.ndarray | None = None
    label_names: Mapping[int, str] | None = None
    reference_name: str = "COSMOS"


@dataclass(frozen=True)
class RoiRow:
    """One (subject, ROI, map): voxel count, mean and SD (ppm), Pearson r with the reference.

    ``is_reference`` rows hold the reference's own statistics (``r`` is NaN there).
    """

    subject: str
    label: int
    roi: str
    method: str
    is_reference: bool
    n_voxels: int
    mean: float
    sd: float
    r: float


def _best(rows: list[RoiRow], value: Any) -> frozenset[str]:
    scored = [(value(row), row.method) for row in rows]
    scored = [(v, m) for v, m in scored if math.isfinite(v)]
    if len(rows) < 2 or not scored:
        return frozenset()
    top = max(v for v, _m in scored)
    tol = _TIE_RTOL * max(1.0, abs(top))
    return frozenset(m for v, m in scored if v >= top - tol)


@dataclass(frozen=True)
class RoiTable:
    """Rows of the Table-1 layout, subject by subject, ROI by ROI (reference row first).

    Equality compares rows exactly (NaN != NaN: use :meth:`same_as` for tables with NaN).
    """

    rows: tuple[RoiRow, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        seen: set[tuple[str, int, str]] = set()
        refs: dict[tuple[str, int], int] = {}
        for row in self.rows:
            key = (row.subject, row.label, row.method)
            if key in seen:
                raise QSMInputError(
                    f"duplicate row: subject {row.subject!r}, label {row.label}, "
                    f"method {row.method!r}",
                    "RoiTable",
                )
            seen.add(key)
            if row.is_reference:
                refs[(row.subject, row.label)] = refs.get((row.subject, row.label), 0) + 1
        for row in self.rows:
            if refs.get((row.subject, row.label), 0) != 1:
                raise QSMInputError(
                    f"subject {row.subject!r}, label {row.label}: expected one reference row",
                    "RoiTable",
                )

    # ---------------------------------------------------------------- look-ups

    @cached_property
    def _index(self) -> dict[tuple[str, int, str], RoiRow]:
        return {(r.subject, r.label, r.method): r for r in self.rows}

    @property
    def subjects(self) -> list[str]:
        """Subjects in order of appearance."""
        return list(dict.fromkeys(r.subject for r in self.rows))

    def rois(self, subject: str | None = None) -> list[tuple[int, str]]:
        """(label, name) of the ROIs (of ``subject``, else of all), sorted by label."""
        keys = {(r.label, r.roi) for r in self.rows if subject is None or r.subject == subject}
        return sorted(keys)

    def methods(self, subject: str | None = None) -> list[str]:
        """Method names (not the reference) in order of appearance."""
        rows = (r for r in self.rows if not r.is_reference)
        return list(dict.fromkeys(r.method for r in rows if subject in (None, r.subject)))

    def reference_name(self, subject: str) -> str:
        """The reference's name (its rows' ``method``) for ``subject``."""
        for r in self.rows:
            if r.subject == subject and r.is_reference:
                return r.method
        raise KeyError(subject)

    def row(self, subject: str, label: int, method: str) -> RoiRow | None:
        """The row of (subject, label, method), or None."""
        return self._index.get((subject, int(label), method))

    @cached_property
    def _groups(self) -> dict[tuple[str, int], tuple[RoiRow | None, list[RoiRow]]]:
        """(subject, label) -> (reference row, method rows)."""
        out: dict[tuple[str, int], tuple[RoiRow | None, list[RoiRow]]] = {}
        for r in self.rows:
            ref, methods = out.get((r.subject, r.label), (None, []))
            if r.is_reference:
                ref = r
            else:
                methods.append(r)
            out[(r.subject, r.label)] = (ref, methods)
        return out

    def reference(self, subject: str, label: int) -> RoiRow | None:
        """The reference row of (subject, label), or None."""
        return self._groups.get((subject, int(label)), (None, []))[0]

    def _method_rows(self, subject: str, label: int) -> list[RoiRow]:
        return self._groups.get((subject, int(label)), (None, []))[1]

    def best_by_mean(self, subject: str, label: int) -> frozenset[str]:
        """Methods whose mean is closest to the reference mean in (subject, label)."""
        ref = self.reference(subject, label)
        if ref is None:
            return frozenset()
        return _best(self._method_rows(subject, label), lambda r: -abs(r.mean - ref.mean))

    def best_by_r(self, subject: str, label: int) -> frozenset[str]:
        """Methods with the highest Pearson r with the reference in (subject, label)."""
        return _best(self._method_rows(subject, label), lambda r: r.r)

    def same_as(self, other: RoiTable) -> bool:
        """Row-by-row equality with NaN equal to NaN."""
        if len(self.rows) != len(other.rows):
            return False
        for a, b in zip(self.rows, other.rows, strict=True):
            for name in RoiRow.__dataclass_fields__:
                x, y = getattr(a, name), getattr(b, name)
                if (
                    isinstance(x, float)
                    and isinstance(y, float)
                    and math.isnan(x)
                    and math.isnan(y)
                ):
                    continue
                if x != y:
                    return False
        return True

    # ---------------------------------------------------------------- TSV

    def to_tsv(self, path: str | os.PathLike, *, sidecar: bool = True) -> Path:
        """Write the table as TSV (:data:`TSV_COLUMNS`, one row per subject x ROI x map).

        Numbers are written with Python's shortest exact repr (read back bit-identical),
        missing values as ``n/a``; best flags as 1/0 (``n/a`` on reference rows). With
        ``sidecar`` a BIDS-style JSON describing the columns is written beside it. Atomic.
        """
        buf = io.StringIO()
        buf.write("\t".join(TSV_COLUMNS) + "\n")
        for row in self.rows:
            for text in (row.subject, row.roi, row.method):
                if any(c in text for c in "\t\n\r"):
                    raise QSMInputError(f"name {text!r} holds a tab or line break", str(path))
            best_mean = best_r = _NA
            if not row.is_reference:
                best_mean = str(int(row.method in self.best_by_mean(row.subject, row.label)))
                best_r = str(int(row.method in self.best_by_r(row.subject, row.label)))
            fields = (
                row.subject,
                str(row.label),
                row.roi,
                row.method,
                "reference" if row.is_reference else "method",
                str(row.n_voxels),
                _num(row.mean),
                _num(row.sd),
                _num(row.r),
                best_mean,
                best_r,
            )
            buf.write("\t".join(fields) + "\n")
        p = write_text_atomic(path, buf.getvalue())
        if sidecar:
            write_json(sidecar_path(p), TSV_SIDECAR)
        return p

    @classmethod
    def from_tsv(cls, path: str | os.PathLike) -> RoiTable:
        """Read a table written by :meth:`to_tsv` (the best flags are recomputed)."""
        p = Path(path)
        if not p.is_file():
            raise QSMInputError("ROI table not found", str(p))
        reader = csv.DictReader(io.StringIO(p.read_text()), delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in TSV_COLUMNS[:9] if c not in (reader.fieldnames or ())]
        if missing:
            raise QSMInputError(f"missing column(s) {missing}", str(p))
        rows = []
        for lineno, rec in enumerate(reader, 2):
            try:
                role = rec["role"]
                if role not in ("reference", "method"):
                    raise ValueError(f"role {role!r} is not 'reference' or 'method'")
                rows.append(
                    RoiRow(
                        subject=rec["participant_id"],
                        label=int(rec["index"]),
                        roi=rec["roi"],
                        method=rec["method"],
                        is_reference=role == "reference",
                        n_voxels=int(rec["n_voxels"]),
                        mean=_parse_num(rec["mean_ppm"]),
                        sd=_parse_num(rec["sd_ppm"]),
                        r=_parse_num(rec["r_with_reference"]),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise QSMInputError(f"line {lineno}: {exc}", str(p)) from exc
        try:
            return cls(tuple(rows))
        except QSMInputError as exc:
            raise QSMInputError(str(exc), str(p)) from exc

    # ---------------------------------------------------------------- HTML

    def to_html(self, *, decimals: int = 3, caption: str | None = None) -> str:
        """A self-contained ``<table>`` fragment: ROIs as rows, subjects as column groups.

        Each subject's group has the reference's column, then one per method. A method cell
        reads ``"mean ± SD (r)"`` (ppm, ``decimals`` decimals), the reference's ``"mean ±
        SD"``; ``n/a`` where a subject lacks the ROI. The best mean is wrapped in
        ``<strong>`` (``"<strong>mean ± SD</strong> (r)"``), the best r too
        (``"(<strong>r</strong>)"``). Every name is HTML-escaped.
        """
        esc = partial(html.escape, quote=False)  # element content only, no attributes
        subjects = self.subjects
        groups = {s: [self.reference_name(s), *self.methods(s)] for s in subjects}
        text = caption or (
            "Mean ± SD (ppm) per ROI; in parentheses the voxelwise Pearson r with the "
            "reference. Bold: the mean closest to the reference's, the highest r."
        )
        out = ['<table class="qsmflow-roi-table">', f"<caption>{esc(text)}</caption>", "<thead>"]
        head1 = ['<tr><th rowspan="2" scope="col">ROI</th>']
        head2 = ["<tr>"]
        for s in subjects:
            head1.append(f'<th colspan="{len(groups[s])}" scope="colgroup">{esc(s)}</th>')
            head2.extend(f'<th scope="col">{esc(m)}</th>' for m in groups[s])
        out += ["".join(head1) + "</tr>", "".join(head2) + "</tr>", "</thead>", "<tbody>"]
        for label, roi in self.rois():
            cells = [f'<tr><th scope="row">{esc(roi)}</th>']
            for s in subjects:
                cells.extend(self._html_cell(s, label, m, decimals) for m in groups[s])
            out.append("".join(cells) + "</tr>")
        out += ["</tbody>", "</table>"]
        return "\n".join(out) + "\n"

    def _html_cell(self, subject: str, label: int, method: str, decimals: int) -> str:
        row = self.row(subject, label, method)
        if row is None:
            return f"<td>{_NA}</td>"
        mean_sd = f"{_fmt(row.mean, decimals)} ± {_fmt(row.sd, decimals)}"
        if row.is_reference:
            return f"<td>{mean_sd}</td>"
        r = _fmt(row.r, decimals)
        if method in self.best_by_mean(subject, label):
            mean_sd = f"<strong>{mean_sd}</strong>"
        if method in self.best_by_r(subject, label):
            r = f"<strong>{r}</strong>"
        return f"<td>{mean_sd} ({r})</td>"


def _num(x: float) -> str:
    return _NA if math.isnan(x) else repr(float(x))


def _parse_num(text: str | None) -> float:
    if text is None:
        raise ValueError("missing value")
    return math.nan if text.strip() == _NA else float(text)


def _fmt(x: float, decimals: int) -> str:
    return _NA if not math.isfinite(x) else f"{x:.{int(decimals)}f}"


# --------------------------------------------------------------------------------------------
# Computing the table
# --------------------------------------------------------------------------------------------


def _subject_arrays(
    subject: str, maps: SubjectMaps
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Checked float64 reference and methods, int labels and bool mask of one subject."""
    where = f"subject {subject!r}"
    ref = np.asarray(maps.reference, dtype=np.float64)
    if ref.ndim != 3:
        raise QSMInputError(f"expected a 3-D reference, got shape {ref.shape}", where)
    if not maps.maps:
        raise QSMInputError("no method maps", where)
    methods: dict[str, np.ndarray] = {}
    for name, a in maps.maps.items():
        arr = np.asarray(a, dtype=np.float64)
        if arr.shape != ref.shape:
            raise QSMInputError(
                f"map {name!r} shape {arr.shape} does not match the reference {ref.shape}", where
            )
        if str(name) == maps.reference_name:
            raise QSMInputError(f"a method is named like the reference ({name!r})", where)
        methods[str(name)] = arr
    labels = as_labels(maps.labels, ref.shape, f"{where}: labels")
    mask = as_mask(maps.mask, ref.shape, f"{where}: mask")
    roi_voxels = mask & (labels != 0)
    if not roi_voxels.any():
        raise QSMInputError("no labelled voxel inside the mask", where)
    for name, arr in ((maps.reference_name, ref), *methods.items()):
        n_bad = int(np.count_nonzero(~np.isfinite(arr[roi_voxels])))
        if n_bad:
            raise QSMInputError(f"map {name!r} has {n_bad} NaN/inf voxel(s) in the ROIs", where)
    return ref, methods, labels, mask


def roi_table(
    subjects: Mapping[str, SubjectMaps], *, ddof: int = 1, min_voxels: int = 1
) -> RoiTable:
    """The Table-1 statistics of every subject (see the module docstring for the rules).

    Per subject and non-zero label with at least ``min_voxels`` voxels inside the mask: the
    reference's n, mean and SD (ppm), then each method's, with its Pearson r with the
    reference over the same voxels (:func:`qsmflow.evaluation.rois.roi_stats`).
    """
    if not subjects:
        raise QSMInputError("no subjects", "subjects")
    rows: list[RoiRow] = []
    for subject, maps in subjects.items():
        ref, methods, labels, mask = _subject_arrays(str(subject), maps)
        kw: dict[str, Any] = {"label_names": maps.label_names, "ddof": ddof}
        kw["min_voxels"] = min_voxels
        ref_stats = roi_stats(ref, ref, labels, mask, **kw)
        if not ref_stats:
            raise QSMInputError(f"no ROI with >= {min_voxels} voxels", f"subject {subject!r}")
        per_method = {
            name: roi_stats(arr, ref, labels, mask, **kw) for name, arr in methods.items()
        }
        for name, stats in per_method.items():
            if [m["label"] for m in stats] != [st["label"] for st in ref_stats]:  # pragma: no cover
                raise QSMInputError(f"map {name!r}: ROI list differs", f"subject {subject!r}")
        for i, st in enumerate(ref_stats):
            common = {"subject": str(subject), "label": st["label"], "roi": st["name"]}
            rows.append(
                RoiRow(
                    **common,
                    method=maps.reference_name,
                    is_reference=True,
                    n_voxels=st["n"],
                    mean=st["recon_mean"],
                    sd=st["recon_sd"],
                    r=math.nan,
                )
            )
            for name, stats in per_method.items():
                m = stats[i]
                rows.append(
                    RoiRow(
                        **common,
                        method=name,
                        is_reference=False,
                        n_voxels=m["n"],
                        mean=m["recon_mean"],
                        sd=m["recon_sd"],
                        r=m["pearson_r"],
                    )
                )
    return RoiTable(tuple(rows))


def aggregate(tables: Iterable[RoiTable]) -> RoiTable:
    """One table of several (e.g. per-subject TSVs read by :meth:`RoiTable.from_tsv`).

    Subjects keep their order; a subject in two tables is an error.
    """
    rows: list[RoiRow] = []
    owner: dict[str, int] = {}
    for i, table in enumerate(tables):
        for s in table.subjects:
            if s in owner:
                raise QSMInputError(f"subject {s!r} is in tables {owner[s]} and {i}", "aggregate")
            owner[s] = i
        rows.extend(table.rows)
    return RoiTable(tuple(rows))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_dseg_tsv(path: str | os.PathLike) -> dict[int, str]:
    """Label names of a BIDS segmentation's ``*_dseg.tsv`` (columns ``index``, ``name``).

    Other columns (``abbreviation``, ``color``, ``mapping`` ...) are ignored. Raises
    QSMInputError naming the file for a missing column, a non-integer or repeated index, or
    an empty name.
    """
    p = Path(path)
    if not p.is_file():
        raise QSMInputError("segmentation table not found", str(p))
    reader = csv.DictReader(io.StringIO(p.read_text()), delimiter="\t", quoting=csv.QUOTE_NONE)
    fields = [f.strip() for f in (reader.fieldnames or ())]
    if "index" not in fields or "name" not in fields:
        raise QSMInputError(
            f"expected the BIDS dseg.tsv columns 'index' and 'name', got {fields}", str(p)
        )
    reader.fieldnames = fields
    out: dict[int, str] = {}
    for lineno, rec in enumerate(reader, 2):
        raw_index = (rec.get("index") or "").strip()
        name = (rec.get("name") or "").strip()
        if not raw_index and not name:
            continue
        try:
            index = int(raw_index)
        except ValueError:
            raise QSMInputError(
                f"line {lineno}: index {raw_index!r} is not an integer", str(p)
            ) from None
        if index in out:
            raise QSMInputError(f"line {lineno}: index {index} is repeated", str(p))
        if not name or name == _NA:
            raise QSMInputError(f"line {lineno}: index {index} has no name", str(p))
        out[index] = name
    if not out:
        raise QSMInputError("no labels listed", str(p))
    return out


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """Label names from a BIDS ``dseg.tsv`` (header with ``index`` and ``name``) or any file
    :func:`qsmflow.evaluation.rois.load_label_names` reads."""
    p = Path(path)
    if p.is_file():
        first = p.read_text().split("\n", 1)[0]
        header = [f.strip() for f in first.split("\t")]
        if "index" in header and "name" in header:
            return read_dseg_tsv(p)
    return load_label_names(p)


def subject_maps_from_files(
    reference: str | os.PathLike,
    maps: Mapping[str, str | os.PathLike],
    labels: str | os.PathLike,
    *,
    mask: str | os.PathLike | None = None,
    label_names: str | os.PathLike | Mapping[int, str] | None = None,
    reference_name: str = "COSMOS",
) -> SubjectMaps:
    """Load one subject's NIfTI files for :func:`roi_table` (one grid; errors name the file).

    ``label_names``: a mapping, a file (:func:`read_label_names`: BIDS ``dseg.tsv`` or
    :func:`qsmflow.evaluation.rois.load_label_names` formats) or None (head-model names).
    """
    ref = load_volume(reference, dtype=np.float64)
    loaded = {}
    for name, path in maps.items():
        vol = load_volume(path, dtype=np.float64)
        check_same_grid(vol, ref, f"map {name!r}")
        loaded[str(name)] = vol.data
    lab = load_volume(labels, dtype=None)
    check_same_grid(lab, ref, "labels")
    lab_data = as_labels(lab.data, ref.data.shape, str(labels))
    mask_data = None
    if mask is not None:
        mvol = load_volume(mask, dtype=None)
        check_same_grid(mvol, ref, "mask")
        mask_data = as_mask(mvol.data, ref.data.shape, str(mask))
    names: Mapping[int, str] | None
    if label_names is None or isinstance(label_names, Mapping):
        names = label_names
    else:
        names = read_label_names(label_names)
    return SubjectMaps(
        reference=ref.data,
        maps=loaded,
        labels=lab_data,
        mask=mask_data,
        label_names=names,
        reference_name=reference_name,
    )
