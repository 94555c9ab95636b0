"""ROI table (qsmflow.evaluation.roi_table): statistics against numpy, best marking, TSV round
trip, HTML, dseg.tsv, files and bad input, on small synthetic label images."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import nibabel as nib
import numpy as np
import pytest

from qsmflow.errors import QSMInputError
from qsmflow.evaluation.roi_table import (
    TSV_COLUMNS,
    RoiRow,
    RoiTable,
    SubjectMaps,
    aggregate,
    read_dseg_tsv,
    read_label_names,
    roi_table,
    subject_maps_from_files,
)

SHAPE = (24, 28, 20)
NAMES = {1: "caudate", 2: "putamen", 3: "globus <pallidus> & co"}


def _subject(seed: int) -> SubjectMaps:
    """Three box ROIs (labels 1-3); methods: noisy copy, scaled copy, offset copy."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(0.0, 0.02, SHAPE)
    labels = np.zeros(SHAPE, np.int16)
    labels[2:8, 3:10, 2:8] = 1
    labels[10:16, 12:20, 5:12] = 2
    labels[17:22, 4:9, 12:18] = 3
    ref[labels == 1] += 0.06
    ref[labels == 2] += 0.03
    ref[labels == 3] += 0.12
    mask = np.zeros(SHAPE, bool)
    mask[1:23, 1:27, 1:17] = True  # cuts label 3 short (z < 17)
    maps = {
        "noisy": ref + rng.normal(0.0, 0.01, SHAPE),
        "scaled": 0.7 * ref,
        "offset": ref + 0.004 + rng.normal(0.0, 0.003, SHAPE),
    }
    return SubjectMaps(reference=ref, maps=maps, labels=labels, mask=mask, label_names=NAMES)


def _expected(subj: SubjectMaps, label: int, method: str | None) -> tuple[int, float, float, float]:
    sel = (subj.labels == label) & subj.mask
    ref = subj.reference[sel]
    x = ref if method is None else subj.maps[method][sel]
    r = math.nan if method is None else float(np.corrcoef(x, ref)[0, 1])
    return int(sel.sum()), float(x.mean()), float(x.std(ddof=1)), r


def test_statistics_match_numpy():
    subjects = {"sub-01": _subject(1), "sub-02": _subject(2)}
    table = roi_table(subjects)
    assert table.subjects == ["sub-01", "sub-02"]
    assert table.methods() == ["noisy", "scaled", "offset"]
    assert table.rois() == [(1, "caudate"), (2, "putamen"), (3, "globus <pallidus> & co")]
    assert len(table.rows) == 2 * 3 * 4
    for s, subj in subjects.items():
        for label in (1, 2, 3):
            for method in (None, "noisy", "scaled", "offset"):
                row = table.row(s, label, method or "COSMOS")
                assert row is not None and row.is_reference == (method is None)
                assert row.roi == NAMES[label]
                n, mean, sd, r = _expected(subj, label, method)
                assert row.n_voxels == n
                assert row.mean == pytest.approx(mean, rel=1e-12, abs=1e-15)
                assert row.sd == pytest.approx(sd, rel=1e-12)
                if method is None:
                    assert math.isnan(row.r)
                else:
                    assert row.r == pytest.approx(r, rel=1e-12)
    # the mask counts: label 3 is cut to z < 17
    assert table.row("sub-01", 3, "noisy").n_voxels == 5 * 5 * 5
    # rows: subject by subject, ROI by ROI, the reference first
    first = table.rows[:4]
    assert [r.method for r in first] == ["COSMOS", "noisy", "scaled", "offset"]


def test_best_marking_rules():
    subj = _subject(3)
    table = roi_table({"s": subj})
    for label in (1, 2, 3):
        ref = table.reference("s", label)
        rows = {m: table.row("s", label, m) for m in ("noisy", "scaled", "offset")}
        closest = min(rows, key=lambda m: abs(rows[m].mean - ref.mean))
        highest = max(rows, key=lambda m: rows[m].r)
        assert table.best_by_mean("s", label) == {closest}
        assert table.best_by_r("s", label) == {highest}
    # scaled correlates perfectly but its mean is 0.3 * mean (label 1: ~0.018 ppm) off
    assert table.best_by_r("s", 1) == {"scaled"}
    assert "scaled" not in table.best_by_mean("s", 1)
    # ties (within 1e-12) mark every tied method; NaN is never best; one method marks nothing
    rows = (
        RoiRow("s", 1, "a", "ref", True, 10, 0.10, 0.01, math.nan),
        RoiRow("s", 1, "a", "m1", False, 10, 0.12, 0.01, 0.9),
        RoiRow("s", 1, "a", "m2", False, 10, 0.08, 0.01, 0.9 + 1e-15),
        RoiRow("s", 1, "a", "m3", False, 10, math.nan, math.nan, math.nan),
        RoiRow("s", 2, "b", "ref", True, 10, 0.10, 0.01, math.nan),
        RoiRow("s", 2, "b", "m1", False, 10, 0.5, 0.01, 0.1),
    )
    t = RoiTable(rows)
    assert t.best_by_mean("s", 1) == {"m1", "m2"}
    assert t.best_by_r("s", 1) == {"m1", "m2"}
    assert t.best_by_mean("s", 2) == frozenset() and t.best_by_r("s", 2) == frozenset()


def test_tsv_round_trip_and_aggregate(tmp_path):
    t1 = roi_table({"sub-01": _subject(1)})
    t2 = roi_table({"sub-02": _subject(2)})
    p1 = t1.to_tsv(tmp_path / "sub-01" / "sub-01_desc-rois.tsv")
    p2 = t2.to_tsv(tmp_path / "sub-02" / "sub-02_desc-rois.tsv")
    lines = p1.read_text().splitlines()
    assert lines[0].split("\t") == list(TSV_COLUMNS)
    assert len(lines) == 1 + 3 * 4
    ref_line = dict(zip(TSV_COLUMNS, lines[1].split("\t"), strict=True))
    assert ref_line["role"] == "reference" and ref_line["r_with_reference"] == "n/a"
    assert ref_line["best_mean"] == "n/a"
    best = {
        (d["index"], d["method"]): (d["best_mean"], d["best_r"])
        for d in (dict(zip(TSV_COLUMNS, ln.split("\t"), strict=True)) for ln in lines[2:])
    }
    for label in (1, 2, 3):
        for m in ("noisy", "scaled", "offset"):
            flags = best[(str(label), m)]
            assert flags[0] == str(int(m in t1.best_by_mean("sub-01", label)))
            assert flags[1] == str(int(m in t1.best_by_r("sub-01", label)))
    sidecar = json.loads((p1.parent / "sub-01_desc-rois.json").read_text())
    assert sidecar["mean_ppm"]["Units"] == "ppm"
    back = RoiTable.from_tsv(p1)
    assert back == t1  # bit-identical floats (no NaN in method rows here)...
    assert back.same_as(t1)  # ...and NaN-aware equality for the reference rows
    assert not any(p.name.startswith(".tmp") for p in p1.parent.iterdir())
    group = aggregate([RoiTable.from_tsv(p1), RoiTable.from_tsv(p2)])
    both = roi_table({"sub-01": _subject(1), "sub-02": _subject(2)})
    assert group.same_as(both)
    assert group.subjects == ["sub-01", "sub-02"]
    with pytest.raises(QSMInputError, match="sub-01"):
        aggregate([t1, t1])


def test_tsv_nan_and_bad_files(tmp_path):
    rows = (
        RoiRow("s", 1, "a", "ref", True, 1, 0.1, math.nan, math.nan),
        RoiRow("s", 1, "a", "m", False, 1, -0.25, math.nan, math.nan),
    )
    t = RoiTable(rows)
    back = RoiTable.from_tsv(t.to_tsv(tmp_path / "t.tsv", sidecar=False))
    assert back.same_as(t)
    assert not (tmp_path / "t.json").exists()
    bad = tmp_path / "bad.tsv"
    bad.write_text("subject\tlabel\n")
    with pytest.raises(QSMInputError, match=r"bad\.tsv.*missing column"):
        RoiTable.from_tsv(bad)
    text = (tmp_path / "t.tsv").read_text().replace("\t1\t-0.25", "\tone\t-0.25")
    bad.write_text(text)
    with pytest.raises(QSMInputError, match=r"bad\.tsv.*line 3"):
        RoiTable.from_tsv(bad)
    with pytest.raises(QSMInputError, match="not found"):
        RoiTable.from_tsv(tmp_path / "missing.tsv")
    with pytest.raises(QSMInputError, match="duplicate"):
        RoiTable(rows + rows[1:])
    with pytest.raises(QSMInputError, match="one reference"):
        RoiTable(rows[1:])
    tab = RoiTable((RoiRow("s", 1, "a\tb", "ref", True, 1, 0.1, 0.0, math.nan),))
    with pytest.raises(QSMInputError, match="tab"):
        tab.to_tsv(tmp_path / "x.tsv")


class _TableParser(HTMLParser):
    """Collects rows of cells (tag, attrs, text, whether bold) of the first table."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[dict]] = []
        self.cell: dict | None = None
        self.stack: list[str] = []
        self.caption = ""

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = {"tag": tag, "attrs": dict(attrs), "text": "", "strong": []}
            self.rows[-1].append(self.cell)

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag, f"unbalanced </{tag}>"
        if tag in ("td", "th"):
            self.cell = None

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "caption":
            self.caption += data
        if self.cell is not None:
            self.cell["text"] += data
            if self.stack[-1] == "strong":
                self.cell["strong"].append(data)


def test_html_layout_escaping_and_bold():
    subjects = {"sub-01": _subject(1), "sub<2>": _subject(2)}
    table = roi_table(subjects)
    text = table.to_html()
    assert "<pallidus>" not in text and "&lt;pallidus&gt; &amp; co" in text
    assert "sub&lt;2&gt;" in text
    parser = _TableParser()
    parser.feed(text)
    parser.close()
    assert parser.stack == []
    assert "Pearson r" in parser.caption
    head1, head2, *body = parser.rows
    assert [c["text"] for c in head1] == ["ROI", "sub-01", "sub<2>"]
    assert [c["attrs"].get("colspan") for c in head1[1:]] == ["4", "4"]
    assert [c["text"] for c in head2] == ["COSMOS", "noisy", "scaled", "offset"] * 2
    assert len(body) == 3
    assert [row[0]["text"] for row in body] == ["caudate", "putamen", "globus <pallidus> & co"]
    for row in body:
        assert len(row) == 1 + 2 * 4
        assert all(c["tag"] == "td" for c in row[1:])
    for b, label in enumerate((1, 2, 3)):
        for g, s in enumerate(subjects):
            for k, method in enumerate(["COSMOS", "noisy", "scaled", "offset"]):
                cell = body[b][1 + 4 * g + k]
                r = table.row(s, label, method)
                mean_sd = f"{r.mean:.3f} ± {r.sd:.3f}"
                if method == "COSMOS":
                    assert cell["text"] == mean_sd and cell["strong"] == []
                    continue
                assert cell["text"] == f"{mean_sd} ({r.r:.3f})"
                expected_bold = []
                if method in table.best_by_mean(s, label):
                    expected_bold.append(mean_sd)
                if method in table.best_by_r(s, label):
                    expected_bold.append(f"{r.r:.3f}")
                assert cell["strong"] == expected_bold
    # every (subject, ROI) has exactly one bold mean (no ties here)
    n_bold_means = sum(1 for row in body for c in row[1:] if c["strong"] and "±" in c["strong"][0])
    assert n_bold_means == 2 * 3


def test_html_missing_roi_reads_na():
    a = _subject(1)
    b = _subject(2)
    labels = np.where(b.labels == 3, 0, b.labels)
    b = SubjectMaps(b.reference, b.maps, labels, b.mask, NAMES)
    table = roi_table({"a": a, "b": b})
    parser = _TableParser()
    parser.feed(table.to_html(decimals=2))
    body = parser.rows[2:]
    assert [c["text"] for c in body[2][5:]] == ["n/a"] * 4
    assert body[0][1]["text"] == f"{table.row('a', 1, 'COSMOS').mean:.2f} ± " + (
        f"{table.row('a', 1, 'COSMOS').sd:.2f}"
    )


def test_read_dseg_tsv(tmp_path):
    p = tmp_path / "sub-01_desc-aseg_dseg.tsv"
    p.write_text(
        "index\tname\tabbreviation\tcolor\n"
        "1\tLeft-Caudate\tL-Cau\t#7ABADC\n"
        "2\tLeft Putamen, posterior\tL-Put\t#EC0DB0\n"
    )
    assert read_dseg_tsv(p) == {1: "Left-Caudate", 2: "Left Putamen, posterior"}
    assert read_label_names(p) == read_dseg_tsv(p)
    other = tmp_path / "names.txt"
    other.write_text("1 caudate\n2 putamen\n")
    assert read_label_names(other) == {1: "caudate", 2: "putamen"}
    swapped = tmp_path / "swapped_dseg.tsv"
    swapped.write_text("name\tindex\nthalamus\t7\n")
    assert read_dseg_tsv(swapped) == {7: "thalamus"}
    for body, match in (
        ("label\tname\n1\ta\n", "'index' and 'name'"),
        ("index\tname\nx\ta\n", "line 2.*not an integer"),
        ("index\tname\n1\ta\n1\tb\n", "line 3.*repeated"),
        ("index\tname\n1\t\n", "no name"),
        ("index\tname\n", "no labels"),
    ):
        bad = tmp_path / "bad_dseg.tsv"
        bad.write_text(body)
        with pytest.raises(QSMInputError, match=match):
            read_dseg_tsv(bad)


def test_bad_input_errors():
    s = _subject(1)
    with pytest.raises(QSMInputError, match="no subjects"):
        roi_table({})
    bad = dict(s.maps)
    bad["noisy"] = bad["noisy"][:-1]
    with pytest.raises(QSMInputError, match=r"sub-01.*'noisy'.*does not match"):
        roi_table({"sub-01": SubjectMaps(s.reference, bad, s.labels, s.mask)})
    with pytest.raises(QSMInputError, match="3-D"):
        roi_table({"s": SubjectMaps(s.reference[0], s.maps, s.labels)})
    with pytest.raises(QSMInputError, match="empty"):
        roi_table({"s": SubjectMaps(s.reference, s.maps, s.labels, np.zeros(SHAPE))})
    with pytest.raises(QSMInputError, match="no labelled voxel"):
        roi_table({"s": SubjectMaps(s.reference, s.maps, np.zeros(SHAPE, int))})
    with pytest.raises(QSMInputError, match="not integer"):
        roi_table({"s": SubjectMaps(s.reference, s.maps, s.labels + 0.5)})
    nan_map = dict(s.maps)
    nan_map["scaled"] = nan_map["scaled"].copy()
    nan_map["scaled"][4, 5, 4] = np.nan  # inside label 1
    with pytest.raises(QSMInputError, match=r"'scaled'.*NaN"):
        roi_table({"s": SubjectMaps(s.reference, nan_map, s.labels, s.mask)})
    nan_map["scaled"][4, 5, 4] = 0.0
    nan_map["scaled"][0, 0, 0] = np.nan  # outside the mask: ignored
    roi_table({"s": SubjectMaps(s.reference, nan_map, s.labels, s.mask)})
    with pytest.raises(QSMInputError, match="named like the reference"):
        roi_table({"s": SubjectMaps(s.reference, {"COSMOS": s.reference}, s.labels)})


def test_subject_maps_from_files(tmp_path):
    s = _subject(4)
    aff = np.diag([1.0, 1.0, 2.0, 1.0])

    def save(name, data, affine=aff, dtype=np.float64):
        path = tmp_path / name
        nib.save(nib.Nifti1Image(np.asarray(data, dtype), affine), str(path))
        return path

    dseg = tmp_path / "dseg.tsv"
    dseg.write_text("index\tname\n1\tcaudate\n2\tputamen\n3\tglobus <pallidus> & co\n")
    loaded = subject_maps_from_files(
        save("cosmos.nii.gz", s.reference),
        {m: save(f"{m}.nii.gz", a) for m, a in s.maps.items()},
        save("labels.nii.gz", s.labels, dtype=np.int16),
        mask=save("mask.nii.gz", s.mask, dtype=np.uint8),
        label_names=dseg,
    )
    assert roi_table({"sub-04": loaded}).same_as(roi_table({"sub-04": s}))
    shifted = aff.copy()
    shifted[1, 3] = 3.0
    with pytest.raises(QSMInputError, match=r"labels_moved\.nii\.gz.*affines differ"):
        subject_maps_from_files(
            tmp_path / "cosmos.nii.gz",
            {"noisy": tmp_path / "noisy.nii.gz"},
            save("labels_moved.nii.gz", s.labels, shifted, np.int16),
        )
    with pytest.raises(QSMInputError, match=r"small\.nii\.gz.*does not match"):
        subject_maps_from_files(
            tmp_path / "cosmos.nii.gz",
            {"noisy": save("small.nii.gz", s.reference[:-1])},
            tmp_path / "labels.nii.gz",
        )
