"""Graph of ``init_cosmos_wf`` over its options, built without running anything."""

from __future__ import annotations

import pytest
from nipype.interfaces import utility as niu

from qsmflow.interfaces.cosmos import B0Direction, Cosmos
from qsmflow.interfaces.registration import ResampleToReference, RigidRegistration
from qsmflow.io.bids import MIN_ORIENTATIONS
from qsmflow.workflows.cosmos import init_cosmos_wf


def _edges(wf) -> dict[tuple[str, str], list[tuple[str, str]]]:
    return {(u.name, v.name): d["connect"] for u, v, d in wf._graph.edges(data=True)}


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("backend", ["auto", "fsl", "python"])
@pytest.mark.parametrize(("method", "lam"), [("lsq", None), ("closed", 0.01)])
def test_cosmos_wf_graph(n, backend, method, lam):
    wf = init_cosmos_wf(
        n_orientations=n, registration_backend=backend, method=method, lam=lam, iterations=7
    )
    names = set(wf.list_node_names())
    per_orientation = {
        f"{stem}_{i}"
        for i in range(1, n)
        for stem in ("register", "resample_field", "resample_mask", "b0")
    }
    assert names == {
        "inputnode",
        "outputnode",
        "split_magnitudes",
        "split_local_fields",
        "split_local_masks",
        "merge_fields",
        "merge_masks",
        "merge_b0",
        "merge_transforms",
        "merge_fsl_matrices",
        "cosmos",
        "b0_0",
        *per_orientation,
    }
    cosmos = wf.get_node("cosmos")
    assert isinstance(cosmos.interface, Cosmos)
    assert (cosmos.inputs.method, cosmos.inputs.lam, cosmos.inputs.iterations) == (method, lam, 7)
    for key in ("magnitudes", "local_fields", "local_masks"):
        split = wf.get_node(f"split_{key}")
        assert isinstance(split.interface, niu.Split)
        assert split.inputs.splits == [1] * n and split.inputs.squeeze
    # B0 directions: one 3-list per orientation, not flattened
    merge_b0 = wf.get_node("merge_b0")
    assert merge_b0.interface._numinputs == n and merge_b0.inputs.no_flatten
    edges = _edges(wf)
    assert edges["b0_0", "merge_b0"] == [("b0_dir", "in1")]
    assert edges["split_local_fields", "b0_0"] == [("out1", "in_file")]
    for i in range(1, n):
        register = wf.get_node(f"register_{i}")
        assert isinstance(register.interface, RigidRegistration)
        assert register.inputs.backend == backend
        field, mask = wf.get_node(f"resample_field_{i}"), wf.get_node(f"resample_mask_{i}")
        assert isinstance(field.interface, ResampleToReference) and not field.inputs.is_mask
        assert field.inputs.interpolation == "linear"
        assert isinstance(mask.interface, ResampleToReference) and mask.inputs.is_mask
        assert isinstance(wf.get_node(f"b0_{i}").interface, B0Direction)
        ori = f"out{i + 1}"
        assert edges["split_magnitudes", f"register_{i}"] == [
            (ori, "moving"),
            ("out1", "reference"),
        ]
        assert edges[f"register_{i}", f"b0_{i}"] == [("transform", "transform")]
        assert edges[f"b0_{i}", "merge_b0"] == [("b0_dir", f"in{i + 1}")]
        assert edges[f"resample_field_{i}", "merge_fields"] == [("out_file", f"in{i + 1}")]
        assert edges[f"resample_mask_{i}", "merge_masks"] == [("out_file", f"in{i + 1}")]
        assert edges[f"register_{i}", "merge_transforms"] == [("transform", f"in{i}")]
    assert ("backend", "registration_backend") in edges["register_1", "outputnode"]
    assert edges["merge_b0", "cosmos"] == [("out", "b0_dirs")]
    assert edges["merge_b0", "outputnode"] == [("out", "b0_dirs")]
    assert edges["cosmos", "outputnode"] == [("chi", "chi"), ("mask", "mask")]
    assert not any(isinstance(wf.get_node(name).interface, niu.Select) for name in names)


def test_cosmos_wf_needs_the_minimum_orientations():
    with pytest.raises(ValueError, match="at least"):
        init_cosmos_wf(n_orientations=MIN_ORIENTATIONS["cosmos"] - 1)
