"""DistributedDataParallel helpers for ``torchrun --nproc_per_node N -m sparseyolo train ...``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sparseyolo.utils.errors import SparseYoloError


@dataclass
class DistInfo:
    rank: int = -1  # -1: not distributed
    local_rank: int = -1
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.rank >= 0

    @property
    def main(self) -> bool:
        """Only the main process writes files, logs and evaluates."""
        return self.rank in (-1, 0)


def dist_info() -> DistInfo:
    """Read the ``torchrun`` environment (RANK, LOCAL_RANK, WORLD_SIZE)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    return DistInfo(
        int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), int(os.environ["WORLD_SIZE"])
    )


def select_device(spec: str | None, info: DistInfo) -> torch.device:
    """``cpu``, ``0``, ``0,1`` or '' (first GPU if any). Under DDP each rank takes its LOCAL_RANK GPU."""
    spec = (spec or "").strip().lower().replace("cuda:", "")
    if spec == "cpu" or not torch.cuda.is_available():
        if spec not in ("", "cpu"):
            raise SparseYoloError(f"--device {spec} requested but CUDA is not available; use --device cpu")
        return torch.device("cpu")
    ids = [int(x) for x in spec.split(",") if x.strip()] if spec else list(range(torch.cuda.device_count()))
    bad = [i for i in ids if i >= torch.cuda.device_count()]
    if bad:
        raise SparseYoloError(f"--device {spec}: no GPU {bad[0]} (found {torch.cuda.device_count()})")
    if info.distributed:
        if len(ids) < info.world_size:
            raise SparseYoloError(f"--device {spec} lists {len(ids)} GPUs for {info.world_size} processes")
        dev = torch.device("cuda", ids[info.local_rank])
        torch.cuda.set_device(dev)
        return dev
    if len(ids) > 1:
        raise SparseYoloError(
            f"--device {spec}: multi-GPU training runs one process per GPU: "
            f"torchrun --nproc_per_node {len(ids)} -m sparseyolo train ..."
        )
    return torch.device("cuda", ids[0])


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Start the process group: NCCL on CUDA, Gloo on CPU."""
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (one tiny all-reduce under DDP)."""
    if not (info.distributed and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, info: DistInfo):
    """Send a small object (str, number, None) from rank 0 to all ranks."""
    if not (info.distributed and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel (one device per process on CUDA, none on CPU)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def broadcast_state(model: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's parameters and buffers.

    DDP does this when it wraps the model, but a recipe computes its first masks before that, from
    each rank's own initial weights (a scratch run seeds each rank differently): the masks would differ
    between ranks for the whole run.
    """
    if not (info.distributed and dist.is_initialized()):
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, ...) to every rank.

    DDP keeps parameters identical, but each rank updates its BN statistics from its own last
    batch; syncing at epoch end makes every rank hold the exact model that rank 0 saves.
    """
    if not (info.distributed and dist.is_initialized()):
        return
    for b in model.buffers():
        dist.broadcast(b.data, src=0)
