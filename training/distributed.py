"""Many processes under ``torchrun``: PyTorch's own ``torch.distributed`` (NCCL on GPUs, gloo on CPU).

``torchrun --nproc_per_node N -m training …`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_distributed` reads them, picks the
device (``cuda:<LOCAL_RANK>`` when CUDA is used) and the backend, and joins the process group;
:func:`teardown` leaves it. Without those variables (or with ``WORLD_SIZE`` 1) nothing is initialised
and the run is a single process. The trainer (:mod:`training.loop`) wraps its loss in
``DistributedDataParallel``; the helpers here are the few collective calls it needs besides that.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from ._pack import RefAny3DError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None      # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    def get(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise RefAny3DError(f"environment variable {name}={value!r} is not an integer") from None
    world = get("WORLD_SIZE", 1)
    rank, local = get("RANK", 0), get("LOCAL_RANK", get("RANK", 0))
    if world < 1 or not 0 <= rank < world:
        raise RefAny3DError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process of a torchrun job")
    return rank, world, local


def pick_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """``None``/"auto": ``cuda:<local_rank>`` when CUDA is available, else the CPU."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RefAny3DError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise RefAny3DError(f"process {local_rank} on this node needs GPU {index}, but only "
                                f"{torch.cuda.device_count()} are visible; start at most that many processes per node")
        device = torch.device("cuda", index)
    return device


def init_distributed(device: str | torch.device | None = None, backend: str | None = None,
                     timeout_s: float = 1800.0) -> DistInfo:
    """Joins torchrun's process group when ``WORLD_SIZE`` > 1 (backend: NCCL for CUDA, gloo for the
    CPU, unless given) and sets this process's CUDA device; returns where this process stands."""
    rank, world, local = env_ranks()
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world == 1:
        return DistInfo(0, 1, 0, dev, None)
    import torch.distributed as dist
    if not dist.is_available():
        raise RefAny3DError("this PyTorch has no torch.distributed; multi-process training needs it")
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise RefAny3DError(f"WORLD_SIZE={world} but {name} is not set: start multi-process training with "
                                    "torchrun (python -m torch.distributed.run --nproc_per_node N -m training ...)")
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        try:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s),
                                    **kwargs)
        except TypeError:  # PyTorch without device_id
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, dev, dist.get_backend())


def teardown() -> None:
    """Leaves the process group (no-op in a single process)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active(world_size: int) -> bool:
    import torch.distributed as dist
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def barrier(world_size: int) -> None:
    if active(world_size):
        import torch.distributed as dist
        dist.barrier()


def mean_over_ranks(value: float, world_size: int, device: torch.device) -> float:
    """The mean of a scalar over all processes (for reporting only)."""
    if not active(world_size):
        return float(value)
    import torch.distributed as dist
    t = torch.tensor([float(value)], dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / world_size


def any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    """True on every process when ``flag`` is True on any (so all stop at the same step)."""
    if not active(world_size):
        return bool(flag)
    import torch.distributed as dist
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
