"""Process-level plumbing of the main job: accelerator creation, stop signals, clean exit.

Handles the known CPU traps (shared/notes/env_feasibility.md §2) in the product, not only in tests:
- accelerate finds no CUDA/XPU device and would leave the backend unset, so every process believes it is
  rank 0: we pass ``InitProcessGroupKwargs(backend="gloo")`` on CPU (``nccl`` on GPU);
- DeepSpeed's CPU accelerator JIT-compiles a shared-memory comm op (~40 s on 2 cores) that only inference
  all-reduce uses: we skip building it; the optimizer is a torch one, so no FusedAdam/CPUAdam JIT either;
- gloo's run-loop thread can abort the interpreter at exit if the process group dies while an engine still
  references it: ``shutdown`` drops every engine reference, collects, ends the accelerator (which destroys
  the group) and leaves through ``os._exit`` with the intended exit code;
- glibc malloc hands every block above its mmap threshold (32 MiB at most) back to the kernel when it is freed,
  so each step's large activations are page-faulted in again: ``keep_freed_host_memory`` (``run.
  keep_freed_host_memory``) keeps freed memory in the process for the next step.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.utils import parse_flag_from_env

from trainer import distributed as dist
from trainer.configs.load import from_root
from trainer.tracking import mlflow_environment

if TYPE_CHECKING:
    from trainer.configs.job import JobConfig



# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_host_memory() -> bool:
    """Make glibc malloc keep freed memory for the process's next allocations; False where there is no glibc.

    By default glibc serves a block above its mmap threshold (dynamic, at most 32 MiB) with a fresh ``mmap`` and
    unmaps it on free, and trims freed memory at the top of the heap: the step's tens-of-MB activations at the
    paper's shapes are then page-faulted in (zero-filled by the kernel) again at every step. ``M_MMAP_MAX = 0``
    serves them from the heap and ``M_TRIM_THRESHOLD`` at its maximum keeps the heap, so a step reuses the
    previous step's pages: steps faster on the CPU at a small cost in peak RSS (docs/performance.md,
    "Training step"). The heap can hold more than the live tensors: torch's ``posix_memalign`` asks for a freed
    block's size plus padding, so one 64 MiB tensor freed and allocated alone grows the heap by 6-8 blocks before
    its pages are reused (tests/unit/test_host_memory.py). It only changes allocations made after the call, in
    this process and its later forks (DataLoader workers); blocks already mapped are unmapped when freed.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def prepare_process_environment(cfg: JobConfig) -> None:
    """Environment defaults, MLflow's settings (``trainer.tracking.mlflow_environment``: read per request, so set
    here once), the host allocator (``run.keep_freed_host_memory``) and torch's deterministic kernels
    (``run.deterministic``); must run before deepspeed/accelerate create a process group and before any CUDA work."""
    if cfg.tracking.enabled:
        os.environ.update(mlflow_environment(cfg.tracking, cfg.run.dir))
    if cfg.run.keep_freed_host_memory:
        keep_freed_host_memory()
    if cfg.run.deterministic:
        # cuBLAS reads this when it creates its handle: a fixed workspace, so its reductions keep one order
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op without a deterministic kernel warns (naming itself) instead of failing the job
        torch.use_deterministic_algorithms(True, warn_only=True)
    on_gpu = torch.cuda.is_available()
    # accelerate launch with a DeepSpeed config says so in this variable; a plain-torch job never imports deepspeed
    # (about 2 s of start-up)
    if not on_gpu and parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        ds_comm = importlib.import_module("deepspeed.comm.torch")
        # `import deepspeed.comm.torch as m` would resolve to the torch package attribute; go through sys.modules.
        sys.modules[ds_comm.__name__].build_shm_op = lambda: None


def create_accelerator(cfg: JobConfig):
    """An ``Accelerator`` for job ``cfg``: the right process-group backend, the collective timeout
    (``run.collective_timeout_s``) and the DeepSpeed batch fields filled in.

    The DeepSpeed JSONs in launch/deepspeed/ leave batch sizes and clipping as "auto"; accelerate can only
    infer them from a prepared DataLoader, and our stream is an iterable we keep out of ``prepare``, so the
    job config is the single source of truth and is written into the plugin here.

    The timeout is the watchdog of a stalled or vanished rank: a collective that waits longer for a peer raises
    on the ranks that wait, the job fails loudly, and the last checkpoint stays as it was (a save is published
    only when every rank has written its part). accelerate hands it to DeepSpeed's ``init_distributed`` too.
    """
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    gradient_accumulation_steps, micro_batch_size = cfg.run.grad_accum, cfg.data.batch_size
    handlers = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # launched as several processes (accelerate/torchrun/srun)
        timeout = timedelta(seconds=cfg.run.collective_timeout_s)
        handlers.append(InitProcessGroupKwargs(backend="nccl" if torch.cuda.is_available() else "gloo",
                                               timeout=timeout))
        dist.set_new_group_timeout(timeout)   # DeepSpeed's own groups too, not only the world group
    # the accelerate config's ``deepspeed_config_file`` (launch/accelerate/*.yaml) is a path of a config file: read
    # from the repository root, as the job config's are (trainer/configs/load.py, "Relative paths"), so a job
    # launched from another directory finds launch/deepspeed/*.json
    ds_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if ds_file and not Path(ds_file).exists():
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = from_root(ds_file)
    accelerator = Accelerator(gradient_accumulation_steps=gradient_accumulation_steps, kwargs_handlers=handlers)
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = micro_batch_size
        ds["gradient_accumulation_steps"] = gradient_accumulation_steps
        ds["train_batch_size"] = micro_batch_size * gradient_accumulation_steps * accelerator.num_processes
        ds["gradient_clipping"] = cfg.optim.grad_clip
        if ds.get("bf16", {}).get("enabled") == "auto":   # launch/deepspeed/*.json: bf16 on GPU, fp32 on CPU
            ds["bf16"]["enabled"] = torch.cuda.is_available()
    return accelerator


def training_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """The precision of a single-process training step on ``device`` (the benchmarks' steps): bf16 autocast on CUDA,
    which the DeepSpeed JSONs' ``bf16: auto`` also picks there (``create_accelerator``), fp32 on the CPU. The quantizer
    computes its distances and statistics in fp32 under it (trainer/models/quantizer.py)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device | str) -> None:
    """Wait for ``device``'s queued kernels (a timer around GPU work reads the clock after them); no-op on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StopRequest:
    """Set by SIGUSR1/SIGTERM; all ranks agree on it (any rank asked -> everyone stops at the same step)."""

    requested: bool = False
    signal_name: str = ""

    def install(self) -> "StopRequest":
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def agreed_or_file(self, stop_file: Path, device: torch.device | str = "cpu") -> bool:
        """Collective (every rank calls it at the same step): a signal or ``stop_file`` on any rank.

        The file is how a batch script stops a job started through launchers that do not forward
        signals to their workers (``accelerate launch``/torchrun handle only INT/TERM/HUP/QUIT themselves).
        """
        return dist.any_rank(self.requested or stop_file.exists(), device)

    def reason(self, stop_file: Path) -> str:
        """What asked this rank to stop, for the log: its own signal, the file, or another rank."""
        if self.signal_name:
            return self.signal_name
        if stop_file.exists():
            return stop_file.name
        return "a signal or stop file seen by another rank"


def shutdown(accelerator, exit_code: int) -> None:
    """Release engines before the process group, then leave without interpreter finalisation."""
    sys.stdout.flush()
    sys.stderr.flush()
    if accelerator is not None:
        accelerator.wait_for_everyone()
        accelerator.free_memory()  # drops accelerate's references to models/optimizers/DeepSpeed engines
        gc.collect()
        accelerator.end_training()  # ends trackers and destroys the process group
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
