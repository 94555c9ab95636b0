"""The realistic-acquisition benchmark, reduced to 2 mm: the ranking of the inversions.

``benchmarks/realistic.py`` runs the same chain at 1 mm and 0.9 x 0.9 x 1.8 mm, 3 T and 7 T; here
the 3 T preset at 2 mm (about 40 s on two cores) checks what the README's "Which inversion"
table claims: the pipeline's default inversion (TV with the magnitude as weights) beats TKD,
CFL2, NDI and STAR-QSM on NRMSE, HFEN and XSIM, and NDI and STAR-QSM with their defaults are no
worse than TKD with its default. Every method runs with its defaults through
:func:`qsmflow.steps.inversion.invert_file` on the local field our own chain computed (brain
mask, field fit, V-SHARP), exactly as ``qsmflow run`` does.
"""

from __future__ import annotations

import numpy as np
import pytest

from qsmflow.evaluation.realistic import MethodSpec, process_acquisition, score_methods

pytestmark = pytest.mark.shared_data

METHODS = [
    MethodSpec("tkd", "tkd"),
    MethodSpec("tkd(0.15)", "tkd", {"threshold": 0.15}),
    MethodSpec("cfl2", "cfl2"),
    MethodSpec("ndi", "ndi"),
    MethodSpec("ndi(200 it)", "ndi", {"iterations": 200}),
    MethodSpec("star", "star"),
    MethodSpec("tv", "tv", magnitude_weights=True),
    MethodSpec("tv(no magnitude)", "tv"),
]


@pytest.fixture(scope="module")
def scores(shared_data, tmp_path_factory):
    from qsmflow.simulate.realism import simulate_realistic

    gre = simulate_realistic(
        "3t", voxel_size=2.0, directory=shared_data / "qsm2_head_model", seed=1
    )
    work = tmp_path_factory.mktemp("realistic")
    proc = process_acquisition(gre, work)
    # the chain, not the truth, made the field and mask; they are measured-like
    assert 0.85 < proc.local_mask.sum() / gre.brain_mask.sum() < 1.0
    error = proc.local_field_ppm - gre.local_field
    assert 0.3 < np.sqrt(np.mean(error[proc.local_mask] ** 2)) / np.sqrt(
        np.mean(gre.local_field[proc.local_mask] ** 2)
    )
    result = score_methods(gre, METHODS, work, processed=proc)
    for name, row in result.items():
        print(
            f"{name:18s} NRMSE {row['nrmse']:5.1f} HFEN {row['hfen']:5.1f} XSIM {row['xsim']:.3f}"
        )
    return result


@pytest.mark.parametrize("other", ["tkd", "cfl2", "ndi", "star"])
def test_tv_beats_the_classical_methods(scores, other):
    tv, o = scores["tv"], scores[other]
    # measured (3 T, 2 mm, seed 1): tv 67.3 / 47.9 / 0.502; tkd 73.1 / 58.6 / 0.495,
    # cfl2 75.4 / 57.7 / 0.496, ndi 72.4 / 57.3 / 0.492, star 70.9 / 57.1 / 0.494
    assert tv["nrmse"] < o["nrmse"] - 2.0
    assert tv["hfen"] < o["hfen"] - 4.0
    assert tv["xsim"] > o["xsim"]


@pytest.mark.parametrize("method", ["ndi", "star"])
def test_ndi_and_star_no_worse_than_tkd(scores, method):
    # NRMSE, the measure of the held-out check on measured data; measured ndi 71.3, star 70.9,
    # tkd 73.1
    assert scores[method]["nrmse"] <= scores["tkd"]["nrmse"]


def test_defaults_beat_the_old_defaults(scores):
    # the defaults chosen on this benchmark against QSM.rs's (TKD 0.15, NDI 200 iterations)
    assert scores["tkd"]["nrmse"] < scores["tkd(0.15)"]["nrmse"] - 10
    assert scores["ndi"]["nrmse"] < scores["ndi(200 it)"]["nrmse"] - 15
    # the magnitude weights help TV
    assert scores["tv"]["nrmse"] < scores["tv(no magnitude)"]["nrmse"]
    assert scores["tv"]["hfen"] < scores["tv(no magnitude)"]["hfen"]


def test_roi_means_track_the_truth(scores):
    # deep grey matter ordering is kept by TV: globus pallidus > caudate > putamen > thalamus
    rois = scores["tv"]["rois"]
    order = ["globus_pallidus", "caudate", "putamen", "thalamus"]
    recon = [rois[r][0] for r in order]
    assert recon == sorted(recon, reverse=True)
    for roi in order:
        value, truth = rois[roi]
        assert abs(value - truth) < 0.4 * abs(truth) + 0.005, (roi, value, truth)
