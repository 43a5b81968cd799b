"""The trainable side of a run behind one interface: a DeepSpeed engine (via accelerate) or plain torch.

``TrainEngine`` wraps what ``accelerator.prepare`` returned for (model, optimizer) plus our own LR scheduler
and gives the loop four things: ``backward_step(loss)`` (one micro-batch; True when the optimizer stepped),
``save(dir)``/``load(dir)`` of the engine's own state, and ``model_state_dict()``, a consolidated fp32
state dict of the model (parameters and buffers) that rank 0 writes into every checkpoint as ``model.pt``
so evaluation and the next continual phase can start from it without DeepSpeed or the same world size.

Loading: the plain-torch state is read with ``torch.load(weights_only=True)``. DeepSpeed's own
``load_checkpoint`` unpickles its optimizer files (it passes ``weights_only=False`` internally); those
files are written by this job, never taken from data, and that is the one documented exception.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

ENGINE_DIR = "engine"
ENGINE_TAG = "state"


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
        gather = contextlib.nullcontext()
        if self.zero_stage == 3:
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)
        with gather:
            if not self.accelerator.is_main_process:
                return None
            return {k: v.detach().to("cpu", torch.float32, copy=True) if v.is_floating_point() else v.detach().cpu()
                    for k, v in self.module.state_dict().items()}
