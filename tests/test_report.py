"""HTML reports, run records and the group level (``qsmflow run``, ``qsmflow report``).

One small simulated dataset (4 mm, 2 subjects x 2 orientations; sub-02's second orientation
has an all-zero magnitude, so its brain mask fails) is run once per module: the qsm pipeline
(TKD, TV) without reports, then the cosmos pipeline into the same folder (cached field maps),
which writes the run record and the reports. The checks are numeric: metrics and ROI values
recomputed here, figures decoded, every link resolved, the HTML parsed.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from qsmflow import __version__
from qsmflow.cli.main import main

ARGS = (
    "--voxel-size", "4", "--orientations", "2", "--subjects", "2",
    "--echo-times", "0.004", "0.009", "0.014", "--seed", "3",
)  # fmt: skip
PYTHON = ["--mask-backend", "python", "--registration-backend", "python"]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(simulate_bids, tmp_path_factory):
    import nibabel as nib

    root = tmp_path_factory.mktemp("report")
    bids = Path(shutil.copytree(simulate_bids(*ARGS), root / "bids"))  # with the truth
    for f in (bids / "sub-02/anat").glob("sub-02_acq-ori2_echo-*_part-mag_MEGRE.nii.gz"):
        img = nib.load(f)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), f)
    out = root / "out"
    qsm = ["run", str(bids), str(out), "participant", "--pipeline", "qsm", *PYTHON]
    rc_qsm, _o, _e = _main([*qsm, "--methods", "tkd", "tv", "--no-report"])
    assert not list(out.glob("*.html"))  # --no-report
    cosmos = ["run", str(bids), str(out), "participant", "--pipeline", "cosmos", *PYTHON]
    rc, stdout, stderr = _main(cosmos)
    return SimpleNamespace(
        bids=bids, out=out, rc_qsm=rc_qsm, rc=rc, argv=cosmos, stdout=stdout, stderr=stderr
    )


# --------------------------------------------------------------------------------------------
# HTML helpers
# --------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Links, images, tag balance and the metric cells of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.counts: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a["src"])
        if tag in ("script", "link", "iframe"):
            self.scripts += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"end tag of void element {tag}")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    page.close()
    return page


class _Cells(HTMLParser):
    """``data-metric``/``data-value`` cells of the table of a given class, by row header."""

    def __init__(self, css_class: str) -> None:
        super().__init__()
        self.css_class = css_class
        self.depth = 0
        self.method = ""
        self.values: dict[str, dict[str, float]] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.depth += 1 if self.depth or self.css_class in (a.get("class") or "").split() else 0
        if not self.depth:
            return
        if tag == "th" and "data-method" in a:
            self.method = a["data-method"]
        if tag == "td" and "data-metric" in a and "data-value" in a:
            self.values.setdefault(self.method, {})[a["data-metric"]] = float(a["data-value"])

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1


def _strip_generated(text: str) -> str:
    return re.sub(r'<span class="generated">[^<]*</span>', "", text)


def _load(path: Path, dtype=np.float64) -> np.ndarray:
    from qsmflow.io.nifti import load_volume

    return load_volume(path, dtype=dtype).data


# --------------------------------------------------------------------------------------------
# qsmflow run: run record, reports
# --------------------------------------------------------------------------------------------


def test_run_record_and_report_lines(run):
    assert run.rc_qsm == 1 and run.rc == 1, run.stdout  # sub-02 failed: exit status unchanged
    assert f"report: {run.out / 'sub-01.html'}" in run.stdout
    assert f"report: {run.out / 'sub-02.html'}" in run.stdout
    assert "warning" not in run.stderr
    records = sorted((run.out / "logs").glob("run_*.json"))
    assert len(records) == 2
    rec = json.loads(records[-1].read_text())
    assert rec["argv"] == run.argv and rec["command_line"].startswith("qsmflow run ")
    assert rec["qsmflow_version"] == __version__ and rec["pipeline"] == "cosmos"
    assert rec["plugin"] == "Linear" and rec["backends"] == {
        "mask": "python",
        "registration": "python",
    }
    assert rec["bids_dir"] == str(run.bids.resolve()) and rec["exit_status"] == 1
    assert rec["start"] <= rec["end"] and rec["seconds"] > 0
    assert (run.out / rec["settings_file"]).is_file() and (run.out / rec["log_file"]).is_file()
    assert rec["subjects"]["sub-01"] == {"status": "ok", "failures": []}
    sub02 = rec["subjects"]["sub-02"]
    assert sub02["status"] == "failed"
    nodes = {f["node"]: f for f in sub02["failures"]}
    assert "fieldmap_acq_ori2_wf.brain_mask" in nodes
    failure = nodes["fieldmap_acq_ori2_wf.brain_mask"]
    assert "no positive voxel" in failure["message"]
    crash = run.out / failure["crash_file"]
    assert crash.is_file() and "brain_mask" in crash.read_text()


@pytest.mark.parametrize("subject", ["sub-01", "sub-02"])
def test_html_is_well_formed_and_offline(run, subject):
    page = _parse(run.out / f"{subject}.html")
    assert not page.errors, page.errors[:5]
    assert not page.stack, f"unclosed: {page.stack}"
    assert page.counts["html"] == page.counts["head"] == page.counts["body"] == 1
    assert page.scripts == 0  # inline CSS only, no scripts, no external style sheets
    text = (run.out / f"{subject}.html").read_text()
    assert "http://" not in text and "https://" not in text and 'src="//' not in text
    assert 'class="report-problem"' not in text  # every part of the report could be made


@pytest.mark.parametrize("subject", ["sub-01", "sub-02"])
def test_links_and_figures_resolve(run, subject):
    from PIL import Image

    page = _parse(run.out / f"{subject}.html")
    out = run.out.resolve()
    targets = [h for h in page.links + page.images if not h.startswith("#")]
    assert targets
    for href in targets:
        path = (out / href).resolve()
        assert path.is_relative_to(out) and path.is_file(), href
    n_expected = {"sub-01": 10, "sub-02": 4}[subject]  # sub-02: acq-ori1 only
    assert len(set(page.images)) == n_expected
    for src in set(page.images):
        assert src.startswith(f"{subject}/figures/") and src.endswith(".png")
        pixels = np.asarray(Image.open(out / src).convert("L"), dtype=np.float64)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 10, src  # not blank


def test_comparison_metrics_equal_score(run):
    from qsmflow.evaluation.metrics import score

    anat = run.out / "sub-01/anat"
    cosmos = _load(anat / "sub-01_desc-cosmos_Chimap.nii.gz")
    mask = (_load(anat / "sub-01_acq-ori1_desc-vsharp_mask.nii.gz") > 0) & (
        _load(anat / "sub-01_desc-cosmos_mask.nii.gz") > 0
    )
    cells = _Cells("metrics-acq-ori1-cosmos")
    cells.feed((run.out / "sub-01.html").read_text())
    assert sorted(cells.values) == ["tkd", "tv"]
    for method, shown in cells.values.items():
        expected = score(_load(anat / f"sub-01_acq-ori1_desc-{method}_Chimap.nii.gz"), cosmos, mask)
        assert len(shown) == 9
        for key, value in shown.items():
            family, name = key.split(".")
            assert value == pytest.approx(expected[family][name], rel=1e-12, abs=1e-12), key
    text = (run.out / "sub-01.html").read_text()
    assert f"({int(mask.sum())} voxels)" in text  # the stated mask


def test_roi_table_equals_numpy(run):
    from qsmflow.evaluation.roi_table import RoiTable

    anat = run.out / "sub-01/anat"
    tsv = run.out / "sub-01/sub-01_desc-rois_table.tsv"
    table = RoiTable.from_tsv(tsv)
    assert table.reference_name("sub-01") == "COSMOS" and table.methods() == ["tkd", "tv"]
    truth = run.bids / "derivatives/qsmflow-simulation/sub-01/anat"
    labels = _load(truth / "sub-01_acq-ori1_dseg.nii.gz", dtype=None)
    mask = (_load(anat / "sub-01_acq-ori1_desc-vsharp_mask.nii.gz") > 0) & (
        _load(anat / "sub-01_desc-cosmos_mask.nii.gz") > 0
    )
    roi = mask & (labels == 3)
    cosmos = _load(anat / "sub-01_desc-cosmos_Chimap.nii.gz")[roi]
    tv = _load(anat / "sub-01_acq-ori1_desc-tv_Chimap.nii.gz")[roi]
    row = table.row("sub-01", 3, "tv")
    assert row.roi == "putamen" and row.n_voxels == int(roi.sum()) > 10
    assert row.mean == pytest.approx(tv.mean(), rel=1e-12)
    assert row.sd == pytest.approx(tv.std(ddof=1), rel=1e-12)
    assert row.r == pytest.approx(np.corrcoef(tv, cosmos)[0, 1], rel=1e-12)
    ref = table.reference("sub-01", 3)
    assert ref.mean == pytest.approx(cosmos.mean(), rel=1e-12)
    html = (run.out / "sub-01.html").read_text()
    assert 'class="qsmflow-roi-table"' in html and "putamen" in html


def test_provenance(run):
    html = (run.out / "sub-01.html").read_text()
    section = html[html.index('<section id="provenance">') :]
    assert f"qsmflow version</dt><dd>{__version__}" in section
    assert "pipeline</dt><dd>cosmos" in section
    assert "--pipeline cosmos --mask-backend python" in section  # the command line
    assert "mask: python, registration: python" in section  # backends used (sidecars)
    assert "Linear" in section and "run record" in section
    summary = html[html.index('<section id="summary">') : html.index('<section id="outputs">')]
    assert "4, 9, 14" in summary and "(4.00, 4.00, 4.00)" in summary  # TE in ms, voxel mm
    assert "sub-01_acq-ori2_echo-3_part-phase_MEGRE.nii.gz" in summary  # inputs listed


def test_failed_subject_report(run):
    html = (run.out / "sub-02.html").read_text()
    errors = html[html.index('<section id="errors"') : html.index('<section id="summary">')]
    assert "FAILED" in errors and "fieldmap_acq_ori2_wf.brain_mask" in errors
    assert "magnitude image has no positive voxel" in errors
    assert "crash report</a>" in errors
    # the outputs that exist are listed and shown; the failed orientation says why it has none
    assert "sub-02_acq-ori1_desc-tkd_Chimap.nii.gz" in html
    assert "acq-ori2: no brain mask (the step did not finish)" in html
    assert "sub-02_acq-ori2_desc-brain_mask" not in html
    # reference orientation compared with the simulation truth (no COSMOS for sub-02)
    assert (
        "metrics-acq-ori1-truth" in html
        and (run.out / "sub-02/sub-02_desc-rois_table.tsv").is_file()
    )


def test_report_command_regenerates_the_same_report(run):
    before = {p: p.read_bytes() for p in (run.out / "sub-01/figures").iterdir()}
    html = (run.out / "sub-01.html").read_text()
    rc, stdout, _err = _main(["report", str(run.out), "--participant-label", "01"])
    assert rc == 0 and stdout.startswith(f"report: {run.out / 'sub-01.html'}")
    assert _strip_generated((run.out / "sub-01.html").read_text()) == _strip_generated(html)
    after = {p: p.read_bytes() for p in (run.out / "sub-01/figures").iterdir()}
    assert after == before


def test_group_level(run, tmp_path):
    from qsmflow.evaluation.roi_table import RoiTable, aggregate

    rc, stdout, _err = _main(["run", str(run.bids), str(run.out), "group"])
    assert rc == 0, stdout
    group = RoiTable.from_tsv(run.out / "group_desc-rois_table.tsv")
    parts = [RoiTable.from_tsv(run.out / f"sub-0{i}/sub-0{i}_desc-rois_table.tsv") for i in (1, 2)]
    assert group.subjects == ["sub-01", "sub-02"] and group.same_as(aggregate(parts))
    page = _parse(run.out / "group.html")
    assert not page.errors and not page.stack
    assert {"sub-01.html", "sub-02.html"} <= set(page.links)
    for href in page.links:
        assert href.startswith("#") or (run.out / href).is_file(), href
    # no per-subject tables yet: a clear error, exit 2
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _out, err = _main(["run", str(run.bids), str(empty), "group"])
    assert rc == 2 and "no per-subject ROI tables" in err


def test_given_labels_and_escaping(run, tmp_path):
    """--labels/--label-names, and every text escaped (names, messages from a run record)."""
    out = tmp_path / "out"
    shutil.copytree(run.out, out, ignore=shutil.ignore_patterns("work", "figures", "*.html"))
    labels = run.bids / "derivatives/qsmflow-simulation/sub-02/anat/sub-02_acq-ori1_dseg.nii.gz"
    names = tmp_path / "names.tsv"
    names.write_text("index\tname\n1\t<b>caudate</b> & co\n3\tputamen\n")
    record = sorted((out / "logs").glob("run_*.json"))[-1]
    data = json.loads(record.read_text())
    data["subjects"]["sub-02"]["failures"][0]["message"] = "<script>alert(1)</script>"
    record.write_text(json.dumps(data))
    argv = ["report", str(out), "--participant-label", "sub-02", "--labels", str(labels)]
    rc, _stdout, err = _main([*argv, "--label-names", str(names)])
    assert rc == 0, err
    html = (out / "sub-02.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;caudate&lt;/b&gt; &amp; co" in html and "<b>caudate" not in html
    table = (out / "sub-02/sub-02_desc-rois_table.tsv").read_text()
    assert "<b>caudate</b> & co" in table and "\tputamen\t" in table
    page = _parse(out / "sub-02.html")
    assert not page.errors and not page.stack
    # a label image on another grid is named in the report, the rest still made
    bad = tmp_path / "bad_dseg.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.int16), np.eye(4)), bad)
    rc, _stdout, err = _main(
        ["report", str(out), "--participant-label", "02", "--labels", str(bad)]
    )
    assert rc == 0
    html = (out / "sub-02.html").read_text()
    assert 'class="report-problem"' in html and "bad_dseg.nii.gz" in html
    assert not (out / "sub-02/sub-02_desc-rois_table.tsv").exists()  # no stale table


def test_labels_and_errors():
    from qsmflow.errors import QSMInputError
    from qsmflow.reports.naming import normalise_label, report_path, roi_table_path
    from qsmflow.reports.runrecord import split_failure

    assert normalise_label("01") == "sub-01" == normalise_label("sub-01")
    assert report_path("/o", "sub-01_ses-a") == Path("/o/sub-01_ses-a.html")
    assert roi_table_path("/o", "sub-01_ses-a") == Path(
        "/o/sub-01/ses-a/sub-01_ses-a_desc-rois_table.tsv"
    )
    with pytest.raises(QSMInputError, match="subject label"):
        normalise_label("sub-01/../x")
    assert split_failure("a_wf.node: f.nii: bad: worse") == ("a_wf.node", "f.nii: bad: worse")
    rc, _out, err = _main(["report", "/nonexistent/qsmflow-out"])
    assert rc == 2 and "dataset_description.json" in err
