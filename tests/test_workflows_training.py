"""Graph of ``init_training_data_wf`` over its options, built without running anything."""

from __future__ import annotations

import pytest
from nipype.interfaces import utility as niu

from qsmflow.interfaces.patches import TrainingPatches
from qsmflow.training.patch_grid import MIN_MASK_FRACTION, PATCH_SIZE, STRIDE
from qsmflow.workflows.training import init_training_data_wf


def _edges(wf) -> dict[tuple[str, str], list[tuple[str, str]]]:
    return {(u.name, v.name): d["connect"] for u, v, d in wf._graph.edges(data=True)}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, (PATCH_SIZE, STRIDE, MIN_MASK_FRACTION)),
        ({"patch_size": 32, "stride": 16, "min_mask_fraction": 0.3}, (32, 16, 0.3)),
    ],
)
def test_training_data_wf_graph(options, expected):
    wf = init_training_data_wf(name="td", **options)
    assert wf.name == "td"
    assert set(wf.list_node_names()) == {"inputnode", "outputnode", "patches"}
    patches = wf.get_node("patches")
    assert isinstance(patches.interface, TrainingPatches)
    got = (patches.inputs.patch_size, patches.inputs.stride, patches.inputs.min_mask_fraction)
    assert got == expected
    for node in ("inputnode", "outputnode"):
        assert isinstance(wf.get_node(node).interface, niu.IdentityInterface)
    assert _edges(wf) == {
        ("inputnode", "patches"): [
            ("local_fields_ref", "local_fields"),
            ("chi", "chi"),
            ("mask", "mask"),
            ("b0_dirs", "b0_dirs"),
            ("source_files", "source_files"),
        ],
        ("patches", "outputnode"): [("out_dir", "patch_dir"), ("count", "count")],
    }


def test_training_patches_takes_one_direction_per_orientation():
    node = TrainingPatches()
    node.inputs.b0_dirs = [[0.0, 0.0, 1.0], [0.0, 0.1, 0.995]]
    assert node.inputs.b0_dirs == [[0.0, 0.0, 1.0], [0.0, 0.1, 0.995]]
