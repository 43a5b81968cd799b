"""The main job end to end: `python trainer/main.py`, and 2 CPU ranks (gloo, DeepSpeed) through
`python -m trainer.programs.supervisor` and bare `accelerate launch`.

- a bad config fails before any work, naming the key;
- ZeRO-2 and ZeRO-3 through trainer/main.py keep the quantizer buffers and CLUB estimators bit-identical on
  both ranks (nothing re-broadcasts them), and agree with each other up to reduction-order rounding;
- resume is exact (losses at every step, every model tensor): 2N steps == N steps + resume + N steps with a planned
  split, and k + 4 steps == k steps + resume + 4 steps after a stop request (STOP file / SIGUSR1) at an unplanned
  step k;
- a stop request checkpoints and exits 75 ("resume me"); the resumed job continues the same MLflow run; after a
  kill -9 and a resume the run's history equals metrics.jsonl (no gap, no duplicate);
- through the real launcher, SIGTERM to the launcher or SIGUSR1 to rank 1 alone is one agreed stop: a complete
  checkpoint and exit 75 from `trainer.programs.supervisor`; bare `accelerate launch` checkpoints too but exits 1;
- an elastic resume (2 ranks -> 1 process -> 2 ranks, ZeRO-2 / plain torch / ZeRO-3) continues the run: the step
  counter, the MLflow run, the LR schedule, the codebook and CLUB state, and AdamW's moments and step;
- a real `mlflow server` receives params, metrics and the code-usage PNG;
- the same command after a run finished does nothing (exit 0, one line, before any work); a smaller run.max_steps and
  a model of other shapes are refused (exit 2) with status.json kept; a larger one extends the run, which says so in
  its resume line, and every job ends with a summary (steps, wall time, clips/s, losses, checkpoint, MLflow run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from job_utils import (
    DEMO_CONFIG, REPO, assert_same_tensors, final_model, job_command, job_env, losses, make_clip_shards, read_metrics,
    run_job, status, wait_for_steps,
)
from numerics import COMPOUNDED_ULPS, assert_reordered_close
from tracking_utils import logged_images

from trainer.checkpoint_format import CheckpointManager, read_meta
from trainer.tracking import mlflow_metric_key

STEPS = 8
# jobs stopped mid-run get room: on an idle machine an 8-step job can finish between the poll that sees step 2
# and the signal (or STOP file) it triggers, and then exits 0
STOPPED_RUN_STEPS = 40
# a stopped run resumes to this many steps past its stop, and the uninterrupted reference runs to the same step: the
# demo's lr schedule is constant after warmup, so where the run ends changes none of the steps before it (the
# planned-split test resumes to another max_steps too)
RESUMED_STEPS = 4
RESETS = "model.quantizer.reset_steps=3"   # codes unused for 3 steps are reset: the runs below include resets


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_clip_shards(tmp_path_factory.mktemp("data"))


def rank_states(run_dir: Path) -> list[dict]:
    ckpt = CheckpointManager(Path(run_dir) / "checkpoints").latest()
    return [torch.load(p, map_location="cpu", weights_only=True) for p in sorted(ckpt.glob("rank_*.pt"))]


# ---------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("override, message", [
    ("model.quantizer.num_codez=3", "model.quantizer.num_codez"),
    ("run.max_steps=abc", "run.max_steps"),
    ("model.quantizer.ema_mode=parallel", "model.quantizer.ema_mode"),
    ("data.urls=/nonexistent/train-{000000..000001}.tar", "manifest"),
])
def test_bad_config_fails_before_any_work(tmp_path, shards, override, message):
    run_dir = tmp_path / "run"
    proc = subprocess.run(job_command(run_dir, shards, overrides=[override]), cwd=REPO, env=job_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "config error" in proc.stderr
    assert not run_dir.exists()                       # nothing was started


# ---------------------------------------------------------------------------------------------- one process
@pytest.mark.slow
@pytest.mark.numerics
def test_single_process_signal_checkpoints_exits_75_and_resumes_exactly(tmp_path, shards):
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen(job_command(run_dir, shards, overrides=[f"run.max_steps={STOPPED_RUN_STEPS}"]), cwd=REPO,
                            env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(run_dir, proc, 2)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    stopped_at = status(run_dir)
    assert stopped_at["state"] == "stopped" and 2 <= stopped_at["step"] < STOPPED_RUN_STEPS
    ckpt = CheckpointManager(run_dir / "checkpoints").latest()
    assert read_meta(ckpt).step == stopped_at["step"]
    stop_summary, step = summary(out), stopped_at["step"]
    assert stop_summary["headline"] == (
        f"stop requested (SIGUSR1): checkpoint at step {step} written ({STOPPED_RUN_STEPS - step} steps to "
        f"run.max_steps={STOPPED_RUN_STEPS}); exiting with 75: run the same command to resume"), stop_summary
    assert stop_summary["checkpoint"] == str(ckpt)

    last = stopped_at["step"] + RESUMED_STEPS
    resumed = run_job(run_dir, shards, overrides=[f"run.max_steps={last}"])
    assert f"[cmg] resumed from step {stopped_at['step']} (checkpoint {ckpt}), 1->1 ranks; changed since the " \
           f"checkpoint: run.max_steps {STOPPED_RUN_STEPS} -> {last}\n" in resumed.stdout, resumed.stdout
    assert status(run_dir) == {"state": "finished", "step": last}
    reference = tmp_path / "reference"
    run_job(reference, shards, overrides=[f"run.max_steps={last}"])
    assert losses(run_dir) == losses(reference)       # every step, bit for bit
    assert_same_tensors(final_model(run_dir), final_model(reference))

    # the resumed job continued the same MLflow run (default store: sqlite in the run dir)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cmg-demo").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, mlflow_metric_key("loss"))
    assert sorted(m.step for m in history) == list(range(1, last + 1))


@pytest.mark.slow
def test_kill_9_then_resume_leaves_the_mlflow_history_equal_to_metrics_jsonl(tmp_path, shards):
    """SIGKILL loses what MLflow's async queue held (sent every 30 s here) and leaves the steps MLflow got after the
    last checkpoint; the resumed job re-delivers the first from metrics.jsonl and does not log the second again."""
    from mlflow.tracking import MlflowClient

    run_dir, overrides = tmp_path / "killed", ["run.ckpt_every=3"]
    proc = subprocess.Popen(job_command(run_dir, shards, overrides=[*overrides, f"run.max_steps={STOPPED_RUN_STEPS}",
                                                                    "tracking.flush_interval_s=30"]),
                            cwd=REPO, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_steps(run_dir, proc, 5)
    proc.kill()
    proc.communicate(timeout=60)
    last = read_meta(CheckpointManager(run_dir / "checkpoints").latest()).step + RESUMED_STEPS
    run_job(run_dir, shards, overrides=[*overrides, f"run.max_steps={last}"])
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, last + 1))
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cmg-demo").experiment_id])
    for name in ("loss", "cpc", "perf/clips_per_s"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, mlflow_metric_key(name)))
        if name != "perf/clips_per_s":   # a wall-clock rate differs between the crashed job and the resumed one
            assert history == [(r["step"], r[name]) for r in rows], name
        assert [step for step, _ in history] == list(range(1, last + 1)), name


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_checkpoints_and_exits_75(tmp_path, shards):
    """What `scancel` or a launcher sends: SIGTERM to the rank AND its DataLoader worker (data.num_workers=1).
    The worker must leave the signal to its rank, which agrees on the stop and checkpoints."""
    run_dir = tmp_path / "terminated"
    proc = subprocess.Popen(job_command(run_dir, shards, overrides=[f"run.max_steps={STOPPED_RUN_STEPS}"]),
                            cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)                     # its own process group, workers included
    wait_for_steps(run_dir, proc, 2)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert "killed by signal" not in err
    stopped_at = status(run_dir)
    assert stopped_at["state"] == "stopped" and "stop requested (SIGTERM)" in out
    assert read_meta(CheckpointManager(run_dir / "checkpoints").latest()).step == \
        stopped_at["step"]


# ---------------------------------------------------------------------------------------------- two ranks
@pytest.fixture(scope="module")
def zero2_reference(tmp_path_factory, shards) -> Path:
    run_dir = tmp_path_factory.mktemp("zero2") / "run"
    run_job(run_dir, shards, processes=2, zero=2, overrides=[f"run.max_steps={STEPS}", RESETS])
    return run_dir


def assert_replicas_bit_identical(run_dir: Path) -> None:
    states = rank_states(run_dir)
    assert len(states) == 2
    replicas = [s["replicas"] for s in states]
    assert any(k.startswith("quantizer.codebook") for k in replicas[0])
    assert any(k.startswith("club.") for k in replicas[0])
    assert_same_tensors(replicas[0], replicas[1])


@pytest.mark.slow
@pytest.mark.numerics
def test_zero2_and_zero3_keep_codebook_and_club_bit_identical_across_ranks(tmp_path, zero2_reference, shards):
    assert_replicas_bit_identical(zero2_reference)
    resets = sum(r["codebook/resets"] for r in read_metrics(zero2_reference))
    zero3 = tmp_path / "zero3"
    run_job(zero3, shards, processes=2, zero=3, overrides=[f"run.max_steps={STEPS}", RESETS],
            launcher="accelerate.commands.launch")                      # `accelerate launch trainer/main.py` works
    assert_replicas_bit_identical(zero3)
    # the stages reduce gradients in a different order (all-reduce vs reduce-scatter): same run up to rounding
    z2, z3 = losses(zero2_reference), losses(zero3)
    assert z2.keys() == z3.keys()
    for key in z2:
        assert_reordered_close(z3[key], z2[key], ulps=COMPOUNDED_ULPS, what=f"{key} ZeRO-3 vs ZeRO-2")
    # the consolidated model.pt (gathered from ZeRO-3 partitions) holds every rank's codebook
    replicated = rank_states(zero3)[1]["replicas"]["quantizer.codebook"]
    assert torch.equal(final_model(zero3)["quantizer.codebook"], replicated)
    assert resets > 0, "the runs should exercise code resets"


@pytest.mark.slow
@pytest.mark.numerics
def test_zero2_resume_after_planned_split_is_bitwise_exact(tmp_path, zero2_reference, shards):
    run_dir = tmp_path / "split"
    run_job(run_dir, shards, processes=2, zero=2, overrides=[f"run.max_steps={STEPS // 2}", RESETS])
    assert status(run_dir) == {"state": "finished", "step": STEPS // 2}
    run_job(run_dir, shards, processes=2, zero=2, overrides=[f"run.max_steps={STEPS}", RESETS])
    assert losses(run_dir) == losses(zero2_reference)
    assert_same_tensors(final_model(run_dir), final_model(zero2_reference))
    assert_replicas_bit_identical(run_dir)


@pytest.mark.slow
def test_zero2_stop_file_mid_run_then_resume_is_bitwise_exact(tmp_path, shards):
    run_dir = tmp_path / "stopfile"
    cmd = job_command(run_dir, shards, processes=2, zero=2, overrides=[f"run.max_steps={STOPPED_RUN_STEPS}", RESETS])
    proc = subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(run_dir, proc, 2)
    (run_dir / "STOP").touch()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 75, err[-3000:]
    stopped = status(run_dir)
    assert stopped["state"] == "stopped" and stopped["step"] < STOPPED_RUN_STEPS, err[-3000:]
    assert "exiting with 75" in err + _
    overrides = [f"run.max_steps={stopped['step'] + RESUMED_STEPS}", RESETS]
    run_job(run_dir, shards, processes=2, zero=2, overrides=overrides)
    reference = tmp_path / "reference"
    run_job(reference, shards, processes=2, zero=2, overrides=overrides)
    assert losses(run_dir) == losses(reference)
    assert_same_tensors(final_model(run_dir), final_model(reference))


def stop_through_the_launcher(tmp_path, shards, launcher: str, send) -> tuple[subprocess.Popen, str, str, Path]:
    """Start a 2-rank job through ``launcher``, call ``send(proc, run_dir)`` after 2 steps, wait for the end."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(job_command(run_dir, shards, processes=2, launcher=launcher,
                                        overrides=[f"run.max_steps={STOPPED_RUN_STEPS}"]),
                            cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(run_dir, proc, 2)
    send(proc, run_dir)
    out, err = proc.communicate(timeout=180)
    stopped = status(run_dir)
    assert stopped["state"] == "stopped" and stopped["step"] < STOPPED_RUN_STEPS, err[-3000:]
    latest = CheckpointManager(run_dir / "checkpoints").resolve("auto")     # verified against its manifest
    assert read_meta(latest).step == stopped["step"]
    return proc, out, err, run_dir


@pytest.mark.slow
def test_sigterm_to_the_launcher_checkpoints_and_exits_75(tmp_path, shards):
    proc, _, err, run_dir = stop_through_the_launcher(
        tmp_path, shards, "trainer.programs.supervisor", lambda proc, _: proc.send_signal(signal.SIGTERM))
    assert proc.returncode == 75, err[-3000:]
    assert "[cmg launch] SIGTERM: asking the job to checkpoint and stop" in err
    assert "FAILED" not in err and "Traceback" not in err, err[-3000:]    # a stop is not reported as a crash
    assert not (run_dir / "STOP").exists()


@pytest.mark.slow
def test_sigusr1_to_rank_1_alone_stops_every_rank_and_the_launcher_exits_75(tmp_path, shards):
    proc, out, err, _ = stop_through_the_launcher(
        tmp_path, shards, "trainer.programs.supervisor",
        lambda _, run_dir: os.kill(_rank_pid(run_dir, 1), signal.SIGUSR1))
    assert proc.returncode == 75, err[-3000:]
    # rank 0 (which logs) did not get the signal, and says so
    assert "stop requested (a signal or stop file seen by another rank)" in out + err


@pytest.mark.slow
def test_sigterm_to_bare_accelerate_launch_checkpoints_but_reports_a_failure(tmp_path, shards):
    """The documented limit of torch elastic: it forwards SIGTERM to the ranks, which stop and checkpoint, but it
    reports their exit as a failure (use `python -m trainer.programs.supervisor` for exit 75). The code is torch's: 1
    (its SignalException's traceback) in every run here; one CI run got 143 with no traceback, from no line of torch
    elastic's or accelerate's Python that we could find."""
    proc, _, err, _ = stop_through_the_launcher(
        tmp_path, shards, "accelerate.commands.launch", lambda proc, _: proc.send_signal(signal.SIGTERM))
    assert proc.returncode not in (0, 75), err[-3000:]


# ---------------------------------------------------------------------------------------------- elastic resume
def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def assert_one_adamw_step(before: dict, after: dict) -> None:
    """``after`` (an optimizer.pt) is one AdamW step from ``before`` (lr of ``before``, weight decay 0 as in the demo
    config): the gradient g that moved the first moment, m1 = β1·m0 + (1-β1)·g, moved the second one by
    v1 = β2·v0 + (1-β2)·g², and the fp32 masters moved by the bias-corrected update of step t. An optimizer
    re-initialised at a resume (step 1, moments from zero) or masters not carried fail it."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    assert before["params"].keys() == after["params"].keys()
    for name, old in before["params"].items():
        new = after["params"][name]
        t = new["step"]
        assert t == old["step"] + 1, name
        g = (new["exp_avg"] - b1 * old["exp_avg"]) / (1 - b1)
        # DeepSpeed's CPU Adam evaluates these in its own (vectorised, fused) order: the same formula, reordered
        assert_reordered_close(new["exp_avg_sq"], b2 * old["exp_avg_sq"] + (1 - b2) * g * g, what=f"{name} v")
        update = before["lr"][0] * new["exp_avg"] / (1 - b1 ** t) / ((new["exp_avg_sq"] / (1 - b2 ** t)).sqrt() + eps)
        assert_reordered_close(new["fp32"], old["fp32"] - update, what=f"{name} master")


@pytest.mark.slow
@pytest.mark.numerics
def test_elastic_resume_2_ranks_then_1_process_then_2_ranks_continues_the_run(tmp_path, shards):
    """2 ZeRO-2 ranks (trainer.programs.supervisor) to step 3, mid-epoch; `python trainer/main.py` (plain torch) to
    step 5; `trainer.programs.supervisor --num_processes 1` (DeepSpeed ZeRO-2) to step 6; 2 ZeRO-3 ranks to step 8. A
    checkpoint every step, so that every step's optimizer state can be compared with the one before."""
    run_dir = tmp_path / "elastic"
    legs = [(2, True, 2, 3), (1, True, 0, 5), (1, False, 2, 6), (2, True, 3, 8)]   # processes, plain, ZeRO, last step
    engines = {0: "plain torch", 2: "ZeRO-2", 3: "ZeRO-3"}
    for leg, (processes, plain, zero, last) in enumerate(legs):
        proc = run_job(run_dir, shards, processes=processes, zero=zero, plain=plain,
                       overrides=[f"run.max_steps={last}", "run.ckpt_every=1", "run.keep_last=10", RESETS])
        if leg:
            old_processes, _, old_zero, old_last = legs[leg - 1]
            resplit = "; re-split over the new layout: stream, rng" if old_processes != processes else ""
            assert (f"[cmg] elastic resume from {checkpoint_dir(run_dir, old_last)} (step {old_last}): world size "
                    f"{old_processes} -> {processes}, engine {engines[old_zero]} -> {engines[zero]}; optimizer state "
                    f"re-sharded from optimizer.pt{resplit}") in proc.stdout
    assert status(run_dir) == {"state": "finished", "step": 8}
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 9))                       # every step once
    assert all(r["lr"] == pytest.approx(1e-3 * (r["step"] + 1) / 20) for r in rows)   # the demo config's warmup

    metas = [read_meta(checkpoint_dir(run_dir, step)) for step in range(1, 9)]
    assert len({m.mlflow_run_id for m in metas}) == 1
    assert [(m.world_size, m.zero_stage) for m in metas] == [(2, 2)] * 3 + [(1, 0)] * 2 + [(1, 2)] + [(2, 3)] * 2
    assert [m.samples_seen for m in metas] == [4, 8, 12, 14, 16, 18, 22, 26]   # 2 clips per rank and step
    optimizer = [torch.load(checkpoint_dir(run_dir, step) / "optimizer.pt", weights_only=True) for step in range(1, 9)]
    for before, after in zip(optimizer, optimizer[1:]):                          # across each resume too
        assert_one_adamw_step(before, after)

    # the codebook's EMA state, reset clocks and the CLUB estimators' optimiser went on counting
    assert final_model(run_dir)["quantizer.step"].item() == 8
    club_steps = {int(s["step"]) for s in rank_states(run_dir)[0]["task"]["club_optimizer"]["state"].values()}
    assert club_steps == {8 * 5}                                                # club.inner_steps: 5 in the demo
    assert_replicas_bit_identical(run_dir)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cmg-demo").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, mlflow_metric_key("loss"))) == \
        list(range(1, 9))


# ---------------------------------------------------------------------------------------------- MLflow server
@pytest.mark.slow
def test_training_logs_to_a_real_mlflow_server(tmp_path, shards):
    from mlflow.tracking import MlflowClient
    from mlflow_server import MlflowServer

    with MlflowServer(tmp_path / "mlflow") as server:
        run_dir = tmp_path / "run"
        run_job(run_dir, shards, overrides=["run.max_steps=6", f"tracking.tracking_uri={server.url}",
                                            "tracking.plot_every=3"])
        client = MlflowClient(server.url)
        run_id = read_meta(CheckpointManager(run_dir / "checkpoints").latest()).mlflow_run_id
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        demo = yaml.safe_load(DEMO_CONFIG.read_text())
        assert run.data.params["model.quantizer.num_codes"] == str(demo["model"]["quantizer"]["num_codes"])
        assert run.data.params["run.max_steps"] == "6"
        assert run.data.tags["phase"] == "demo" and run.data.tags["world_size"] == "1"
        for name in ("loss", "recon", "cpc", "mi", "cmcm", "codebook/perplexity", "codebook/codes_used_audio",
                     "perf/clips_per_s", "data/skipped"):
            # MLflow has the loop's names grouped for its run page (trainer.tracking.mlflow_metric_key)
            history = client.get_metric_history(run_id, mlflow_metric_key(name))
            assert [m.step for m in history] == list(range(1, 7)), name
        pngs = logged_images([a.path for a in client.list_artifacts(run_id, "images")], "code_usage")
        assert list(pngs) == [3, 6], "no code-usage image at each plot_every step"
        local = client.download_artifacts(run_id, pngs[6], str(tmp_path))
        assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [a.path for a in client.list_artifacts(run_id, "codebook")] == ["codebook/final.npy"]


@pytest.mark.slow
def test_unreachable_mlflow_never_stops_training(tmp_path, shards):
    from dist_utils import free_port

    run_dir = tmp_path / "run"
    proc = run_job(run_dir, shards, overrides=["run.max_steps=3", "run.grad_accum=2", "tracking.http_timeout_s=1",
                                                f"tracking.tracking_uri=http://127.0.0.1:{free_port()}"])
    assert status(run_dir) == {"state": "finished", "step": 3}
    assert "MLflow at http://127.0.0.1" in proc.stderr and "training goes on" in proc.stderr
    rows = read_metrics(run_dir)
    assert [r["data/samples_seen"] for r in rows] == [4, 8, 12]   # batch 2 x 1 rank x 2 micro-batches per step


def _rank_pid(run_dir: Path, rank: int) -> int:
    """The pid of the training process of ``rank`` whose job writes ``run_dir`` (read from /proc).

    Its DataLoader workers are forks with the same command line and environment; the rank is the one whose
    parent (torch elastic's agent) is not such a process."""
    parents = {}
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().split(b"\0")
            environ = (proc_dir / "environ").read_bytes().split(b"\0")
            ppid = int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if f"run.dir={run_dir}".encode() in cmdline and f"RANK={rank}".encode() in environ and \
                any(part.endswith(b"trainer/main.py") for part in cmdline):
            parents[int(proc_dir.name)] = ppid
    ranks = [pid for pid, ppid in parents.items() if ppid not in parents]
    assert len(ranks) == 1, f"rank {rank} processes of {run_dir}: {ranks} (all matches: {parents})"
    return ranks[0]


@pytest.mark.slow
def test_a_stalled_rank_fails_the_job_within_the_collective_timeout_and_keeps_the_checkpoint(tmp_path, shards):
    run_dir = tmp_path / "stalled"
    proc = subprocess.Popen(job_command(run_dir, shards, processes=2, overrides=[
        f"run.max_steps={STOPPED_RUN_STEPS}", "run.ckpt_every=2", "run.collective_timeout_s=15"]),
        cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(run_dir, proc, 3)
    stalled = _rank_pid(run_dir, 1)
    os.kill(stalled, signal.SIGSTOP)                                       # alive, holding its sockets, silent
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):                        # never leave it behind
            try:
                os.kill(stalled, sig)
            except ProcessLookupError:
                pass
    waited = time.monotonic() - start
    assert proc.returncode not in (0, 75), err[-3000:]
    assert waited < 150, f"the job took {waited:.0f} s to fail"            # 15 s timeout + the launcher's 30 s grace
    assert "timed out" in err.lower() or "timeout" in err.lower(), err[-3000:]
    manager = CheckpointManager(run_dir / "checkpoints")
    latest = manager.resolve("auto")                                       # verified against its manifest
    assert latest is not None and read_meta(latest).step >= 2
    failed = status(run_dir)                                               # neither finished nor stopped, and said so
    assert failed["state"] == "failed" and failed["step"] == read_meta(latest).step and failed["error"], failed


# ---------------------------------------------------------------------------------------------- what a start does
FINISHED_STEPS = 2


def summary(out: str) -> dict[str, str]:
    """The end-of-job summary in ``out``: its headline and its indented lines by their label."""
    out = "\n" + out
    lines = out[out.rindex("\n[cmg] ", 0, out.index("[cmg]   this job: ")) + 1:].splitlines()
    block = {"headline": lines[0].removeprefix("[cmg] ")}
    for line in lines[1:]:
        if not line.startswith("[cmg]   "):
            break
        label, _, value = line.removeprefix("[cmg]   ").partition(": ")
        block[label] = value
    return block


def assert_summary(out: str, run_dir: Path, first_step: int, last_step: int) -> None:
    block = summary(out)
    assert block["headline"] == f"finished at step {last_step} (run.max_steps={last_step})", block
    this_job = re.fullmatch(r"steps (\d+) -> (\d+) \((\d+) steps?\), wall time \d+m\d\ds, ([\d.]+) clips/s while "
                            r"training", block["this job"])
    assert this_job and this_job.groups()[:3] == (str(first_step), str(last_step), str(last_step - first_step))
    assert float(this_job.group(4)) > 0
    last = read_metrics(run_dir)[-1]
    assert block[f"losses at step {last_step}"] == ", ".join(
        f"{k} {last[k]:.4g}" for k in ("loss", "cmcm", "commit", "cpc", "mi", "recon")), block
    assert block["checkpoint"] == str(CheckpointManager(run_dir / "checkpoints").latest())
    run_id = json.loads((run_dir / "tracking" / "run.json").read_text())["run_id"]
    assert block["MLflow"] == f"run {run_id} in sqlite:///{run_dir.resolve()}/mlflow.db; open it: cmg ui {run_dir}"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shards) -> Path:
    """A run that finished at step FINISHED_STEPS; the tests copy it before they train on."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = run_job(run_dir, shards, overrides=[f"run.max_steps={FINISHED_STEPS}"])
    assert_summary(proc.stdout, run_dir, 0, FINISHED_STEPS)
    assert "resumed from" not in proc.stdout
    return run_dir


def snapshot(run_dir: Path) -> dict[str, object]:
    """What a start that does nothing must leave as it is: every file's size and mtime but the status, the MLflow
    run's status and end time."""
    from mlflow.tracking import MlflowClient

    files = {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*"))
             if p.is_file() and p.name != "status.json"}
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cmg-demo").experiment_id])
    return {"files": files, "runs": [(r.info.run_id, r.info.status, r.info.end_time) for r in runs]}


@pytest.mark.slow
def test_the_same_command_after_the_end_does_nothing_and_other_runs_are_refused(finished_run, shards):
    before = snapshot(finished_run)
    start = time.monotonic()
    proc = run_job(finished_run, shards, overrides=[f"run.max_steps={FINISHED_STEPS}"])
    took = time.monotonic() - start
    ckpt = CheckpointManager(finished_run / "checkpoints").latest()
    assert proc.stdout == (f"[cmg] {finished_run}: finished at step {FINISHED_STEPS} (run.max_steps={FINISHED_STEPS}; "
                           f"checkpoint {ckpt}): nothing to do\n"), proc.stdout + proc.stderr
    assert took < 20, f"doing nothing took {took:.0f} s"       # the finished run above took longer, with its start-up
    assert snapshot(finished_run) == before
    assert status(finished_run) == {"state": "finished", "step": FINISHED_STEPS}

    # a smaller run.max_steps: a new run would silently be this one; refused, the directory as it was
    proc = run_job(finished_run, shards, overrides=[f"run.max_steps={FINISHED_STEPS - 1}"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"config error: run.max_steps={FINISHED_STEPS - 1}: {finished_run} holds a run at step {FINISHED_STEPS}" \
        in proc.stderr and "give a new run.dir" in proc.stderr, proc.stderr[-3000:]

    # a model of other shapes, through the job and through the launcher's check: each key with both values
    changed = ["model.quantizer.num_codes=16", "model.encoder.ff_dim=96", "optim.lr=0.0005", "run.max_steps=4"]
    for command in (job_command(finished_run, shards, overrides=changed),
                    [sys.executable, "-m", "trainer.programs.supervisor", "--check",
                     *job_command(finished_run, shards, processes=2, overrides=changed)[3:]]):
        proc = subprocess.run(command, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
        assert "model.quantizer.num_codes: 12 in the checkpoint, 16 here" in proc.stderr, proc.stderr[-3000:]
        assert "model.encoder.ff_dim: 128 in the checkpoint, 96 here" in proc.stderr
        assert "optim.lr" not in proc.stderr                   # not a shape: a resume may change it
    assert snapshot(finished_run) == before
    assert status(finished_run) == {"state": "finished", "step": FINISHED_STEPS}


@pytest.mark.slow
def test_a_larger_max_steps_extends_the_finished_run_and_says_so(finished_run, shards, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)   # a moved run directory opens as it is (trainer/tracking.py)
    last = FINISHED_STEPS + 1
    proc = run_job(run_dir, shards, overrides=[f"run.max_steps={last}", "optim.lr=0.0005"])
    ckpt = checkpoint_dir(run_dir, FINISHED_STEPS)
    assert f"[cmg] resumed from step {FINISHED_STEPS} (checkpoint {ckpt}), 1->1 ranks; extends the run that " \
           f"finished at step {FINISHED_STEPS} to run.max_steps={last}; changed since the checkpoint: optim.lr " \
           "0.001 -> 0.0005\n" in proc.stdout, proc.stdout
    assert_summary(proc.stdout, run_dir, FINISHED_STEPS, last)
    assert status(run_dir) == {"state": "finished", "step": last}
    assert snapshot(run_dir)["runs"][0][:2] == snapshot(finished_run)["runs"][0][:2]   # the same MLflow run, FINISHED
