"""Distributed data parallel helpers and the random-subset (RS) sampler.

A run launched by ``torchrun`` (environment ``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) joins a process group -- NCCL when training on CUDA, gloo on
CPU -- unless the caller has already initialised one (then it is used and left alone).

Random subset sampling (isdu_qsmnet_spec.md section 2, "RS")
--------------------------------------------------------------
The reference shuffles all N patches every epoch and stops after ``break_amount`` batches, i.e.
each epoch trains on a fresh random subset. :class:`RandomSubsetSampler` does the same,
deterministically: the permutation of epoch ``e`` is ``torch.randperm(N)`` drawn from a
generator seeded with a hash of (``seed``, ``e``), its first ``subset`` entries (all N when
``subset`` is None) are cut to a whole number of *global* batches (``batch_size *
world_size``; the remainder is dropped, like ``drop_last``), and global batch ``j`` is split
into ``world_size`` consecutive slices of ``batch_size`` -- rank ``r`` trains on slice ``r``.
So the union over ranks of one step's batches is exactly the batch a single process with
``batch_size * world_size`` would see, and the sampler's whole state is (seed, epoch): a resumed
run needs no stored generator state to continue the same sequence.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..errors import QSMInputError

log = logging.getLogger(__name__)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed hashed from integers and short strings (stable across runs/platforms)."""
    words: list[int] = []
    for p in parts:
        if isinstance(p, str):
            words.extend(p.encode())
        else:
            words.append(int(p) & 0xFFFFFFFF)
            words.append((int(p) >> 32) & 0xFFFFFFFF)
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


class RandomSubsetSampler(Sampler[int]):
    """Indices of this rank for one epoch of random-subset training (see the module docstring).

    Parameters
    ----------
    n : dataset length.
    batch_size : per-rank batch size.
    subset : patches per epoch (None or 0: all of them).
    seed : base seed; epoch ``e`` uses a permutation derived from (seed, e).
    rank, world_size : this process and the number of processes.
    shuffle : False gives the patches in order (a fixed subset: the first ``subset``).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        subset: int | None = None,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if n < 1:
            raise QSMInputError("the dataset is empty")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise QSMInputError(
                f"invalid batch_size={batch_size}, rank={rank}, world_size={world_size}"
            )
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.subset = int(subset) if subset else None
        if self.subset is not None and self.subset < 0:
            raise QSMInputError(f"patches per epoch must be >= 0, got {subset}")
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        m = self.n if self.subset is None else min(self.subset, self.n)
        self.global_batch = self.batch_size * self.world_size
        self.n_batches = m // self.global_batch
        if self.n_batches == 0:
            raise QSMInputError(
                f"{m} patch(es) per epoch is less than one global batch of {self.global_batch} "
                f"(batch_size {self.batch_size} x {self.world_size} process(es))"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """All ranks' indices of ``epoch`` in global training order, (n_batches * global_batch,)."""
        epoch = self.epoch if epoch is None else int(epoch)
        used = self.n_batches * self.global_batch
        if not self.shuffle:
            return np.arange(used, dtype=np.int64)
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, "rs-sampler", epoch))
        return torch.randperm(self.n, generator=g)[:used].numpy().astype(np.int64)

    def rank_indices(self, epoch: int | None = None, rank: int | None = None) -> np.ndarray:
        rank = self.rank if rank is None else int(rank)
        idx = self.epoch_indices(epoch).reshape(self.n_batches, self.world_size, self.batch_size)
        return idx[:, rank].reshape(-1)

    def __iter__(self):
        return iter(self.rank_indices().tolist())

    def __len__(self) -> int:
        return self.n_batches * self.batch_size

    def state_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "batch_size": self.batch_size,
            "subset": self.subset,
            "seed": self.seed,
            "epoch": self.epoch,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
        }


@dataclass
class DistInfo:
    """Where this process stands in a (possibly trivial) process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  #: True when :func:`init_distributed` created the group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise QSMInputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from exc


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> DistInfo:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1 (nccl on CUDA, else gloo)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
            owns_group=False,
        )
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise QSMInputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    log.info("joined process group: rank %d of %d (%s)", rank, world, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local, owns_group=True)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shutdown_all() -> None:
    """Destroy the default process group if one exists (end of a multi-stage run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(info: DistInfo, values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (float64)."""
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` without a process group)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any, src: int = 0) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(info: DistInfo, module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer (BatchNorm running statistics, ...) of rank ``src`` to all ranks."""
    if not info.enabled:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)
