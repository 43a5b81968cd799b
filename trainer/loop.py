"""The training loop of the main job (one function, read top to bottom).

Per rank: shard stream -> decode (DataLoader workers) -> frozen backbones (this process, its device) ->
Uni-Code task -> DeepSpeed engine (or plain torch). Every rank runs the same steps; collectives are:
the engine's gradient reduction, the quantizer's one all_reduce per step, the CLUB estimators' gradient
averaging, one tiny all_reduce per step for the agreed stop flag, and at logging steps one all_reduce of
the packed metrics and one of the data-skip counters.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from trainer import distributed as dist
from trainer.backbones import FrozenBackbones
from trainer.checkpoint import (
    MODEL_FILE, TASK_EXTRA_FILE, CheckpointManager, load_rank_state, resolve_checkpoint, rng_state, save_rank_state,
    set_rng_state,
)
from trainer.config import to_dict
from trainer.data.memory import MemoryStream
from trainer.data.stream import feature_batches
from trainer.engine import TrainEngine
from trainer.job import JobConfig, feature_shapes_of_source, job_backbones, resolve_model_config, resolved_dict
from trainer.runtime import EXIT_RESUME, StopRequest
from trainer.tasks import task_spec
from trainer.tracking import create_tracker

STOP_FILE = "STOP"            # `touch <run_dir>/STOP` asks a running job to checkpoint and exit (Slurm uses it)
STATUS_FILE = "status.json"   # rank 0 writes {"state": "finished"|"stopped", "step": N} on the way out
METRICS_FILE = "metrics.jsonl"   # rank 0 appends every logged step's metrics


def lr_lambda(cfg: JobConfig):
    """Multiplier of optim.lr at an optimizer step: linear warmup, then constant or cosine to min_lr_ratio."""
    warmup, total, floor = cfg.optim.warmup_steps, cfg.run.max_steps, cfg.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def load_model_weights(task, source: str) -> Path:
    """Start the model from ``model.pt`` of a checkpoint (or the latest one of a checkpoints or run directory).

    The source may come from a phase with other modalities (continual learning): modules of modalities in
    both runs are loaded, those new to this run keep their initial weights, and the shared codebook is adopted
    with its usage clocks remapped by modality name. Rank-identical: every rank reads the same file.
    """
    try:
        ckpt = resolve_checkpoint(source)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"run.init_from={source!r}: {err}") from None
    if not (ckpt / MODEL_FILE).is_file():
        raise FileNotFoundError(f"run.init_from={source!r}: {ckpt} has no {MODEL_FILE}")
    state = torch.load(ckpt / MODEL_FILE, map_location="cpu", weights_only=True)
    old_modalities = CheckpointManager.read_meta(ckpt)["model_config"]["modalities"]
    prefix = "quantizer."
    task.model.quantizer.adopt_({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, old_modalities)
    own = task.model.state_dict()
    loaded = {k: v for k, v in state.items() if not k.startswith(prefix) and k in own and own[k].shape == v.shape}
    mismatched = sorted(k for k, v in state.items() if k in own and not k.startswith(prefix) and own[k].shape != v.shape)
    if mismatched:
        raise ValueError(f"run.init_from={source!r}: shapes differ for {mismatched[:5]} (a modality's feature dims "
                         "or the model sizes changed between runs)")
    task.model.load_state_dict(loaded, strict=False)
    fresh = sorted({".".join(k.split(".")[:2]) for k in own if k not in loaded and not k.startswith(prefix)})
    print(f"[cmg] init_from {ckpt}: loaded {len(loaded)} tensors + the codebook (modalities then {old_modalities}); "
          f"fresh modules for: {fresh or 'none'}", flush=True)
    return ckpt


def endless(stream):
    """Batches across epochs (the stream knows its epoch and position, so this needs no state)."""
    while True:
        yield from stream


def pack_mean(metrics: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """Mean over ranks of scalar metrics with one all_reduce (only at logging steps: it syncs the host)."""
    keys = sorted(metrics)
    flat = torch.stack([metrics[k].detach().float().reshape(()) for k in keys])
    dist.all_reduce_sum_(flat)
    return dict(zip(keys, (flat / world).tolist()))


def train(cfg: JobConfig, accelerator, memory: Mapping[str, torch.Tensor] | None = None) -> int:
    """Run the job ``cfg`` on this process's ``accelerator``; returns the exit code (0 finished, 75 stopped).

    ``memory``: in-memory feature tensors (``trainer.data.memory.MemoryStream``) for ``data.kind = "memory"``,
    the source of programs that generate their data (the synthetic benchmarks); the shards of ``data.urls``
    otherwise.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    if (cfg.data.kind == "memory") != (memory is not None):
        raise ValueError(f"data.kind={cfg.data.kind!r}: in-memory features are given exactly with kind 'memory'")
    device = accelerator.device
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    is_main = accelerator.is_main_process
    if is_main:
        (run_dir / STOP_FILE).unlink(missing_ok=True)   # a stale request from a previous job must not stop this one
        (run_dir / STATUS_FILE).unlink(missing_ok=True)
    dist.barrier()

    # ---- data and frozen backbones (never trained, never checkpointed)
    backbones = None
    if memory is not None:
        stream = MemoryStream(memory, cfg.data.batch_size, cfg.data.seed, rank, world)
        shapes = stream.feature_shapes
    else:
        if cfg.data.kind == "clips":
            backbones = FrozenBackbones(job_backbones(cfg), device)
        stream = feature_batches(cfg.data, backbones, rank, world)
        shapes = feature_shapes_of_source(cfg)
    model_cfg = resolve_model_config(cfg, shapes)
    resolved = resolved_dict(cfg, model_cfg)
    if is_main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    # ---- model: identical initial weights on every rank (the seed), then per-rank RNG streams
    torch.manual_seed(cfg.run.seed)
    task = task_spec(cfg.task).task(model_cfg).to(device)
    backbones_used = backbones.describe() if backbones is not None else None
    if cfg.run.init_from:
        previous = load_model_weights(task, cfg.run.init_from)
        if hasattr(task, "begin_phase_"):   # optional phase hook: may grow the model, so before the optimizer
            extra_file = previous / TASK_EXTRA_FILE
            extra = torch.load(extra_file, map_location="cpu", weights_only=True) if extra_file.is_file() else {}
            model_cfg = task.begin_phase_(previous, extra)
        if backbones_used is not None:
            # modalities carried from earlier phases were encoded by those phases' backbones: the meta names them
            # too, so the evaluation of this checkpoint checks their features against the right fingerprints
            earlier = CheckpointManager.read_meta(previous).get("backbones") or {}
            carried = getattr(task.model, "downstream_modalities", ())
            backbones_used = {m: d for m, d in earlier.items() if m in carried} | backbones_used
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    model, optimizer = accelerator.prepare(task.model, optimizer)
    task.model.quantizer.float()   # a bf16 engine casts the whole module; the codebook and EMA stay fp32
    task.forward_module = model
    engine = TrainEngine(accelerator, model, optimizer, scheduler, task.model, cfg.optim.grad_clip)
    torch.manual_seed(cfg.run.seed + 1 + rank)

    # ---- resume
    ckpts = CheckpointManager(run_dir / "checkpoints", cfg.run.keep_last)
    ckpts.clean_partial()
    tracker = create_tracker(cfg.tracking, run_dir, is_main=is_main)
    step, samples_seen = 0, 0
    resume_from = ckpts.resolve(cfg.run.resume)
    if resume_from is not None:
        engine.load(resume_from)
        state = load_rank_state(resume_from)
        task.load_state_dict(state["task"])
        engine.scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["stream"])
        tracker.load_state_dict(state["tracker"])
        set_rng_state(state["rng"])
        step, samples_seen = int(state["step"]), int(state["samples_seen"])
        if backbones is not None:
            backbones.load_state_dict(state["backbones"])
    tracker.start(tags={"phase": cfg.run.phase, "world_size": world,
                        "resumed_from_step": step if resume_from is not None else None})
    tracker.log_config(resolved)

    def save_checkpoint() -> Path:
        def write(tmp: Path) -> None:
            engine.save(tmp)
            model_state = engine.model_state_dict()
            if model_state is not None:
                torch.save(model_state, tmp / MODEL_FILE)
            extra = task.extra_state() if hasattr(task, "extra_state") else {}
            if extra and is_main:
                torch.save(extra, tmp / TASK_EXTRA_FILE)
            save_rank_state(tmp, {
                "step": step, "samples_seen": samples_seen, "task": task.state_dict(),
                "scheduler": engine.scheduler.state_dict(),
                "stream": stream.state_dict(), "rng": rng_state(), "tracker": tracker.state_dict(),
                "backbones": backbones.state_dict() if backbones is not None else {},
                # this rank's copies of the replicated state the engine does not own (checked across ranks)
                "replicas": task.replicated_state(),
            })
        meta = {"phase": cfg.run.phase, "mlflow_run_id": tracker.run_id, "samples_seen": samples_seen,
                "task": cfg.task, "model_config": to_dict(model_cfg), "data_kind": cfg.data.kind,
                "backbones": backbones_used}
        return ckpts.save(step, write, meta)

    def finish(state: str, status: str) -> None:
        if is_main:
            (run_dir / STATUS_FILE).write_text(json.dumps({"state": state, "step": step}) + "\n")
        tracker.end(status)

    # ---- the loop
    stop = StopRequest().install()
    global_batch = cfg.data.batch_size * world * cfg.run.grad_accum
    batches = endless(stream)
    window: dict[str, torch.Tensor] = {}
    window_steps, window_start = 0, time.perf_counter()
    progress = None
    if is_main and cfg.run.progress:
        from tqdm import tqdm

        progress = tqdm(total=cfg.run.max_steps, initial=step, desc=cfg.run.phase, unit="step", dynamic_ncols=True)
    try:
        while step < cfg.run.max_steps:
            for _ in range(cfg.run.grad_accum):
                features = task.prepare_batch(next(batches), device)
                with accelerator.accumulate(model):
                    loss, metrics = task.compute_loss(features, step)
                    engine.backward_step(loss)
                for k, v in metrics.items():   # mean over the step's micro-batches and the log window
                    window[k] = window.get(k, 0.0) + v / cfg.run.grad_accum
            metrics = task.after_optimizer_step_()
            step += 1
            samples_seen += global_batch
            window_steps += 1

            if tracker.should_log(step) or step == cfg.run.max_steps:
                elapsed = time.perf_counter() - window_start
                logged = pack_mean({k: v / window_steps for k, v in window.items()} | metrics, world)
                skipped = stream.skip_totals(all_reduce_fn=dist.all_reduce_sum_)
                logged |= {"perf/clips_per_s": window_steps * global_batch / elapsed,
                           "perf/step_s": elapsed / window_steps, "lr": engine.learning_rate(),
                           "data/samples_seen": samples_seen, "data/skipped": sum(skipped.values())}
                logged |= {f"data/skipped_{reason}": n for reason, n in skipped.items() if n}
                tracker.log_metrics(logged, step)
                if is_main:
                    with open(run_dir / METRICS_FILE, "a") as f:
                        f.write(json.dumps({"step": step, **logged}) + "\n")
                window, window_steps, window_start = {}, 0, time.perf_counter()
                if progress is not None:
                    progress.set_postfix(loss=f"{logged['loss']:.4f}", clips_s=f"{logged['perf/clips_per_s']:.1f}")
            if tracker.should_plot(step) or step == cfg.run.max_steps:
                tracker.log_code_usage({m: c.cpu() for m, c in task.code_usage_().items()}, step, plot=True)
            if progress is not None:
                progress.update(1)

            if step == cfg.run.max_steps and hasattr(task, "end_phase_"):   # optional phase hook, collective
                phase_metrics = task.end_phase_(batches, device)
                if phase_metrics:
                    tracker.log_metrics(phase_metrics, step)

            stop_requested = stop.agreed_or_file(run_dir / STOP_FILE, device)
            if step % cfg.run.ckpt_every == 0 or step == cfg.run.max_steps or stop_requested:
                saved = save_checkpoint()
                if is_main and progress is None:
                    print(f"[cmg] step {step}: checkpoint {saved}", flush=True)
            if stop_requested and step < cfg.run.max_steps:
                if is_main:
                    print(f"[cmg] stop requested ({stop.signal_name or STOP_FILE}): checkpoint at step {step} "
                          f"written; exiting with {EXIT_RESUME} (resume me)", flush=True)
                finish("stopped", "KILLED")
                return EXIT_RESUME
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        if progress is not None:
            progress.close()
        batches.close()

    tracker.log_tensor(task.model.quantizer.codebook.detach().cpu(), "codebook/final.npy")
    finish("finished", "FINISHED")
    if is_main:
        print(f"[cmg] finished {step} steps; checkpoint {ckpts.latest()}; run dir {run_dir}", flush=True)
    return 0


def train_in_memory(cfg: JobConfig, features: Mapping[str, torch.Tensor]) -> Path:
    """The job ``cfg`` (``data.kind = "memory"``) on in-memory ``features`` in this one process, through ``train``
    as ``python trainer/main.py`` runs it (plain torch engine); returns its final checkpoint directory.

    For programs that generate their data (``trainer.bench``); may be called several times in one process
    (continual phases chain through ``run.init_from``).
    """
    from trainer.runtime import create_accelerator, prepare_process_environment

    prepare_process_environment()
    accelerator = create_accelerator(cfg.run.grad_accum, cfg.data.batch_size, cfg.optim.grad_clip)
    code = train(cfg, accelerator, memory=features)
    if code != 0:
        raise RuntimeError(f"the in-memory job in {cfg.run.dir} ended with exit code {code}")
    return CheckpointManager(Path(cfg.run.dir) / "checkpoints").latest()


def last_logged(run_dir: str | os.PathLike) -> dict[str, float]:
    """The metrics rank 0 logged at the last logging step (the last line of ``<run_dir>/metrics.jsonl``)."""
    lines = (Path(run_dir) / METRICS_FILE).read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def status_of(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What the last job in ``run_dir`` said on its way out (None if it crashed or is still running)."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
