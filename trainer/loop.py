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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer import distributed as dist
from trainer.backbones import FrozenBackbones
from trainer.checkpoint_format import CheckpointManager, CheckpointMeta
from trainer.checkpoint import ProcessRNG, RunCheckpoints, load_init_state_, read_init_source, rng_state, set_rng_state
from trainer.configs.load import to_dict
from trainer.data.memory import MemoryStream
from trainer.data.sources import data_source
from trainer.data.stream import feature_batches
from trainer.engine import TrainEngine
from trainer.eval.during_training import TrainingProbe
from trainer.job import job_backbones, resolve_job, resume_line
from trainer.configs.job import JobConfig
from trainer.run_control import EXIT_RESUME, STOP_FILE, mark_running, write_status
from trainer.run_page import METRIC_SECTIONS, mlflow_metric_key
from trainer.runtime import StopRequest
from trainer.tasks import Task, task_class
from trainer.tracking import create_tracker

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


@dataclass
class StepCounter:
    """Optimizer steps done and clips trained on: the loop's own part of a checkpoint."""

    step: int = 0
    samples_seen: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "samples_seen": self.samples_seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])


def data_metrics(counters: Mapping[str, int]) -> dict[str, int]:
    """The stream's counters (summed over ranks) as logged: ``data/skipped`` counts samples not trained on, by
    reason in ``data/skipped_<reason>``; members a sample carried but no decoder reads are counted apart, in
    ``data/ignored_members``, since their samples were trained on."""
    skipped = {reason: n for reason, n in counters.items() if reason != "ignored_member"}
    return {"data/skipped": sum(skipped.values()), "data/ignored_members": counters.get("ignored_member", 0)} | {
        f"data/skipped_{reason}": n for reason, n in skipped.items() if n}


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
    started = time.perf_counter()
    rank, world = accelerator.process_index, accelerator.num_processes
    if (cfg.data.kind == "memory") != (memory is not None):
        raise ValueError(f"data.kind={cfg.data.kind!r}: in-memory features are given exactly with kind 'memory'")
    device = accelerator.device
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    is_main = accelerator.is_main_process
    if is_main:
        (run_dir / STOP_FILE).unlink(missing_ok=True)   # a stale request from a previous job must not stop this one
        mark_running(run_dir)   # in place of the previous job's word, until this one says how it ended
    dist.barrier()

    # ---- data and frozen backbones (never trained, never checkpointed), then the job resolved against them
    backbones = None
    if memory is not None:
        stream = MemoryStream(memory, cfg.data.batch_size, cfg.data.seed, rank, world)
        job = resolve_job(cfg, stream.feature_shapes)
    else:
        if cfg.data.kind == "clips":
            backbones = FrozenBackbones(job_backbones(cfg), device)
        stream = feature_batches(cfg.data, backbones, rank, world)
        job = resolve_job(cfg, backbones.feature_shapes() if backbones is not None else None)
    model_cfg = job.model
    if is_main:
        job.write(run_dir)

    # ---- model: identical initial weights on every rank (the seed), then per-rank RNG streams
    torch.manual_seed(cfg.run.seed)
    task: Task = task_class(cfg.task)(model_cfg).to(device)
    backbones_used = backbones.describe() if backbones is not None else None
    if cfg.run.init_from:
        init = read_init_source(cfg.run.init_from)
        fresh = load_init_state_(task.model, init)
        print(f"[cmg] init_from {init.checkpoint}: loaded the model and its codebook (modalities then "
              f"{init.modalities}); fresh modules for: {fresh or 'none'}", flush=True)
        model_cfg = task.begin_phase_(init, model_cfg)   # may grow the model, so before the optimizer
        if backbones_used is not None:
            # modalities carried from earlier phases were encoded by those phases' backbones: the meta names them
            # too, so the evaluation of this checkpoint checks their features against the right fingerprints
            earlier = init.meta.backbones or {}
            carried = task.model.downstream_modalities
            backbones_used = {m: d for m, d in earlier.items() if m in carried} | backbones_used
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    model, optimizer = accelerator.prepare(task.model, optimizer)
    task.attach_engine_(model)
    if cfg.run.compile:
        task.compile_()
    engine = TrainEngine(accelerator, model, optimizer, scheduler, task.model, cfg.optim.grad_clip)
    if is_main:
        print(f"[cmg] optimizer: {engine.optimizer_name()} on {device}", flush=True)
    torch.manual_seed(cfg.run.seed + 1 + rank)

    # ---- what a checkpoint holds per rank: one registry of stateful parts (the engine saves model + optimizer)
    tracker = create_tracker(cfg.tracking, run_dir, is_main=is_main)
    counter = StepCounter()
    parts = {"counter": counter, "task": task, "scheduler": engine.scheduler, "stream": stream, "rng": ProcessRNG()}
    if backbones is not None:
        parts["backbones"] = backbones
    checkpoints = RunCheckpoints(run_dir / "checkpoints", cfg.run.keep_last, engine, parts, task)
    resume_from = checkpoints.restore(cfg.run.resume)
    saved = resume_from   # the run's newest checkpoint (a resumed run that is already done saves no other)
    start_step, start_samples = counter.step, counter.samples_seen
    if is_main and resume_from is not None:
        print(f"[cmg] {resume_line(cfg, resume_from, world)}", flush=True)
    logged = trim_metrics_log(run_dir, counter.step) if is_main else []
    tracker.start(tags={"phase": cfg.run.phase, "world_size": world},
                  resumed_from_step=counter.step if resume_from is not None else None, logged=logged)
    tracker.log_config(job.to_dict())

    def save_checkpoint() -> Path:
        return checkpoints.save(counter.step, CheckpointMeta(
            counter.step, world, phase=cfg.run.phase, mlflow_run_id=tracker.run_id, samples_seen=counter.samples_seen,
            task=cfg.task, model_config=to_dict(model_cfg), job_config=job.to_dict(), data_kind=cfg.data.kind,
            data_source=data_source(cfg.data) if memory is None else None, backbones=backbones_used))

    def finish(state: str, status: str, headline: str) -> None:
        if is_main:
            write_status(run_dir, state, counter.step)
        tracker.end(status)
        if is_main:
            now = time.perf_counter()
            print(run_summary(headline, (start_step, counter.step), now - started,
                              (counter.samples_seen - start_samples) / (now - training_since),
                              last_logged(run_dir) if (run_dir / METRICS_FILE).is_file() else {}, saved,
                              tracker.address()), flush=True)

    # ---- the downstream probe during pretraining (eval.every; rank 0 probes the checkpoint of its step)
    probe = TrainingProbe(cfg.eval, cfg.data, backbones) if cfg.eval.every and is_main else None

    # ---- the loop
    stop = StopRequest().install()
    global_batch = cfg.data.batch_size * world * cfg.run.grad_accum
    batches = endless(stream)
    window: dict[str, torch.Tensor] = {}
    window_steps, window_start = 0, time.perf_counter()
    progress = None
    training_since = time.perf_counter()
    if is_main and cfg.run.progress:
        from tqdm import tqdm

        progress = tqdm(total=cfg.run.max_steps, initial=counter.step, desc=cfg.run.phase, unit="step",
                        dynamic_ncols=True)
    try:
        while counter.step < cfg.run.max_steps:
            for _ in range(cfg.run.grad_accum):
                features = task.prepare_batch(next(batches), device)
                with accelerator.accumulate(model):
                    loss, metrics = task.compute_loss(features, counter.step)
                    engine.backward_step(loss)
                for k, v in metrics.items():   # mean over the step's micro-batches and the log window
                    window[k] = window.get(k, 0.0) + v / cfg.run.grad_accum
            metrics = task.after_optimizer_step_()
            counter.step += 1
            counter.samples_seen += global_batch
            window_steps += 1

            if tracker.should_log(counter.step) or counter.step == cfg.run.max_steps:
                elapsed = time.perf_counter() - window_start
                logged = pack_mean({k: v / window_steps for k, v in window.items()} | metrics, world)
                logged |= {"perf/clips_per_s": window_steps * global_batch / elapsed,
                           "perf/step_s": elapsed / window_steps, "lr": engine.learning_rate(),
                           "data/samples_seen": counter.samples_seen}
                logged |= data_metrics(stream.skip_totals(all_reduce_fn=dist.all_reduce_sum_))
                tracker.log_metrics(logged, counter.step)
                if is_main:
                    with open(run_dir / METRICS_FILE, "a") as f:
                        f.write(json.dumps({"step": counter.step, **logged}) + "\n")
                window, window_steps, window_start = {}, 0, time.perf_counter()
                if progress is not None:
                    progress.set_postfix(loss=f"{logged['loss']:.4f}", clips_s=f"{logged['perf/clips_per_s']:.1f}")
            if tracker.should_plot(counter.step) or counter.step == cfg.run.max_steps:
                tracker.log_code_usage({m: c.cpu() for m, c in task.code_usage_().items()}, counter.step, plot=True)
            if progress is not None:
                progress.update(1)

            if counter.step == cfg.run.max_steps:   # phase hook, collective
                phase_metrics = task.end_phase_(batches, device)
                if phase_metrics:
                    tracker.log_metrics(phase_metrics, counter.step)

            stop_requested = stop.agreed_or_file(run_dir / STOP_FILE, device)
            probe_step = bool(cfg.eval.every) and counter.step % cfg.eval.every == 0
            if counter.step % cfg.run.ckpt_every == 0 or counter.step == cfg.run.max_steps or stop_requested \
                    or probe_step:
                saved = save_checkpoint()
                if is_main and progress is None:
                    print(f"[cmg] step {counter.step}: checkpoint {saved}", flush=True)
            if probe_step and probe is not None:   # the others wait at the next collective (run.collective_timeout_s)
                probed = run_probe(probe, saved)
                tracker.log_metrics(probed, counter.step)
                if cfg.run.keep_best and checkpoints.manager.record_best_(saved, cfg.run.keep_best,
                                                                          probed[cfg.run.keep_best]):
                    print(f"[cmg] step {counter.step}: best {cfg.run.keep_best} = {probed[cfg.run.keep_best]:.2f} "
                          f"so far ({saved.name}, kept apart from pruning)", flush=True)
            if stop_requested and counter.step < cfg.run.max_steps:
                reason = stop.reason(run_dir / STOP_FILE) if is_main else ""
                finish("stopped", "KILLED", f"stop requested ({reason}): checkpoint at step {counter.step} written "
                       f"({cfg.run.max_steps - counter.step} steps to run.max_steps={cfg.run.max_steps}); exiting "
                       f"with {EXIT_RESUME}: run the same command to resume")
                return EXIT_RESUME
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        if progress is not None:
            progress.close()
        batches.close()

    tracker.log_tensor(task.codebook().cpu(), "codebook/final.npy")
    finish("finished", "FINISHED", f"finished at step {counter.step} (run.max_steps={cfg.run.max_steps})")
    return 0


def run_summary(headline: str, steps: tuple[int, int], wall_s: float, clips_per_s: float, last: Mapping[str, float],
                checkpoint: Path | None, mlflow_address: str | None) -> str:
    """Rank 0's lines at the end of a job (finished or stopped): ``headline``, then the steps of this job (from, to),
    its wall time (start-up included) and the clips per second of its training loop, the loss and its terms at the
    last logging step (``last``, a row of metrics.jsonl), the checkpoint and where the MLflow run is."""
    section = METRIC_SECTIONS["loss"] + "/"
    losses = {k: v for k, v in last.items() if k != "step" and mlflow_metric_key(k).startswith(section)}
    # a term's parts (cmcm_audio_video of cmcm, recon_audio of recon) are in metrics.jsonl and MLflow, not here
    losses = {k: v for k, v in losses.items() if not any(k.startswith(f"{term}_") for term in losses)}
    minutes, seconds = divmod(round(wall_s), 60)
    lines = [f"[cmg] {headline}",
             f"[cmg]   this job: steps {steps[0]} -> {steps[1]} ({steps[1] - steps[0]} step"
             f"{'' if steps[1] - steps[0] == 1 else 's'}), wall time "
             f"{minutes}m{seconds:02d}s, {clips_per_s:.1f} clips/s while training",
             f"[cmg]   losses at step {last.get('step', '-')}: " + (", ".join(
                 f"{k} {v:.4g}" for k, v in sorted(losses.items(), key=lambda kv: kv[0] != "loss")) or "none logged"),
             f"[cmg]   checkpoint: {checkpoint}",
             f"[cmg]   MLflow: {mlflow_address or 'off (no run opened)'}"]
    return "\n".join(lines)


def train_in_memory(cfg: JobConfig, features: Mapping[str, torch.Tensor]) -> Path:
    """The job ``cfg`` (``data.kind = "memory"``) on in-memory ``features`` in this one process, through ``train``
    as ``python trainer/main.py`` runs it (plain torch engine); returns its final checkpoint directory.

    For programs that generate their data (``trainer.programs.bench``); may be called several times in one process
    (continual phases chain through ``run.init_from``).
    """
    from trainer.runtime import create_accelerator, prepare_process_environment

    prepare_process_environment(cfg)
    accelerator = create_accelerator(cfg)
    code = train(cfg, accelerator, memory=features)
    if code != 0:
        raise RuntimeError(f"the in-memory job in {cfg.run.dir} ended with exit code {code}")
    return CheckpointManager(Path(cfg.run.dir) / "checkpoints").latest()


def run_probe(probe: TrainingProbe, checkpoint: Path) -> dict[str, float]:
    """``probe(checkpoint)`` with this process's python, numpy and torch RNG states left as they were, so that a run
    with probes continues (and resumes) exactly as one without."""
    state = rng_state()
    try:
        return probe(checkpoint)
    finally:
        set_rng_state(state)


def trim_metrics_log(run_dir: Path, step: int) -> list[dict[str, float]]:
    """Drop the lines of ``metrics.jsonl`` past ``step``, where this run continues from: steps a crashed run
    logged after its last checkpoint are trained (and logged) again, and a fresh run (step 0) starts empty. Returns
    the rows kept (the tracker re-delivers those its MLflow run lacks)."""
    path = run_dir / METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []
    kept = [row for row in rows if row["step"] <= step]
    if path.is_file():
        path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return kept


def last_logged(run_dir: str | os.PathLike) -> dict[str, float]:
    """The metrics rank 0 logged at the last logging step (the last line of ``<run_dir>/metrics.jsonl``)."""
    lines = (Path(run_dir) / METRICS_FILE).read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


