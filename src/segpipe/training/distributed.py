"""Data-parallel training under ``torchrun``: where this process stands, the process group, the wrapped model.

A plain process (no launcher, or ``torchrun --nproc-per-node 1``) is rank 0 of 1: nothing is initialised and
every helper here is a no-op, so single-process training behaves exactly as without this module. Under
``torchrun`` each process trains a replica (``DistributedDataParallel``) on its shard of every batch; the
main rank (rank 0) alone writes files and talks to the tracker.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

Backend = Literal["nccl", "gloo"]
T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a training job: rank ``rank`` of ``world_size`` (a plain process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    """The rank among this node's processes: the CUDA device index it trains on."""
    backend: Backend | None = None
    """``nccl`` (CUDA) or ``gloo`` (CPU) for a process group; None in a plain process."""

    @property
    def is_main(self) -> bool:
        """The rank that writes checkpoints, states and metrics files and logs to the tracker."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(
        cls, device: torch.device, environ: Mapping[str, str] = os.environ
    ) -> DistributedContext:
        """The context ``torchrun`` describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (absent: a plain
        process), with the backend for ``device``'s type."""
        world_size = int(environ.get("WORLD_SIZE", 1))
        if world_size == 1:
            return cls()
        return cls(
            int(environ["RANK"]),
            world_size,
            int(environ.get("LOCAL_RANK", 0)),
            "nccl" if device.type == "cuda" else "gloo",
        )

    def local_device(self, device: torch.device) -> torch.device:
        """The device this process trains on: ``cuda:<local_rank>`` for CUDA under torchrun, else
        ``device``."""
        if self.is_distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


SINGLE_PROCESS = DistributedContext()


def init(device: torch.device) -> DistributedContext:
    """Join the process group torchrun's environment describes (``MASTER_ADDR``/``MASTER_PORT`` rendezvous);
    in a plain process, initialise nothing."""
    context = DistributedContext.from_environment(device)
    if context.is_distributed:
        if device.type == "cuda":
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(context.backend, rank=context.rank, world_size=context.world_size)
    return context


def shutdown(context: DistributedContext) -> None:
    """Leave the process group (nothing to do in a plain process)."""
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[DistributedContext]:
    """:func:`init` on entry, :func:`shutdown` on exit, also when training fails."""
    context = init(device)
    try:
        yield context
    finally:
        shutdown(context)


def wrap_model(
    model: nn.Module, context: DistributedContext, sync_batchnorm: bool = False, channels_last: bool = False
) -> nn.Module:
    """``model`` (already on its device) as a ``DistributedDataParallel`` replica, its BatchNorm layers as
    ``SyncBatchNorm`` (statistics over the global batch) if asked; in a plain process, the model itself.

    ``channels_last`` (as ``TrainerSettings.channels_last``) converts the weights before wrapping: DDP lays
    out its gradient buckets like the weights at construction, and a later change of layout costs a copy per
    step.
    """
    if not context.is_distributed:
        return model
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    if sync_batchnorm:
        if device.type != "cuda":
            raise ValueError(
                "train.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm does not "
                "train on the CPU); set train.sync_batchnorm: false"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a ``DistributedDataParallel`` wrapper (what checkpoints and validation use)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def barrier(context: DistributedContext) -> None:
    """Wait until every rank gets here."""
    if context.is_distributed:
        dist.barrier()


def broadcast_from_main(value: T, context: DistributedContext) -> T:
    """The main rank's ``value`` on every rank (picklable; e.g. the training state to resume from, which only
    the main rank's disk may hold)."""
    if not context.is_distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def broadcast_buffers(model: nn.Module, context: DistributedContext) -> None:
    """Copy the main rank's buffers (e.g. BatchNorm running statistics, which each rank updates from its own
    shard) to every rank, so all ranks hold the model the main rank saves."""
    if context.is_distributed:
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


def mean_across_ranks(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The mean of ``value`` over all ranks (``value`` itself in a plain process)."""
    if not context.is_distributed:
        return value
    total = value.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / context.world_size


def min_across_ranks(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The smallest ``value`` over all ranks (``value`` itself in a plain process)."""
    if not context.is_distributed:
        return value
    smallest = value.clone()
    dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
    return smallest


def under_torchrun(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a launcher started this process as one rank of a job (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in environ and "WORLD_SIZE" in environ


def needs_torchrun(nproc: int, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a stage asked to train on ``nproc`` processes per node must relaunch itself under torchrun."""
    return nproc > 1 and not under_torchrun(environ)


def torchrun_command(
    script: str | Path,
    args: Sequence[str],
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
) -> list[str]:
    """``python -m torch.distributed.run`` running ``script args`` on ``nproc`` processes: on this node alone
    (``--standalone``, a free local port), or as node ``node_rank`` of ``nnodes`` meeting at ``rdzv_endpoint``
    (``host:port`` of node 0)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and rdzv_endpoint is None:
        command.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise ValueError(f"training on {nnodes} nodes needs a rendezvous endpoint (host:port of node 0)")
        command += ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--rdzv-endpoint", rdzv_endpoint]
    return [*command, str(script), *args]


def exec_torchrun(command: Sequence[str]) -> NoReturn:
    """Replace this process with ``command`` (from :func:`torchrun_command`): signals reach torchrun, which
    forwards them to the ranks, and its exit status is this process's."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], list(command))
