"""Run the real main job from tests: tiny synthetic shards; `python trainer/main.py` on one process, on several
`python -m trainer.programs.supervisor` (accelerate launch under the project's supervisor) or bare `accelerate launch`.

    shards = make_clip_shards(tmp_path / "data", num_clips=16, seconds=4, clips_per_shard=4)
    proc = run_job(tmp_path / "run", shards, processes=2, zero=2, overrides=["run.max_steps=6"])
    metrics = read_metrics(tmp_path / "run")          # rank 0's metrics.jsonl, one dict per logged step

A stopped and resumed run is compared with an uninterrupted one through ``losses`` (every logged step) and
``final_model`` (the latest checkpoint's model.pt) with ``assert_same_tensors`` (tests/system/test_main_job.py,
tests/gpu/test_gpu_check.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from dist_utils import free_port

from trainer.checkpoint_format import CheckpointManager

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "launch" / "configs" / "demo.yaml"


def make_clip_shards(root: Path, num_clips: int = 16, seconds: int = 4, clips_per_shard: int = 4,
                     classes: int = 3, seed: int = 0) -> str:
    """Synthetic clips -> shards under ``root`` (once); returns the brace URL of the shards."""
    from shards.synth import SynthConfig, synthesise
    from shards.write import write_shards

    root = Path(root)
    manifest_path = root / "shards" / "manifest.json"
    if not manifest_path.is_file():
        synthesise(SynthConfig(num_clips=num_clips, classes=classes, seconds=seconds, seed=seed, fps=8, size=32),
                   root / "clips")
        write_shards(root / "clips", str(root / "shards" / "train-%06d.tar"), max_count=clips_per_shard)
    count = len(json.loads(manifest_path.read_text())["shards"])
    return str(root / "shards" / f"train-{{000000..{count - 1:06d}}}.tar")


def shrunk_job_overrides(urls: str, seconds: int = 4, overrides: list[str] = ()) -> list[str]:
    """What shrinks a job for tests: the shards ``urls``, tiny batches, every step logged, no progress bar; then
    ``overrides``."""
    return [f"data.urls={urls}", f"data.decode.seconds={seconds}", "data.batch_size=2", "data.num_workers=1",
            "data.shuffle_buffer=4", "run.progress=false", "tracking.log_every=1", "tracking.flush_interval_s=0",
            *overrides]


def job_command(run_dir: Path, urls: str, processes: int = 1, zero: int = 2, overrides: list[str] = (),
                seconds: int = 4, config: Path = DEMO_CONFIG, launcher: str = "trainer.programs.supervisor",
                plain: bool = True, machine: str = "cpu", node: tuple[int, int, int] | None = None) -> list[str]:
    """The main job on ``config`` (default: the demo config), shrunk for tests (logs every step, no progress bar).

    ``launcher``: for several processes, the module that launches them: ``trainer.programs.supervisor`` or
    ``accelerate.commands.launch`` (what ``accelerate launch`` runs). One process runs as ``python trainer/main.py``
    (plain torch), or, with ``plain=False``, through ``launcher`` with the DeepSpeed config as well.
    ``machine``: which launch/accelerate/<machine>_zero<zero>.yaml: "cpu" (gloo) or "gpu" (nccl, bf16).
    ``node``: (machine rank, number of machines, port): this machine's launcher of a job on several machines,
    all on this host (main process at 127.0.0.1:port), with the arguments slurm/job_body.sh gives each node's;
    ``processes`` is then the job's total.
    """
    args = ["--config", str(config), f"run.dir={run_dir}", *shrunk_job_overrides(urls, seconds, overrides)]
    main = str(REPO / "trainer" / "main.py")
    if processes == 1 and plain:
        return [sys.executable, main, *args]
    if node is None:
        placement = ["--main_process_port", str(free_port())]
    else:
        machine_rank, machines, port = node
        placement = ["--num_machines", str(machines), "--machine_rank", str(machine_rank),
                     "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                     "--deepspeed_multinode_launcher", "standard"]
    return [sys.executable, "-m", launcher,
            "--config_file", str(REPO / "launch" / "accelerate" / f"{machine}_zero{zero}.yaml"),
            "--num_processes", str(processes), *placement, main, *args]


def job_env(machine: str = "cpu") -> dict[str, str]:
    """The jobs' environment; on a GPU ``machine`` DeepSpeed picks its CUDA accelerator itself."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    if machine != "cpu":
        del env["DS_ACCELERATOR"]
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_job(run_dir: Path, urls: str, processes: int = 1, zero: int = 2, overrides: list[str] = (),
            timeout: float = 300, check: bool = True, config: Path = DEMO_CONFIG,
            launcher: str = "trainer.programs.supervisor", plain: bool = True,
            machine: str = "cpu") -> subprocess.CompletedProcess:
    proc = subprocess.run(job_command(run_dir, urls, processes, zero, overrides, config=config, launcher=launcher,
                                      plain=plain, machine=machine),
                          cwd=REPO,
                          env=job_env(machine), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"job exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
                             f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def losses(run_dir: Path) -> dict[int, float]:
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in rows}


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = CheckpointManager(Path(run_dir) / "checkpoints").latest()
    return torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:10]}"


def status(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "status.json").read_text())


def wait_for_steps(run_dir: Path, proc: subprocess.Popen, steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(read_metrics(run_dir)) < steps:
        assert proc.poll() is None, f"job ended early with {proc.returncode}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "job made no progress"
        time.sleep(0.2)
