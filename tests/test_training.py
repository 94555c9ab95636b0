"""ISDU-QSMNet training: datasets, RS sampling, trainer (loss, exact resume, K=1 -> K init,
checkpoint errors), DDP with two gloo processes and the ``qsmflow train`` CLI.

Everything runs on the CPU with 16^3 patches of the built-in phantom at 4 mm and a denoiser of
width 4 with one residual block, so the whole file takes well under a minute on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from qsmflow.errors import QSMInputError
from qsmflow.models.checkpoints import read_checkpoint
from qsmflow.models.kernels import isdu_kernel
from qsmflow.physics.kernel import dipole_kernel, normalise_b0_dir
from qsmflow.training.config import TrainConfig, load_train_preset
from qsmflow.training.dataset import PatchDataset, SimulatedPatchDataset
from qsmflow.training.ddp import RandomSubsetSampler
from qsmflow.training.state import list_checkpoints
from qsmflow.training.trainer import Trainer, read_log, train

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"width": 4, "n_blocks": 1}
SIM = dict(voxel_size=4.0, n_subjects=1, n_orientations=2, texture=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors (conftest)


@pytest.fixture(scope="module")
def sim16() -> SimulatedPatchDataset:
    return SimulatedPatchDataset(8, 16, seed=0, **SIM)


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=dict(TINY_MODEL), lr=1e-3, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


# ------------------------------------------------------------------------------- datasets


def test_simulated_dataset_items_deterministic(sim16):
    item = sim16[3]
    for key in ("phi", "chi", "mask", "kernel"):
        assert item[key].shape == (1, 16, 16, 16) and item[key].dtype == torch.float32
    assert item["b0_dir"].shape == (3,)
    assert 0.125 < float(item["mask"].mean()) <= 1
    assert torch.all(item["phi"][item["mask"] == 0] == 0)
    again = SimulatedPatchDataset(8, 16, seed=0, **SIM)[3]
    for key in ("phi", "chi", "mask", "kernel", "b0_dir"):
        assert torch.equal(item[key], again[key])
    other = SimulatedPatchDataset(8, 16, seed=1, **SIM)[3]
    assert not torch.equal(item["phi"], other["phi"])
    # the kernel is the ISDU kernel (D(0) = 1/3) of the item's own B0 direction
    b0 = item["b0_dir"].double().numpy()
    want = dipole_kernel((16,) * 3, (4.0,) * 3, b0, dc_value=1 / 3, dtype=np.float64)
    np.testing.assert_allclose(item["kernel"][0].numpy(), want, atol=1e-6)
    assert float(item["kernel"][0, 0, 0, 0]) == pytest.approx(1 / 3)
    # ... and exactly the kernel inference builds (models.kernels.isdu_kernel) for the
    # dataset's B0 direction as the kernel cache keys it (rounded to 1e-6)
    _assert_inference_kernel(item["kernel"], (4.0,) * 3, sim16.b0_dirs[0, 3 % 2])
    # two orientations -> two cached kernels however many items are read
    for i in range(len(sim16)):
        sim16[i]
    assert len(sim16.kernels) == 2


def _assert_inference_kernel(kernel: torch.Tensor, voxel_size, b0_dir) -> None:
    """``kernel`` (1, P, P, P) is bit for bit :func:`isdu_kernel` of ``b0_dir`` rounded to 1e-6
    (the :class:`~qsmflow.training.dataset.KernelCache` key)."""
    b0 = tuple(round(float(x), 6) for x in normalise_b0_dir(b0_dir))
    want = isdu_kernel(kernel.shape[1:], voxel_size, b0)[0]
    assert torch.equal(kernel, want)


def _write_set(folder: Path, ds: SimulatedPatchDataset) -> None:
    from qsmflow.training.patch_store import write_patch_set

    chi, mask = ds.subject(0)
    write_patch_set(
        folder,
        field_ppm=[ds.field(0, 0), ds.field(0, 1)],
        chi_ppm=chi,
        mask=mask,
        b0_dirs=ds.b0_dirs[0],
        voxel_size=4.0,
        patch_size=16,
        stride=16,
    )


def test_patch_dataset_reads_sets_and_flips_b0_consistently(tmp_path, sim16):
    from qsmflow.training.patch_store import read_patch_set

    _write_set(tmp_path / "a", sim16)
    _write_set(tmp_path / "b", sim16)
    ps = read_patch_set(tmp_path / "a")
    ds = PatchDataset([tmp_path / "a", tmp_path / "b"])
    assert len(ds) == 2 * len(ps)
    i = len(ps) + 1  # second set, row 1
    item = ds[i]
    np.testing.assert_array_equal(item["chi"][0].numpy(), ps.chi[1])
    np.testing.assert_array_equal(item["phi"][0].numpy(), ps.field[1] * (ps.mask[1] != 0))
    want = dipole_kernel((16,) * 3, (4.0,) * 3, ps.b0_dir[1], dc_value=1 / 3, dtype=np.float64)
    np.testing.assert_allclose(item["kernel"][0].numpy(), want, atol=1e-6)
    _assert_inference_kernel(item["kernel"], (4.0,) * 3, ps.b0_dir[1])
    norm = ds.normalisation["chi"]
    assert norm["mean"] == pytest.approx(ps.normalisation["chi"]["mean"])
    assert norm["count"] == 2 * ps.normalisation["chi"]["count"]

    # flips: arrays flipped and the B0 component of every flipped axis negated, which keeps
    # phi = F^-1 D F chi exact (checked on a periodic field)
    aug = PatchDataset(tmp_path / "a", augment=True, seed=3)
    flipped = []
    for j in range(len(aug)):
        got, plain = aug[j], ds[j]
        sign = np.sign(got["b0_dir"].numpy()) != np.sign(plain["b0_dir"].numpy())
        axes = [int(a) for a in np.flatnonzero(sign)]
        flipped.append(tuple(axes))
        np.testing.assert_array_equal(
            got["chi"][0].numpy(), np.flip(plain["chi"][0].numpy(), axis=axes)
        )
    assert len(set(flipped)) > 1
    rng = np.random.default_rng(0)
    chi = rng.standard_normal((16, 16, 16))
    b = np.array([0.3, -0.4, 0.866])
    b /= np.linalg.norm(b)

    def fwd(c, bb):
        d = dipole_kernel((16,) * 3, (4.0,) * 3, bb, dc_value=1 / 3, dtype=np.float64)
        return np.fft.ifftn(d * np.fft.fftn(c)).real

    for axes in [(0,), (1, 2), (0, 1, 2)]:
        bf = b.copy()
        bf[list(axes)] *= -1
        # a flip x -> N-1-x is k -> -k up to a phase that cancels; use the periodic flip
        flip = lambda a, ax=axes: np.roll(np.flip(a, axis=ax), 1, axis=ax)  # noqa: E731
        np.testing.assert_allclose(fwd(flip(chi), bf), flip(fwd(chi, b)), atol=1e-12)
    # the same epoch gives the same flips, another epoch others
    aug.set_epoch(0)
    a0 = [aug[j]["b0_dir"] for j in range(len(aug))]
    aug.set_epoch(1)
    a1 = [aug[j]["b0_dir"] for j in range(len(aug))]
    aug.set_epoch(0)
    assert all(torch.equal(x, aug[j]["b0_dir"]) for j, x in enumerate(a0))
    assert any(not torch.equal(x, y) for x, y in zip(a0, a1, strict=True))


def test_patch_dataset_errors(tmp_path):
    with pytest.raises(QSMInputError, match="not found"):
        PatchDataset(tmp_path / "missing")
    with pytest.raises(QSMInputError):
        PatchDataset([])


# ------------------------------------------------------------------------------- sampler


def test_rs_sampler_subsets_per_epoch_deterministic():
    s = RandomSubsetSampler(100, 2, 20, seed=7)
    e0, e1 = s.epoch_indices(0), s.epoch_indices(1)
    assert len(e0) == 20 and len(set(e0.tolist())) == 20
    assert set(e0.tolist()) != set(e1.tolist())  # a fresh subset every epoch
    assert np.array_equal(e0, RandomSubsetSampler(100, 2, 20, seed=7).epoch_indices(0))
    assert not np.array_equal(e0, RandomSubsetSampler(100, 2, 20, seed=8).epoch_indices(0))
    s.set_epoch(1)
    assert list(s) == e1.tolist() and len(s) == 20
    # all patches (subset None) in a new order each epoch; remainder dropped like drop_last
    full = RandomSubsetSampler(11, 2, None, seed=0)
    assert len(full) == 10 and sorted(full.epoch_indices(0).tolist()) != list(range(10))
    # two ranks with batch 2 see exactly the single-process batches of 4, split in halves
    single = RandomSubsetSampler(50, 4, 24, seed=3).epoch_indices(2).reshape(-1, 4)
    r0 = RandomSubsetSampler(50, 2, 24, seed=3, rank=0, world_size=2).rank_indices(2)
    r1 = RandomSubsetSampler(50, 2, 24, seed=3, rank=1, world_size=2).rank_indices(2)
    np.testing.assert_array_equal(single[:, :2].reshape(-1), r0)
    np.testing.assert_array_equal(single[:, 2:].reshape(-1), r1)
    with pytest.raises(QSMInputError, match="global batch"):
        RandomSubsetSampler(3, 2, None, world_size=2)


# ------------------------------------------------------------------------------- trainer


def test_loss_decreases(tmp_path, sim16):
    # all 8 patches every epoch (no RS) and no dropout, so the epoch losses are comparable
    cfg = _cfg(tmp_path / "run", epochs=6, lr=1e-2, model={**TINY_MODEL, "dropout": 0.0})
    final = train(cfg, sim16, SimulatedPatchDataset(2, 16, seed=5, **SIM))
    rows = read_log(tmp_path / "run" / "train_log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    losses = [float(r["train_loss"]) for r in rows]
    assert all(np.isfinite(losses)) and float(rows[0]["val_loss"]) > 0
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))  # every epoch
    assert losses[-1] < 0.97 * losses[0]
    assert float(rows[-1]["patches_per_s"]) > 0 and int(rows[-1]["patches"]) == 8
    # the final checkpoint loads as a model
    from qsmflow.models.checkpoints import load_isdu

    model = load_isdu(final)
    assert model.n_iterations == 1 and model.config["width"] == 4
    assert [p for _, p in list_checkpoints(tmp_path / "run")][-1].name == "epoch_0006.pt"


@pytest.mark.parametrize("channels_last", [False, True])
def test_resume_is_bit_exact(tmp_path, sim16, channels_last):
    kw = dict(patches_per_epoch=4, seed=11, channels_last=channels_last)
    train(_cfg(tmp_path / "full", epochs=2, **kw), sim16)
    train(_cfg(tmp_path / "cut", epochs=1, **kw), sim16)  # "killed" after epoch 1
    assert len(list_checkpoints(tmp_path / "cut")) == 1
    train(_cfg(tmp_path / "cut", epochs=2, resume=True, **kw), sim16)
    a, b = _state(tmp_path / "full" / "final.pt"), _state(tmp_path / "cut" / "final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ca = read_checkpoint(tmp_path / "full" / "checkpoints" / "epoch_0002.pt")["extra"]
    cb = read_checkpoint(tmp_path / "cut" / "checkpoints" / "epoch_0002.pt")["extra"]
    oa, ob = ca["training"]["optimizer"]["state"], cb["training"]["optimizer"]["state"]
    assert all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)
    rows = read_log(tmp_path / "cut" / "train_log.csv")
    full_rows = read_log(tmp_path / "full" / "train_log.csv")
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in full_rows]
    # a different setting cannot resume; a finished run just rewrites final.pt
    with pytest.raises(QSMInputError, match="batch_size"):
        Trainer(_cfg(tmp_path / "cut", epochs=3, batch_size=1, resume=True, **kw), sim16)
    # an existing run is never silently overwritten
    with pytest.raises(QSMInputError, match="resume"):
        Trainer(_cfg(tmp_path / "cut", epochs=2, **kw), sim16)


def test_channels_last_changes_only_the_layout(tmp_path, sim16):
    """channels_last = true trains the same model up to float rounding."""
    kw = dict(epochs=1, patches_per_epoch=4, seed=4, model={**TINY_MODEL, "dropout": 0.0})
    sa = _state(train(_cfg(tmp_path / "plain", **kw), sim16))
    sb = _state(train(_cfg(tmp_path / "cl", channels_last=True, **kw), sim16))
    for key in sa:
        if sa[key].is_floating_point():
            scale = float(sa[key].abs().max()) + 1e-12
            assert float((sa[key] - sb[key]).abs().max()) < 1e-4 * scale, key
    with pytest.raises(QSMInputError, match="channels_last must be true or false"):
        _cfg(tmp_path / "x", channels_last="yes").validate()


def test_loader_workers_do_not_change_the_result(tmp_path, sim16):
    kw = dict(epochs=1, patches_per_epoch=4, seed=2)
    a = train(_cfg(tmp_path / "w0", num_workers=0, **kw), sim16)
    b = train(_cfg(tmp_path / "w2", num_workers=2, **kw), sim16)
    sa, sb = _state(a), _state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_unrolled_stage_starts_from_k1(tmp_path, sim16):
    k1 = train(_cfg(tmp_path / "k1", epochs=1, patches_per_epoch=2), sim16)
    k1_sd = _state(k1)
    t = Trainer(
        _cfg(tmp_path / "k3", stage="unrolled", n_iterations=3, init_from=str(k1), epochs=1),
        sim16,
    )
    assert len(t.model.denoisers) == 3
    for net in t.model.denoisers:
        for key, value in net.state_dict().items():
            assert torch.equal(value, k1_sd[f"denoisers.0.{key}"]), key
    assert float(t.model.out_std) == float(k1_sd["out_std"])  # statistics carried over
    # distinct copies: training changes them independently
    t.fit()
    sd = _state(tmp_path / "k3" / "final.pt")
    assert not torch.equal(sd["denoisers.0.gen.0.weight"], k1_sd["denoisers.0.gen.0.weight"])
    # shared weights: one denoiser; the authors' plain WideResNet .pth also initialises
    from qsmflow.models.wideresnet import WideResNet

    net = WideResNet(width=4, n_blocks=1, lambda_init=0.25)
    torch.save(net.state_dict(), tmp_path / "authors.pth")
    t2 = Trainer(
        _cfg(
            tmp_path / "sw",
            stage="unrolled",
            n_iterations=2,
            shared_weights=True,
            init_from=str(tmp_path / "authors.pth"),
        ),
        sim16,
    )
    assert len(t2.model.denoisers) == 1
    assert float(t2.model.denoisers[0].lambda_val.detach()) == 0.25


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/qsmflow-training-test-pwned",))


def test_bad_checkpoints_raise_input_errors(tmp_path, sim16):
    # corrupt newest checkpoint on resume: named in the error
    train(_cfg(tmp_path / "run", epochs=1, patches_per_epoch=2), sim16)
    ck = tmp_path / "run" / "checkpoints" / "epoch_0001.pt"
    ck.write_bytes(ck.read_bytes()[:200])
    with pytest.raises(QSMInputError, match="epoch_0001.pt"):
        Trainer(_cfg(tmp_path / "run", epochs=2, resume=True), sim16)
    # an arbitrary pickled object is refused, never executed
    marker = Path("/tmp/qsmflow-training-test-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(QSMInputError, match="evil.pt"):
        Trainer(_cfg(tmp_path / "e", stage="unrolled", init_from=str(tmp_path / "evil.pt")), sim16)
    assert not marker.exists()
    # mismatched architecture and garbage files
    k1 = tmp_path / "run" / "final.pt"
    with pytest.raises(QSMInputError, match="final.pt"):
        Trainer(
            _cfg(tmp_path / "m", stage="unrolled", init_from=str(k1), model={"width": 8}), sim16
        )
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(QSMInputError, match="junk.pt"):
        Trainer(_cfg(tmp_path / "j", stage="unrolled", init_from=str(tmp_path / "junk.pt")), sim16)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(QSMInputError, match="other.pt"):
        Trainer(_cfg(tmp_path / "o", stage="unrolled", init_from=str(tmp_path / "other.pt")), sim16)


def test_config_validation(tmp_path):
    with pytest.raises(QSMInputError, match="n_iterations"):
        TrainConfig(output_dir="x", stage="k1", n_iterations=4).validate()
    with pytest.raises(QSMInputError, match="loss"):
        TrainConfig(output_dir="x", loss="huber").validate()
    with pytest.raises(QSMInputError, match="output_dir"):
        TrainConfig().validate()
    bad = tmp_path / "bad.toml"
    bad.write_text('epochz = 3\n[[stages]]\nname = "a"\n')
    with pytest.raises(QSMInputError, match="epochz"):
        load_train_preset(bad)


def test_preset_table_keys_follow_the_dataset_constructors():
    from qsmflow.training.config import dataset_table_keys
    from qsmflow.training.synthetic import PhantomPatchDataset

    common = {"count", "val_count", "patch_size", "seed", "max_tilt_deg", "noise_std_ppm"}
    assert dataset_table_keys(SimulatedPatchDataset) == common | {
        "n_subjects",
        "n_orientations",
        "voxel_size",
        "phantom_shape",
        "texture",
        "min_mask_fraction",
    }
    assert dataset_table_keys(PhantomPatchDataset) == common | {
        "head_model_dir",
        "head_model_voxels",
        "n_builtin",
        "builtin_voxel",
        "head_model_weight",
        "contrast",
        "label_offset_ppm",
        "texture_std_ppm",
        "min_mask_fraction",
    }


def test_paper_preset():
    preset = load_train_preset(REPO / "workflows" / "train-isdu.toml")
    (n1, k1), (n4, k4) = preset.stages
    assert (n1, k1["stage"], k1["n_iterations"]) == ("k1", "k1", 1)
    assert (n4, k4["stage"], k4["n_iterations"], k4["shared_weights"]) == (
        "k4",
        "unrolled",
        4,
        False,
    )
    assert k4["init_from"] == "previous" and k4["patches_per_epoch"] == 4000
    assert k4["batch_size"] == 2 and k4["lr"] == 1e-4 and k4["loss"] == "combined"


# ------------------------------------------------------------------------------- DDP

DDP_SCRIPT = """
import os, sys
import torch
from qsmflow.training import ddp
from qsmflow.training.config import TrainConfig
from qsmflow.training.dataset import SimulatedPatchDataset
from qsmflow.training.trainer import Trainer, train

out = sys.argv[1]
ds = SimulatedPatchDataset(8, 16, seed=0, voxel_size=4.0, n_subjects=1, n_orientations=2,
                           texture=False)
common = dict(batch_size=1, model={"width": 4, "n_blocks": 1}, lr=1e-3, progress=False,
              device="cpu")
# two stages in one process group, as `qsmflow train` runs them under torchrun
k1 = train(TrainConfig(epochs=1, output_dir=out + "/k1", **common), ds, keep_process_group=True)
cfg = TrainConfig(stage="unrolled", n_iterations=2, init_from=str(k1), epochs=4,
                  output_dir=out + "/k2", **common)
t = Trainer(cfg, ds, keep_process_group=True)
assert t.dist.world_size == 2
t.fit()
sd = {k: v.clone() for k, v in t.model.state_dict().items()}
torch.save(sd, os.path.join(out, "rank%s.pt" % os.environ["RANK"]))
ddp.shutdown_all()
"""


def test_ddp_two_gloo_processes(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = torch.load(out / "rank0.pt", weights_only=True)
    b = torch.load(out / "rank1.pt", weights_only=True)
    for key in a:  # weights, lambdas and BatchNorm statistics agree on both ranks
        assert torch.equal(a[key], b[key]), key
    final = _state(out / "k2" / "final.pt")
    assert all(torch.equal(final[k], a[k]) for k in a)
    rows = read_log(out / "k2" / "train_log.csv")
    assert len(rows) == 4 and all(int(r["patches"]) == 8 for r in rows)  # 4 steps x 2 ranks x 1
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0]
    extra = read_checkpoint(out / "k2" / "checkpoints" / "epoch_0004.pt")["extra"]["training"]
    assert extra["world_size"] == 2 and len(extra["rng"]) == 2


# ------------------------------------------------------------------------------- CLI


def test_cli_tiny_preset(tmp_path, capsys):
    from qsmflow.cli.main import main
    from qsmflow.models.checkpoints import load_isdu

    preset = REPO / "workflows" / "train-isdu-tiny.toml"
    out = tmp_path / "tiny"
    rc = main(["train", "--config", str(preset), "--simulate", "8", "--output", str(out)])
    assert rc == 0
    assert "stage k2" in capsys.readouterr().out
    for stage, n_rows in (("k1", 2), ("k2", 1)):
        rows = read_log(out / stage / "train_log.csv")
        assert len(rows) == n_rows and all(np.isfinite(float(r["train_loss"])) for r in rows)
        assert float(rows[0]["val_loss"]) > 0
    model = load_isdu(out / "k2" / "final.pt")
    assert model.n_iterations == 2 and len(model.denoisers) == 2
    k1 = _state(out / "k1" / "final.pt")
    # resuming a finished run does nothing new and succeeds
    rc = main(
        ["train", "--config", str(preset), "--simulate", "8", "--output", str(out), "--resume"]
    )
    assert rc == 0
    assert all(torch.equal(k1[k], v) for k, v in _state(out / "k1" / "final.pt").items())
    # unusable input -> exit 2 with the problem named
    assert main(["train", "--config", str(tmp_path / "nope.toml"), "--output", str(out)]) == 2
    assert "nope.toml" in capsys.readouterr().err
    rc = main(
        ["train", "--config", str(preset), "--patches", str(tmp_path / "x"), "--output", str(out)]
    )
    assert rc == 2


# ------------------------------------------------------- mixed data, whole-model fine-tuning


def test_mixed_dataset_concatenates_and_forwards_epochs():
    from qsmflow.training.dataset import MixedDataset

    a = SimulatedPatchDataset(3, 16, seed=0, **SIM)
    b = SimulatedPatchDataset(2, 16, seed=5, **SIM)
    mix = MixedDataset([a, b])
    assert len(mix) == 5 and mix.patch_size == 16
    assert torch.equal(mix[1]["phi"], a[1]["phi"]) and torch.equal(mix[3]["phi"], b[0]["phi"])
    assert int(mix[4]["index"]) == 4
    assert mix.normalisation == a.normalisation
    info = mix.describe()
    assert info["kind"] == "MixedDataset" and [p["count"] for p in info["parts"]] == [3, 2]
    with pytest.raises(IndexError):
        mix[5]
    with pytest.raises(QSMInputError, match="patch sizes"):
        MixedDataset([a, SimulatedPatchDataset(1, 8, seed=0, **SIM)])


def test_init_from_a_k_iteration_checkpoint_fine_tunes_the_whole_model(tmp_path, sim16):
    """init_from = a qsmflow checkpoint with the stage's K: every denoiser keeps its own
    weights and lambda (K = 1 or other K: every denoiser starts from the first one)."""
    from qsmflow.models import ISDUQSMNet, save_isdu

    torch.manual_seed(3)
    src = ISDUQSMNet(2, False, **TINY_MODEL)
    for k, net in enumerate(src.denoisers):
        net.lambda_val.data.fill_(0.1 * (k + 1))
    save_isdu(tmp_path / "k2.pt", src)
    cfg = _cfg(
        tmp_path / "run", stage="unrolled", n_iterations=2, init_from=str(tmp_path / "k2.pt")
    )
    trainer = Trainer(cfg, sim16)
    got = trainer.model.state_dict()
    for key, value in src.state_dict().items():
        assert torch.equal(got[key], value), key
    assert not torch.equal(got["denoisers.0.gen.0.weight"], got["denoisers.1.gen.0.weight"])
    # another K: every denoiser is a copy of the first (the K = 1 -> K path)
    cfg3 = _cfg(
        tmp_path / "run3", stage="unrolled", n_iterations=3, init_from=str(tmp_path / "k2.pt")
    )
    got3 = Trainer(cfg3, sim16).model.state_dict()
    for k in range(3):
        assert torch.equal(got3[f"denoisers.{k}.gen.0.weight"], got["denoisers.0.gen.0.weight"])
