"""Shared helpers for multi-process (gloo) tests.

Usage from any test module (``tests/support/`` is on ``pythonpath``, see pyproject)::

    from dist_utils import run_ranks, init_gloo

    def _worker(rank, world, port, tmp_path):      # module-level; runs in a forked child
        init_gloo(rank, world, port)                # env + torch.set_num_threads(1) + gloo group
        ...                                         # plain asserts; a failure makes the exit code non-zero
        # no need to destroy the group or exit: run_ranks' wrapper ends the child with os._exit

    @pytest.mark.slow
    def test_something(tmp_path):
        run_ranks(_worker, 2, tmp_path, timeout=60)

How it works:
- children are started with ``multiprocessing.get_context("fork")``: fastest start, and the parent
  never initialises a process group, so forking is safe;
- each child gets MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE and
  OMP_NUM_THREADS=1 in its environment before ``target`` runs, and ``torch.set_num_threads(1)``;
- the child ends with ``os._exit(code)``: 0 if ``target`` returned, 1 if it raised (the traceback is
  printed to stderr first). ``os._exit`` skips interpreter finalisation, which is where torch 2.13 + gloo
  can abort with SIGABRT (shared/notes/env_feasibility.md §2d);
- ``run_ranks`` joins every child with one overall deadline, kills stragglers (a hung collective
  shows up as exit code -9) and asserts that every exit code is 0.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from trainer.programs.harness import free_port  # the one copy; the other test helpers import it from here


def set_dist_env(rank: int, world: int, port: int) -> None:
    """The environment torchrun would give rank ``rank`` of ``world`` on one node."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )


def init_gloo(rank: int, world: int, port: int) -> None:
    """Initialise the default gloo process group from the environment ``run_ranks`` set."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)


def _child(target: Callable[..., Any], rank: int, world: int, port: int, args: tuple) -> None:
    code = 1
    try:
        set_dist_env(rank, world, port)
        import torch

        torch.set_num_threads(1)
        target(rank, world, port, *args)
        code = 0
    except BaseException:  # noqa: BLE001 - any failure must become a non-zero exit code
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_ranks(target: Callable[..., Any], world: int, *args: Any, timeout: float = 120.0) -> None:
    """Fork ``world`` children running ``target(rank, world, port, *args)`` and assert all exit 0.

    ``target`` is called with the gloo environment already set (it still has to create the process
    group, e.g. with ``init_gloo``, so tests of the non-initialised path are possible). ``timeout`` is
    the deadline for all children together, in seconds.
    """
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_child, args=(target, r, world, port, args), daemon=False) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    codes = [p.exitcode for p in procs]
    assert all(c == 0 for c in codes), f"rank exit codes {codes} (0 = ok, 1 = raised, -9 = killed at timeout)"


def assert_two_ranks_match_global_batch(r0: dict, r1: dict, ref: dict,
                                        global_terms: tuple[str, ...] = ()) -> None:
    """Compare a 2-rank run (``r0``, ``r1``) with one process on the concatenated batch (``ref``).

    Each is ``{"quantizer"|"club"|"model": state dict, "per_step": [metrics dict, ...]}``. Replicated state
    must be bit-identical across ranks and equal to the single process up to the reordering of its sums
    (``numerics.COMPOUNDED_ULPS``: the ranks add two half-batch sums, one process the whole; integers exactly);
    codebook/* statistics come from the reduced counts (bit-identical across ranks, ≈ global); ``global_terms``
    (in-batch terms over global negatives) are computed over the whole global batch on each rank, so they are
    bit-identical across ranks and ≈ the single process; the other (per-sample) loss terms of the two half
    batches average to the global-batch value.
    """
    import torch
    from numerics import COMPOUNDED_ULPS, assert_reordered_close

    for part in ("quantizer", "club", "model"):
        assert r0[part].keys() == ref[part].keys()
        for key, value in r0[part].items():
            assert torch.equal(value, r1[part][key]), f"{part}.{key} differs between ranks"
            if value.is_floating_point():
                assert_reordered_close(value, ref[part][key], ulps=COMPOUNDED_ULPS, what=f"{part}.{key}")
            else:
                assert torch.equal(value, ref[part][key]), f"{part}.{key}: 2 ranks vs 1 process"
    for step, (s0, s1, sref) in enumerate(zip(r0["per_step"], r1["per_step"], ref["per_step"])):
        for key, value in sref.items():
            if key in global_terms or key.startswith("codebook/"):   # computed on the reduced/global batch
                assert torch.equal(s0[key], s1[key]), (step, key, s0[key], s1[key])
                ours = s0[key]
            else:                                                      # the mean over each rank's half batch
                ours = (s0[key] + s1[key]) / 2
            assert_reordered_close(ours, value, ulps=COMPOUNDED_ULPS, what=f"step {step} {key}")
