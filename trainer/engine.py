"""The trainable side of a run behind one interface: a DeepSpeed engine (via accelerate) or plain torch.

``TrainEngine`` wraps what ``accelerator.prepare`` returned for (model, optimizer) plus our own LR scheduler
and gives the loop four things: ``backward_step(loss)`` (one micro-batch; True when the optimizer stepped),
``save(dir)``/``load(dir)`` of the engine's own state, and ``model_state_dict()``, a consolidated fp32
state dict of the model (parameters and buffers) that rank 0 writes into every checkpoint as ``model.pt``
so evaluation and the next continual phase can start from it without DeepSpeed or the same world size.

For a resume with another world size or engine (an elastic resume) there is ``optimizer_state()``, the
optimizer state by parameter name (fp32 master weights, AdamW moments, step; rank 0 writes it into every
checkpoint as ``optimizer.pt``), and ``load_resharded``, which puts it and model.pt's buffers into this
engine's partitioning. Under DeepSpeed, each rank's fragment of a parameter's fp32 state is read and written
where ZeRO keeps it (its tensor-fragment mappings, ``deepspeed.utils.safe_*``), and the fragments are gathered
with ``trainer.distributed``'s collectives on the world group, which ``run.collective_timeout_s`` bounds.

Loading: the plain-torch state is read with ``torch.load(weights_only=True)``. DeepSpeed's own
``load_checkpoint`` unpickles its optimizer files (it passes ``weights_only=False`` internally); those
files are written by this job, never taken from data, and that is the one documented exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer import distributed

ENGINE_DIR = "engine"
ENGINE_TAG = "state"
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")   # AdamW's per-parameter state besides its step (amsgrad off, as built)


class TrainEngine:
    def __init__(self, accelerator, model: nn.Module, optimizer, scheduler, module: nn.Module,
                 gradient_clipping: float):
        """``model``/``optimizer`` as returned by ``accelerator.prepare``; ``module`` the bare model.

        The scheduler is NOT passed through ``prepare``: accelerate would wrap a LambdaLR (not a DeepSpeed
        schedule) in an AcceleratedScheduler that steps it once per *process* per call and that no engine
        checkpoint contains. Here it steps once per optimizer step; the loop saves its state with each rank's.

        ``gradient_clipping`` (max global grad norm, 0 = off) is applied here for plain torch; DeepSpeed
        applies the same value from its config (``runtime.create_accelerator`` writes it there).
        """
        self.accelerator = accelerator
        self.gradient_clipping = gradient_clipping
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.module = module
        self.deepspeed = accelerator.state.deepspeed_plugin is not None
        self.zero_stage = accelerator.state.deepspeed_plugin.zero_stage if self.deepspeed else 0
        if self.deepspeed and self.zero_stage == 0:
            raise ValueError("DeepSpeed without ZeRO (zero_optimization.stage 0) is not supported: every checkpoint "
                             "saves the optimizer state by parameter name through ZeRO's partitions; use ZeRO-1/2/3 "
                             "(launch/deepspeed/*.json) or plain torch (one process, python trainer/main.py)")

    def backward_step(self, loss: torch.Tensor) -> bool:
        """Backward of one micro-batch, then the optimizer and LR-scheduler steps at the accumulation boundary.

        Under DeepSpeed ``accelerator.backward`` runs ``engine.backward`` and, at the boundary, ``engine.step``
        (clipping, optimizer, zero_grad); the wrapped optimizer's step/zero_grad below are then no-ops.
        """
        boundary = self.accelerator.sync_gradients
        self.accelerator.backward(loss)
        if boundary:
            if not self.deepspeed and self.gradient_clipping > 0:
                self.accelerator.clip_grad_norm_(self.module.parameters(), self.gradient_clipping)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return boundary

    def optimizer_name(self) -> str:
        """What steps the parameters, for the log: under DeepSpeed its ZeRO optimizer over the torch optimizer the loop
        built (DeepSpeed keeps a client optimizer instead of its own FusedAdam: docs/performance.md, "GPU check")."""
        inner = self.model.optimizer.optimizer if self.deepspeed else self.optimizer.optimizer
        name = f"{type(inner).__name__} (fused={bool(inner.defaults.get('fused'))})"
        return f"{type(self.model.optimizer).__name__} over {name}" if self.deepspeed else name

    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    # ------------------------------------------------------------------ state
    def save(self, ckpt_dir: Path) -> None:
        """Collective. Engine state (model, optimizer) under ``ckpt_dir/engine``."""
        target = Path(ckpt_dir) / ENGINE_DIR
        if self.deepspeed:
            self.model.save_checkpoint(str(target), tag=ENGINE_TAG, save_latest=False)
        elif self.accelerator.is_main_process:
            target.mkdir(parents=True, exist_ok=True)
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()},
                       target / "state.pt")

    def load(self, ckpt_dir: Path) -> None:
        source = Path(ckpt_dir) / ENGINE_DIR
        if self.deepspeed:
            path, _ = self.model.load_checkpoint(str(source), tag=ENGINE_TAG, load_module_strict=True)
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed engine state under {source}")
        else:
            state = torch.load(source / "state.pt", map_location="cpu", weights_only=True)
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])

    def model_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Collective. Full fp32 model state (parameters gathered under ZeRO-3); returned on rank 0 only."""
        with self._gathered(modifier_rank=None):
            if not self.accelerator.is_main_process:
                return None
            return {k: _cpu_fp32(v) if v.is_floating_point() else v.detach().cpu()
                    for k, v in self.module.state_dict().items()}

    def _gathered(self, modifier_rank: int | None) -> contextlib.AbstractContextManager:
        """Under ZeRO-3, every parameter whole for the block (written back from ``modifier_rank`` after it, if set)."""
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=modifier_rank)

    def _trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((name, p) for name, p in self.module.named_parameters() if p.requires_grad)

    # ------------------------------------------------------------------ world-size-independent state
    def optimizer_state(self) -> dict[str, Any] | None:
        """Collective. The optimizer state by parameter name, independent of the world size and of ZeRO's
        partitions; returned on rank 0 only (fp32, on the CPU)::

            {"params": {name: {"fp32": master weights, "exp_avg": ..., "exp_avg_sq": ..., "step": int}},
             "lr": [each param group's current learning rate]}

        A parameter that never had a gradient (plain torch keeps no state for it) has zero moments and step 0,
        which is what AdamW starts from. Under DeepSpeed each tensor is gathered from every rank's partition.
        """
        params = {}
        if self.deepspeed:
            step = self._zero_step()
            for name, p in self._trainable():
                params[name] = {"fp32": _cpu_fp32(self._zero_gathered(p, None)), "step": step} | {
                    key: _cpu_fp32(self._zero_gathered(p, key)) for key in ADAM_MOMENTS}
        else:
            for name, p in self._trainable():
                state = self.optimizer.state.get(p) or {"step": 0} | {key: torch.zeros_like(p) for key in ADAM_MOMENTS}
                params[name] = {"fp32": _cpu_fp32(p), "step": int(state["step"])} | {
                    key: _cpu_fp32(state[key]) for key in ADAM_MOMENTS}
        if not self.accelerator.is_main_process:
            return None
        return {"params": params, "lr": [group["lr"] for group in self.optimizer.param_groups]}

    def load_resharded(self, model_state: Mapping[str, torch.Tensor], optimizer_state: Mapping[str, Any]) -> None:
        """Collective. Load a checkpoint written with another world size or engine: the trainable parameters (their
        fp32 masters) and the AdamW state from ``optimizer_state`` (``optimizer_state()``'s format), every other
        parameter and the buffers from ``model_state`` (model.pt), each put into this engine's partitioning."""
        saved = optimizer_state["params"]
        trainable = dict(self._trainable())
        if set(saved) != set(trainable):
            missing, unexpected = sorted(set(trainable) - set(saved)), sorted(set(saved) - set(trainable))
            raise KeyError(f"the optimizer state covers other parameters: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        groups = self.optimizer.param_groups
        if len(optimizer_state["lr"]) != len(groups):
            raise ValueError(f"the optimizer state has {len(optimizer_state['lr'])} param groups, this optimizer "
                             f"{len(groups)}")
        names = [name for name, _ in self.module.named_parameters()]
        missing, unexpected = self.module.load_state_dict({k: v for k, v in model_state.items() if k not in names},
                                                          strict=False)
        if unexpected or set(missing) != set(names):
            raise KeyError(f"model state does not fit the model: missing {sorted(set(missing) - set(names))[:5]}, "
                           f"unexpected {unexpected[:5]}")
        with torch.no_grad(), self._gathered(modifier_rank=0):   # the full (ZeRO-3: gathered) module parameters
            for name, p in self.module.named_parameters():
                p.copy_(saved[name]["fp32"] if name in saved else model_state[name])
        if self.deepspeed:
            self._load_zero_optimizer(trainable, saved)
        else:
            for name, p in trainable.items():
                self.optimizer.state[p] = {"step": torch.tensor(float(saved[name]["step"]))} | {
                    key: saved[name][key].to(p.device) for key in ADAM_MOMENTS}
        for group, lr in zip(groups, optimizer_state["lr"]):
            group["lr"] = lr

    def _zero_gathered(self, param: nn.Parameter, key: str | None) -> torch.Tensor:
        """Collective. ``param``'s full fp32 master (``key`` None) or AdamW state ``key``, assembled from every rank's
        ZeRO partition. DeepSpeed's own ``safe_get_full_*`` would do it on DeepSpeed's process group, created
        without our timeout (torch's default, 30 min): a stalled rank would hang the checkpoint that long."""
        if self.zero_stage == 3:
            from deepspeed.utils import safe_get_local_fp32_param, safe_get_local_optimizer_state

            local = safe_get_local_fp32_param(param) if key is None else safe_get_local_optimizer_state(param, key)
            return distributed.all_gather_cat(local.float())[:param.ds_numel].view(param.ds_shape)
        full = torch.zeros(param.numel(), dtype=torch.float32, device=param.device)
        fragment = param._hp_mapping   # the part of ``param`` this rank's partition holds (None: no part)
        if fragment is not None:
            where = fragment.lp_fragment_address
            full.narrow(0, where.start, where.numel).copy_(fragment.get_hp_fragment(key))
        return distributed.all_reduce_sum_(full).view_as(param)

    def _zero_step(self) -> int:
        """The step count of the ZeRO partitions' AdamW: one for all, as ZeRO steps every partition together."""
        steps = {int(state["step"]) for state in self.model.optimizer.optimizer.state.values()}
        if len(steps) != 1:
            raise RuntimeError(f"DeepSpeed's optimizer partitions hold step counts {sorted(steps)}, expected one")
        return steps.pop()

    def _load_zero_optimizer(self, trainable: Mapping[str, nn.Parameter], saved: Mapping[str, Any]) -> None:
        """Write the saved fp32 masters and moments into this rank's ZeRO partitions.

        DeepSpeed creates its partitions' AdamW state at the first step, so it is created here first, with the
        step count, and linked to the parameters' fragments as that step would (stage 1/2). ZeRO steps every
        partition together, with zero gradients where a parameter got none, so the one step count is the
        largest saved one. Stage 1/2 write a parameter's fragments through ``safe_set_full_*``; stage 3 writes
        this rank's slice of each tensor itself through ``safe_set_local_*``, since ``safe_set_full_*`` cannot
        slice the zero-padded last partition of a parameter whose size the world size does not divide.
        """
        from deepspeed.utils import (safe_set_full_fp32_param, safe_set_full_optimizer_state,
                                     safe_set_local_fp32_param, safe_set_local_optimizer_state)

        zero = self.model.optimizer
        step = max(entry["step"] for entry in saved.values())
        if self.zero_stage == 3:
            partitions = list(zero.fp32_partitioned_groups_flat)   # kept out of the param groups between steps
        else:
            partitions = [flat for group in zero.optimizer.param_groups for flat in group["params"]]
        for flat in partitions:
            zero.optimizer.state[flat] = {"step": torch.tensor(float(step))} | {
                key: torch.zeros_like(flat) for key in ADAM_MOMENTS}
        if self.zero_stage < 3:
            zero._lazy_init_hp_params_optimizer_state()
        for name, p in trainable.items():
            if self.zero_stage == 3:
                safe_set_local_fp32_param(p, _local_partition(saved[name]["fp32"], p))
                for key in ADAM_MOMENTS:
                    safe_set_local_optimizer_state(p, _local_partition(saved[name][key], p), key)
            else:
                safe_set_full_fp32_param(p, saved[name]["fp32"])
                for key in ADAM_MOMENTS:
                    safe_set_full_optimizer_state(p, saved[name][key], key)


def _cpu_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float32, copy=True)


def _local_partition(value: torch.Tensor, param: nn.Parameter) -> torch.Tensor:
    """This rank's ZeRO-3 slice of a parameter's full ``value``: ``param.ds_tensor``'s size, the last one padded
    with zeros (the data-parallel group is the whole world here)."""
    size = param.ds_tensor.numel()
    flat = F.pad(value.flatten(), (0, size * distributed.world_size() - value.numel()))
    return flat.narrow(0, size * distributed.rank(), size)
