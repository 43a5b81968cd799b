"""Every ``torch.distributed`` call of the project lives here.

Model and quantizer code never imports ``torch.distributed``; they receive collectives as plain
callables (``all_reduce_fn``, ``all_gather_fn``) whose defaults below are the identity when no process
group is initialised, so one code path serves 1 process and N processes (vector-quantize-pytorch style).

Rules:
- collectives are SUM reductions on fp32/int64 CPU or CUDA tensors; callers pack what they need into
  one flat tensor so a training step issues as few collectives as possible;
- nothing here broadcasts model state: replicated state stays identical because every rank applies the
  identical update to identical reduced statistics.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place SUM over all ranks (identity in a single process). Returns ``tensor``."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, in rank order (identity in one process).

    Every rank must pass the same shape. The result is what one process would see if it held the
    global batch (rank 0's rows first), which is what makes single-process references comparable.
    """
    if not (is_distributed() and dist.get_world_size() > 1):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def average_gradients_(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` of ``params`` across ranks with ONE all_reduce on a flat buffer.

    Used for modules optimised outside the DeepSpeed engine (the CLUB estimators), so their replicas
    take identical optimiser steps. Parameters without a gradient contribute zeros (and get zeros), so
    every rank issues the same collective with the same size.
    """
    params = [p for p in params if p.requires_grad]
    if not params or world_size() == 1:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    all_reduce_sum_(flat).div_(world_size())
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if ``flag`` is true on any rank (used for the agreed stop flag)."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    return bool(all_reduce_sum_(t).item() > 0)


def barrier() -> None:
    if is_distributed() and dist.get_world_size() > 1:
        dist.barrier()


def collective_namespaces() -> tuple[ModuleType, ModuleType]:
    """The modules through which code reaches the collectives (``torch.distributed`` and its
    ``distributed_c10d``): what an instrumentation that wraps every collective of a process patches (the
    scaling benchmark's recorder), so that it needs no ``torch.distributed`` import of its own."""
    import torch.distributed.distributed_c10d as c10d

    return dist, c10d
