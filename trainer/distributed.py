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
from datetime import timedelta
from types import ModuleType

import torch
import torch.distributed as dist


def set_new_group_timeout(timeout: timedelta) -> None:
    """Give every process group created from now on the collective timeout ``timeout`` (call before the engine
    builds its groups).

    ``init_process_group(timeout=...)`` sets it for the world group only. A ``new_group`` without a timeout of its
    own (DeepSpeed's clone of the world group, on which ZeRO reduces gradients and gathers parameters) gets the
    backend's default, 30 min for gloo and 10 for nccl, so a rank stalled inside one of DeepSpeed's collectives
    hung the job instead of failing it (tests/system/test_main_job.py, the stalled-rank test, failed one CI run
    that way). torch has no public setter: the default is the module global that ``new_group`` reads when called.
    """
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = timeout
    distributed_c10d.default_pg_nccl_timeout = timeout


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


class _GatherRows(torch.autograd.Function):
    """Forward: every input ``(b ...)`` concatenated over ranks along dim 0 (rank order), all inputs packed into
    one all_gather. Backward: each input gets ``world ×`` the gradient of its own rows.

    Why ``world ×``: every rank computes the same global-batch loss L from the gathered tensors, but holds the
    gradient only through its own rows, ∂L/∂(rows of r). The engine then averages gradients over ranks, which
    would give (1/W) Σ_r ∂L/∂(rows of r) = ∇L / W; scaling by W makes the average exactly ∇L, the gradient one
    process holding the global batch gets (ALGORITHMS.md §1, "Distributed semantics": N ranks give the result
    of one process on the global batch).
    """

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        world, rows = dist.get_world_size(), tensors[0].shape[0]
        ctx.world, ctx.rank, ctx.rows = world, dist.get_rank(), rows
        widths = [t[0].numel() for t in tensors]
        # one fp32 buffer (bf16 activations round-trip exactly), so one collective however many tensors
        flat = torch.cat([t.detach().reshape(rows, -1).float() for t in tensors], dim=1).contiguous()
        parts = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(parts, flat)
        columns = torch.cat(parts, dim=0).split(widths, dim=1)   # (world·rows, width) each
        return tuple(c.reshape(world * rows, *t.shape[1:]).to(t.dtype) for c, t in zip(columns, tensors))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        own = slice(ctx.rank * ctx.rows, (ctx.rank + 1) * ctx.rows)
        return tuple(g[own] * ctx.world if needed else None for g, needed in zip(grads, ctx.needs_input_grad))


def gather_rows(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The global batch of each ``(b ...)`` tensor: rows of every rank concatenated in rank order, gradients
    flowing back into this rank's rows only (scaled for the engine's average, see ``_GatherRows``). Every rank
    passes the same shapes. Identity in one process. Used for contrastive negatives (``model.negatives=global``)."""
    if not tensors or world_size() == 1:
        return list(tensors)
    return list(_GatherRows.apply(*tensors))


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
